"""numpy ``.npz`` archives: read without pickle, written member by member.

Shapes and dtypes come from each member's ``.npy`` header, so opening reads
no tensor data. numpy has no name for ml_dtypes types (bfloat16, float8): they
are stored as same-width unsigned integers, and the archive comment (which
numpy ignores) records their real dtype and the metadata, as JSON.

Every member's ``.npy`` header must account for the member's size exactly, and
a compressed member may not expand past ``limits`` (a deflate bomb is refused
before anything is inflated).
"""
from __future__ import annotations

import json
import math
import zipfile
import zlib

import numpy as np

from ...errors import FormatError, UsageError
from ..checkpoint import MODEL_KEY, Checkpoint, TensorSource
from . import limits
from .fileio import load_checked, zip_names

NAME = "npz"
SUFFIXES = (".npz",)
SNIFF_ORDER = 30
WRITABLE = True
_COMMENT_KEY = "weightport"


def sniff(path: str, head: bytes) -> bool:
    names = zip_names(path, head)
    return bool(names) and all(n.endswith(".npy") for n in names)


def _header(path, archive, info) -> tuple:
    """(shape, dtype) from a member's .npy header, checked against the member's size and the inflation limit."""
    name = info.filename[:-4]
    if info.compress_type != zipfile.ZIP_STORED:
        limits.check_inflation(path, f"tensor {name!r} (a compressed member)", info.file_size, info.compress_size)
    try:
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(f)
            header_size = f.tell()
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise FormatError(f"{path}: member {info.filename!r} is not a readable .npy array ({exc})") from exc
    if dtype.hasobject or dtype.fields or dtype.subdtype:
        raise FormatError(f"{path}: tensor {name!r} has dtype {dtype}, not a plain numeric one (objects need "
                          "pickle); weightport reads numeric arrays only")
    nbytes = math.prod(shape) * dtype.itemsize
    if header_size + nbytes != info.file_size:
        raise FormatError(f"{path}: tensor {name!r} claims shape {shape} {dtype} ({nbytes:,} bytes) but its member "
                          f"holds {info.file_size - header_size:,} bytes of data; the archive is damaged")
    return shape, dtype


def _notes(path, comment: bytes) -> tuple:
    """(real dtypes, metadata) from weightport's notes in the archive comment; other comments are not ours."""
    try:
        notes = json.loads(comment.decode("utf-8")) if comment else {}
    except (ValueError, RecursionError):
        return {}, {}
    if not isinstance(notes, dict) or _COMMENT_KEY not in notes:
        return {}, {}
    notes = notes[_COMMENT_KEY]
    real = notes.get("dtypes", {}) if isinstance(notes, dict) else None
    metadata = notes.get("metadata", {}) if isinstance(notes, dict) else None
    for what, value in (("dtypes", real), ("metadata", metadata)):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise FormatError(f"{path}: the archive comment's weightport notes are damaged: {what!r} must map "
                              f"names to strings, got {str(value)[:80]}; rewrite the file with weightport")
    return real, metadata


def read(path: str, **opts) -> Checkpoint:
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise FormatError(f"{path}: not a readable .npz archive ({exc}); it may be truncated or damaged") from exc
    if not hasattr(npz, "zip"):
        raise FormatError(f"{path}: holds a single .npy array, not an .npz archive of named tensors")
    try:
        archive = npz.zip
        real, metadata = _notes(path, archive.comment)
        members = [info for info in archive.infolist() if info.filename.endswith(".npy")]
        limits.check(path, "tensors in the archive", len(members), "MAX_TENSORS")
        sources, seen = [], set()
        for info in members:
            name = info.filename[:-4]
            if name in seen:
                raise FormatError(f"{path}: tensor {name!r} is stored twice in the archive; the file is damaged "
                                  "or was appended to")
            seen.add(name)
            shape, dtype = _header(path, archive, info)
            if name in real:
                dtype = _ml_dtype(path, name, real[name], dtype)
            sources.append(TensorSource(name, shape, dtype, _loader(path, npz, name, dtype)))
        return Checkpoint(path, NAME, sources, metadata=metadata, closer=npz.close)
    except BaseException:
        npz.close()
        raise


def _ml_dtype(path, name, dtype_name, stored):
    import ml_dtypes

    found = getattr(ml_dtypes, dtype_name, None)
    dtype = np.dtype(found) if isinstance(found, type) and issubclass(found, np.generic) else None
    if dtype is None or dtype.hasobject:
        raise FormatError(f"{path}: tensor {name!r} is marked as {dtype_name!r}, a dtype ml_dtypes does not "
                          "know; upgrade ml_dtypes")
    if dtype.itemsize != stored.itemsize:
        raise FormatError(f"{path}: tensor {name!r} is marked as {dtype_name} but stored with "
                          f"{stored.itemsize}-byte items; the archive is damaged")
    return dtype


def _loader(path, npz, name, dtype):
    def load():
        try:
            array = npz[name]
        except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise FormatError(f"{path}: cannot read tensor {name!r} ({exc}); the archive may be damaged") from exc
        if array.dtype != dtype:
            array = array.view(dtype)
        array.flags.writeable = False
        return array

    return load


def write(path: str, sources, metadata, *, staging, progress=None, **opts) -> None:
    temp = staging.file(path)
    real = {}
    with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for s in sources:
            array = load_checked(s, path)
            if s.dtype.type.__module__ == "ml_dtypes":
                real[s.name] = s.dtype.name
                array = array.view(np.dtype(f"<u{s.dtype.itemsize}"))
            elif s.dtype.kind in "OV":
                raise UsageError(f"{path}: tensor {s.name!r} has dtype {s.dtype}, which .npz cannot hold "
                                 "without pickle")
            with archive.open(s.name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, array, allow_pickle=False)
            del array
            if progress is not None:
                progress(s.nbytes)
        if real or metadata:
            archive.comment = _comment(real, metadata)


def _comment(real: dict, metadata: dict) -> bytes:
    """The archive comment of weightport's notes. A zip comment holds 64 KiB: a large model's record (the config
    that rebuilds it, a convenience) is left out rather than let zipfile cut the notes short."""
    text = json.dumps({_COMMENT_KEY: {"dtypes": real, "metadata": metadata}}).encode("utf-8")
    if len(text) > zipfile.ZIP_MAX_COMMENT and MODEL_KEY in metadata:
        return _comment(real, {k: v for k, v in metadata.items() if k != MODEL_KEY})
    return text
