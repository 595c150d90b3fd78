"""Run matched pairs: read, translate through the canonical form, then write.

Into a live model, every tensor is translated and shape-checked before the
first assignment, so a refusal leaves the target as it was.
"""
from __future__ import annotations

from ..errors import ShapeMismatchError


def translate(p) -> dict:
    """The target-layout tensors for one pair (slot -> numpy array)."""
    native = p.source.read(p.rule, p.source_hp)
    try:
        canonical = p.rule.to_canonical(p.source.layout, p.source_hp, native)
    except KeyError as exc:
        raise ShapeMismatchError(
            f"{p.source.label}: rule {p.rule.name!r} needs the tensor {exc.args[0]!r} "
            f"({p.source.layout} layout), which the layer does not hold; it holds {sorted(native)}") from None
    return p.rule.from_canonical(p.target.layout, p.target_hp, canonical)


def run_into_live(pairs) -> None:
    """Translate every pair, check every shape, then assign (and carry the frozen state)."""
    prepared = []
    for p in pairs:
        arrays = translate(p)
        expected = p.target.framework.shapes(p.target.obj, list(arrays))
        for slot, arr in arrays.items():
            if slot in expected and tuple(arr.shape) != tuple(expected[slot]):
                raise ShapeMismatchError(
                    f"{p.source.label} -> {p.target.label}: slot {slot!r} expects shape {tuple(expected[slot])}, "
                    f"translated source has {tuple(arr.shape)}; the target was not changed")
        prepared.append((p, arrays))
    for p, arrays in prepared:
        p.target.framework.write(p.target.obj, arrays)
        frozen = p.source.framework.is_frozen(p.source.obj) if hasattr(p.source, "framework") else None
        if frozen is not None:
            p.target.framework.set_frozen(p.target.obj, frozen)
