"""Which nodes of an ONNX graph are layers, and what feeds each (running the graph: ``onnx_run``).

See ``onnx_graph`` for what a layer is. The dataflow between layers is the
graph's own: a layer is fed by the layers whose outputs reach its data inputs
through nodes that are not layers.
"""
from __future__ import annotations

import re

from .onnx_graph import PASS_THROUGH, attributes, layer_class
from .onnx_patterns import group_norm

PARAMETER_NAME = re.compile(r"^(?!onnx::)(.+)\.[A-Za-z_][A-Za-z_0-9]*$")


def find_layers(graph) -> list:
    """OnnxLayers in graph order: every node reading a floating initializer, a MatMul with its bias Add merged,
    the nodes torch exporters write for one GroupNorm merged (``onnx_patterns``)."""
    merged, found, taken = set(), [], set()
    for node in graph.model.graph.node:
        if id(node) in merged or node.op_type == "Constant":
            continue
        if node.op_type in PASS_THROUGH and node.output and graph.binding(node.output[0]) is not None:
            continue  # a step between an initializer and the op that reads it
        pattern = group_norm(graph, node) if node.op_type == "InstanceNormalization" else None
        if pattern is not None:
            nodes, slots, attrs = pattern
            op_type = "GroupNormalization"
        else:
            nodes, slots, attrs, op_type = [node], graph.weights(node), attributes(node), node.op_type
        if not slots:
            continue
        add = _bias_add(graph, node, slots) if node.op_type == "MatMul" else None
        if add is not None:
            nodes.append(add[0])
            slots["C"] = add[1]
        merged.update(id(n) for n in nodes)
        path = _unique(_path(nodes, slots, len(found)), taken)
        for b in slots.values():
            graph.bound.setdefault(b.name, b)
        found.append(layer_class(op_type)(graph, nodes, slots, attrs, path))
    return found


def _bias_add(graph, node, slots):
    """(Add node, bias Binding) where a MatMul's only reader adds a constant vector as long as its output's
    last axis, else None."""
    readers = graph.readers.get(node.output[0], [])
    if "B" not in slots or len(readers) != 1 or readers[0].op_type != "Add" or node.output[0] in graph.outputs:
        return None
    add = readers[0]
    other = [i for i in add.input if i != node.output[0]]
    bias = graph.binding(other[0]) if len(other) == 1 else None
    units = slots["B"].shape[-1] if slots["B"].shape else None
    if bias is None or bias.shape != (units,):
        return None
    return add, bias


def _path(nodes, slots, index) -> str:
    """A layer's path: the module its weights' names say (``fc`` for ``fc.weight``), else its node's name
    (``/fc/Gemm`` gives ``fc``), else the op and its index."""
    prefixes = {m.group(1) for b in slots.values() if (m := PARAMETER_NAME.match(b.name))}
    if len(prefixes) == 1:
        return prefixes.pop()
    parts = [p for p in (nodes[0].name or "").split("/") if p]
    if len(parts) > 1 and parts[-1].split("_")[0] == nodes[0].op_type:
        parts = parts[:-1]
    return ".".join(parts) or f"{nodes[0].op_type}_{index}"


def _unique(path, taken) -> str:
    out, i = path, 1
    while out in taken:
        i += 1
        out = f"{path}_{i}"
    taken.add(out)
    return out


def dataflow(graph, refs):
    """The Flow among ``refs``: which layers' outputs reach each layer's data inputs."""
    from ..flow import Flow

    made_by: dict = {}  # value name -> layer paths whose last node produces it
    for ref in refs:
        for out in ref.obj.nodes[-1].output:
            made_by.setdefault(out, []).append(ref.path)
    memo: dict = {}

    def origins(name) -> set:
        if name in memo:
            return memo[name]
        memo[name] = set()
        if name in made_by:
            found = {made_by[name][-1]}
        else:
            node = graph.producer.get(name)
            found = set().union(*(origins(i) for i in graph.data_inputs(node))) if node is not None else set()
        memo[name] = found
        return found

    flow = Flow()
    for ref in refs:
        siblings = made_by[ref.obj.nodes[-1].output[0]]
        at = siblings.index(ref.path)
        feeds = {siblings[at - 1]} if at else set().union(*(origins(i) for i in graph.data_inputs(ref.obj.nodes[0])))
        flow.feeds[ref.path] = feeds
        flow.order.append(ref.path)
    return flow
