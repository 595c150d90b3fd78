"""ONNX, layout "onnx": a ``.onnx`` file (or a Checkpoint ``wp.load`` opened from one) walked like a live model.

The graph's weighted nodes are its layers (see ``onnx_graph``), in graph
order, which is an execution order; pairing goes by that order, op and
shapes, and by the graph's dataflow, read from node inputs and outputs
without running anything (``trace``). Names are evidence at most: exporters
rename weights (``onnx::MatMul_123``) or fold them into new constants.

A port from a graph reads its initializers; a port into a graph object
changes it in memory (``run`` then uses the new values); a file is written
into a copy of its template graph (``file_names`` tells the ``onnx`` format
which template an output comes from). Running needs onnxruntime.
``verify(locate=True)`` runs the graph with each layer's output added to its outputs. onnx is imported only
once an ONNX file is used.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from . import Framework, LayerRef, Unmapped, configured


def _is_onnx_path(obj) -> bool:
    return isinstance(obj, (str, os.PathLike)) and os.fspath(obj).lower().endswith(".onnx")


class OnnxRef(LayerRef):
    """A graph's layer; ``names`` (slot -> initializer) are recorded in plans, which a replay checks."""

    @property
    def names(self) -> dict:
        return {slot: b.name for slot, b in self.obj.slots.items()}


class OnnxFramework(Framework):
    layout = "onnx"
    sep = "."

    def __init__(self):
        self._graphs: dict = {}  # (absolute path, mtime, size) -> OnnxGraph

    def owns(self, obj) -> bool:
        if _is_onnx_path(obj):
            return True
        graph_module = sys.modules.get(f"{__package__}.onnx_graph")
        if graph_module is not None and isinstance(obj, graph_module.OnnxGraph):
            return True
        return getattr(obj, "format", None) == "onnx" and _is_onnx_path(getattr(obj, "path", None) or "")

    def graph(self, model):
        """The OnnxGraph of a path, an ONNX Checkpoint or a graph; parsed once per file version."""
        from .onnx_graph import OnnxGraph

        if isinstance(model, OnnxGraph):
            return model
        path = os.path.abspath(os.fspath(model if _is_onnx_path(model) else model.path))
        if not os.path.isfile(path):
            from ...errors import FormatError

            raise FormatError(f"{path}: no such file; check the path")
        stat = os.stat(path)
        key = (path, stat.st_mtime_ns, stat.st_size)
        if key not in self._graphs:
            self._graphs = {k: v for k, v in self._graphs.items() if k[0] != path}
            self._graphs[key] = OnnxGraph(path)
        return self._graphs[key]

    # -- structure ------------------------------------------------------------------
    def layer_nodes(self, model):
        from .onnx_layers import find_layers

        graph = self.graph(model)
        refs, unmapped, owners = [], [], {}
        for layer in find_layers(graph):
            found = configured(self.layout, layer)
            if not found:
                if any(np.prod(b.shape) > 1 for b in layer.slots.values()):
                    unmapped.append(Unmapped(layer.path, layer.op_type, [b.name for b in layer.slots.values()]))
                continue
            rule, hp = found[0]
            names = [b.name for s, b in layer.slots.items() if s in rule.native_slots(self.layout, hp)]
            tied = {owners.get(n) for n in names}
            tied_to = tied.pop() if len(tied) == 1 and None not in tied else None
            for n in names:
                owners.setdefault(n, layer.path)
            parts = rule.expand(self.layout, hp)
            if len(parts) == 1:
                refs.append(OnnxRef(layer.path, layer, self, found, tied_to=tied_to))
            else:
                refs.extend(OnnxRef(f"{layer.path}[{i}]", layer, self, [(rule, part)]) for i, part in enumerate(parts))
        return refs, unmapped

    def children(self, layer) -> list:
        return []

    def own_weights(self, layer) -> list:
        return []

    def display_name(self, layer) -> str:
        return getattr(layer, "op_type", type(layer).__name__)

    # -- tensors --------------------------------------------------------------------
    def read(self, layer, slots) -> dict:
        return {s: layer.value(s) for s in slots if s in layer.slots}

    def shapes(self, layer, slots) -> dict:
        return {s: layer.slots[s].shape for s in slots if s in layer.slots}

    def dtypes(self, layer, slots) -> dict:
        return {s: layer.slots[s].dtype for s in slots if s in layer.slots}

    def write(self, layer, arrays: dict) -> None:
        for slot, value in arrays.items():
            if slot in layer.slots:
                b = layer.slots[slot]
                layer.graph.written[b.name] = b.stored(value)

    def file_names(self, model, path: str):
        graph = self.graph(model)
        if _is_onnx_path(path):
            from ..formats import onnx as onnx_format

            onnx_format.expect(path, graph)

        from ..formats.onnx import shared_alias

        asked: dict = {}  # initializer name -> the (layer, slot)s it was handed to, in order

        def names(node, slot):
            """The initializer's name; a second slot reading the same initializer (exporters share equal
            constants) gets an alias the ``onnx`` writer folds back, checking both values agree."""
            name = node.obj.slots[slot].name
            owners = asked.setdefault(name, [])
            key = (node.path, slot)
            if key not in owners:
                owners.append(key)
            if owners.index(key) == 0:
                return name
            return shared_alias(name, f"{owners[0][0]} {owners[0][1]} and {node.path} {slot}")
        return names

    # -- running ---------------------------------------------------------------------
    def sample_inputs(self, model, refs) -> list:
        return [None]  # the dataflow is read from the graph, not from a run

    def trace(self, model, refs, inputs, capture: bool = False):
        from .onnx_layers import dataflow

        flow = dataflow(self.graph(model), refs)
        if capture:  # the graph run with each layer's output added to its outputs
            from .onnx_run import layer_outputs

            flow.outputs = layer_outputs(self.graph(model), refs, inputs)
        return flow

    def run(self, model, inputs):
        from .onnx_run import run_graph

        return run_graph(self.graph(model), inputs)


ADAPTER = OnnxFramework()

