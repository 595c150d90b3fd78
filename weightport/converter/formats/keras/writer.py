"""``.weights.h5`` written as Keras does, fast: h5py lays the datasets out, their bytes go in at their offsets.

A ``.keras`` path is written as an archive around such a file (``archive_writer``).
"""
from __future__ import annotations

import math
import os

from ....errors import UsageError
from ..fileio import blocks_checked, write_placed
from ..offset_writer import reserve


def write(path: str, sources, metadata, *, staging, progress=None, like=None, **opts) -> None:
    """A ``.weights.h5`` (or legacy ``.h5``) at ``path``; a ``.keras`` archive for that suffix (``archive_writer``)."""
    if path.lower().endswith(".keras"):
        from .archive_writer import write_archive

        write_archive(path, sources, metadata, staging=staging, progress=progress, like=like)
        return
    write_h5(staging.file(path), sources, metadata, progress, path)


def write_h5(temp: str, sources, metadata, progress, path: str) -> None:
    """Write the datasets into the file ``temp`` (``path`` names the output in errors).

    Datasets are laid out first (h5py), then their bytes are written straight into the file.
    Each dataset is contiguous with its space allocated up front and never
    filled, so its bytes can go to its file offset as a safetensors writer
    puts them (``fileio.write_placed``: parts from the transposing threads, an
    in-kernel copy for tensors that need no change): h5py's own writes are
    several times slower on large tensors.
    """
    import h5py

    placed = []
    with h5py.File(temp, "w") as h5:
        for key, value in metadata.items():
            h5.attrs[key] = value
        for s in sources:
            placed += _dataset(h5, s, path)
    with open(temp, "r+b") as f:
        reserve(f.fileno(), os.fstat(f.fileno()).st_size)
        write_placed(f.fileno(), placed, path, progress)


def _dataset(h5, s, path) -> list:
    """Lay out ``s``'s dataset; [(s, its file offset)] for its bytes to be written later, or [] if written now."""
    import h5py

    if not s.name or s.name.startswith("/") or "//" in s.name:
        raise UsageError(f"{path}: tensor name {s.name!r} is not an h5 dataset path like 'layers/dense/vars/0'")
    if s.dtype.type.__module__.startswith("ml_dtypes") and s.dtype.name != "bfloat16":
        raise UsageError(f"{path}: tensor {s.name!r} is {s.dtype}, which a .weights.h5 cannot hold (Keras "
                         "tags bfloat16 in HDF5 but has no such tag for float8); nothing was written. Cast "
                         "to bfloat16 or float16, or write .safetensors / .pt, which keep float8")
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    try:
        ds = h5.create_dataset(s.name, shape=s.shape, dtype=s.dtype, dcpl=dcpl)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path}: cannot store tensor {s.name!r} {s.shape} {s.dtype} ({exc})") from exc
    if s.dtype.name == "bfloat16":
        ds.attrs["dtype"] = "bfloat16"  # as Keras' H5IOStore marks it
    offset = ds.id.get_offset() if s.nbytes else None
    if offset is None:
        _write_through_h5py(ds, s, path)
        return []
    return [(s, offset)]


def _write_through_h5py(ds, source, path) -> None:
    for row, block in blocks_checked(source, path):
        if math.prod(block.shape):
            if block.ndim == 0:
                ds[...] = block
            else:
                ds[row:row + len(block)] = block
