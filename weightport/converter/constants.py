"""State a model computes rather than learns (Keras non-trainable variables, torch buffers: rotary frequencies,
position ids) that a target holds as a weight and the source holds outside its weights.

Such a target weight is filled only from what the source model itself holds under the same name and shape
(a torch model's non-persistent buffers included): left as it is where it already holds those values, set
to them where it does not (keras-hub's CLIP starts its ``position_ids`` at zeros). Where the source holds no
such tensor (a bare file), nothing shows the target's value is right, and it is refused as before.

A source weight at the same path (keras-hub's DINOv2 keeps the position table it loads and saves beside the
trainable one it computes with; transformers' holds one) fills it too, from a file as well; the paths may
differ in the model's prefix (Depth Anything's ``backbone.`` against keras-hub's ``feature_extractor/``).
"""
from __future__ import annotations

import re

import numpy as np

from . import naming
from .pairs import Fixed, describe, pair
from .plan import Pair


def held(model) -> dict:
    """last name -> [arrays] of everything ``model`` holds that is not trained (``Framework.constants``)."""
    from .frameworks import adapter_for

    fw = adapter_for(model) if model is not None else None
    found: dict = {}
    for path, array in (fw.constants(model) if fw is not None else {}).items():
        found.setdefault(naming.last_part(path), []).append(np.asarray(array))
    return found


def filled(left_t, source_constants, notes: list, source_nodes=()) -> tuple:
    """(pairs setting each untrained target weight the source holds the values of, the rest of ``left_t``);
    ``source_constants()`` gives ``held(source model)``, asked for only where such a weight is left;
    ``source_nodes`` are all the source's nodes, paired or not."""
    made, rest = [], []
    if not any(getattr(b, "untrained", False) for b in left_t):
        return made, list(left_t)
    source_constants = source_constants()
    for b in left_t:
        value = _source_value(b, source_constants) if getattr(b, "untrained", False) else None
        same_path = _same_path(b, source_nodes) if value is None and getattr(b, "untrained", False) else None
        if same_path is not None:
            made.append(same_path)
            notes.append(f"target weight {describe(b)} is not trained; it was set from the source's weight at the "
                         f"same path, {same_path.source.label}")
            continue
        if value is None:
            rest.append(b)
            continue
        rule, hp = b.candidates[0]
        current = np.asarray(b.read(rule, hp)[hp["slot"]])
        if _same(current, value.astype(current.dtype)):
            notes.append(f"target weight {b.label} is not trained; it already holds what the source computes "
                         "under that name, and was left as it is")
            continue
        shapes = b.canonical_shapes(rule, hp)
        given = Fixed(b, {hp["slot"]: value.astype(current.dtype)}, f"(computed {hp['slot']})")
        made.append(Pair(given, b, rule, hp, hp, shapes, shapes, "constant"))
        notes.append(f"target weight {describe(b)} is not trained; it was set to what the source computes under "
                     "that name")
    return made, rest


def _same_path(b, source_nodes):
    """A pair from the one source weight whose path ends like ``b``'s (``a.b`` and ``a/b`` alike, two parts at
    least: the model prefix may be longer, or named otherwise, as keras-hub's ``feature_extractor`` for
    transformers' ``backbone``) with the same shapes; the longest such ending wins, and a tie gives None."""
    mine = _parts(b.path)
    found = {}
    for a in source_nodes:
        n = _tail_length(_parts(a.path), mine) if getattr(a, "loose", False) else 0
        p = pair(a, b, "state") if n >= 2 else None
        if p is not None and p.shapes_agree:
            found.setdefault(n, []).append(p)
    best = found.get(max(found), []) if found else []
    return best[0] if len(best) == 1 else None


def _parts(path: str) -> list:
    return [p for p in re.split(r"[./]", path) if p]


def _tail_length(a: list, b: list) -> int:
    """How many last parts ``a`` and ``b`` share."""
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def _same(a, b) -> bool:
    """Equal, or for floats equal up to the last bits two implementations computing one formula may differ in."""
    if np.issubdtype(a.dtype, np.floating):
        return bool(np.allclose(a, b, rtol=1e-6, atol=0.0))
    return bool(np.array_equal(a, b))


def _source_value(b, source_constants: dict):
    """The one value the source holds under ``b``'s name and shape, else None (none, or several that differ)."""
    hp = b.candidates[0][1]
    found = [a for a in source_constants.get(hp["slot"], []) if tuple(a.shape) == tuple(hp["shape"])]
    if not found or any(not _same(found[0], a) for a in found[1:]):
        return None
    return found[0]
