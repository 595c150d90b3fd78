"""Weights a torch checkpoint stores as weight normalisation's magnitude ``g`` and direction ``v``.

``torch.nn.utils.parametrizations.weight_norm`` saves ``<module>.parametrizations.<name>.original0`` (g) and
``...original1`` (v); the older ``torch.nn.utils.weight_norm`` saves ``<module>.<name>_g`` and ``<name>_v``.
The layer computes ``g * v / |v|`` (the norm taken over every axis where g has size 1), and that product is
the weight any other implementation holds. Folding is exact in meaning but rounds, and the split is lost.
"""
from __future__ import annotations

import re

import numpy as np

from .checkpoint import Checkpoint, TensorSource

STORED_NAMES = (r"weight_[gv]", r"original[01]")  # last name parts of the halves, for layout detection
_PARAMETRIZED = re.compile(r"^(?:(?P<module>.+)\.)?parametrizations\.(?P<name>[^.]+)\.original(?P<part>[01])$")
_HOOKED = re.compile(r"^(?P<stem>.+)_(?P<part>[gv])$")


def fold(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``g * v / |v|`` in float32 or wider, in ``v``'s dtype."""
    wide = np.result_type(v.dtype, np.float32)
    v32, g32 = v.astype(wide), g.astype(wide)
    axes = tuple(i for i, size in enumerate(g.shape) if size == 1) if g.ndim else None
    norm = np.sqrt(np.sum(v32 * v32, axis=axes, keepdims=True))
    return (g32 * v32 / norm).astype(v.dtype)


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
