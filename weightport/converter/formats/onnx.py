"""ONNX models (``.onnx``): initializers read lazily, and written back into a copy of a template graph.

Reading lists each numeric initializer (external data included, each file and
range checked as it is opened, see ``onnx_data``) and, for ``inspect``, the
op and input slot that consume it. The graph itself, walked as a model, is
the ONNX adapter's (``converter/frameworks/onnx.py``).

An ONNX file is never written from tensors alone: it is a graph. Writing
copies a template graph (``like=``, which the adapter registers with
``expect`` when it names the output's tensors) and replaces initializer values
only: names, dtypes, node order and attributes are kept, and a value read
through a Transpose/Reshape/Cast is stored so that the graph computes the same
function (the template's ``stored``). An output over ``EXTERNAL_LIMIT`` bytes
keeps its tensors in ``<name>.data`` beside it, written under a temporary name
like the model.
"""
from __future__ import annotations

import os
import re

import numpy as np

from ...errors import FormatError, ShapeMismatchError, UsageError
from ..checkpoint import Checkpoint, TensorSource
from .fileio import write_in_pieces
from .onnx_data import EXTERNAL, consumers, is_numeric, load_model, tensor_source

NAME = "onnx"
SUFFIXES = (".onnx",)
SNIFF_ORDER = 80  # protobuf has no magic: a ``.onnx`` name starting with field 1 (ir_version)
WRITABLE = True
EXTERNAL_LIMIT = 2 ** 31 - 2 ** 26  # protobuf's 2 GB ceiling, less room for the graph itself
ALIGN = 4096
_DATA_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data", "raw_data")
_templates: dict = {}  # absolute output path -> the template graph it is written from


SHARED = re.compile(r"^(.*) <also read by (.*)>$")


def shared_alias(name: str, reader: str) -> str:
    """The name another slot reading initializer ``name`` writes it under (exporters share equal constants
    between nodes); ``write`` stores one value, after checking that every slot's agrees."""
    return f"{name} <also read by {reader}>"


def sniff(path: str, head: bytes) -> bool:
    return path.lower().endswith(".onnx") and head[:1] == b"\x08"


def expect(destination, template) -> None:
    """Say that ``destination`` is to be written from ``template`` (an object with ``path`` and
    ``stored(name, array)``), by the adapter that names its tensors."""
    _templates[os.path.abspath(os.fspath(destination))] = template


def _declared_shapes(graph) -> dict:
    """name -> static shape the graph declares for a value (inputs, value_info), where every dim is a number."""
    found = {}
    for info in list(graph.input) + list(graph.value_info):
        dims = info.type.tensor_type.shape.dim if info.type.HasField("tensor_type") else ()
        if info.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            found[info.name] = tuple(int(d.dim_value) for d in dims)
    return found


def read(path: str, **opts) -> Checkpoint:
    model = load_model(path)
    graph = model.graph
    declared, uses = _declared_shapes(graph), consumers(model)
    sources, layers, seen = [], {}, set()
    for tensor in graph.initializer:
        if not is_numeric(path, tensor):
            continue
        if tensor.name in seen:
            raise FormatError(f"{path}: initializer {tensor.name!r} is stored twice; the model is damaged")
        seen.add(tensor.name)
        source = tensor_source(path, tensor)
        if tensor.name in declared and declared[tensor.name] != source.shape:
            raise FormatError(f"{path}: initializer {tensor.name!r} is {source.shape} but the graph declares "
                              f"{declared[tensor.name]} for it; the model is inconsistent: export it again")
        sources.append(source)
        readers = uses.get(tensor.name, [])
        if readers:
            layers[tensor.name] = {"name": ", ".join(f"{node} input {slot}" for node, _, slot in readers[:3])
                                   + (" ..." if len(readers) > 3 else ""),
                                   "class_name": "/".join(dict.fromkeys(op for _, op, _ in readers))}
    opsets = ",".join(f"{o.domain or 'ai.onnx'}:{o.version}" for o in model.opset_import)
    metadata = {"onnx_producer": f"{model.producer_name} {model.producer_version}".strip(),
                "onnx_ir_version": str(model.ir_version), "onnx_opsets": opsets}
    return Checkpoint(path, NAME, sources, metadata=metadata, layout="onnx", layers=layers)


def _set_inline(tensor, data: bytes) -> None:
    for name in _DATA_FIELDS:
        tensor.ClearField(name)
    del tensor.external_data[:]
    tensor.data_location = 0
    tensor.raw_data = data


def _set_external(tensor, location: str, offset: int, length: int) -> None:
    for name in _DATA_FIELDS:
        tensor.ClearField(name)
    del tensor.external_data[:]
    tensor.data_location = EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _new_values(path, template, model, sources) -> dict:
    """initializer name -> TensorSource of its new (graph-side) value, every name and shape checked first; a
    value given again under an alias (a second slot reading a shared initializer) must be the same."""
    tensors = {t.name: t for t in model.graph.initializer}
    given, again = {}, []
    for s in sources:
        m = SHARED.match(s.name)
        name = m.group(1) if m and m.group(1) in tensors else s.name
        if name not in tensors:
            raise UsageError(f"{path}: tensor {s.name!r} is not an initializer of the template {template.path}; "
                             "an ONNX file is written into its template graph, whose initializers keep their names")
        expected = template.value_shape(name)
        if tuple(s.shape) != tuple(expected):
            raise ShapeMismatchError(f"{path}: initializer {name!r} is read by the graph as {tuple(expected)}, "
                                     f"the new value is {tuple(s.shape)}; nothing was written")
        if m and name in given:
            again.append((name, m.group(2), s))
        else:
            given[name] = s
    loaded: dict = {}
    for name, reader, s in again:  # each source loads once: the first value is kept for the write
        if name not in loaded:
            loaded[name] = given[name].load()
            given[name] = TensorSource.of(name, loaded[name])
        first, other = template.stored(name, loaded[name]), template.stored(name, s.load())
        if not np.array_equal(first, other):
            diff = float(np.max(np.abs(first.astype(np.float64) - other.astype(np.float64))))
            raise ShapeMismatchError(
                f"{path}: initializer {name!r} is read by two slots of the graph ({reader}), "
                f"and their new values differ (max abs difference {diff:g}); the graph holds one value for both, so "
                "nothing was written. Give both layers the same weights (they were tied in the exported model), or "
                "un-share the initializer in the template graph")
    return given


def write(path: str, sources, metadata, *, staging, progress=None, **opts) -> None:
    template = _templates.pop(os.path.abspath(path), None)
    if template is None:
        raise UsageError(f"{path}: an ONNX file is a graph, not only tensors: write it from the graph it is for, "
                         "wp.convert(model, 'new.onnx', like='model.onnx'), which keeps that graph and replaces "
                         "its initializers' values")
    model = load_model(template.path)
    given = _new_values(path, template, model, sources)
    tensors = [t for t in model.graph.initializer if is_numeric(template.path, t)]
    olds = {t.name: tensor_source(template.path, t) for t in tensors}
    external = sum(s.nbytes for s in olds.values()) > EXTERNAL_LIMIT
    data_name = os.path.basename(path) + ".data"
    data = open(staging.file(os.path.join(os.path.dirname(os.path.abspath(path)), data_name)), "wb") \
        if external else None
    try:
        for tensor in tensors:
            old = olds[tensor.name]
            if tensor.name not in given and not external and tensor.data_location != EXTERNAL:
                continue  # kept as it is, in the graph's own bytes
            value = template.stored(tensor.name, given[tensor.name].load()) if tensor.name in given else old.load()
            value = np.ascontiguousarray(value, dtype=old.dtype.newbyteorder("<"))
            if data is not None and value.nbytes >= 1024:
                offset = -(-data.tell() // ALIGN) * ALIGN
                data.seek(offset)
                write_in_pieces(data, value.reshape(-1).view(np.uint8))
                _set_external(tensor, data_name, offset, value.nbytes)
            else:
                _set_inline(tensor, value.tobytes())
            if progress is not None and tensor.name in given:
                progress(given[tensor.name].nbytes)
    finally:
        if data is not None:
            data.close()
    with open(staging.file(path), "wb") as f:
        f.write(model.SerializeToString())
