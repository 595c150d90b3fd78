"""Keras 3 (any backend): layers, their variables in ``get_weights()`` order, inference runs."""
from __future__ import annotations

import sys

import numpy as np

from ...errors import ShapeMismatchError, UsageError
from ..arrays import cast, numpy_to_torch, to_numpy
from . import Framework


def _keras():
    return sys.modules.get("keras")


class KerasFramework(Framework):
    layout = "keras"
    sep = "/"

    def owns(self, obj) -> bool:
        keras = _keras()
        return keras is not None and isinstance(obj, keras.Layer)

    def children(self, layer) -> list:
        """Sub-layers, named by the attribute holding them where there is one (a subclassed layer), else by name.

        Attribute names (``attn_ln``) say what a layer is where Keras' own names
        (``layer_normalization_3``) do not, which pairing look-alikes by name needs.
        """
        attributes = {}
        # under the torch backend a Keras layer is a torch Module, which keeps module attributes in _modules
        fields = {**dict(getattr(layer, "_modules", None) or {}), **vars(layer)}
        for attr, value in fields.items():
            if attr.startswith("_"):
                continue
            if self.owns(value):
                attributes.setdefault(id(value), attr)
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if self.owns(item):
                        attributes.setdefault(id(item), f"{attr}/{i}")
        return [(attributes.get(id(child), child.name), child) for child in getattr(layer, "_layers", [])]

    def own_weights(self, layer) -> list:
        direct = list(getattr(layer, "_trainable_variables", [])) + list(getattr(layer, "_non_trainable_variables", []))
        return [v.path for v in direct]

    def _variables(self, layer, slots) -> list:
        variables = layer.weights
        if not variables and not layer.built:
            raise UsageError(
                f"Keras layer '{layer.name}' has no weights yet: build the model first "
                "(call it once on an input, or give it an Input shape)")
        if len(variables) != len(slots):
            raise ShapeMismatchError(
                f"Keras layer '{layer.name}' ({type(layer).__name__}) holds {len(variables)} weights "
                f"{[v.path for v in variables]}, but its rule expects {len(slots)}: {list(slots)}")
        return variables

    def read(self, layer, slots) -> dict:
        return {s: to_numpy(v.value) for s, v in zip(slots, self._variables(layer, slots))}

    def shapes(self, layer, slots) -> dict:
        return {s: tuple(v.shape) for s, v in zip(slots, self._variables(layer, slots))}

    def dtypes(self, layer, slots) -> dict:
        from ..arrays import dtype_of

        return {s: dtype_of(v.dtype) for s, v in zip(slots, self._variables(layer, slots))}

    def write(self, layer, arrays: dict) -> None:
        keras = _keras()
        slots = list(arrays)
        on_torch = keras.backend.backend() == "torch"
        for slot, var in zip(slots, self._variables(layer, slots)):
            from ..arrays import dtype_of

            value = cast(np.asarray(arrays[slot]), dtype_of(var.dtype))
            var.assign(numpy_to_torch(value) if on_torch else value)

    def has_graph(self, layer) -> bool:
        return bool(getattr(layer, "_inbound_nodes", None))

    def is_frozen(self, layer):
        return None if not layer.weights else not layer.trainable

    def set_frozen(self, layer, frozen: bool) -> None:
        layer.trainable = not frozen

    def display_name(self, layer) -> str:
        return layer.name

    def run(self, model, inputs):
        keras = _keras()
        out = model(inputs, training=False)
        return keras.tree.map_structure(lambda t: to_numpy(keras.ops.convert_to_numpy(t)), out)


ADAPTER = KerasFramework()
