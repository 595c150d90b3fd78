"""Equinox, layout "equinox": immutable modules, ported into a new module built with ``eqx.tree_at``.

An ``eqx.Module`` is a frozen dataclass and a pytree. Its children are the
module-valued fields in definition order (and the modules inside list, tuple
and dict fields, as ``eqx.nn.Sequential.layers``); its weights are its
array-valued fields. A rule's slot may be a dotted path below the layer
(``query_proj.weight``). Equinox's layers keep torch's layouts (Linear
``(out, in)``, Conv ``(out, in/groups, *k)``), with a few differences of its
own that the rules' ``equinox`` links spell out.

A port never changes the module it is given: ``write`` records the new
arrays, and ``finish`` returns a new module with them in place (same
structure, each array with its old dtype and device), which a port hands back
as ``report.target``.

Running (for ``wp.verify``): Equinox layers act on one example, so the
inputs' leading axis is the batch and the model is called as
``jax.vmap(model)(*inputs)`` in inference mode (``eqx.nn.inference_mode``:
dropout off). A model that wants the whole batch is wrapped by the caller.

equinox is imported only once an object of its has been passed in.
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping

from ..arrays import is_array, placed_like, to_numpy
from . import ArrayFields


def _eqx():
    return sys.modules.get("equinox")


def is_module(obj) -> bool:
    eqx = _eqx()
    return eqx is not None and isinstance(obj, eqx.Module)


def _fields(module):
    """(name, value) of a module's dataclass fields, in definition order."""
    return [(f.name, getattr(module, f.name, None)) for f in dataclasses.fields(module)]


def _step(obj, part):
    """One step of a dotted path: an attribute, a list/tuple index or a dict key; None where absent."""
    if isinstance(obj, (list, tuple)):
        return obj[int(part)] if part.isdigit() and int(part) < len(obj) else None
    if isinstance(obj, Mapping):
        return obj.get(part)
    return getattr(obj, part, None)


def _get(obj, path: str):
    for part in path.split("."):
        obj = _step(obj, part)
        if obj is None:
            return None
    return obj


def _submodules(value, name):
    """(path, module) pairs for a field holding a module, or modules in a list, tuple or dict."""
    if is_module(value):
        return [(name, value)]
    if isinstance(value, (list, tuple)):
        return [(f"{name}.{i}", v) for i, v in enumerate(value) if is_module(v)]
    if isinstance(value, Mapping):
        return [(f"{name}.{k}", v) for k, v in value.items() if is_module(v)]
    return []


class EquinoxFramework(ArrayFields):
    layout = "equinox"
    package = "equinox"
    sep = "."

    def __init__(self):
        # id(layer) -> (layer, {slot: new array}), between a port's writes and its finish()
        self._pending: dict = {}

    def owns(self, obj) -> bool:
        return is_module(obj)

    def children(self, layer) -> list:
        return [pair for name, value in _fields(layer) for pair in _submodules(value, name)]

    def own_weights(self, layer) -> list:
        return [name for name, value in _fields(layer) if is_array(value)]

    # -- tensors --------------------------------------------------------------------
    def _arrays(self, layer, slots) -> dict:
        found = {s: _get(layer, s) for s in slots}
        return {s: a for s, a in found.items() if is_array(a)}

    def write(self, layer, arrays: dict) -> None:
        """Record the new arrays; ``finish`` builds the new module (the layer itself is immutable)."""
        old = self._arrays(layer, list(arrays))
        _, pending = self._pending.setdefault(id(layer), (layer, {}))
        pending.update({s: placed_like(v, old[s]) for s, v in arrays.items() if s in old})

    def finish(self, model):
        """A new module with every recorded array in place; ``model`` itself is left as it was."""
        pending, self._pending = self._pending, {}
        paths, values = [], []

        def visit(node, path):
            entry = pending.get(id(node))
            if entry is not None and entry[0] is node:
                for slot, value in entry[1].items():
                    paths.append(f"{path}.{slot}" if path else slot)
                    values.append(value)
            for name, child in self.children(node):
                visit(child, f"{path}.{name}" if path else name)

        visit(model, "")
        if not paths:
            return model
        return _eqx().tree_at(lambda m: [_get(m, p) for p in paths], model, values)

    # -- running ---------------------------------------------------------------------
    def run(self, model, inputs):
        import jax
        import jax.numpy as jnp

        args, kwargs = ((list(inputs), {}) if isinstance(inputs, (list, tuple)) else
                        ([], dict(inputs)) if isinstance(inputs, Mapping) else ([inputs], {}))
        args = [jnp.asarray(to_numpy(x)) for x in args]
        kwargs = {k: jnp.asarray(to_numpy(v)) for k, v in kwargs.items()}
        model = _eqx().nn.inference_mode(model)
        out = jax.vmap(lambda *a, **k: model(*a, **k))(*args, **kwargs)
        return jax.tree.map(lambda a: to_numpy(a), out)


ADAPTER = EquinoxFramework()
