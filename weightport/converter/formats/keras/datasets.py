"""An HDF5 weights file walked and checked: every dataset a plain in-file array of numbers, loaded on demand.

Links out of the file (external links, external or virtual storage), groups
reached twice (a hard-linked cycle), datasets that are not plain numbers,
and compressed or unwritten datasets that would expand past ``limits`` are
refused. bfloat16 is an opaque 2-byte dataset tagged ``dtype="bfloat16"``,
as Keras writes it.
"""
from __future__ import annotations

import math
import re

import numpy as np

from ....errors import FormatError
from .. import limits

H5_MAGIC = b"\x89HDF\r\n\x1a\n"


def text(value):
    """An HDF5 attribute as Python text: bytes decoded, string arrays as lists of str, anything else as it is."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return [text(v) for v in value.tolist()]
    return value


def find_datasets(path, h5) -> dict:
    """Every dataset path -> dataset, in h5py's iteration order; refuses links and data outside the file.

    Walked with HDF5's own link visitor (one C call, each group entered once),
    not group by group in Python: opening stays cheap for files of many tensors.
    """
    import h5py

    hard, seen, found, links = [], {}, {}, []
    budget = 4 * limits.get("MAX_TENSORS") + 16  # links: datasets plus their groups

    def visit(raw, info):  # no exceptions in here: HDF5 is calling; collect, stop, then judge
        links.append((raw, info.type, info.u))
        return None if len(links) <= budget else True  # anything but None stops the walk

    h5.id.links.visit(visit, info=True)
    if len(links) > budget:
        raise limits.refuse(path, "objects in the file", len(links), "MAX_TENSORS")
    for raw, kind, where in links:
        name = _link_name(path, raw)
        if kind == h5py.h5l.TYPE_EXTERNAL:
            target = h5.get(name, getlink=True)
            raise FormatError(f"{path}: {name!r} is an external link to {target.filename}:{target.path}; "
                              "weightport reads only data stored inside the file. Copy the linked data in "
                              "(e.g. with h5copy) and try again")
        if kind != h5py.h5l.TYPE_HARD:
            target = h5.get(name, getlink=True)
            raise FormatError(f"{path}: {name!r} is a soft link to {getattr(target, 'path', '?')}; Keras weight "
                              "files hold no links, so this file was not written by Keras")
        if where in seen:
            loop = name.startswith(seen[where] + "/")
            raise FormatError(f"{path}: {name!r} is {seen[where]!r} again (a hard link, here "
                              f"{'a loop' if loop else 'an alias'}); Keras weight files hold each object once, so "
                              "this file was not written by Keras or is damaged")
        seen[where] = name
        hard.append((raw, name, where))
    kinds = {}
    h5py.h5o.visit(h5.id, lambda raw, info: kinds.__setitem__(info.addr, info.type), info=True)
    for raw, name, where in hard:
        if kinds.get(where) != h5py.h5o.TYPE_DATASET:
            continue
        ds = h5py.Dataset(h5py.h5d.open(h5.id, raw))
        if ds.is_virtual:
            raise FormatError(f"{path}: dataset {name!r} is virtual (its data lives in other files); "
                              "weightport reads only data stored inside the file")
        if ds.external:
            raise FormatError(f"{path}: dataset {name!r} keeps its data in external files "
                              f"{[e[0] for e in ds.external]}; weightport reads only data inside the file")
        _check_dataset(path, name, ds)
        found[name] = ds
        limits.check(path, "datasets in the file", len(found), "MAX_TENSORS")
    return found


def _link_name(path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{path}: an object is named {raw[:60]!r}, which is not UTF-8 text; the file is "
                          "damaged") from None


def _check_dataset(path, name, ds) -> None:
    """A dataset must be an array of plain numbers whose size the file can back."""
    if ds.shape is None:
        raise FormatError(f"{path}: dataset {name!r} is empty (no dataspace, h5py.Empty), not a tensor; Keras "
                          "never writes one, so the file is damaged or not a Keras weights file")
    dtype = ds.dtype
    if dtype.hasobject or dtype.fields or dtype.subdtype or dtype.kind not in "biufcV" \
            or (dtype.kind == "V" and text(ds.attrs.get("dtype")) != "bfloat16"):
        raise FormatError(f"{path}: dataset {name!r} holds {dtype} values (strings, records or opaque bytes), not "
                          "numbers; it is not a weight")
    nbytes = math.prod(ds.shape) * dtype.itemsize
    if nbytes > limits.get("INFLATE_FLOOR"):  # small ones cost nothing to check and nothing to read
        limits.check_inflation(path, f"dataset {name!r} ({ds.shape} {dtype})", nbytes, ds.id.get_storage_size())


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def stored_order(datasets) -> list:
    """The order the datasets were written in (their object headers' file positions), else natural name order."""
    import h5py

    names = sorted(datasets, key=_natural)
    try:
        where = {n: h5py.h5o.get_info(d.id).addr for n, d in datasets.items()}
    except (AttributeError, TypeError):
        return names
    return sorted(names, key=lambda n: where[n])


def dtype_of(ds, path=None, name=None) -> np.dtype:
    """The dataset's dtype, bfloat16 where Keras tagged an opaque 2-byte dataset so."""
    if text(ds.attrs.get("dtype")) == "bfloat16":
        from ...arrays import bfloat16

        if ds.dtype.itemsize != 2:
            raise FormatError(f"{path}: dataset {name!r} is marked dtype=bfloat16 but stored as {ds.dtype} "
                              f"({ds.dtype.itemsize}-byte items, not 2); the file is damaged")
        return bfloat16()
    return ds.dtype


def loader(path, ds, name):
    """A function reading the dataset as a read-only array of its real dtype; a read error names it."""
    dtype = dtype_of(ds, path, name)

    def load():
        try:
            array = ds[()]
        except (OSError, ValueError) as exc:
            raise FormatError(f"{path}: cannot read dataset {name!r} ({exc}); the file may be damaged") from exc
        array = np.asarray(array)
        if array.dtype != dtype:
            array = array.view(dtype)
        array.flags.writeable = False
        return array

    return load
