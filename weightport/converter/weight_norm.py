"""Weights a torch checkpoint stores as weight normalisation's magnitude ``g`` and direction ``v``.

``torch.nn.utils.parametrizations.weight_norm`` saves ``<module>.parametrizations.<name>.original0`` (g) and
``...original1`` (v); the older ``torch.nn.utils.weight_norm`` saves ``<module>.<name>_g`` and ``<name>_v``.
The layer computes ``g * v / |v|`` (the norm taken over every axis where g has size 1), and that product is
the weight any other implementation holds. Folding is exact in meaning but rounds, and the split is lost.
"""
from __future__ import annotations

import re

import numpy as np

from ..mappings.transforms import weight_norm_fold
from .checkpoint import Checkpoint, TensorSource

STORED_NAMES = (r"weight_[gv]", r"original[01]")  # last name parts of the halves, for layout detection
_PARAMETRIZED = re.compile(r"^(?:(?P<module>.+)\.)?parametrizations\.(?P<name>[^.]+)\.original(?P<part>[01])$")
_HOOKED = re.compile(r"^(?P<stem>.+)_(?P<part>[gv])$")


def fold(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``g * v / |v|`` in float32 or wider, in ``v``'s dtype."""
    return weight_norm_fold(g, v)


def pairs(checkpoint) -> dict:
    """weight name -> (g name, v name) for every magnitude and direction stored side by side whose shapes fit
    (g has v's rank, each of its axes 1 or v's size)."""
    found: dict = {}
    for name in checkpoint:
        hit = _PARAMETRIZED.match(name)
        if hit:
            weight = ".".join(p for p in (hit["module"], hit["name"]) if p)
            found.setdefault(weight, {})["g" if hit["part"] == "0" else "v"] = name
            continue
        hit = _HOOKED.match(name)
        if hit:
            found.setdefault(hit["stem"], {})[hit["part"]] = name
    out = {}
    for weight, parts in found.items():
        if set(parts) != {"g", "v"} or weight in checkpoint:
            continue
        g, v = checkpoint.shape(parts["g"]), checkpoint.shape(parts["v"])
        if not g or (len(g) == len(v) and all(a in (1, b) for a, b in zip(g, v)) and g != v):
            out[weight] = (parts["g"], parts["v"])
    return out


def folded(checkpoint: Checkpoint) -> tuple:
    """(the checkpoint with each weight-normalised pair replaced by its weight, {weight name: (g, v)})."""
    if checkpoint.layout != "torch":
        return checkpoint, {}
    found = pairs(checkpoint)
    if not found:
        return checkpoint, {}
    replaced = {name: weight for weight, both in found.items() for name in both}
    sources, done = [], set()
    for source in checkpoint.sources():
        weight = replaced.get(source.name)
        if weight is None:
            sources.append(source)
        elif weight not in done:
            done.add(weight)
            g, v = (checkpoint.source(n) for n in found[weight])
            sources.append(TensorSource(weight, v.shape, v.dtype, lambda g=g, v=v: fold(g.load(), v.load()),
                                        origin=v.origin))
    view = Checkpoint(checkpoint.path, checkpoint.format, sources, metadata=checkpoint.metadata,
                      layout=checkpoint.layout, layers=checkpoint.layers, closer=checkpoint.close)
    return view, found


def _stored_as(layer, slot: str) -> dict:
    """How ``layer`` (a live torch module) stores ``slot``: {"dim": the axis g keeps (None: one norm of it all),
    "into": [g name, v name]} relative to the module; a parametrization other than weight_norm is refused."""
    from ..errors import UsageError

    hooks = [h for h in getattr(layer, "_forward_pre_hooks", {}).values()
             if type(h).__name__ == "WeightNorm" and getattr(h, "name", None) == slot]
    chain = getattr(getattr(layer, "parametrizations", None), slot, None) if not hooks else None
    if hooks:
        dim, into = hooks[0].dim, [f"{slot}_g", f"{slot}_v"]
    elif chain is not None and len(chain) == 1 and hasattr(chain[0], "dim") and "WeightNorm" in type(chain[0]).__name__:
        dim, into = chain[0].dim, [f"parametrizations.{slot}.original0", f"parametrizations.{slot}.original1"]
    else:
        kinds = [type(p).__name__ for p in chain] if chain is not None else ["an unknown reparametrization"]
        raise UsageError(f"{type(layer).__name__} computes {slot!r} through {', '.join(kinds)}, which weightport "
                         "writes back only for weight_norm; nothing was written. Remove the parametrization "
                         "(torch.nn.utils.parametrize.remove_parametrizations) from the like= model first")
    ndim = getattr(layer, slot).dim()
    if dim is not None and dim < 0:
        dim = None if dim == -1 else dim + ndim  # torch's -1 is "no dim": one norm over the whole weight
    return {"dim": dim, "into": into}


def split_on_write(plan, pairs) -> None:
    """Pairs whose target is a live torch layer computing a weight with weight_norm, for a file written like it:
    that weight written as g and v under the names the layer stores them by (so ``load_state_dict`` takes the
    file). v is the weight and g its norm: the layer computes the weight again up to rounding."""
    from .plan import transform_text

    steps = {id(p): step for p, step in zip(pairs, plan.steps)}
    for p in pairs:
        how, layer = p.target_hp.get("reparametrized"), getattr(p.target, "obj", None)
        if not how or layer is None or p.target.layout != "torch":
            continue
        p.target_hp = {**p.target_hp, "weight_norm": {slot: _stored_as(layer, slot) for slot in how}}
        step = steps.get(id(p))
        if step is not None:
            step.target_hp, step.exact, step.transform = p.target_hp, False, transform_text(p)
