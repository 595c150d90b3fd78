"""Flax, layout "flax": NNX modules (assigned in place) and Linen variables (ported into a new dict).

NNX modules are objects with classes and are walked like torch modules: a
module's children are its module-valued attributes in definition order (and
the modules inside list, tuple and dict attributes); its weights are its
``nnx.Variable`` attributes (Param, BatchStat...; RNG state, caches and
intermediates are not weights). A rule's slot may be a path below the layer
(``ii/kernel``: the ``kernel`` of the layer's ``ii`` sub-layer).

Linen variables (``{"params": ..., "batch_stats": ...}``, or a bare params
tree) are nested dicts of arrays without classes, so their layers are
recognised from names and shapes by the rules' ``infer_flax``, as
checkpoint groups are. JAX code treats them as immutable: a port never
changes the dict it is given, and ``report.target`` is a new dict of the same
nesting whose arrays keep their device and dtype. Running a Linen model needs
its module: ``(module, variables)`` is accepted wherever a model is (verify,
port source or target; a port into a pair returns a new pair).

jax and flax are imported only once an object of theirs has been passed in.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Mapping

import numpy as np

from ...errors import UsageError
from ..arrays import is_array, placed_like, to_numpy
from . import ArrayFields, LayerRef, Unmapped


def _nnx():
    return sys.modules.get("flax.nnx")


def is_nnx_module(obj) -> bool:
    nnx = _nnx()
    return nnx is not None and isinstance(obj, nnx.Module)


def _flatten(tree, prefix: str = ""):
    """(``a/b/c`` name, leaf) pairs of a nested mapping, in its order (empty mappings yield nothing)."""
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from _flatten(value, name)
        else:
            yield name, value


def _is_variables(obj) -> bool:
    """A nested mapping (two levels or more) with only arrays as leaves: Linen variables or a params tree."""
    if not isinstance(obj, Mapping) or not any(isinstance(v, Mapping) for v in obj.values()):
        return False
    leaves = [leaf for _, leaf in _flatten(obj)]
    return bool(leaves) and all(is_array(leaf) for leaf in leaves)


def linen_parts(obj):
    """(module or None, variables) for Linen variables or a ``(module, variables)`` pair, else None."""
    linen = sys.modules.get("flax.linen")
    if (isinstance(obj, tuple) and len(obj) == 2 and linen is not None and isinstance(obj[0], linen.Module)
            and isinstance(obj[1], Mapping)):
        return obj
    return (None, obj) if _is_variables(obj) else None


class _Tree:
    """The working copy of one Linen variables tree: original leaves by flat name, and what a port wrote."""

    def __init__(self, model, variables):
        self.model, self.variables = model, variables
        self.leaves = dict(_flatten(variables))
        self.written: dict = {}

    def rebuilt(self, node=None, prefix: str = ""):
        """The variables with the written leaves replaced: new mappings of the same types; input untouched."""
        node = self.variables if node is None else node
        items = {}
        for key, value in node.items():
            name = f"{prefix}/{key}" if prefix else str(key)
            items[key] = self.rebuilt(value, name) if isinstance(value, Mapping) else self.written.get(name, value)
        if type(node) is dict:
            return items
        try:
            return type(node)(items)  # FrozenDict and other immutable mappings
        except TypeError:
            return items


class LinenLayer:
    """One recognised layer of a Linen variables tree: slot -> flat name (``params/Dense_0/kernel``)."""

    def __init__(self, tree: _Tree, names: dict):
        self.tree, self.names = tree, names

    def leaf(self, slot):
        return self.tree.leaves[self.names[slot]]


def _weight_types():
    nnx = _nnx()
    not_weights = tuple(t for t in (getattr(nnx, n, None) for n in ("RngState", "Cache", "Intermediate"))
                        if isinstance(t, type))
    return nnx.Variable, not_weights


def _is_weight(value) -> bool:
    variable, not_weights = _weight_types()
    return isinstance(value, variable) and not isinstance(value, not_weights)


def _get(var):
    return var.get_value() if hasattr(var, "get_value") else var.value


def _set(var, value) -> None:
    if hasattr(var, "set_value"):
        var.set_value(value)
    else:
        var.value = value


def _attributes(module):
    return [(k, v) for k, v in vars(module).items() if not k.startswith("_pytree__")]


def _variable(layer, slot):
    """The nnx.Variable at ``slot`` (a ``/`` path of attributes, list indices and dict keys), else None."""
    obj = layer
    for part in slot.split("/"):
        if isinstance(obj, (list, tuple)) and part.isdigit():
            obj = obj[int(part)] if int(part) < len(obj) else None
        elif isinstance(obj, Mapping) and not is_nnx_module(obj):
            obj = obj.get(part)
        else:
            obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if _is_weight(obj) else None


class FlaxFramework(ArrayFields):
    layout = "flax"
    package = "flax"
    sep = "/"

    def __init__(self):
        self._written: dict = {}  # id(Linen model) -> _Tree, between a port's writes and its finish()

    def owns(self, obj) -> bool:
        return is_nnx_module(obj) or linen_parts(obj) is not None

    # -- structure ------------------------------------------------------------------
    def layer_nodes(self, model):
        parts = linen_parts(model)
        if parts is None:
            return None  # an NNX module: walk() follows its attributes
        from ..checkpoint import Checkpoint, TensorSource
        from ..structure import infer_nodes, tree_paths

        self._written.pop(id(model), None)  # what an earlier, failed port may have left
        tree = _Tree(model, parts[1])
        sources = [TensorSource(name, tuple(leaf.shape), np.dtype(leaf.dtype), lambda: None)
                   for name, leaf in tree.leaves.items()]
        nodes, leftovers = infer_nodes(Checkpoint(None, "memory", sources, layout="flax"), "flax")
        refs = [LayerRef(n.path, LinenLayer(tree, dict(n.names)), self, n.candidates) for n in nodes]
        unmapped, paths = {}, tree_paths(list(tree.leaves), "flax")
        for name in leftovers:
            parent, _, leaf = paths[name].rpartition("/")
            unmapped.setdefault(parent or "<root>", []).append(leaf)
        return refs, [Unmapped(path, "a Flax group of these names and shapes", leaves)
                      for path, leaves in unmapped.items()]

    def children(self, layer) -> list:
        out = []
        for name, value in _attributes(layer):
            if is_nnx_module(value):
                out.append((name, value))
            elif isinstance(value, (list, tuple)):
                out += [(f"{name}/{i}", v) for i, v in enumerate(value) if is_nnx_module(v)]
            elif isinstance(value, Mapping):
                out += [(f"{name}/{k}", v) for k, v in value.items() if is_nnx_module(v)]
        return out

    def own_weights(self, layer) -> list:
        return [name for name, value in _attributes(layer) if _is_weight(value)]

    def display_name(self, layer) -> str:
        return type(layer).__name__

    # -- tensors --------------------------------------------------------------------
    def _arrays(self, layer, slots) -> dict:
        """slot -> the array held now (jax or numpy), for the slots the layer has."""
        if isinstance(layer, LinenLayer):
            return {s: layer.leaf(s) for s in slots if s in layer.names}
        found = {s: _variable(layer, s) for s in slots}
        return {s: _get(v) for s, v in found.items() if v is not None and _get(v) is not None}

    def write(self, layer, arrays: dict) -> None:
        if isinstance(layer, LinenLayer):
            tree = layer.tree
            for slot, value in arrays.items():
                if slot in layer.names:
                    tree.written[layer.names[slot]] = placed_like(value, layer.leaf(slot))
            self._written[id(tree.model)] = tree
            return
        for slot, value in arrays.items():
            var = _variable(layer, slot)
            if var is not None:
                _set(var, placed_like(value, _get(var)))

    def file_names(self, model, path: str):
        return self.tensor_name

    def tensor_name(self, node, slot) -> str:
        """The name a layer's slot is stored under in a Flax checkpoint of this model."""
        if isinstance(node.obj, LinenLayer):
            return node.obj.names[slot]
        if getattr(node, "loose", False):
            return node.path  # the owner's path and the weight's name already
        base = re.sub(r"\[\d+\]$", "", node.path)
        return f"{base}/{slot}" if base else slot

    def finish(self, model):
        parts = linen_parts(model)
        if parts is None:
            return model  # NNX modules are assigned in place
        tree = self._written.pop(id(model), None)
        if tree is None or tree.model is not model:
            tree = _Tree(model, parts[1])
        variables = tree.rebuilt()
        return variables if parts[0] is None else (parts[0], variables)

    # -- running ---------------------------------------------------------------------
    def run(self, model, inputs):
        import jax
        import jax.numpy as jnp

        args, kwargs = ((list(inputs), {}) if isinstance(inputs, (list, tuple)) else
                        ([], dict(inputs)) if isinstance(inputs, Mapping) else ([inputs], {}))
        args = [jnp.asarray(to_numpy(x)) for x in args]
        kwargs = {k: jnp.asarray(to_numpy(v)) for k, v in kwargs.items()}
        parts = linen_parts(model)
        if parts is not None:
            module, variables = parts
            if module is None:
                raise UsageError("Flax variables cannot run without their Linen module: pass "
                                 "(module, variables) to verify")
            out = module.apply(variables, *args, **kwargs)
        else:
            out = _inference_view(model)(*args, **kwargs)
        return jax.tree.map(lambda a: to_numpy(a), out)


def _inference_view(model):
    """The module with dropout off and batch norm on its running statistics, leaving ``model`` as it was."""
    nnx = _nnx()
    if hasattr(nnx, "view"):
        return nnx.view(model, deterministic=True, use_running_average=True, raise_if_not_found=False)
    model.eval()  # older flax: no views
    return model


ADAPTER = FlaxFramework()
