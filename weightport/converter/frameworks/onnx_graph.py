"""An ONNX graph read as a model: its weighted nodes as layers, each weight traced back to its initializer.

A node that reads initializers is a layer whose class is its ``op_type``
(``OnnxLayer`` subclasses made per op, so rules name ops as they name
classes), whose hyperparameters are its attributes and the shapes the graph
gives, and whose slots are its inputs by the operator schema's names (``B``,
``C`` for Gemm; ``W``, ``B`` for Conv...). A MatMul with a constant operand
followed by an Add of a constant is one layer, its bias in slot ``C`` as a
Gemm's. An input need not be an initializer itself: exporters put
Transpose, Reshape, Identity or Cast nodes between (``Binding``), so a slot
holds the value the op reads, and a new value is stored back through the
inverse of that chain.
"""
from __future__ import annotations

import math

import numpy as np

from ...errors import UsageError
from ..arrays import cast_checked, is_floating
from ..formats.onnx_data import input_names, load_model, tensor_source

PASS_THROUGH = ("Identity", "Transpose", "Reshape", "Cast")
_classes: dict = {}


class OnnxLayer:
    """One weighted node (or MatMul + Add) of a graph; see the module docstring."""

    def __init__(self, graph, nodes, slots: dict, attrs: dict, path: str):
        self.graph, self.nodes, self.slots, self.attrs, self.path = graph, nodes, slots, attrs, path
        self.op_type = type(self).__name__ if type(self) is not OnnxLayer else nodes[0].op_type  # a pattern's op
        self.name = nodes[0].name or path
        self.input_shape = graph.shape_of(graph.data_inputs(nodes[0])[0]) if graph.data_inputs(nodes[0]) else None
        self.output_shape = graph.shape_of(nodes[-1].output[0]) if nodes[-1].output else None
        self.flattened = graph.flattened_before(nodes[0])

    def shape(self, slot):
        return self.slots[slot].shape if slot in self.slots else None

    def value(self, slot):
        return self.slots[slot].value()


def layer_class(op_type: str) -> type:
    if op_type not in _classes:
        _classes[op_type] = type(op_type, (OnnxLayer,), {"__module__": __name__})
    return _classes[op_type]


class Binding:
    """How an op's input comes from an initializer: the steps (op, detail, shape and dtype before) from it."""

    def __init__(self, graph, name: str, steps: list, shape: tuple, dtype):
        self.graph, self.name, self.steps, self.shape, self.dtype = graph, name, steps, tuple(shape), np.dtype(dtype)

    def value(self) -> np.ndarray:
        a = self.graph.initial(self.name)
        for op, detail, _, _ in self.steps:
            a = (np.transpose(a, detail) if op == "Transpose" else a.reshape(detail) if op == "Reshape"
                 else a.astype(detail) if op == "Cast" else a)
        return a

    def stored(self, value) -> np.ndarray:
        """The initializer's value that the graph reads as ``value`` (the chain undone)."""
        a = np.asarray(value)
        if tuple(a.shape) != self.shape:
            raise UsageError(f"initializer {self.name!r}: the graph reads it as {self.shape}, got {tuple(a.shape)}")
        for op, detail, shape, dtype in reversed(self.steps):
            if op == "Transpose":
                a = np.transpose(a, np.argsort(detail))
            elif op == "Reshape":
                a = a.reshape(shape)
            elif op == "Cast":
                a, _ = cast_checked(a, dtype, f"initializer {self.name!r}")
        source = self.graph.sources[self.name]
        a, _ = cast_checked(a, source.dtype, f"initializer {self.name!r}")
        return a


class OnnxGraph:
    """A parsed model (external data read per tensor on demand), its values' producers, readers and shapes."""

    def __init__(self, path: str):
        self.path = path
        self.model = load_model(path)
        graph = self.model.graph
        self.sources = {t.name: tensor_source(path, t) for t in graph.initializer}
        self.written: dict = {}  # initializer name -> new value (a port into this live graph)
        self.bound: dict = {}  # initializer name -> the Binding a layer reads it through (``find_layers``)
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.readers: dict = {}
        for n in graph.node:
            for i in n.input:
                self.readers.setdefault(i, []).append(n)
        self.shapes = _inferred_shapes(self.model)
        self.shapes.update({name: s.shape for name, s in self.sources.items()})
        self.outputs = [o.name for o in graph.output]
        self.inputs = [i for i in graph.input if i.name not in self.sources]

    def initial(self, name) -> np.ndarray:
        return self.written[name] if name in self.written else self.sources[name].load()

    def _bound(self, name):
        if name in self.bound:
            return self.bound[name]
        s = self.sources[name]
        return Binding(self, name, [], s.shape, s.dtype)

    def value_shape(self, name) -> tuple:
        """The shape the graph's layer reads initializer ``name`` as (after any Transpose/Reshape)."""
        return self._bound(name).shape

    def stored(self, name, value) -> np.ndarray:
        """What to store in initializer ``name`` for its layer to read ``value`` (for the ``onnx`` writer)."""
        return self._bound(name).stored(value)

    def shape_of(self, name):
        return self.shapes.get(name)

    def binding(self, name: str):
        """The Binding of a value computed from one initializer through pass-through ops, else None."""
        if name in self.sources:
            s = self.sources[name]
            return Binding(self, name, [], s.shape, s.dtype)
        node = self.producer.get(name)
        if node is None or node.op_type not in PASS_THROUGH or not node.input:
            return None
        inner = self.binding(node.input[0])
        if inner is None:
            return None
        step = _step(self, node, inner.shape, inner.dtype)
        if step is None:
            return None
        op, detail, shape, dtype = step
        return Binding(self, inner.name, inner.steps + [(op, detail, inner.shape, inner.dtype)], shape, dtype)

    def data_inputs(self, node) -> list:
        """A node's inputs that are not constants (what it computes on)."""
        return [i for i in node.input if i and self.binding(i) is None and not self._is_constant_node(i)]

    def _is_constant_node(self, name) -> bool:
        node = self.producer.get(name)
        return node is not None and node.op_type == "Constant"

    def constant(self, name):
        """The value of an initializer or Constant node's output (shapes for Reshape), else None."""
        if name in self.sources:
            return self.initial(name)
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            from onnx import numpy_helper

            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def flattened_before(self, node):
        """The shape (less the batch axis) that a Flatten/Reshape flattened right before ``node``, else None."""
        inputs = self.data_inputs(node)
        producer = self.producer.get(inputs[0]) if inputs else None
        if producer is None or producer.op_type not in ("Flatten", "Reshape"):
            return None
        shape = self.shape_of(producer.input[0])
        return tuple(shape[1:]) if shape is not None and len(shape) >= 3 else None

    def weights(self, node) -> dict:
        """slot -> Binding for a node's floating constant inputs, by the schema's input names."""
        import onnx

        names = input_names(onnx, node)
        found = {}
        for j, name in enumerate(node.input):
            b = self.binding(name) if name else None
            if b is not None and is_floating(b.dtype):
                found[names[j] if j < len(names) else str(j)] = b
        return found


def _step(graph, node, shape, dtype):
    """(op, detail, shape after, dtype after) for one pass-through node, or None where it cannot be followed."""
    attrs = attributes(node)
    if node.op_type == "Identity":
        return "Identity", None, shape, dtype
    if node.op_type == "Transpose":
        perm = tuple(attrs.get("perm", range(len(shape) - 1, -1, -1)))
        return "Transpose", perm, tuple(shape[p] for p in perm), dtype
    if node.op_type == "Cast":
        import onnx

        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))
        return "Cast", dtype, shape, dtype
    if node.op_type == "Reshape" and len(node.input) > 1:
        target = graph.constant(node.input[1])
        if target is None:
            return None
        dims = [int(d) for d in np.asarray(target).reshape(-1)]
        if not attrs.get("allowzero", 0):
            dims = [shape[i] if d == 0 and i < len(shape) else d for i, d in enumerate(dims)]
        if dims.count(-1) == 1:
            known = math.prod(d for d in dims if d != -1)
            dims[dims.index(-1)] = math.prod(shape) // known if known else 0
        if math.prod(dims) != math.prod(shape) or any(d < 0 for d in dims):
            return None
        return "Reshape", tuple(dims), tuple(dims), dtype
    return None


def attributes(node) -> dict:
    import onnx

    out = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, list):
            value = tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value)
        out[a.name] = value
    return out


def _inferred_shapes(model) -> dict:
    """value name -> static shape from ONNX shape inference (dims that are not numbers as None); {} if it fails."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - shapes are evidence; a graph inference cannot follow gives none
        inferred = model
    g = inferred.graph
    found = {}
    for info in list(g.input) + list(g.value_info) + list(g.output):
        t = info.type.tensor_type if info.type.HasField("tensor_type") else None
        if t is not None and t.HasField("shape"):
            found[info.name] = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in t.shape.dim)
    return found
