"""Flax msgpack (``flax.serialization.to_bytes``): a nested map of arrays, read lazily and written streaming.

Flax stores a state dict as msgpack maps whose leaves are extension objects
(type 1) holding ``(shape, dtype name, raw C-order bytes)``; arrays over 1 GiB
are split into a chunked map (``__msgpack_chunked_array__``). Tensor names
here are the map keys joined with ``/`` (``params/Dense_0/kernel``).

Reading walks the file once, skipping every array's bytes, and memory-maps
each array when it is asked for; flax and msgpack are not needed. Leaves
that are not arrays (step counters as plain numbers, strings) are not
tensors and are left out. A file of another layout than Flax's, written by
weightport, keeps its metadata (layout, layer rules) under ``__metadata__``;
any other file is taken as ``flax`` layout unless its names are torch's dotted
ones.
Writing nests the ``/`` names back into maps, one array at a time, and is
read back by ``flax.serialization.msgpack_restore`` / ``from_bytes``.

Every length a value claims is checked against the bytes left before it is
read, and the number of values against ``limits``, so a small file cannot
claim millions of entries or gigabytes of text.
"""
from __future__ import annotations

import math
import os
import struct

import numpy as np

from ...errors import FormatError, UsageError
from ..checkpoint import LAYOUT_KEY, Checkpoint, TensorSource, detect_layout
from . import limits
from .fileio import load_checked, write_in_pieces

METADATA = "__metadata__"
NAME = "msgpack"
SUFFIXES = (".msgpack",)
SNIFF_ORDER = 90  # its magic (a map with a string key) is weak: tried last
WRITABLE = True
NDARRAY, NPSCALAR = 1, 3  # flax's extension type codes
CHUNKED = "__msgpack_chunked_array__"
MAX_CHUNK_SIZE = 2 ** 30  # flax chunks arrays above this many bytes (msgpack objects stop at 2**31 - 1)
_MAPS = {0xDE: ">H", 0xDF: ">I"}


def sniff(path: str, head: bytes) -> bool:
    """A map whose first key is a string (the top of a state dict)."""
    if not head:
        return False
    first = head[0]
    if 0x81 <= first <= 0x8F:
        key = head[1:2]
    elif first in _MAPS:
        key = head[1 + struct.calcsize(_MAPS[first]):][:1]
    else:
        return False
    return bool(key) and (0xA0 <= key[0] <= 0xBF or key[0] in (0xD9, 0xDA, 0xDB))


# -- reading ------------------------------------------------------------------------------------------------


_CONSTANTS = {0xC0: None, 0xC2: False, 0xC3: True}
# marker -> (parser method, struct format of its length)
_SIZED = {0xC4: ("take", ">B"), 0xC5: ("take", ">H"), 0xC6: ("take", ">I"),
          0xD9: ("text", ">B"), 0xDA: ("text", ">H"), 0xDB: ("text", ">I"),
          0xDC: ("array", ">H"), 0xDD: ("array", ">I"), 0xDE: ("map", ">H"), 0xDF: ("map", ">I"),
          0xC7: ("ext", ">B"), 0xC8: ("ext", ">H"), 0xC9: ("ext", ">I")}
_NUMBERS = {0xCA: ">f", 0xCB: ">d", 0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
            0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}


class _Array:
    """Where one array's bytes lie in the file."""

    def __init__(self, shape, dtype, offset):
        self.shape, self.dtype, self.offset = shape, dtype, offset


class _List(dict):
    """A msgpack array, its items named by position ("0", "1"...) as flax names them."""


class _Parser:
    """Reads msgpack values from a file, skipping array payloads instead of reading them."""

    def __init__(self, f, path, size):
        self.f, self.path, self.size = f, path, size
        self.values, self.arrays = 0, 0
        self.max_values, self.max_arrays = limits.get("MAX_VALUES"), limits.get("MAX_TENSORS")

    def take(self, n: int) -> bytes:
        if n > self.size - self.f.tell():
            raise FormatError(f"{self.path}: a msgpack value at byte {self.f.tell()} claims {n:,} bytes, past the "
                              f"end of the file ({self.size:,} bytes); the file is truncated or damaged")
        data = self.f.read(n)
        if len(data) < n:
            raise FormatError(f"{self.path}: ends inside a msgpack value at byte {self.f.tell()} of {self.size}; "
                              "the file is truncated")
        return data

    def _claim(self, n: int, what: str) -> None:
        """A map or list claiming ``n`` entries: each takes a byte at least, and a value of the limit."""
        left = self.size - self.f.tell()
        if n > left:
            raise FormatError(f"{self.path}: a msgpack {what} at byte {self.f.tell()} claims {n:,} entries but only "
                              f"{left:,} bytes follow; the file is truncated or damaged")
        if self.values + n > self.max_values:
            raise limits.refuse(self.path, f"a msgpack {what} at byte {self.f.tell()} claims {n:,} entries; values "
                                "in the file", self.values + n, "MAX_VALUES")

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def value(self):
        self.values += 1
        if self.values > self.max_values:
            raise limits.refuse(self.path, "values (maps, keys, numbers) in the file", self.values, "MAX_VALUES")
        b = self.take(1)[0]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0x80 <= b <= 0x8F:
            return self.map(b & 0x0F)
        if 0x90 <= b <= 0x9F:
            return self.array(b & 0x0F)
        if 0xA0 <= b <= 0xBF:
            return self.text(b & 0x1F)
        if b in _CONSTANTS:
            return _CONSTANTS[b]
        if b in _SIZED:
            kind, fmt = _SIZED[b]
            return getattr(self, kind)(self.unpack(fmt))
        if 0xD4 <= b <= 0xD8:
            return self.ext(1 << (b - 0xD4))
        if b in _NUMBERS:
            return self.unpack(_NUMBERS[b])
        raise FormatError(f"{self.path}: byte 0x{b:02x} at offset {self.f.tell() - 1} starts no msgpack value; "
                          "the file is damaged or not msgpack")

    def text(self, n: int) -> str:
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(f"{self.path}: a map key is not valid UTF-8 ({exc})") from exc

    def map(self, n: int) -> dict:
        self._claim(2 * n, "map")
        out = {}
        for _ in range(n):
            key = self.value()
            if not isinstance(key, (str, bytes, int, float, bool)) and key is not None:
                raise FormatError(f"{self.path}: a map key at byte {self.f.tell()} is a {type(key).__name__}; a "
                                  "state dict's keys are names")
            out[key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)] = self.value()
        return out

    def array(self, n: int) -> dict:
        self._claim(n, "list")
        return _List((str(i), self.value()) for i in range(n))  # flax names list items by position

    def ext(self, n: int):
        code = self.take(1)[0]
        start = self.f.tell()
        end = start + n
        if end > self.size:
            raise FormatError(f"{self.path}: an array at byte {start} claims {n} bytes, past the end of the file "
                              f"({self.size} bytes); the file is truncated")
        if code not in (NDARRAY, NPSCALAR):
            self.f.seek(end)
            return None  # a complex number or another extension: not a tensor
        self.arrays += 1
        if self.arrays > self.max_arrays:
            raise limits.refuse(self.path, "arrays in the file", self.arrays, "MAX_TENSORS")
        if self.take(1)[0] != 0x93:
            raise FormatError(f"{self.path}: the array at byte {start} is not (shape, dtype, bytes)")
        shape = _shape(self.path, f"the array at byte {start}", self.value())
        dtype_name = self.value()
        head = self.take(1)[0]
        if head not in (0xC4, 0xC5, 0xC6):
            raise FormatError(f"{self.path}: the array at byte {start} has no raw data block")
        length = self.unpack({0xC4: ">B", 0xC5: ">H", 0xC6: ">I"}[head])
        offset = self.f.tell()
        dtype = _dtype(self.path, dtype_name)
        if offset + length != end or length != math.prod(shape) * dtype.itemsize:
            raise FormatError(f"{self.path}: the array at byte {start}, {shape} {dtype}, needs "
                              f"{math.prod(shape) * dtype.itemsize} bytes but holds {length}; the file is damaged")
        self.f.seek(end)
        return _Array(shape, dtype, offset)


def _shape(path, where, shape) -> tuple:
    """A shape: non-negative integers in a msgpack list, or in a map keyed "0".."n-1" (how flax writes a
    chunked array's)."""
    if not isinstance(shape, dict) or set(shape) != {str(i) for i in range(len(shape))} or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape.values()):
        shown = list(shape.values()) if isinstance(shape, _List) else shape
        raise FormatError(f"{path}: {where} has shape {shown!r}; a shape is a list of non-negative integers")
    return tuple(shape[str(i)] for i in range(len(shape)))


def _dtype(path, name) -> np.dtype:
    """The dtype a name stands for: a plain numeric numpy dtype or an ml_dtypes one, nothing else."""
    if not isinstance(name, (str, bytes)):
        raise FormatError(f"{path}: an array has dtype {name!r}; a dtype is a name such as 'float32'")
    name = name.decode("ascii", "replace") if isinstance(name, bytes) else name
    import ml_dtypes

    found = getattr(ml_dtypes, name, None)
    if isinstance(found, type) and issubclass(found, np.generic):
        return np.dtype(found)
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError, SyntaxError):
        dtype = None
    if dtype is None or dtype.kind not in "biufc" or dtype.fields or dtype.subdtype:
        raise FormatError(f"{path}: an array has dtype {name!r}, which is not a numeric dtype numpy or ml_dtypes "
                          "knows; the file is damaged or not a Flax state dict")
    return dtype


def _memmap(path, array: _Array):
    def load():
        if math.prod(array.shape) == 0:
            out = np.empty(array.shape, array.dtype)
            out.flags.writeable = False
            return out
        return np.memmap(path, dtype=array.dtype, mode="r", offset=array.offset, shape=array.shape)

    return load


def _chunked(path, name, node) -> TensorSource:
    shape, chunks = node.get("shape"), node.get("chunks")
    if not isinstance(chunks, dict) or not all(isinstance(c, _Array) for c in chunks.values()) \
            or set(chunks) != {str(i) for i in range(len(chunks))}:
        raise FormatError(f"{path}: {name!r} is marked as a chunked array but its chunks are not arrays "
                          f"numbered 0..n-1 (found {sorted(chunks)[:5] if isinstance(chunks, dict) else chunks!r})")
    shape = _shape(path, f"the chunked array {name!r}", shape)
    parts = [chunks[str(i)] for i in range(len(chunks))]
    dtype = parts[0].dtype if parts else np.dtype("float32")
    if sum(math.prod(p.shape) for p in parts) != math.prod(shape) or any(p.dtype != dtype for p in parts):
        raise FormatError(f"{path}: the chunks of {name!r} do not add up to its shape {shape}")

    def load():
        flat = np.concatenate([np.asarray(_memmap(path, p)()).reshape(-1) for p in parts]) if parts else \
            np.empty((0,), dtype)
        out = flat.reshape(shape)
        out.flags.writeable = False
        return out

    return TensorSource(name, shape, dtype, load)


def _sources(path, node, prefix=""):
    for key, value in node.items():
        name = f"{prefix}/{key}" if prefix else key
        if isinstance(value, _Array):
            yield TensorSource(name, value.shape, value.dtype, _memmap(path, value))
        elif isinstance(value, dict) and value.get(CHUNKED) is True:
            yield _chunked(path, name, value)
        elif isinstance(value, dict):
            yield from _sources(path, value, name)


def read(path: str, **opts) -> Checkpoint:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            parser = _Parser(f, path, size)
            tree = parser.value()
            if f.tell() != size:
                raise FormatError(f"{path}: {size - f.tell()} bytes follow the msgpack state dict; the file is "
                                  "damaged or not a single msgpack value")
    except OSError as exc:
        raise FormatError(f"{path}: cannot be read ({exc})") from exc
    except RecursionError:
        raise FormatError(f"{path}: nested too deeply to be a state dict") from None
    if not isinstance(tree, dict):
        raise FormatError(f"{path}: holds a msgpack {type(tree).__name__}, not a map of named arrays")
    metadata = tree.pop(METADATA, None)
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        metadata = {}
    sources = list(_sources(path, tree))
    layout = metadata.get(LAYOUT_KEY) or ("torch" if detect_layout(s.name for s in sources) == "torch" else "flax")
    return Checkpoint(path, NAME, sources, metadata=metadata, layout=layout)


# -- writing ------------------------------------------------------------------------------------------------


def _length(n: int, small: int, short: int, fmts) -> bytes:
    """A msgpack header: ``small | n`` when it fits the fix form, else the sized forms in ``fmts``."""
    if small is not None and n < short:
        return bytes([small | n])
    for code, fmt, limit in fmts:
        if n < limit:
            return bytes([code]) + struct.pack(fmt, n)
    raise UsageError(f"{n} entries or bytes is more than msgpack can hold in one object")


def _map(n):
    return _length(n, 0x80, 16, [(0xDE, ">H", 1 << 16), (0xDF, ">I", 1 << 32)])


def _str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _length(len(raw), 0xA0, 32, [(0xD9, ">B", 1 << 8), (0xDA, ">H", 1 << 16), (0xDB, ">I", 1 << 32)]) + raw


def _int(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    return _length(n, None, 0, [(0xCC, ">B", 1 << 8), (0xCD, ">H", 1 << 16), (0xCE, ">I", 1 << 32),
                                (0xCF, ">Q", 1 << 64)])


def _array_header(shape, dtype: np.dtype, nbytes: int) -> bytes:
    """Ext header + (shape, dtype name, bin header): what precedes an array's raw bytes."""
    body = (bytes([0x93]) + _length(len(shape), 0x90, 16, [(0xDC, ">H", 1 << 16), (0xDD, ">I", 1 << 32)])
            + b"".join(_int(d) for d in shape) + _str(dtype.name)
            + _length(nbytes, None, 0, [(0xC4, ">B", 1 << 8), (0xC5, ">H", 1 << 16), (0xC6, ">I", 1 << 32)]))
    n = len(body) + nbytes
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    head = bytes([fixed[n]]) if n in fixed else _length(n, None, 0, [(0xC7, ">B", 1 << 8), (0xC8, ">H", 1 << 16),
                                                                      (0xC9, ">I", 1 << 32)])
    return head + bytes([NDARRAY]) + body


def _nest(sources, path) -> dict:
    """The ``/`` names as nested dicts of TensorSources, in first-seen order."""
    root: dict = {}
    for s in sources:
        parts = s.name.split("/")
        if any(p == "" for p in parts):
            raise UsageError(f"{path}: tensor name {s.name!r} has an empty part between '/'; msgpack maps need "
                             "a key at every level")
        node = root
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"{path}: {'/'.join(parts[:depth + 1])!r} is a tensor and also a prefix of "
                                 f"{s.name!r}; a nested map cannot hold both")
        if parts[-1] in node:
            raise UsageError(f"{path}: {s.name!r} is a tensor and also a prefix of other names")
        node[parts[-1]] = s
    return root


def _write_array(f, array):
    f.write(_array_header(array.shape, array.dtype, array.nbytes))
    if array.size:
        write_in_pieces(f, array.reshape(-1).view(np.uint8))


def _write_tree(f, node: dict, path, progress):
    f.write(_map(len(node)))
    for key, value in node.items():
        f.write(_str(key))
        if isinstance(value, dict):
            _write_tree(f, value, path, progress)
            continue
        if isinstance(value, str):
            f.write(_str(value))
            continue
        array = load_checked(value, path)
        if array.dtype.hasobject or array.dtype.names:
            raise UsageError(f"{path}: tensor {value.name!r} has dtype {array.dtype}, which msgpack cannot hold")
        if array.nbytes > MAX_CHUNK_SIZE:  # as flax splits it, so flax reads it back
            flat = array.reshape(-1)
            step = max(1, MAX_CHUNK_SIZE // array.dtype.itemsize)
            chunks = [flat[i:i + step] for i in range(0, flat.size, step)]
            f.write(_map(3) + _str(CHUNKED) + b"\xc3" + _str("shape") + _map(array.ndim))
            for i, d in enumerate(array.shape):
                f.write(_str(str(i)) + _int(d))
            f.write(_str("chunks") + _map(len(chunks)))
            for i, chunk in enumerate(chunks):
                f.write(_str(str(i)))
                _write_array(f, chunk)
        else:
            _write_array(f, array)
        del array
        if progress is not None:
            progress(value.nbytes)


def write(path: str, sources, metadata, *, staging, progress=None, **opts) -> None:
    tree = _nest(sources, path)
    if metadata.get(LAYOUT_KEY, "flax") != "flax":
        # another layout's names mean nothing to Flax: say what they are (a flax-layout file stays as Flax
        # writes it, so flax.serialization restores it into a model's state unchanged)
        if METADATA in tree:
            raise UsageError(f"{path}: a tensor is named {METADATA!r}, which weightport keeps for metadata")
        tree = {**tree, METADATA: dict(metadata)}
    with open(staging.file(path), "wb") as f:
        _write_tree(f, tree, path, progress)
