"""Keras 3 (any backend): layers, their variables in ``get_weights()`` order, inference runs."""
from __future__ import annotations

import sys

import numpy as np

from ...errors import ShapeMismatchError, UsageError
from ..arrays import cast, dtype_of, is_jax_array, numpy_to_torch, placed_like, to_numpy
from ...mappings.rule import rules_for
from . import Framework


MAX_MODEL_JSON = 1_000_000  # characters: a config, never weights (a functional ResNet-50's is 0.17 MB)


def _keras():
    return sys.modules.get("keras")


class KerasFramework(Framework):
    layout = "keras"
    package = "keras"
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

    @staticmethod
    def _own(layer) -> list:
        return list(getattr(layer, "_trainable_variables", [])) + list(getattr(layer, "_non_trainable_variables", []))

    def own_weights(self, layer) -> list:
        return [v.path for v in self._own(layer)]

    def constants(self, model) -> dict:
        return {v.path: to_numpy(v.value) for v in getattr(model, "non_trainable_variables", [])}

    def untrained(self, layer) -> set:
        return {v.path.rsplit("/", 1)[-1] for v in getattr(layer, "_non_trainable_variables", [])}

    def _variables(self, layer, slots) -> list:
        own = {v.path.rsplit("/", 1)[-1]: v for v in self._own(layer)}
        if slots and all(s in own for s in slots) and len(layer.weights) != len(slots) \
                and not any(not r.composite for r in rules_for(self.layout, layer)[:1]):
            # by name: a rule-less layer's own weights (loose parameters), or a part of a composite layer's
            return [own[s] for s in slots]
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
        return {s: dtype_of(v.dtype) for s, v in zip(slots, self._variables(layer, slots))}

    def destinations(self, layer, slots) -> dict:
        """Under the torch backend, each variable's own torch tensor (what ``assign`` copies into); else {}."""
        if _keras().backend.backend() != "torch":
            return {}
        found = {}
        for slot, var in zip(slots, self._variables(layer, slots)):
            value = var.value
            if value is getattr(var, "_value", None):  # not a stand-in (autocast or a stateless scope)
                found[slot] = value
        return found

    def fresh(self, layer, slots) -> dict:
        """Under jax, each variable whose value lives on one CPU device: a fresh aligned buffer written once
        becomes its value with no further copy (``adopt``). {} elsewhere."""
        if _keras().backend.backend() != "jax":
            return {}
        found = {}
        for slot, var in zip(slots, self._variables(layer, slots)):
            value = var.value
            devices = getattr(getattr(value, "sharding", None), "device_set", ())
            if (getattr(var, "_layout", None) is None and len(devices) == 1
                    and next(iter(devices)).platform == "cpu"):
                found[slot] = (tuple(value.shape), dtype_of(var.dtype))
        return found

    def adopt(self, layer, arrays: dict) -> None:
        from .. import direct

        for slot, var in zip(list(arrays), self._variables(layer, list(arrays))):
            adopted = direct.adopted_by_jax(arrays[slot], var.value)
            var.assign(adopted if adopted is not None else arrays[slot])
        direct.give_back_freed(sum(int(a.nbytes) for a in arrays.values()))  # the old values, just released

    def write(self, layer, arrays: dict) -> None:
        keras = _keras()
        slots = list(arrays)
        on_torch = keras.backend.backend() == "torch"
        for slot, var in zip(slots, self._variables(layer, slots)):
            value = cast(np.asarray(arrays[slot]), dtype_of(var.dtype))
            if on_torch:
                var.assign(numpy_to_torch(value))
            elif is_jax_array(var.value) and getattr(var, "_layout", None) is None:
                var.assign(placed_like(value, var.value))  # one copy, which jax adopts on a CPU
            else:  # a copy: jax may adopt a numpy buffer, which would tie the variable to the source's memory
                var.assign(np.array(value, copy=True))
        if not on_torch:
            from .. import direct

            direct.give_back_freed(sum(int(np.asarray(a).nbytes) for a in arrays.values()))  # the old values

    def count_weights(self, layer):
        return len(layer.weights)

    def weight_ids(self, layer) -> set:
        return {id(v) for v in layer.weights}

    def file_names(self, model, path: str):
        """Keras files store variables under their saving paths (``layers/dense/vars/0``), where
        ``load_weights`` looks them up; other files take the layer path and slot name."""
        if not path.endswith((".h5", ".hdf5", ".keras")):
            return None
        from ..formats.keras import variable_paths

        where = {id(v): p for v, p in zip(model.weights, variable_paths(model))}

        def name(node, slot):
            layer = node.obj
            found = next((v for v in layer.weights if v.path == f"{layer.path}/{slot}"), None)
            if found is None:  # slots named otherwise than the variables: in order
                rule, hp = node.candidates[0]
                found = layer.weights[rule.native_slots(node.layout, hp).index(slot)]
            return where[id(found)]
        return name

    def model_json(self, model):
        """``model.to_json()``, which ``keras.models.model_from_json`` rebuilds it from (a keras-hub backbone, a
        functional or Sequential model, a registered class); None for a bare layer, a model Keras cannot
        serialize (no get_config), or a config too large to be a note in a file's header."""
        keras = _keras()
        if not isinstance(model, keras.Model):
            return None
        try:
            text = model.to_json()
        except Exception:  # noqa: BLE001 - whatever get_config raises, the file then just records no model
            return None
        return text if len(text) <= MAX_MODEL_JSON else None

    def has_graph(self, layer) -> bool:
        return bool(calls(layer))

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

    def sample_inputs(self, model, refs) -> list:
        """An input of the model's own input specs (a functional model), else what its first layer reads."""
        specs = getattr(model, "_inputs_struct", None) if getattr(model, "inputs", None) else None
        if specs is None:
            return super().sample_inputs(model, refs)
        keras = _keras()

        def make(spec):
            rank = len(spec.shape)
            shape = [1 if i == 0 else (d if d is not None else (64 if rank >= 4 else 8))
                     for i, d in enumerate(spec.shape)]
            dtype = keras.backend.standardize_dtype(spec.dtype)
            return np.ones(shape, dtype) if "int" in dtype or dtype == "bool" else np.full(shape, 0.5, dtype)
        return [keras.tree.map_structure(make, specs)]

    def trace(self, model, refs, inputs, capture: bool = False):
        """Flow of one run on ``inputs``, seen at every layer and operation call (and every torch operation).

        Under the torch backend every operation inside a layer is followed;
        under jax the flow is read from the jaxpr of a traced call instead
        (``jaxpr_flow``), where every operation is seen, and the eager run only
        keeps each layer's output (``capture``); under others an operation
        written inside a layer's ``call`` is not seen, and what it makes counts
        as of unknown origin.
        """
        keras = _keras()
        floats = lambda x: (keras.ops.convert_to_tensor(x, "float32")  # noqa: E731
                            if np.issubdtype(np.asarray(x).dtype, np.floating) else keras.ops.convert_to_tensor(x))
        inputs = keras.tree.map_structure(floats, inputs)
        if keras.backend.backend() != "jax":
            return _eager_flow(keras, model, refs, inputs, capture)
        from . import jaxpr_flow

        try:
            static = jaxpr_flow.trace(model, refs, inputs)
        except Exception:  # noqa: BLE001 - a model jax cannot trace (Python branching on values): run it eagerly
            return _eager_flow(keras, model, refs, inputs, capture)
        if capture:
            static.outputs = _eager_flow(keras, model, refs, inputs, capture).outputs
        return static


def _eager_flow(keras, model, refs, inputs, capture: bool):
    """The Flow of an eager run, with ``Layer.__call__`` and ``Operation.__call__`` wrapped for its duration
    (and torch's function mode under the torch backend); each layer's output kept with ``capture``."""
    import contextlib

    from keras.src.ops.operation import Operation

    from ..flow import UNKNOWN, Provenance, torch_operations

    on_torch = keras.backend.backend() == "torch"
    prov = Provenance(lambda x: keras.ops.is_tensor(x) and not isinstance(x, keras.KerasTensor),
                      sees_all_operations=on_torch,
                      capture=(lambda t: to_numpy(keras.ops.convert_to_numpy(t))) if capture else None)
    parts: dict = {}
    for ref in refs:
        parts.setdefault(id(ref.obj), []).append(ref.path)
    if on_torch:  # the backend's very tensors, which torch's function mode sees read
        prov.hold({ref.path: [v.value for v in getattr(ref.obj, "weights", ())] for ref in refs})
    layer_call, operation_call = keras.Layer.__call__, Operation.__call__

    def traced_layer(layer, *args, **kwargs):
        paths = parts.get(id(layer))
        if paths:
            prov.enter(paths, (args, kwargs))
        activation = getattr(layer, "activation", None) if paths and capture else None
        if activation is not None and getattr(activation, "__name__", "") != "linear":
            # kept before the activation a layer applies itself, as torch's Linear/Conv output is
            layer.activation = keras.activations.linear
            try:
                out = layer_call(layer, *args, **kwargs)
            finally:
                layer.activation = activation
            prov.leave(paths, out)
            out = activation(out)
            prov.mark(out, {paths[-1]}, through={paths[-1]})
            return out
        out = layer_call(layer, *args, **kwargs)
        if paths:
            prov.leave(paths, out, activates=applies_activation(layer))
        elif getattr(layer, "_layers", None):  # a container: its output came from the layers inside
            prov.mark(out, {UNKNOWN}, how="unseen")
        else:
            prov.propagate((args, kwargs), out, activates=applies_activation(layer))
        return out

    def traced_operation(op, *args, **kwargs):
        out = operation_call(op, *args, **kwargs)
        if not isinstance(op, keras.Layer):
            prov.propagate((args, kwargs), out)
        return out

    prov.mark(inputs, set())
    keras.Layer.__call__, Operation.__call__ = traced_layer, traced_operation
    try:
        with torch_operations(prov) if on_torch else contextlib.nullcontext():
            prov.tap(model(inputs, training=False), returned=True)
    finally:
        keras.Layer.__call__, Operation.__call__ = layer_call, operation_call
    return prov.flow

def applies_activation(layer) -> bool:
    """Whether a Keras layer applies a nonlinear activation of its own (``Dense(activation="gelu")``)."""
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    return name not in (None, "linear")


ADAPTER = KerasFramework()


# -- the functional graph, read for rules whose configuration depends on what feeds a layer ---------------------
# (a ZeroPadding before a conv, a Flatten before a Dense). A "call" is one node of the graph: one call of a layer
# or operation on symbolic inputs. Plain attribute access on Keras' private graph; nothing here imports Keras.

def calls(layer) -> list:
    """The graph nodes of ``layer``'s calls, oldest first; [] where no graph was recorded (eager or subclassed)."""
    return list(getattr(layer, "_inbound_nodes", None) or [])


def feeding(call) -> list:
    """The calls whose outputs ``call`` reads, in input order."""
    return list(getattr(call, "parent_nodes", None) or [])


def operation(call):
    """The layer or operation ``call`` is a call of."""
    return call.operation


def input_shape(call):
    """The shape of the first tensor ``call`` reads (batch axis included), or None."""
    tensors = call.input_tensors
    return tuple(tensors[0].shape) if tensors else None


def output_shape(call):
    """The shape of the first tensor ``call`` produces (batch axis included), or None."""
    tensors = call.outputs
    return tuple(tensors[0].shape) if tensors else None


def output_call(model):
    """The call producing a nested functional model's (first) output, or None when ``model`` is not one."""
    outputs = getattr(model, "outputs", None)
    if not outputs or not any(cls.__name__ in ("Functional", "Sequential") for cls in type(model).__mro__):
        return None
    history = getattr(outputs[0], "_keras_history", None)
    if history is None:
        return None
    producer, index = history[0], history[1]
    produced = calls(producer)
    return produced[index] if index < len(produced) else None
