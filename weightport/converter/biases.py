"""A bias one side's layers add and the other's lack (``Rule.optional_bias``: a conv's ``use_bias``).

keras.applications builds every ResNet conv with a bias, each followed by a
BatchNorm; transformers builds them without. Shapes then differ, the convs do
not pair, and the look-alikes around them stay ambiguous. Where all the
layers of one kind and kernel shape lack the bias on one side and have it on
the other, the port keeps the function instead:

- source without, target with: the target's biases are written as zeros;
- source with, target without: a bias of zeros is simply dropped; any other
  is folded into the one layer that reads the conv's output, when that layer
  subtracts a per-channel vector from its input first (``Rule.input_shift``: a
  BatchNorm's moving mean, ``mean - bias``). Only a traced run that saw every
  operation proves that layer alone reads that output, with nothing between
  (``Flow.tapped``); without that proof the port is refused, naming use_bias.

The nodes are replaced by views (``ZeroBias``, ``BiasDropped``, ``MeanShifted``)
before pairing, so the pairing, the plan and the assignment see layers that
agree; each view says what it did in its hp, for the plan.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigMismatchError, ShapeMismatchError, UsageError


class View:
    """A node read through a change of its weights; everything else is the node's (``base``)."""

    def __init__(self, base, candidates):
        self.base, self.candidates = base, candidates

    def pairing_kind(self):
        """None: a view pairs as a kind of its own (``pairs.fitting``), not as the checkpoint groups it reads."""
        return None

    def __getattr__(self, name):
        if name == "checkpoint":  # never copied byte for byte from its file: it is not what the file holds
            raise AttributeError(name)
        return getattr(self.base, name)


def _bias_of(rule, hp):
    """(hp key, index of the bias among the canonical slots with it) of ``rule``, else None."""
    if not rule.optional_bias:
        return None
    key, slot = rule.optional_bias
    return key, rule.canonical({**hp, key: True}).index(slot)


class BiasView(View):
    """A conv read with its bias added or removed (``_base_hp``: the hp the node itself is read under)."""

    def _base_canonical(self, rule, hp) -> tuple:
        """(the node's own canonical weights, where the bias sits among the slots that hold one)."""
        base_hp = self._base_hp(rule, hp)
        return rule.to_canonical(self.layout, base_hp, self.base.read(rule, base_hp)), _bias_of(rule, hp)[1]


class ZeroBias(BiasView):
    """A layer without a bias, read as one with a bias of zeros (its target has one)."""

    def __init__(self, base):
        super().__init__(base, [(r, {**hp, r.optional_bias[0]: True, "zero_bias": True})
                                for r, hp in base.candidates if r.optional_bias])

    def _base_hp(self, rule, hp):
        return {**{k: v for k, v in hp.items() if k != "zero_bias"}, rule.optional_bias[0]: False}

    def canonical_shapes(self, rule, hp):
        if not rule.optional_bias:  # another rule's reading of the node (a file group's): the node's own
            return self.base.canonical_shapes(rule, hp)
        shapes = self.base.canonical_shapes(rule, self._base_hp(rule, hp))
        if shapes is None or not shapes:
            return shapes
        _, at = _bias_of(rule, hp)
        return shapes[:at] + [(int(hp.get("filters") or shapes[0][-1]),)] + shapes[at:]

    def read(self, rule, hp) -> dict:
        if not rule.optional_bias:
            return self.base.read(rule, hp)
        canonical, at = self._base_canonical(rule, hp)
        zeros = np.zeros(self.canonical_shapes(rule, hp)[at], np.asarray(canonical[0]).dtype)
        return rule.from_canonical(self.layout, hp, canonical[:at] + [zeros] + canonical[at:])

    def dtypes(self, rule, hp) -> dict:
        if not rule.optional_bias:
            return self.base.dtypes(rule, hp)
        found = self.base.dtypes(rule, self._base_hp(rule, hp))
        first = next(iter(found.values()))
        return {s: found.get(s, first) for s in rule.native_slots(self.layout, hp)}


class BiasDropped(BiasView):
    """A layer with a bias, read without it: the bias is zero, or folded into its reader (``MeanShifted``)."""

    def __init__(self, base, into: str):
        super().__init__(base, [(r, {**hp, r.optional_bias[0]: False, "bias_folded_into": into})
                                for r, hp in base.candidates if r.optional_bias])

    def _base_hp(self, rule, hp):
        return {**{k: v for k, v in hp.items() if k != "bias_folded_into"}, rule.optional_bias[0]: True}

    def canonical_shapes(self, rule, hp):
        if not rule.optional_bias:
            return self.base.canonical_shapes(rule, hp)
        shapes = self.base.canonical_shapes(rule, self._base_hp(rule, hp))
        _, at = _bias_of(rule, hp)
        return None if shapes is None else shapes[:at] + shapes[at + 1:]

    def bias(self) -> np.ndarray:
        """The bias, in canonical form."""
        canonical, at = self._base_canonical(*self.candidates[0])
        return np.asarray(canonical[at])

    def read(self, rule, hp) -> dict:
        if not rule.optional_bias:
            return self.base.read(rule, hp)
        canonical, at = self._base_canonical(rule, hp)
        return rule.from_canonical(self.layout, hp, canonical[:at] + canonical[at + 1:])

    def dtypes(self, rule, hp) -> dict:
        if not rule.optional_bias:
            return self.base.dtypes(rule, hp)
        found = self.base.dtypes(rule, self._base_hp(rule, hp))
        return {s: found[s] for s in rule.native_slots(self.layout, hp)}


class MeanShifted(View):
    """The layer that alone reads a conv's output, read with that conv's bias folded into its input shift."""

    def __init__(self, base, conv: BiasDropped):
        self.conv = conv
        super().__init__(base, [(r, {**hp, "bias_folded_from": conv.label}) for r, hp in base.candidates])

    def read(self, rule, hp) -> dict:
        if not rule.input_shift:
            raise UsageError(f"{self.label}: a conv's bias was folded into it, which rule {rule.name!r} cannot hold")
        canonical = rule.to_canonical(self.layout, hp, self.base.read(rule, hp))
        at = rule.canonical(hp).index(rule.input_shift)
        shift = np.asarray(canonical[at])
        wide = np.result_type(shift.dtype, np.float32)  # summed in float32 at least; bf16 rounded once
        canonical[at] = (shift.astype(wide) - self.conv.bias().astype(wide)).astype(shift.dtype)
        return rule.from_canonical(self.layout, hp, canonical)


# -- deciding --------------------------------------------------------------------------------------------------

def _kinds(nodes) -> dict:
    """(rule name, kernel shape) -> {has bias: [nodes]} for the nodes whose first rule has an optional bias."""
    found: dict = {}
    for n in nodes:
        rule, hp = n.candidates[0]
        if not rule.optional_bias or rule.optional_bias[0] not in hp:
            continue
        shapes = n.canonical_shapes(rule, hp)
        if shapes:
            kind = found.setdefault((rule.name, tuple(shapes[0])), {})
            kind.setdefault(bool(hp[rule.optional_bias[0]]), []).append(n)
    return found


def _sole_reader(node, nodes, flow):
    """(the node that alone reads ``node``'s output, with nothing between, if its rule has an input shift of the
    bias' size; else None, why not)."""
    if flow is None or not flow.complete or not flow.sees_activations:
        return None, ("no traced run of the source model saw every operation around it (from a checkpoint: pass its "
                      "own model as model=)")
    readers = flow.readers.get(node.path, set())
    rule, hp = node.candidates[0]
    if hp.get("activation"):
        return None, f"it applies {hp['activation']} to its output itself"
    if node.path in flow.tapped or len(readers) != 1:
        return None, f"its output is read by {sorted(readers) or 'no layer'}" + (
            " and by operations between layers (or returned)" if node.path in flow.tapped else "")
    (path,) = readers
    reader = next((n for n in nodes if n.path == path), None)
    shift = reader.candidates[0][0].input_shift if reader is not None else ""
    if not shift or flow.feeds.get(path) != {node.path}:
        return None, f"its output goes to {path}, which does not subtract a per-channel mean from it alone"
    r_rule, r_hp = reader.candidates[0]
    shapes, names = reader.canonical_shapes(r_rule, r_hp), r_rule.canonical(r_hp)
    bias = node.canonical_shapes(rule, hp)[_bias_of(rule, hp)[1]]
    if shapes is None or shift not in names or tuple(shapes[names.index(shift)]) != tuple(bias):
        return None, f"its reader {path} holds no {shift} of the bias' shape {bias}"
    return reader, ""


def adapt(src, tgt, source_flow, strict) -> tuple:
    """(``src`` with views where every layer of a kind and kernel shape lacks the bias on one side and has it on
    the other, notes for the report, a hint for a refusal where a kind mixes both); ``source_flow()`` traces
    the source only when a bias must be folded. Refuses (``strict``) a bias it can neither drop nor fold."""
    views, zeroed, dropped, folded, mixed, kept = {}, [], [], [], [], []
    theirs = _kinds(tgt)
    for kind, mine in _kinds(src).items():
        other = theirs.get(kind, {})
        if not other or set(mine) == set(other):
            continue
        if len(mine) != 1 or len(other) != 1:
            mixed.append((kind, mine, other))
            continue
        (has, members), = mine.items()
        for n in members:
            if not has:
                views[id(n)] = ZeroBias(n)
                zeroed.append(n.label)
                continue
            view = BiasDropped(n, "zeros")
            if not np.any(view.bias()):
                views[id(n)] = view
                dropped.append(n.label)
                continue
            reader, why = _sole_reader(n, src, source_flow())
            if reader is None:
                kept.append(_refuse(n, next(iter(other.values())), why, strict))
                continue
            views[id(n)] = view = BiasDropped(n, reader.label)
            views[id(reader)] = MeanShifted(reader, view)
            folded.append(f"{n.label} -> {reader.label}")
    return [views.get(id(n), n) for n in src], _notes(zeroed, dropped, folded) + kept, _mixed_hint(mixed)


def exact(hp: dict) -> bool:
    """Whether a pair's source hp (a view's) keeps every value as it is: a folded bias changes two layers'."""
    return not hp.get("bias_folded_from") and hp.get("bias_folded_into", "zeros") == "zeros"


def _refuse(node, theirs, why: str, strict) -> str:
    """Refuse a bias that can neither be dropped nor folded (``strict``), else say it (the layer stays unpaired)."""
    rule, hp = node.candidates[0]
    key = rule.optional_bias[0]
    text = (f"source layer {node.label} ({rule.name}) adds a bias ({key}=True) that the target's {rule.name} layers of "
            f"its kernel shape lack ({key}=False: {', '.join(b.label for b in theirs[:3])}"
            f"{' ...' if len(theirs) > 3 else ''}); it is not zero, and it cannot be folded into the layer reading "
            f"its output: {why}")
    if strict:
        raise ConfigMismatchError(f"{text}. The target was not changed. Build the target's layers with {key}=True "
                                  "(bias=True in torch), or pass strict=False to port the rest without them")
    return text + "; not ported"


def _notes(zeroed, dropped, folded) -> list:
    listed = lambda names: ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")  # noqa: E731
    notes = []
    if zeroed:
        notes.append(f"{len(zeroed)} source layer(s) have no bias where their target layers have one (use_bias): the "
                     f"target biases were set to zeros, which computes the same function: {listed(zeroed)}")
    if dropped:
        notes.append(f"{len(dropped)} source layer(s) have a bias of zeros where their target layers have none "
                     f"(use_bias): dropped, which computes the same function: {listed(dropped)}")
    if folded:
        notes.append(f"{len(folded)} source layer(s) have a bias where their target layers have none (use_bias): each "
                     "was folded into the moving mean of the BatchNorm-like layer that alone reads its output "
                     "(mean - bias), which computes the same function but not the same values: " + listed(folded))
    return notes


def _mixed_hint(mixed) -> str:
    """For a refusal: kinds of layer whose bias (use_bias) differs between sides, some with and some without."""
    if not mixed:
        return ""
    parts = []
    for (name, kernel), mine, other in mixed[:3]:
        say = lambda side: "; ".join(f"use_bias={k}: {', '.join(n.label for n in v[:3])}"  # noqa: E731
                                     for k, v in sorted(side.items()))
        parts.append(f"{name} {'x'.join(map(str, kernel))}: source {say(mine)}; target {say(other)}")
    return (" Some layers cannot pair because one side adds a bias (use_bias) the other lacks, and the layers "
            "around them then look alike: " + " | ".join(parts) + ". Build both with the same use_bias, or pass "
            "hints=.")


def replayed(node, hp: dict, ckpt):
    """A saved plan's source ``node`` read as the port that made the plan read it (its hp says how)."""
    if not exact(hp):
        raise UsageError(f"{ckpt.path}: the plan folds a conv's bias into a BatchNorm's mean at {node.label}, which "
                         "a plan cannot do again from the checkpoint alone; port the checkpoint again instead")
    if hp.get("zero_bias"):
        return ZeroBias(node)
    if "bias_folded_into" in hp:
        view = BiasDropped(node, "zeros")
        if np.any(view.bias()):
            raise ShapeMismatchError(f"{ckpt.path}: the plan drops the bias of {node.label} as all zeros, but the "
                                     "checkpoint's is not; nothing was written. Make the plan again for this file")
        return view
    return node
