"""Keras files: ``.weights.h5`` (Keras 3), ``.keras`` archives, legacy Keras 2 ``.h5``.

Keras 3 stores each object's variables as ``<object path>/vars/<i>``, the
object path following how the model holds it (``layers/dense_1``,
``layers/block/layers/conv2d``...; the model's own at ``vars/<i>``); bfloat16
is an opaque 2-byte dataset tagged ``dtype="bfloat16"``. Legacy files list
their layers in a ``layer_names`` attribute and each layer's datasets in
``weight_names``. Tensor names are the datasets' ``/``-joined paths, in the
order Keras wrote them. Links out of the file (external links, external or
virtual storage), groups reached twice (a hard-linked cycle), datasets that
are not plain numbers, and compressed or unwritten datasets that would expand
past ``limits`` are refused. Keras itself is imported only by
``variable_paths``, which needs a live model.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import zipfile

import numpy as np

from ...errors import FormatError, UsageError
from ..checkpoint import Checkpoint, TensorSource
from . import limits
from .guard import load_json

NAME = "keras"
SUFFIXES = (".weights.h5", ".keras", ".h5", ".hdf5")
H5_MAGIC = b"\x89HDF\r\n\x1a\n"
ARCHIVE_WEIGHTS = "model.weights.h5"


def _is_archive(path: str, head: bytes) -> bool:
    if head[:4] != b"PK\x03\x04":
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
    return "config.json" in names and any(n.startswith("model.weights.") for n in names)


def sniff(path: str, head: bytes) -> bool:
    return head[:8] == H5_MAGIC or _is_archive(path, head)


# -- reading ----------------------------------------------------------------------------------------------


def read(path: str, **opts) -> Checkpoint:
    import h5py

    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"PK\x03\x04" or path.lower().endswith(".keras"):
        return _read_archive(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise FormatError(f"{path}: not a readable HDF5 file ({exc}); it may be truncated or damaged") from exc
    try:
        return _checkpoint(path, h5, h5.close, {}, {})
    except BaseException:
        h5.close()
        raise


def _checkpoint(path, h5, closer, metadata, layers) -> Checkpoint:
    datasets = _datasets(path, h5)
    legacy = _legacy_order(path, h5, datasets)
    if legacy is not None:
        order, kind = legacy, "legacy-h5"
    else:
        order, kind = _stored_order(datasets), metadata.pop("keras_file", "weights.h5")
    attrs = {k: _text(v) for k, v in h5.attrs.items() if k != "model_config" and isinstance(_text(v), str)}
    metadata = {**attrs, **metadata, "keras_file": kind}
    if kind == "legacy-h5":
        layers = {**_legacy_layers(path, h5), **layers}
    else:
        layers = {**_group_names(h5, datasets), **layers}
    sources = [TensorSource(name, datasets[name].shape, _dtype(datasets[name], path, name),
                            _loader(path, datasets[name], name)) for name in order]
    return Checkpoint(path, NAME, sources, metadata=metadata, layers=layers, closer=closer)


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return [_text(v) for v in value.tolist()]
    return value


def _datasets(path, h5) -> dict:
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
            or (dtype.kind == "V" and _text(ds.attrs.get("dtype")) != "bfloat16"):
        raise FormatError(f"{path}: dataset {name!r} holds {dtype} values (strings, records or opaque bytes), not "
                          "numbers; it is not a weight")
    nbytes = math.prod(ds.shape) * dtype.itemsize
    if nbytes > limits.get("INFLATE_FLOOR"):  # small ones cost nothing to check and nothing to read
        limits.check_inflation(path, f"dataset {name!r} ({ds.shape} {dtype})", nbytes, ds.id.get_storage_size())


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _stored_order(datasets) -> list:
    """The order the datasets were written in (their object headers' file positions), else natural name order."""
    import h5py

    names = sorted(datasets, key=_natural)
    try:
        where = {n: h5py.h5o.get_info(d.id).addr for n, d in datasets.items()}
    except (AttributeError, TypeError):
        return names
    return sorted(names, key=lambda n: where[n])


def _legacy_order(path, h5, datasets):
    """Keras 2 order from ``layer_names`` / ``weight_names``, or None if the file is not a legacy one."""
    root, prefix = h5, ""
    if "layer_names" not in h5.attrs and "model_weights" in h5 and "layer_names" in h5["model_weights"].attrs:
        root, prefix = h5["model_weights"], "model_weights/"
    if "layer_names" not in root.attrs:
        return None
    order = []
    layer_names = _names(path, root.attrs["layer_names"], "layer_names")
    for layer in layer_names:
        group = f"{prefix}{layer}"
        if group not in h5:
            raise FormatError(f"{path}: layer_names lists {layer!r} but the file has no group {group!r}")
        weight_names = _names(path, h5[group].attrs.get("weight_names", []), f"{group}'s weight_names")
        for wname in weight_names:
            name = f"{group}/{wname}"
            if name not in datasets:
                raise FormatError(f"{path}: layer {layer!r} lists weight {wname!r} but the file has no dataset "
                                  f"{name!r}; the file is damaged")
            order.append(name)
    listed = set(order)
    return order + [n for n in _stored_order(datasets) if n not in listed]


def _names(path, value, what) -> list:
    """An attribute listing names (layer_names, weight_names) as a list of str; anything else is damage."""
    if isinstance(value, (bytes, str)):
        value = [value]
    if isinstance(value, np.ndarray) and value.size == 0:
        value = []  # Keras writes a layer without weights as an empty float array
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU" and value.ndim <= 1:
        value = value.tolist() if value.ndim else [value.item()]
    if not isinstance(value, list):
        raise FormatError(f"{path}: {what} should list names, but holds {type(value).__name__}; the file is "
                          "damaged")
    out = []
    for name in value:
        try:
            out.append(name.decode("utf-8") if isinstance(name, bytes) else name)
        except UnicodeDecodeError:
            raise FormatError(f"{path}: {what} holds a name that is not UTF-8 text ({name[:40]!r}); the file "
                              "is damaged") from None
        if not isinstance(out[-1], str) or not out[-1] or "\x00" in out[-1]:
            raise FormatError(f"{path}: {what} holds {out[-1]!r}, not a name; the file is damaged")
    return out


def _legacy_layers(path, h5) -> dict:
    config = _text(h5.attrs.get("model_config"))
    prefix = "model_weights/" if "model_weights" in h5 else ""
    config = load_json(config, path, "the model_config attribute") if isinstance(config, str) else None
    inner = config.get("config") if isinstance(config, dict) else None
    layers = inner.get("layers") if isinstance(inner, dict) else None
    return {f"{prefix}{lay['config']['name']}": {"class_name": lay.get("class_name"), "name": lay["config"]["name"],
                                                "config": lay["config"]}
            for lay in (layers if isinstance(layers, list) else []) if isinstance(lay, dict)
            and isinstance(lay.get("config"), dict) and isinstance(lay["config"].get("name"), str)}


def _group_names(h5, datasets) -> dict:
    """Object path -> {"name": layer name}, from the ``name`` attribute Keras 3 puts on each ``vars`` group."""
    out, seen = {}, set()
    for name in datasets:
        vars_path = name.rpartition("/")[0]
        if vars_path.rpartition("/")[2] != "vars" or vars_path in seen:
            continue
        seen.add(vars_path)
        layer_name = h5[vars_path].attrs.get("name")
        if layer_name is not None:
            out[vars_path[: -len("vars")].rstrip("/")] = {"name": _text(layer_name)}
    return out


def _dtype(ds, path=None, name=None) -> np.dtype:
    if _text(ds.attrs.get("dtype")) == "bfloat16":
        from ..arrays import bfloat16

        if ds.dtype.itemsize != 2:
            raise FormatError(f"{path}: dataset {name!r} is marked dtype=bfloat16 but stored as {ds.dtype} "
                              f"({ds.dtype.itemsize}-byte items, not 2); the file is damaged")
        return bfloat16()
    return ds.dtype


def _loader(path, ds, name):
    dtype = _dtype(ds, path, name)

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
    if info.compress_type != zipfile.ZIP_STORED:
        return archive.open(info)  # compressed: seekable, slower
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if local[:4] != b"PK\x03\x04":
        raise FormatError(f"{path}: the zip entry {info.filename!r} is damaged")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return _Member(path, info.header_offset + 30 + name_len + extra_len, info.file_size)


def _read_archive(path: str) -> Checkpoint:
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
        return _checkpoint(path, h5, close, metadata, config_layers(config) if isinstance(config, dict) else {})
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


def _snake(name: str) -> str:
    """Keras' own snake_case of a class name (how containers name their children's groups)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def config_layers(config: dict, base: str = "") -> dict:
    """Object path in the weights file -> {"class_name", "name", "config"}, from a model's config.json.

    Sequential and Functional models keep their layers in a list, which Keras
    saves under ``layers/<snake_case class name>[_<n>]``; a Sequential's
    automatic InputLayer is not in that list.
    """
    inner = config.get("config")
    inner = inner if isinstance(inner, dict) else {}
    name = inner.get("name")
    out = {base: {"class_name": config.get("class_name"), "name": name if isinstance(name, str) else None,
                  "config": inner}}
    children = inner.get("layers")
    if not isinstance(children, list):
        return out
    if (config.get("class_name") == "Sequential" and children and isinstance(children[0], dict)
            and children[0].get("class_name") == "InputLayer"):
        children = children[1:]
    used: dict = {}
    for child in children:
        if not isinstance(child, dict) or not isinstance(child.get("class_name"), str):
            continue
        key = _snake(child["class_name"])
        used[key] = used.get(key, -1) + 1
        name = key if used[key] == 0 else f"{key}_{used[key]}"
        out.update(config_layers(child, f"{base}/layers/{name}" if base else f"layers/{name}"))
    return out


# -- writing ----------------------------------------------------------------------------------------------


def variable_paths(keras_model) -> list:
    """The dataset path Keras' ``save_weights`` gives each variable of ``keras_model.weights``, in that order.

    Found by running Keras' own saving walk with a store that records paths
    instead of writing, so nested layers, shared layers and attribute names
    land exactly where Keras puts them.
    """
    from keras.src.saving import saving_lib

    class Recorder(saving_lib.H5IOStore):
        def __init__(self):
            self.where, self.kept, self.prefix = {}, [], ""

        def __bool__(self):
            return True

        def make(self, path, metadata=None):
            self.prefix = path
            return self

        def __setitem__(self, key, value):
            self.kept.append(value)  # keeps ids unique while recording
            self.where.setdefault(id(value), f"{self.prefix}/vars/{key}" if self.prefix else f"vars/{key}")

        def close(self):
            pass

    recorder = Recorder()
    saving_lib._save_state(keras_model, weights_store=recorder, assets_store=None, inner_path="",
                           visited_saveables=set())
    paths = [recorder.where.get(id(v)) for v in keras_model.weights]
    missing = [v.path for v, p in zip(keras_model.weights, paths) if p is None]
    if missing:
        raise UsageError(f"Keras does not save {missing} of {keras_model.name} as plain variables (LoRA or "
                         "quantized layers store derived values); merge or drop them before writing .weights.h5")
    return paths


def write(path: str, sources, metadata, *, staging, progress=None, **opts) -> None:
    """Datasets are laid out first (h5py), then their bytes are written straight into the file.

    Each dataset is contiguous with its space allocated up front and never
    filled, so its bytes can go to its file offset with plain ``pwrite`` (or an
    in-kernel copy for tensors that need no change): h5py's own writes are
    several times slower on large tensors.
    """
    import h5py

    if path.lower().endswith(".keras"):
        raise UsageError(f"{path}: weightport does not write .keras archives (they need the model's config); "
                         "write a .weights.h5 and load it with model.load_weights")
    temp = staging.file(path)
    placed = []
    with h5py.File(temp, "w") as h5:
        for key, value in metadata.items():
            h5.attrs[key] = value
        for s in sources:
            if not s.name or s.name.startswith("/") or "//" in s.name:
                raise UsageError(f"{path}: tensor name {s.name!r} is not an h5 dataset path like "
                                 "'layers/dense/vars/0'")
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
            else:
                placed.append((s, offset))
    with open(temp, "r+b") as f:
        for s, offset in placed:
            if s.file_range is None or s._blocks is not None or not _copy_to(f, s.stored_range(), offset):
                _write_blocks(f, s, offset, path)
            if progress is not None:
                progress(s.nbytes)


def _write_through_h5py(ds, source, path) -> None:
    from .safetensors import blocks_checked

    for row, block in blocks_checked(source, path):
        if math.prod(block.shape):
            if block.ndim == 0:
                ds[...] = block
            else:
                ds[row:row + len(block)] = block


def _write_blocks(f, source, offset, path) -> None:
    from .safetensors import blocks_checked

    row_bytes = math.prod(source.shape[1:]) * source.dtype.itemsize
    for row, block in blocks_checked(source, path):
        data = memoryview(block.reshape(-1).view(np.uint8))
        start = offset + row * row_bytes
        while len(data):
            written = os.pwrite(f.fileno(), data, start)
            data, start = data[written:], start + written


def _copy_to(f, file_range, offset) -> bool:
    """Copy a tensor's stored bytes to ``offset`` in ``f`` in the kernel; False where unsupported."""
    copy = getattr(os, "copy_file_range", None)
    if copy is None:
        return False
    src_path, src_offset, nbytes = file_range
    try:
        with open(src_path, "rb") as src:
            done = 0
            while done < nbytes:
                n = copy(src.fileno(), f.fileno(), nbytes - done, src_offset + done, offset + done)
                if n == 0:
                    raise FormatError(f"{src_path}: ended inside the tensor bytes [{src_offset}, "
                                      f"{src_offset + nbytes})")
                done += n
    except OSError:
        return False
    return True
