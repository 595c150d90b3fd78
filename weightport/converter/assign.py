"""Ports into a live model: every pair checked first, then converted and assigned one layer at a time.

Every shape, dtype and cast is checked before the first tensor is converted,
so a refused port leaves the target as it was; then each layer is converted
and assigned in turn, so the extra memory a port needs is one layer, not the
model. A slot whose move is a plain transpose/reshape/copy into memory the
target lets weightport write (``Framework.destinations``) is copied straight
there (``direct``); the rest go through the canonical form (``engine.translate``).
"""
from __future__ import annotations

import bisect

import numpy as np

from ..errors import ShapeMismatchError, WeightportError
from . import direct
from .arrays import cast_checked, is_floating, widens
from .engine import Watch, live_bytes, translate


class Route:
    """How one pair will be moved, settled before anything is: ``slots`` (target slot -> (source slot, view
    steps)) for a direct copy, or None for the general path; ``destinations`` are its target's tensors,
    written in place; ``fresh`` (slot -> (shape, dtype)) the buffers its target adopts instead."""

    def __init__(self, slots=None, destinations=None, fresh=None):
        self.slots, self.destinations, self.fresh = slots, destinations or {}, fresh or {}


def run_into_live(pairs, plan=None, *, allow_overflow: bool = False, progress=None) -> list:
    """Check every pair, then assign pair by pair (carrying the frozen state); the routes taken.

    With ``plan`` (whose steps match ``pairs``), NaN/Inf in the source is said
    in ``plan.issues`` and rounding casts on their step. ``progress(nbytes)``
    is told of each layer assigned.
    """
    watch = Watch(pairs, plan, allow_overflow)
    taken = [check(p, allow_overflow) for p in pairs]
    if aliased(pairs, taken):  # a target tensor is also a source of a later pair: convert everything first
        prepared = [(p, {s: np.array(a, copy=True) for s, a in general_arrays(p, watch).items()}) for p in pairs]
        for p, arrays in prepared:
            finish_pair(p, arrays, progress)
        return [Route() for _ in pairs]
    for p, route in zip(pairs, taken):
        if route.slots is not None:
            finish_pair(p, assign_direct(p, route, watch), progress, written=True)
        else:
            finish_pair(p, general_arrays(p, watch), progress)
    return taken


def finish_pair(p, arrays: dict, progress, written: bool = False) -> None:
    """Write ``arrays`` (unless ``written`` already), carry the frozen state, tell ``progress``."""
    if not written:
        p.target.framework.write(p.target.obj, arrays)
    frozen = p.source.framework.is_frozen(p.source.obj) if hasattr(p.source, "framework") else None
    if frozen is not None:
        p.target.framework.set_frozen(p.target.obj, frozen)
    if progress is not None:
        progress(sum(int(getattr(a, "nbytes", 0)) for a in arrays.values()))


def run_with_progress(pairs, plan, *, allow_overflow: bool = False, quiet: bool = False) -> list:
    """``run_into_live`` under a progress bar (shown on a terminal for large ports, unless ``quiet``)."""
    from ..progress import bar

    progress = bar(live_bytes(pairs), "port", quiet)
    try:
        return run_into_live(pairs, plan, allow_overflow=allow_overflow,
                             progress=progress.update if progress else None)
    finally:
        if progress is not None:
            progress.close()


# -- before anything is converted --------------------------------------------------------------------------

def expected_shapes(p) -> tuple:
    """(the target-layout shapes ``p``'s translation will have, the translation or None): from the shapes alone
    where the rule can say; else by translating this one pair (which raises the usual error for a tensor the
    source lacks), handed back so that the cast check does not translate it again."""
    if p.source_shapes is not None:
        try:
            return p.rule.native_shapes(p.target.layout, p.target_hp, p.source_shapes), None
        except (KeyError, ValueError):
            pass
    arrays = translate(p)
    return {slot: tuple(a.shape) for slot, a in arrays.items()}, arrays


def check(p, allow_overflow: bool) -> Route:
    """Refuse ``p`` now if its shapes do not fit the target or a cast would overflow; else its Route."""
    fw, obj = p.target.framework, p.target.obj
    shapes, translated = expected_shapes(p)
    held = fw.shapes(obj, list(shapes))
    for slot, shape in shapes.items():
        if slot in held and tuple(shape) != tuple(held[slot]):
            raise ShapeMismatchError(
                f"{p.source.label} -> {p.target.label}: slot {slot!r} expects shape {tuple(held[slot])}, "
                f"translated source has {tuple(shape)}; the target was not changed")
    target_dtypes = {s: np.dtype(d) for s, d in held_dtypes(p, list(shapes)).items()}
    source_dtypes = {s: np.dtype(d) for s, d in p.source.dtypes(p.rule, p.source_hp).items()}
    if not allow_overflow and _may_overflow(source_dtypes, target_dtypes):
        for slot, array in (translated or translate(p)).items():  # this one layer, converted and dropped
            if slot in target_dtypes:
                cast_checked(array, target_dtypes[slot], f"{p.source.label} -> {p.target.label} slot {slot!r}")
    destinations = fw.destinations(obj, list(shapes))
    fresh = {} if destinations else fw.fresh(obj, list(shapes))
    into = destinations or fresh
    slots = direct.routes(p, into, source_dtypes, target_dtypes) if into else None
    return Route(slots, destinations, fresh)


def held_dtypes(p, slots) -> dict:
    """The dtypes of ``p``'s target tensors at ``slots``; {} where its framework cannot say."""
    try:
        return p.target.framework.dtypes(p.target.obj, slots)
    except NotImplementedError:
        return {}


def _may_overflow(source_dtypes: dict, target_dtypes: dict) -> bool:
    """Whether some target dtype might not hold some source tensor's values (a narrowing cast)."""
    for dst in set(target_dtypes.values()):
        for src in set(source_dtypes.values()):
            if src == dst or (is_floating(src) and is_floating(dst) and widens(src, dst)):
                continue
            if src.kind in "biu" and dst.kind in "biu" and np.can_cast(src, dst, "safe"):
                continue
            return True
    return False


def aliased(pairs, taken) -> bool:
    """Whether a tensor some pair writes is memory a later pair reads (a model ported into itself, layers
    swapped): then every pair is converted before any is assigned, as layer-by-layer would read new values."""
    written = sorted((*direct.byte_span(t), i) for i, route in enumerate(taken)
                     for t in route.destinations.values())
    written = [(lo, hi, i) for lo, hi, i in written if hi > lo]
    if not written or not any(hasattr(p.source, "framework") for p in pairs):
        return False
    starts = [w[0] for w in written]
    reach = np.maximum.accumulate([w[1] for w in written])
    for j, p in enumerate(pairs):
        if not hasattr(p.source, "framework"):
            continue  # a checkpoint's memory is never a live model's
        for array in p.source.read(p.rule, p.source_hp).values():
            lo, hi = direct.byte_span(array)
            k = bisect.bisect_left(starts, hi) - 1
            while k >= 0 and reach[k] > lo:
                if written[k][1] > lo and written[k][2] < j:
                    return True
                k -= 1
    return False


# -- converting and assigning ------------------------------------------------------------------------------

def assign_direct(p, route: Route, watch: Watch) -> dict:
    """Copy each source tensor of ``p`` straight into its target tensor (or a fresh buffer its target then
    adopts); the target tensors written. NaN/Inf are counted on each copy just made, where the bytes are the
    source's (same dtype, moved only), so the source is not read a second time for it."""
    native = p.source.read(p.rule, p.source_hp)
    written, counted = {}, {}
    for slot, (src_slot, steps) in route.slots.items():
        dst = route.destinations.get(slot)
        if dst is None:
            dst = direct.empty_aligned(*route.fresh[slot])
        view = direct.viewed(np.asarray(native[src_slot]), steps)
        if tuple(view.shape) != tuple(dst.shape):
            raise WeightportError(f"{p.source.label} -> {p.target.label}: rule {p.rule.name!r} said slot {slot!r} "
                                  f"is {tuple(dst.shape)} but its tensor is {tuple(view.shape)} (a bug in the "
                                  "rule's shapes); the target may be partly changed")
        direct.copy_into(dst, view)
        if src_slot not in counted:
            counted[src_slot] = direct.nonfinite_in(dst)
        written[slot] = dst
    watch.source(p, native, counted)
    if route.fresh:
        p.target.framework.adopt(p.target.obj, written)
    return written


def general_arrays(p, watch: Watch) -> dict:
    """``p``'s target tensors through the canonical form, cast to the target's dtypes (checked and noted)."""
    arrays = translate(p, watch)
    held = p.target.framework.shapes(p.target.obj, list(arrays))
    for slot, arr in arrays.items():
        if slot in held and tuple(arr.shape) != tuple(held[slot]):
            raise WeightportError(f"{p.source.label} -> {p.target.label}: slot {slot!r} was checked as "
                                  f"{tuple(held[slot])} but translated as {tuple(arr.shape)} (a bug in rule "
                                  f"{p.rule.name!r}'s shapes); the target may be partly changed")
    for slot, dt in held_dtypes(p, list(arrays)).items():
        if slot in arrays:
            arrays[slot] = watch.cast(p, f"{p.source.label} -> {p.target.label} slot {slot!r}", arrays[slot], dt)
    return arrays
