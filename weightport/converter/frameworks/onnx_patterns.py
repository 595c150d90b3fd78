"""Several ONNX nodes that together are one layer: what torch exporters write for a GroupNorm.

torch has no ONNX GroupNormalization below opset 21, so both of its exporters
write ``Reshape (N, G, -1) -> InstanceNormalization (scale ones, bias zeros)
-> Reshape back -> Mul (C, 1, 1) -> Add (C, 1, 1)``. Read node by node that is
an InstanceNormalization with constant inputs and a Mul and an Add no rule
knows; read as a pattern it is a ``GroupNormalization`` layer whose scale and
bias are the Mul's and the Add's constants.
"""
from __future__ import annotations

import numpy as np

from .onnx_graph import attributes


def _only_reader(graph, name, op_type):
    readers = graph.readers.get(name, [])
    if len(readers) != 1 or readers[0].op_type != op_type or name in graph.outputs:
        return None
    return readers[0]


def _constant_operand(graph, node):
    """(Binding, the data input) of a binary op with one constant and one computed operand, else None."""
    bound = [(i, graph.binding(i)) for i in node.input]
    constants = [b for _, b in bound if b is not None]
    data = [i for i, b in bound if b is None]
    return (constants[0], data[0]) if len(constants) == 1 and len(data) == 1 else None


def group_norm(graph, node):
    """(nodes, slots, attrs) where ``node`` (an InstanceNormalization) is a torch-exported GroupNorm, else None."""
    before = graph.producer.get(node.input[0]) if node.input else None
    if before is None or before.op_type != "Reshape" or len(node.input) < 3:
        return None
    inner_scale, inner_bias = graph.constant(node.input[1]), graph.constant(node.input[2])
    after = _only_reader(graph, node.output[0], "Reshape")
    mul = after is not None and _only_reader(graph, after.output[0], "Mul")
    add = mul is not None and mul is not False and _only_reader(graph, mul.output[0], "Add")
    if inner_scale is None or inner_bias is None or not add:
        return None
    target = graph.constant(before.input[1]) if len(before.input) > 1 else None
    groups = int(np.asarray(inner_scale).size)
    dims = np.asarray(target).reshape(-1).tolist() if target is not None else []
    if len(dims) != 3 or dims[1] != groups:
        return None  # not the channels cut into ``groups`` groups
    scale, bias = _constant_operand(graph, mul), _constant_operand(graph, add)
    if scale is None or bias is None or scale[1] != after.output[0] or bias[1] != mul.output[0]:
        return None
    found = attributes(node)
    identity = bool(np.all(np.asarray(inner_scale) == 1) and np.all(np.asarray(inner_bias) == 0))
    attrs = {"epsilon": found.get("epsilon", 1e-5), "num_groups": groups,
             "instance_affine": identity}
    return [before, node, after, mul, add], {"scale": scale[0], "bias": bias[0]}, attrs
