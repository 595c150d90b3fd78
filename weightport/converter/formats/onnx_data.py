"""An ONNX model's initializers: the graph parsed without its external data, each tensor's bytes on demand.

Shared by the ``onnx`` format (``wp.load``, ``inspect``, writing into a
template) and the ONNX adapter (a graph walked as a model). Everything a file
claims is checked when it is opened: an inline tensor's bytes must match its
shape and dtype; an external one's file must lie inside the model's folder
and hold ``offset + length`` bytes, ``length`` being what the shape and
dtype need. onnx is imported only here, and only when an ONNX file is used.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ...errors import FormatError

# ONNX TensorProto.DataLocation
EXTERNAL = 1


def load_model(path: str):
    """The ModelProto at ``path``, external data not loaded; FormatError naming the file if it cannot be parsed."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise FormatError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {str(exc)[:200]}); the file "
                          "may be truncated or damaged: export it again") from exc
    if not model.HasField("graph") or (not model.graph.node and not model.graph.initializer):
        raise FormatError(f"{path}: parses as ONNX but holds no graph (no nodes, no initializers); the file may "
                          "be truncated or not an ONNX model")
    return model


def np_dtype(path: str, tensor) -> np.dtype:
    """The numpy dtype of an initializer (ml_dtypes for bfloat16/float8)."""
    import onnx

    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{path}: initializer {tensor.name!r} has ONNX data type {tensor.data_type}, which "
                          "weightport cannot read") from exc
    return dtype


def external_entries(tensor) -> dict:
    return {e.key: e.value for e in tensor.external_data}


def external_file(path: str, tensor) -> tuple:
    """(file path, offset, nbytes) of an external initializer, each checked against the file it names."""
    entries = external_entries(tensor)
    name, location = tensor.name, entries.get("location", "")
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    target = os.path.realpath(os.path.join(folder, location))
    if not location or os.path.isabs(location) or os.path.commonpath([folder, target]) != folder:
        raise FormatError(f"{path}: initializer {name!r} keeps its data at {location!r}, outside the model's "
                          f"folder {folder}; weightport reads external data only from beside the model")
    if not os.path.isfile(target):
        raise FormatError(f"{path}: initializer {name!r} keeps its data in {location!r}, which does not exist "
                          f"(looked for {target}); copy the data file next to the model")
    try:
        offset = int(entries.get("offset", 0))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError as exc:
        raise FormatError(f"{path}: initializer {name!r} has a malformed external offset/length: {entries}") from exc
    return target, offset, length


def tensor_source(path: str, tensor):
    """A TensorSource for one initializer: shape and dtype now, bytes when loaded; checked as it is opened."""
    from ..checkpoint import TensorSource

    dtype = np_dtype(path, tensor)
    shape = tuple(int(d) for d in tensor.dims)
    if any(d < 0 for d in shape):
        raise FormatError(f"{path}: initializer {tensor.name!r} claims negative dimensions {shape}")
    nbytes = math.prod(shape) * dtype.itemsize
    if tensor.data_location == EXTERNAL:
        target, offset, length = external_file(path, tensor)
        if length is not None and length != nbytes:
            raise FormatError(f"{path}: initializer {tensor.name!r} is {shape} {dtype} ({nbytes:,} bytes) but its "
                              f"external data entry says {length:,} bytes; the model is damaged")
        size = os.path.getsize(target)
        if offset < 0 or offset + nbytes > size:
            raise FormatError(f"{path}: initializer {tensor.name!r} needs bytes {offset:,}..{offset + nbytes:,} of "
                              f"{os.path.basename(target)}, which holds {size:,}; the data file is short or damaged")
        return TensorSource(tensor.name, shape, dtype, _external_loader(target, offset, shape, dtype),
                            file_range=(target, offset, nbytes) if dtype.byteorder in "<|=" else None,
                            origin=(os.path.abspath(path), target))
    if tensor.HasField("raw_data") and len(tensor.raw_data) != nbytes:
        raise FormatError(f"{path}: initializer {tensor.name!r} is {shape} {dtype} ({nbytes:,} bytes) but holds "
                          f"{len(tensor.raw_data):,} bytes; the model is damaged")
    return TensorSource(tensor.name, shape, dtype, _inline_loader(path, tensor, shape, dtype))


def _external_loader(target, offset, shape, dtype):
    def load():
        count = math.prod(shape)
        with open(target, "rb") as f:
            f.seek(offset)
            array = np.fromfile(f, dtype=dtype.newbyteorder("<"), count=count) if count else np.empty(0, dtype)
        if array.size != count:
            raise FormatError(f"{target}: holds fewer bytes than the model's initializer needs; it changed since "
                              "the model was opened")
        array = array.astype(dtype, copy=False).reshape(shape)
        array.flags.writeable = False
        return array

    return load


def _inline_loader(path, tensor, shape, dtype):
    def load():
        from onnx import numpy_helper

        try:
            array = np.asarray(numpy_helper.to_array(tensor))
        except (ValueError, TypeError) as exc:
            raise FormatError(f"{path}: cannot read initializer {tensor.name!r} ({exc}); the model is damaged") from exc
        if array.shape != shape:
            raise FormatError(f"{path}: initializer {tensor.name!r} claims shape {shape} but holds "
                              f"{array.size} values; the model is damaged")
        if array.dtype != dtype:
            array = array.view(dtype) if array.dtype.itemsize == dtype.itemsize else array.astype(dtype)
        array.flags.writeable = False
        return array

    return load


def is_numeric(path: str, tensor) -> bool:
    """Whether an initializer holds numbers (string tensors are not weights)."""
    import onnx

    return tensor.data_type not in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED)


def consumers(model) -> dict:
    """initializer name -> [(node name, op type, input slot name)] of the nodes reading it, in graph order."""
    import onnx

    found: dict = {}
    for i, node in enumerate(model.graph.node):
        names = input_names(onnx, node)
        for j, name in enumerate(node.input):
            if name:
                slot = names[j] if j < len(names) else str(j)
                found.setdefault(name, []).append((node.name or f"{node.op_type}_{i}", node.op_type, slot))
    return found


def input_names(onnx, node) -> list:
    """The schema's names for a node's inputs (``A``, ``B``, ``C`` for Gemm); positions where unknown."""
    try:
        schema = onnx.defs.get_schema(node.op_type, domain=node.domain or "")
    except Exception:  # noqa: BLE001 - a custom op has no schema: its inputs go by position
        return [str(i) for i in range(len(node.input))]
    formal = [p.name for p in schema.inputs]
    if formal and len(node.input) > len(formal):  # a variadic last input (Concat's, Sum's)
        formal += [f"{formal[-1]}{i}" for i in range(len(node.input) - len(formal))]
    return formal
