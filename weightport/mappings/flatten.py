"""Flatten -> Dense: a flat vector's order differs between layouts, so the Dense rows must move.

Keras flattens a channels-last feature map in (H, W, C) order, torch flattens
its channels-first map in (C, H, W) order: the Dense (Linear) reading the flat
vector has the same rows in another order. Only a Keras model shows where a
Flatten sits and what it flattens, so the Keras side records the feature map as
``flatten_from`` = (*spatial, channels) and the matcher shares it with the
paired torch layer (``Rule.shared``).

Which order a Keras Flatten produces depends on two things: the layout of the
tensor it receives (read off the nearest upstream layer that has a
``data_format``: a convolution, pooling, padding...) and its own
``data_format``, since a ``channels_first`` Flatten first moves the channels
last (keras/src/layers/reshaping/flatten.py). Only the two combinations that
give (*spatial, C) order while torch gives (C, *spatial) need the permutation.
The graph is the Keras adapter's to read (``introspect.keras_graph``): this
module says what its layers mean, and imports neither Keras nor the adapter.
"""
from __future__ import annotations

import math

from .introspect import has_class, keras_graph
from .transforms import Chain, Reshape, Transform, Transpose

FORMATS = ("channels_last", "channels_first")
# rank-preserving layers that still change what the axes mean
REARRANGING = ("Reshape", "Permute", "Flatten")


def flatten_permutation(feature_map) -> Transform:
    """Keras (S*C, units) kernel with rows in (*spatial, C) order -> torch (units, C*S) weight."""
    *spatial, channels = (int(d) for d in feature_map)
    n = len(spatial)
    size = channels * math.prod(spatial)
    return Chain(Reshape((size, -1), (*spatial, channels, -1)),
                 Transpose(n + 1, n, *range(n)),
                 Reshape((-1, channels, *spatial), (-1, size)))


UNKNOWN = "unknown"


def feature_map_before_flatten(layer):
    """(*spatial, channels) when a Keras layer reads a spatial map through a Flatten in channels-last order.

    None when there is no such Flatten, when the graph is unknown (a layer
    only ever called eagerly), or when the flat order already is torch's
    (a channels-first tensor flattened as it is). ``UNKNOWN`` when there is a
    Flatten of a sequence-shaped (batch, steps, features) tensor whose producer
    cannot be traced (the start of a nested model): a Conv1D map needs the
    permutation, an embedded sequence does not.
    """
    graph = keras_graph()
    calls = graph.calls(layer)
    flat = _parent(graph, calls[-1]) if calls else None  # the latest call: a rebuilt Sequential adds calls
    while flat is not None and not has_class(graph.operation(flat), "Flatten"):
        flat = _parent(graph, flat) if _keeps_shape(graph, flat) else None  # Dropout, Activation... between
    if flat is None:
        return None
    shape = graph.input_shape(flat)
    if shape is None or len(shape) < 3 or not all(isinstance(d, int) for d in shape[1:]):
        return None
    dims = tuple(shape[1:])
    flatten = getattr(graph.operation(flat), "data_format", "channels_last")
    tensor = _tensor_format(graph, flat)
    if tensor is UNKNOWN:
        if len(dims) == 2:
            return UNKNOWN
        tensor = flatten  # an image-shaped map from outside a nested model: Keras' own convention
    if tensor == flatten == "channels_last":
        return dims
    if tensor == flatten == "channels_first":  # Keras moves the channels last before flattening
        return dims[1:] + dims[:1]
    return None


def _parent(graph, call):
    parents = graph.feeding(call)
    return parents[0] if parents else None


def _keeps_shape(graph, call) -> bool:
    before, after = graph.input_shape(call), graph.output_shape(call)
    return before is not None and after is not None and before[1:] == after[1:]


def _tensor_format(graph, call):
    """The data_format of the nearest upstream layer that has one, through rank-preserving layers.

    A nested model on the way is entered at its output. ``UNKNOWN`` when the
    trail ends at an input that may be fed from outside (a nested model's own
    Input), None when it ends in a layer that does not keep the axes' meaning.
    """
    call = _parent(graph, call)
    while call is not None:
        inner = graph.output_call(graph.operation(call))
        if inner is not None:
            call = inner  # a nested model: continue from what produces its output
            continue
        op = graph.operation(call)
        fmt = getattr(op, "data_format", None)
        if fmt in FORMATS:
            return fmt
        before, after = graph.input_shape(call), graph.output_shape(call)
        if has_class(op, "InputLayer"):
            return UNKNOWN
        if has_class(op, *REARRANGING) or before is None or after is None or len(before) != len(after):
            return None
        call = _parent(graph, call)
    return None
