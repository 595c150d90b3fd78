"""Layout options weights cannot show, carried in a side's hp and applied to its rule's links.

Any rule's links change the same way, so an option is a few lines here rather than a change to every rule:

- ``hp["rope"] = {"slots": [...], "head_dim": d, "rotary_dim": r}``: this side stores the output features of
  those canonical slots (their last axis: a Dense kernel's columns, an EinsumDense kernel's head_dim) in the
  interleaved rotary order (pairs ``(2i, 2i+1)`` of each head, Meta's Llama, GPT-J) where the canonical form
  has them rotate-half (pairs ``(i, i + r/2)``, Hugging Face's Llama, keras-hub); only the first ``r`` features
  of each head rotate. Set by ``converter.options`` on the interleaved side of a port.
- ``hp["weight_norm"] = {slot: {"dim": d, "into": [g slot, v slot]}}``: this side stores ``slot`` as torch
  weight_norm's magnitude and direction. Set by ``converter.weight_norm`` on a torch file written like a model
  that has them.
"""
from __future__ import annotations

from dataclasses import replace

from .transforms import Chain, Each, PermuteWithin, WeightNormSplit


def rotary_order(head_dim: int, rotary_dim: int | None = None) -> tuple:
    """Positions, within one head, of the rotate-half features in interleaved order: entry ``2i + j`` is
    feature ``j * r/2 + i``; past ``rotary_dim`` features stay where they are."""
    r = head_dim if rotary_dim is None else rotary_dim
    if r % 2 or not 0 < r <= head_dim:
        raise ValueError(f"rotary_dim {r} must be even and between 2 and head_dim {head_dim}")
    return tuple(j * (r // 2) + i for i in range(r // 2) for j in range(2)) + tuple(range(r, head_dim))


def rotary_transform(head_dim: int, rotary_dim: int | None = None) -> PermuteWithin:
    """Canonical (rotate-half) -> interleaved features, within each head of ``head_dim``."""
    r = head_dim if rotary_dim is None else rotary_dim
    part = "" if r == head_dim else f", first {r} of each"
    where = f"within heads of {head_dim}{part}"
    return PermuteWithin(rotary_order(head_dim, r), (f"rotate-half -> interleaved rotary order {where}",
                                                     f"interleaved -> rotate-half rotary order {where}"))


def _rotary(lk, option: dict):
    which = [i for i, s in enumerate(lk.canonical) if s in set(option["slots"])]
    if not which:
        return lk
    step = Each(len(lk.canonical), rotary_transform(option["head_dim"], option.get("rotary_dim")), only=which)
    return replace(lk, transform=Chain(step, lk.transform))


def _split(lk, option: dict):
    slots = [s for s in lk.native if s in option]
    if not slots:
        return lk
    if len(lk.native) != 1:
        raise ValueError(f"weight_norm on {slots[0]!r}, which is stored together with {list(lk.native)}")
    spec = option[slots[0]]
    return replace(lk, native=tuple(spec["into"]), transform=Chain(lk.transform, WeightNormSplit(spec["dim"])))


def optioned(links: list, hp: dict) -> list:
    """``links`` as the options in ``hp`` change them (see the module docstring); as they are without any."""
    rope, split = hp.get("rope"), hp.get("weight_norm")
    if rope:
        links = [_rotary(lk, rope) for lk in links]
    if split:
        links = [_split(lk, split) for lk in links]
    return links


def rotary_slots(links: list, hp: dict) -> set:
    """The canonical slots ``links`` reorder for the ``rope`` option in ``hp``: where a rule builds its links
    otherwise (the parameter rule), none, and the option must be refused rather than dropped."""
    option = hp.get("rope") or {}
    return {s for lk in links for part in getattr(lk.transform, "parts", (lk.transform,))
            if isinstance(part, Each) and isinstance(part.t, PermuteWithin)
            for i, s in enumerate(lk.canonical) if part.only is None or i in part.only} & set(option.get("slots", ()))
