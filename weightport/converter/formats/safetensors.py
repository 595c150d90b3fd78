"""safetensors, single file or sharded (``*.safetensors.index.json``), read and written by hand.

The header is validated here (length, JSON, dtypes, offsets that cover the
data exactly once, byte ranges that fit shape x dtype) before any tensor is
touched; tensors are memory-mapped one by one. Writing needs no library: the
header is built from shapes and dtypes (padded with spaces to 8 bytes, as the
spec says), then tensors are streamed in order.
"""
from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from ...errors import FormatError, UsageError
from ...layouts import LAYOUTS
from ..checkpoint import LAYOUT_KEY, Checkpoint, TensorSource
from . import fileio, limits
from .guard import load_json

NAME = "safetensors"
SUFFIXES = (".safetensors", ".safetensors.index.json")
SNIFF_ORDER = 10
WRITABLE = True

_PLAIN = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "<u2", "I16": "<i2", "U32": "<u4", "I32": "<i4",
          "U64": "<u8", "I64": "<i8", "F16": "<f2", "F32": "<f4", "F64": "<f8"}
_ML = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def _dtype(code: str) -> np.dtype:
    if code in _PLAIN:
        return np.dtype(_PLAIN[code])
    import ml_dtypes

    return np.dtype(getattr(ml_dtypes, _ML[code]))


def _code(dtype: np.dtype) -> str | None:
    if dtype.name in _ML.values():
        return next(k for k, v in _ML.items() if v == dtype.name)
    little = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    return next((code for code, name in _PLAIN.items() if np.dtype(name) == little), None)


def _is_index(path: str) -> bool:
    return path.lower().endswith(".json")


def sniff(path: str, head: bytes) -> bool:
    if _is_index(path):
        return path.lower().endswith(".safetensors.index.json") and head.lstrip()[:1] == b"{"
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= limits.get("MAX_HEADER_BYTES")


# -- reading ----------------------------------------------------------------------------------------------


def _memmap_loader(path, offset, shape, dtype):
    def load():
        if math.prod(shape) == 0:
            out = np.empty(shape, dtype)
            out.flags.writeable = False
            return out
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)

    return load


def read_header(path: str) -> tuple:
    """(sources, metadata, data_size) of one safetensors file, every claim in the header checked."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise FormatError(f"{path}: {size} bytes, too short for a safetensors file (truncated?); "
                                  "a safetensors file starts with an 8-byte header length")
            (n,) = struct.unpack("<Q", prefix)
            if n > size - 8:
                raise FormatError(f"{path}: header length {n} reaches past the end of the file ({size} bytes); "
                                  "the file is truncated or not safetensors")
            limits.check(path, "header length", n, "MAX_HEADER_BYTES")
            raw = f.read(n)
    except OSError as exc:
        raise FormatError(f"{path}: cannot be read ({exc})") from exc
    header = load_json(raw, path, "the header")
    if not isinstance(header, dict):
        raise FormatError(f"{path}: the header is JSON but not an object")
    limits.check(path, "tensors in the header", len(header) - ("__metadata__" in header), "MAX_TENSORS")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError(f"{path}: __metadata__ must map strings to strings, got {metadata!r}")
    data_start, data_size = 8 + n, size - 8 - n
    entries = []
    for name, info in header.items():
        entries.append(_check_entry(path, name, info, data_size))
    entries.sort(key=lambda e: e[3])  # stored order: by position in the data
    covered, previous = 0, None
    for name, _, _, (begin, end) in entries:
        if begin < covered:
            raise FormatError(f"{path}: tensor {name!r} bytes [{begin}, {end}) overlap tensor {previous!r} "
                              f"(which ends at {covered}); the header is corrupt")
        if begin > covered:
            raise FormatError(f"{path}: bytes [{covered}, {begin}) before tensor {name!r} belong to no tensor; "
                              "safetensors forbids holes in the data")
        covered, previous = end, name
    if covered != data_size:
        raise FormatError(f"{path}: {data_size - covered} trailing bytes after the last tensor belong to no "
                          "tensor; the file is damaged")
    sources = [TensorSource(name, shape, dtype, _memmap_loader(path, data_start + begin, shape, dtype),
                            file_range=(path, data_start + begin, end - begin))
               for name, shape, dtype, (begin, end) in entries]
    return sources, metadata, data_size


def _check_entry(path, name, info, data_size):
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise FormatError(f"{where}: header entry needs dtype, shape and data_offsets, got {info!r}")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or (code not in _PLAIN and code not in _ML):
        raise FormatError(f"{where}: dtype {code!r} is not one weightport reads "
                          f"({', '.join(list(_PLAIN) + list(_ML))})")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise FormatError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise FormatError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
    dtype = _dtype(code)
    expected = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != expected:
        raise FormatError(f"{where}: shape {tuple(shape)} x {code} needs {expected} bytes but data_offsets "
                          f"{offsets} span {offsets[1] - offsets[0]}; the header is corrupt")
    if offsets[1] > data_size:
        raise FormatError(f"{where}: data ends at byte {offsets[1]} of the data section, which holds only "
                          f"{data_size} bytes; the file is truncated")
    return name, tuple(shape), dtype, tuple(offsets)


def read(path: str, **opts) -> Checkpoint:
    if _is_index(path):
        return _read_sharded(path)
    sources, metadata, _ = read_header(path)
    return Checkpoint(path, NAME, sources, metadata=metadata)


def read_index(path: str) -> dict:
    """A shard index's JSON object, size-limited and parsed safely."""
    try:
        with open(path, "rb") as f:
            raw = f.read(limits.get("MAX_HEADER_BYTES") + 1)
    except OSError as exc:
        raise FormatError(f"{path}: not a readable safetensors index ({exc})") from exc
    return load_json(raw, path, "the shard index")


def _read_sharded(path: str) -> Checkpoint:
    index = read_index(path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise FormatError(f"{path}: a safetensors index needs a 'weight_map' object of tensor -> shard file")
    folder = os.path.dirname(os.path.abspath(path))
    shard_names = list(dict.fromkeys(weight_map.values()))
    for shard in shard_names:
        if os.path.isabs(shard) or os.path.basename(shard) != shard:
            raise FormatError(f"{path}: shard {shard!r} must be a file name in the index's own folder")
        if not os.path.isfile(os.path.join(folder, shard)):
            names = [t for t, s in weight_map.items() if s == shard]
            raise FormatError(f"{path}: shard {shard!r} (holding {len(names)} tensors, e.g. {names[0]!r}) "
                              f"is missing from {folder}; download or copy every shard the index names")
    sources, metadata = [], {}
    for shard in shard_names:
        shard_path = os.path.join(folder, shard)
        found, shard_meta, _ = read_header(shard_path)
        for key, value in shard_meta.items():
            metadata.setdefault(key, value)
        for source in found:
            owner = weight_map.get(source.name)
            if owner != shard:
                raise FormatError(f"{shard_path}: holds tensor {source.name!r}, which the index {path} "
                                  f"assigns to {owner!r}; the index and shards do not match")
            sources.append(source)
    listed = {s.name for s in sources}
    missing = [t for t in weight_map if t not in listed]
    if missing:
        raise FormatError(f"{path}: tensor {missing[0]!r} is listed in the index under {weight_map[missing[0]]!r} "
                          f"but that shard does not hold it ({len(missing)} missing in all)")
    index_meta = index.get("metadata") or {}
    if isinstance(index_meta, dict):
        metadata.update({k: str(v) for k, v in index_meta.items()})
    return Checkpoint(path, NAME, sources, metadata=metadata)


def _listed_shards(index_path: str) -> list:
    """The shard files an existing index names (empty if there is none or it cannot be read)."""
    try:
        weight_map = read_index(index_path).get("weight_map")
    except (FormatError, AttributeError):
        return []
    if not isinstance(weight_map, dict):
        return []
    folder = os.path.dirname(os.path.abspath(index_path))
    return [os.path.join(folder, shard) for shard in dict.fromkeys(weight_map.values())
            if isinstance(shard, str) and shard and os.path.basename(shard) == shard and shard not in (".", "..")]


# -- writing ----------------------------------------------------------------------------------------------


def _header(sources, metadata) -> bytes:
    header = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for s in sources:
        if s.name == "__metadata__":
            raise UsageError("a tensor cannot be named '__metadata__' in safetensors; rename it")
        code = _code(s.dtype)
        if code is None:
            raise UsageError(f"tensor {s.name!r} has dtype {s.dtype}, which safetensors cannot hold")
        header[s.name] = {"dtype": code, "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _with_format_tag(metadata: dict) -> dict:
    metadata = dict(metadata)
    layout = LAYOUTS.get(metadata.get(LAYOUT_KEY, ""))
    tag = layout and layout.safetensors_tag
    if tag and "format" not in metadata:
        metadata["format"] = tag
    return metadata


def _write_file(temp, final_path, sources, metadata, progress):
    head = _header(sources, metadata)
    with open(temp, "wb") as f:
        f.write(head)
        f.flush()
        fileio.write_tensors(f.fileno(), len(head), sources, final_path, progress)


def _plan_shards(sources, shard_size):
    shards, current, size = [], [], 0
    for s in sources:
        if current and size + s.nbytes > shard_size:
            shards.append(current)
            current, size = [], 0
        current.append(s)
        size += s.nbytes
    if current or not shards:
        shards.append(current)
    return shards


def write(path: str, sources, metadata, *, staging, shard_size=None, progress=None, **opts) -> None:
    metadata = _with_format_tag(metadata)
    if shard_size is None and not _is_index(path):
        _write_file(staging.file(path), path, sources, metadata, progress)
        return
    index_path = index_path_of(path)
    folder = os.path.dirname(os.path.abspath(index_path))
    shards = _plan_shards(sources, shard_size or math.inf)
    names = shard_names(index_path, len(shards))
    temps = [staging.file(os.path.join(folder, n)) for n in names]  # every name claimed before any byte
    index_temp = staging.file(index_path)
    if os.path.exists(index_path):  # overwriting: shards the old index lists and the new one does not go too
        for old in _listed_shards(index_path):
            if os.path.basename(old) not in names and old.endswith(".safetensors") and os.path.isfile(old):
                staging.obsolete(old)
    for temp, name, shard in zip(temps, names, shards):
        _write_file(temp, os.path.join(folder, name), shard, metadata, progress)
    weight_map = {s.name: name for name, shard in zip(names, shards) for s in shard}
    index = {"metadata": {**metadata, "total_size": sum(s.nbytes for s in sources)}, "weight_map": weight_map}
    with open(index_temp, "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)


# -- for writers that make one shard at a time (converter.shards) ---------------------------------------


def index_path_of(path: str) -> str:
    """The ``*.safetensors.index.json`` a sharded output named ``path`` is listed by."""
    return path if _is_index(path) else path + ".index.json"


def shard_names(index_path: str, count: int) -> list:
    """Hugging Face's shard names for ``count`` shards: ``model-00001-of-00004.safetensors``..."""
    stem = os.path.basename(index_path)[: -len(".safetensors.index.json")] or "model"
    return [f"{stem}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def tagged(metadata: dict) -> dict:
    """``metadata`` as every shard and the index record it (the layout's ``format`` tag added)."""
    return _with_format_tag(metadata)


def write_one(temp: str, final: str, sources, metadata: dict) -> None:
    """One complete safetensors file at ``temp`` (to be renamed to ``final``), ``metadata`` as given."""
    _write_file(temp, final, sources, metadata, None)
