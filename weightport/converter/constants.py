"""State a model computes rather than learns (Keras non-trainable variables, torch buffers: rotary frequencies,
position ids) that a target holds as a weight and the source holds outside its weights.

Such a target weight is filled only from what the source model itself holds under the same name and shape
(a torch model's non-persistent buffers included): left as it is where it already holds those values, set
to them where it does not (keras-hub's CLIP starts its ``position_ids`` at zeros). Where the source holds no
such tensor (a bare file), nothing shows the target's value is right, and it is refused as before.
"""
from __future__ import annotations

import re

import numpy as np

from .pairs import Fixed, describe
from .plan import Pair


def held(model) -> dict:
    """last name -> [arrays] of everything ``model`` holds that is not trained (``Framework.constants``)."""
    from .frameworks import adapter_for

    fw = adapter_for(model) if model is not None else None
    found: dict = {}
    for path, array in (fw.constants(model) if fw is not None else {}).items():
        found.setdefault(re.split(r"[./]", path)[-1], []).append(np.asarray(array))
    return found


def filled(left_t, source_constants, notes: list) -> tuple:
    """(pairs setting each untrained target weight the source holds the values of, the rest of ``left_t``);
    ``source_constants()`` gives ``held(source model)``, asked for only where such a weight is left."""
    made, rest = [], []
    if not any(getattr(b, "untrained", False) for b in left_t):
        return made, list(left_t)
    source_constants = source_constants()
    for b in left_t:
        value = _source_value(b, source_constants) if getattr(b, "untrained", False) else None
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
