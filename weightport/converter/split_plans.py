"""A packed layer's parts in a saved plan: what a step records so that ``planning.replay`` runs it again with no
model and no traced run (which are what settled the parts' layout in the first place).

A step reading one part of a packed source layer (``qkv_proj[query]`` into a
separate ``query_dense``) records the packed layer (path, layout, rule, hp,
tensor names, canonical shapes) and where the part lies (``slices.cut``). A
step writing a packed target tensor from separate source layers records the
packed layer (no names: it is the target) and, for each part, its source
layer as an ordinary step would (path, layout, rule, hp, tensor names,
shapes) with its cut. Replay builds the same ``Slice`` and ``Assembled`` nodes
the conversion used, so the same code writes the same bytes.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeMismatchError, UsageError
from ..mappings.rule import registry
from .plan import Pair, tuples
from .slices import Assembled, Slice, cut_columns


def record(p) -> dict:
    """The ``Step.split`` of pair ``p``: empty unless its source is a packed layer's part or an assembly of parts."""
    if isinstance(p.source, Slice):
        part = p.source
        return {"packed": _packed(part.base, part.base_rule, part.base_hp, with_names=True), "cut": dict(part.record)}
    if isinstance(p.source, Assembled):
        whole = p.source
        return {"packed": _packed(whole.base, whole.rule, whole.hp, with_names=False),
                "parts": [{"source": q.source.path, "layout": q.source.layout, "rule": q.rule.name,
                           "source_hp": q.source_hp, "target_hp": q.target_hp,
                           "names": dict(getattr(q.source, "names", {})), "shapes": q.source_shapes,
                           "cut": dict(q.target.record)} for q in whole.parts]}
    return {}


def _packed(node, rule, hp, with_names: bool) -> dict:
    out = {"path": node.path, "layout": node.layout, "rule": rule.name, "hp": hp,
           "shapes": node.canonical_shapes(rule, hp)}
    if with_names:
        out["names"] = dict(getattr(node, "names", {}))
    return out


class Recorded:
    """The packed target layer of an assembly, as the plan recorded it: a path, a layout and canonical shapes."""

    inferred = False

    def __init__(self, path, layout, shapes):
        self.path, self.label, self.layout = path, path or "<root>", layout
        self.shapes = [tuple(s) for s in shapes]

    def canonical_shapes(self, rule, hp):
        return list(self.shapes)


def replayed(step, ckpt, layer):
    """The source node of a split ``step`` on ``ckpt``, every name, shape and slice bound checked first.

    ``layer(path, layout, rule, hp, names)`` reads one recorded layer of the
    checkpoint (its tensors checked to be there), as planning reads a step's.
    """
    split = tuples(step.split)
    _check_record(step, split)
    packed = split["packed"]
    rule, hp = registry.get(packed["rule"]), dict(packed["hp"])
    if "cut" in split:
        return _part(step, packed, rule, hp, split["cut"], ckpt, layer)
    return _assembled(step, packed, rule, hp, split["parts"], ckpt, layer)


PACKED = ("path", "layout", "rule", "hp", "shapes")
PART = ("source", "layout", "rule", "source_hp", "target_hp", "names", "shapes", "cut")


def _check_record(step, split) -> None:
    """Refuse a split record that lacks a field replay reads, naming it."""
    packed = split.get("packed") if isinstance(split, dict) else None
    if not isinstance(packed, dict) or ("cut" in split) == ("parts" in split):
        missing = "'packed' and one of 'cut' or 'parts'"
    else:
        wanted = [(packed, PACKED + (("names",) if "cut" in split else ()))]
        wanted += [(q, PART) for q in split.get("parts", ())]
        gaps = [k for record, keys in wanted for k in keys if not isinstance(record, dict) or k not in record]
        gaps += ["cut"] if "cut" in split and not isinstance(split["cut"], dict) else []
        missing = ", ".join(repr(k) for k in dict.fromkeys(gaps)) if gaps else ""
    if missing:
        raise UsageError(f"plan step {step.source} -> {step.target}: its record of the packed layer it splits "
                         f"lacks {missing} (found {step.split}); make the plan again with --dry-run --save-plan")


def _part(step, packed, rule, hp, where: dict, ckpt, layer):
    """The Slice a step reads: the packed source layer's tensors, cut where the plan says."""
    names = dict(packed["names"])
    base = layer(packed["path"], packed["layout"], rule, hp, names)
    shapes = base.canonical_shapes(rule, hp)
    what = f"{ckpt.path}: packed layer {packed['path']} (tensors {sorted(names.values())})"
    if not shapes:
        raise ShapeMismatchError(f"{what} does not fit rule {rule.name!r} as the plan reads it; nothing was written")
    cut_columns(dict(where), shapes[0][-1], what)  # the slice's bounds, against the tensors in this checkpoint
    if [tuple(s) for s in shapes] != [tuple(s) for s in packed["shapes"]]:
        raise ShapeMismatchError(f"{what} has shapes {shapes}, the plan expects {list(packed['shapes'])}; "
                                 "nothing was written")
    part = Slice(base, rule, hp, dict(where))
    part.candidates = [(registry.get(step.rule), step.source_hp)]
    return part


def _assembled(step, packed, rule, hp, parts, ckpt, layer):
    """The Assembled node a step writes: each part read from its own source layer, placed where the plan says."""
    from .engine import translate

    target = Recorded(packed["path"], packed["layout"], packed["shapes"])
    pairs = []
    for q in parts:
        q_rule, q_hp = registry.get(q["rule"]), dict(q["source_hp"])
        node = layer(q["source"], q["layout"], q_rule, q_hp, dict(q["names"]))
        where = f"{ckpt.path}: {q['source']}, a part of packed layer {target.label}"
        cut_columns(dict(q["cut"]), target.shapes[0][-1], where)
        part = Slice(target, rule, hp, dict(q["cut"]))
        shapes, expected = node.canonical_shapes(q_rule, q_hp), part.canonical_shapes(q_rule, dict(q["target_hp"]))
        if shapes is None or [tuple(s) for s in shapes] != [tuple(s) for s in q["shapes"]] or shapes != expected:
            raise ShapeMismatchError(f"{where}: has shapes {shapes}, the plan expects {list(q['shapes'])} for "
                                     f"its part {expected}; nothing was written")
        pairs.append(Pair(node, part, q_rule, q_hp, dict(q["target_hp"]), shapes, shapes, "split"))
    _check_cover(pairs, target)
    return Assembled(pairs, translate)


def _check_cover(pairs, target) -> None:
    """Every output of the packed tensor written by exactly one part (else some would be left zero)."""
    outputs = target.shapes[0][-1]
    columns = np.sort(np.concatenate([p.target.columns for p in pairs])) if pairs else np.array([], int)
    if len(columns) != outputs or not np.array_equal(columns, np.arange(outputs)):
        raise ShapeMismatchError(f"{target.label}: the plan's parts {[p.source.label for p in pairs]} write "
                                 f"{len(columns)} outputs ({len(set(columns.tolist()))} distinct) of its {outputs}; "
                                 "each must be written once. Nothing was written")
