"""``.keras`` archives: a zip of ``config.json``, ``metadata.json`` and ``model.weights.h5``, read in place.

An uncompressed weights member is read by h5py through a window onto the
zip file, never extracted; a compressed one is streamed (slower), after its
inflation is checked against ``limits``. The config names the layers.
"""
from __future__ import annotations

import io
import struct
import zipfile

from ....errors import FormatError
from ...checkpoint import Checkpoint
from .. import limits
from ..fileio import ZIP_MAGIC, zip_names
from ..guard import load_json
from .h5 import checkpoint_of
from .paths import config_layers

ARCHIVE_WEIGHTS = "model.weights.h5"


def is_archive(path: str, head: bytes) -> bool:
    """Whether ``path`` is a zip holding a Keras config and weights."""
    names = set(zip_names(path, head) or ())
    return "config.json" in names and any(n.startswith("model.weights.") for n in names)


class _Member(io.RawIOBase):
    """A read-only window onto an uncompressed zip member, so h5py reads it in place."""

    def __init__(self, path, start, size):
        self._file = open(path, "rb")
        self._start, self._size, self._pos = start, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer):
        n = max(0, min(len(buffer), self._size - self._pos))
        self._file.seek(self._start + self._pos)
        data = self._file.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self):
        self._file.close()
        super().close()


def _open_member(path, archive: zipfile.ZipFile, info: zipfile.ZipInfo):
    """A seekable reader of the member: a window onto the file where it is stored, else zipfile's stream."""
    if info.compress_type != zipfile.ZIP_STORED:
        return archive.open(info)  # compressed: seekable, slower
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if local[:4] != ZIP_MAGIC:
        raise FormatError(f"{path}: the zip entry {info.filename!r} is damaged")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return _Member(path, info.header_offset + 30 + name_len + extra_len, info.file_size)


def read_archive(path: str) -> Checkpoint:
    """A ``.keras`` archive's weights as a lazy Checkpoint, its layers named from config.json."""
    import h5py

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise FormatError(f"{path}: not a readable .keras archive ({exc}); it may be truncated or damaged") from exc
    try:
        names = set(archive.namelist())
        config = _archive_json(path, archive, "config.json", None)
        meta = _archive_json(path, archive, "metadata.json", {})
        if not isinstance(meta, dict) or (config is not None and not isinstance(config, dict)):
            wrong = "metadata.json" if not isinstance(meta, dict) else "config.json"
            raise FormatError(f"{path}: its {wrong} holds a JSON {type(meta if wrong[0] == 'm' else config).__name__}"
                              ", not an object; the archive is damaged or not written by Keras")
    except BaseException:
        archive.close()
        raise
    if ARCHIVE_WEIGHTS not in names:
        archive.close()
        other = sorted(n for n in names if n.startswith("model.weights"))
        raise FormatError(f"{path}: the archive holds no {ARCHIVE_WEIGHTS}"
                          + (f" (it has {other}; only h5 weights are read)" if other else ""))
    info = archive.getinfo(ARCHIVE_WEIGHTS)
    try:
        if info.compress_type != zipfile.ZIP_STORED:
            limits.check_inflation(path, f"its compressed {ARCHIVE_WEIGHTS}", info.file_size, info.compress_size)
        member = _open_member(path, archive, info)
    except BaseException:
        archive.close()
        raise
    try:
        h5 = h5py.File(member, "r")
    except OSError as exc:
        member.close()
        archive.close()
        raise FormatError(f"{path}: its {ARCHIVE_WEIGHTS} is not readable HDF5 ({exc})") from exc

    def close():
        h5.close()
        member.close()
        archive.close()

    metadata = {k: str(v) for k, v in (meta or {}).items()}
    metadata["keras_file"] = "keras"
    if isinstance(config, dict):
        metadata["model_class"] = str(config.get("class_name"))
    try:
        return checkpoint_of(path, h5, close, metadata, config_layers(config) if isinstance(config, dict) else {})
    except BaseException:
        close()
        raise


def _archive_json(path, archive, member, default):
    """A JSON member of the archive, size-limited and parsed safely; ``default`` if absent."""
    try:
        info = archive.getinfo(member)
    except KeyError:
        return default
    limits.check(path, f"{member}'s size", info.file_size, "MAX_HEADER_BYTES")
    if info.compress_type != zipfile.ZIP_STORED:
        limits.check_inflation(path, member, info.file_size, info.compress_size)
    return load_json(archive.read(info), path, member)
