"""Pair source layers with target layers, by kind, order and shape; hints override.

Works on any layer nodes that offer ``path``, ``label``, ``layout``,
``candidates`` ((rule, hp) pairs) and ``canonical_shapes(rule, hp)``: live
layers and checkpoint groups alike. It never looks at a layer kind by name.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from ..errors import ConfigMismatchError, MatchError, ShapeMismatchError, UsageError, WeightportError
from .plan import Plan, Step


@dataclass
class Pair:
    source: object
    target: object
    rule: object
    source_hp: dict
    target_hp: dict
    source_shapes: list | None
    target_shapes: list | None

    @property
    def shapes_agree(self) -> bool:
        return self.source_shapes is not None and self.source_shapes == self.target_shapes


def common_rule(a, b):
    """The most specific rule that handles both nodes, with each side's hyperparameters."""
    for rule, hp_a in a.candidates:
        for rule_b, hp_b in b.candidates:
            if rule is rule_b:
                return (rule,) + rule.share(hp_a, hp_b)
    return None


def adopted_rule(a, b):
    """``b``'s rule and hyperparameters for ``a``, a checkpoint group whose rule was only guessed from shapes.

    Shapes cannot tell a depthwise from a grouped convolution, or a GroupNorm
    from a LayerNorm; the live layer it is paired with can. Taken only when the
    group's tensors are exactly that rule's slots and their shapes match.
    """
    if not getattr(a, "inferred", False):
        return None
    for rule, hp in b.candidates:
        if a.layout not in rule.layouts():
            continue
        try:
            slots = set(rule.native_slots(a.layout, hp))
        except (KeyError, ValueError, TypeError):
            continue
        if set(a.names) <= slots and a.canonical_shapes(rule, hp) == b.canonical_shapes(rule, hp):
            return rule, hp, hp
    return None


def pair(a, b) -> Pair | None:
    found = common_rule(a, b) or adopted_rule(a, b)
    if found is None:
        return None
    rule, hp_a, hp_b = found
    return Pair(a, b, rule, hp_a, hp_b, a.canonical_shapes(rule, hp_a), b.canonical_shapes(rule, hp_b))


def describe(node) -> str:
    rule, hp = node.candidates[0]
    shapes = node.canonical_shapes(rule, hp)
    return f"{node.label} ({rule.name}, {_fmt_shapes(shapes)})"


def _fmt_shapes(shapes) -> str:
    if shapes is None:
        return "weights not in the expected layout"
    return ", ".join("x".join(map(str, s)) or "scalar" for s in shapes) or "no weights"


def _find(nodes, path, side):
    for n in nodes:
        if path in (n.path, n.label, getattr(getattr(n, "obj", None), "name", None)):
            return n
    close = difflib.get_close_matches(path, [n.path for n in nodes], n=3)
    raise UsageError(f"hint names {side} layer {path!r}, which is not among the {side}'s rule-bearing layers"
                     + (f"; did you mean {close}?" if close else ""))


def _align(src, tgt) -> list:
    """Order-preserving pairing maximising pairs of equal kind and shapes (longest common subsequence)."""
    n, m = len(src), len(tgt)
    ok = [[False] * (m + 1) for _ in range(n + 1)]
    for i, a in enumerate(src):
        for j, b in enumerate(tgt):
            p = pair(a, b)
            ok[i][j] = p if p is not None and p.shapes_agree else False
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            best[i][j] = max(best[i + 1][j], best[i][j + 1], (best[i + 1][j + 1] + 1) if ok[i][j] else 0)
    pairs, i, j = [], 0, 0
    while i < n and j < m:
        if ok[i][j] and best[i][j] == best[i + 1][j + 1] + 1:
            pairs.append(ok[i][j])
            i, j = i + 1, j + 1
        elif best[i + 1][j] >= best[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def _by_path(src, tgt) -> list | None:
    """Same names on both sides (a same-layout checkpoint into its model): pair by name."""
    by_path = {b.path: b for b in tgt}
    if len(src) != len(tgt) or set(by_path) != {a.path for a in src}:
        return None
    pairs = [pair(a, by_path[a.path]) for a in src]
    return pairs if all(p is not None for p in pairs) else None


def _positional(src, tgt) -> list | None:
    """Same number of layers and the same kinds in the same order: pair by position."""
    if len(src) != len(tgt):
        return None
    pairs = [pair(a, b) for a, b in zip(src, tgt)]
    return pairs if all(p is not None for p in pairs) else None


def _classes(nodes, wanted=()) -> dict:
    """(kind, canonical shapes) -> the nodes of that class, in order: layers that only order tells apart.

    A node several rules could explain (a checkpoint group: Linear or
    Embedding?) is classed under the first reading found in ``wanted``, the
    other side's classes.
    """
    out = {}
    for n in nodes:
        keys = [(r.name, repr(_shapes_or_none(n, r, h))) for r, h in n.candidates]
        out.setdefault(next((k for k in keys if k in wanted), keys[0]), []).append(n)
    return out


def _shapes_or_none(node, rule, hp):
    """Canonical shapes, or None where they need what only the paired layer knows (MHA heads from a file)."""
    try:
        return node.canonical_shapes(rule, hp)
    except WeightportError:
        return None


def _template(path: str) -> str:
    return re.sub(r"\d+", "#", path)


def _words(path: str) -> set:
    return {w for w in re.split(r"[^a-z]+", path.lower()) if w}


def _scrambled(nodes) -> bool:
    """Look-alikes that differ by more than a number, from a file that does not keep the model's order.

    Natural sorting restores ``layers.2`` before ``layers.10``, but not
    ``query`` before ``key``: such layers cannot be paired by position.
    """
    return len({_template(n.path) for n in nodes}) > 1 and any(getattr(n, "unordered", False) for n in nodes)


def _abbreviates(short: str, long: str) -> bool:
    """``attn`` for ``attention``, ``out`` for ``output``: same first letter, the rest in order."""
    if short == long:
        return True
    if len(short) < 2 or short[0] != long[0]:
        return False
    rest = iter(long)
    return all(ch in rest for ch in short)


def _names_agree(words: set, other: set) -> bool:
    return any(_abbreviates(*sorted((a, b), key=len)) for a in words for b in other)


def _by_names(srcs, tgts) -> list | None:
    """Pairs for scrambled look-alikes, from the words that tell them apart (query, key...); None if names can't say.

    Each name pattern (numbers aside) must find exactly as many target layers
    whose names hold one of its own words as it has members; one pattern may
    take what is left. Members pair in numeric order with targets in model order.
    """
    templates: dict = {}
    for a in srcs:
        templates.setdefault(_template(a.path), []).append(a)
    shared = set.intersection(*(_words(t) for t in templates))
    claimed = {t: [b for b in tgts if _names_agree(_words(t) - shared, _words(b.path))] for t in templates}
    settled = [t for t in templates if len(claimed[t]) == len(templates[t])]
    taken = [id(b) for t in settled for b in claimed[t]]
    rest = [t for t in templates if t not in settled]
    if len(taken) != len(set(taken)) or len(rest) > 1:
        return None
    if rest:
        claimed[rest[0]] = [b for b in tgts if id(b) not in set(taken)]
        if len(claimed[rest[0]]) != len(templates[rest[0]]):
            return None
    return [pair(a, b) for t, members in templates.items() for a, b in zip(members, claimed[t])]


def _scrambled_error(srcs) -> MatchError:
    names = ", ".join(n.label for n in srcs[:6]) + (" ..." if len(srcs) > 6 else "")
    return MatchError(f"{len(srcs)} source layers look alike (same kind and shapes) and the file stores them in "
                      f"alphabetical, not model, order: {names}. Their names do not say which target layer each "
                      "is, so they cannot be paired safely; pass model= (the checkpoint's own model), or "
                      "hints={source_path: target_path}. The target was not changed")


def _by_class(src, tgt) -> list | None:
    """Pair within each (kind, shapes) class, when every class has equal counts on both sides.

    Layers of different kind or shape cannot be confused. Look-alikes that
    differ by more than a number pair by the words in their names where those
    settle it (``self.query`` with ``l0_query``), else by position, unless the
    file stored them alphabetically: then they are refused.
    """
    if len(src) != len(tgt):
        return None
    ct = _classes(tgt)
    cs = _classes(src, ct)
    if {k: len(v) for k, v in cs.items()} != {k: len(v) for k, v in ct.items()}:
        return None
    pairs = []
    for key, members in cs.items():
        found = _by_names(members, ct[key]) if len({_template(a.path) for a in members}) > 1 else None
        if found is None and _scrambled(members):
            raise _scrambled_error(members)
        pairs += found or [pair(a, b) for a, b in zip(members, ct[key])]
    if any(p is None for p in pairs):
        return None
    order = {id(a): i for i, a in enumerate(src)}
    return sorted(pairs, key=lambda p: order[id(p.source)])


def match(source_nodes, target_nodes, hints: dict | None = None, strict: bool = True) -> tuple:
    """Pair the nodes; return (Plan, [Pair]) or raise without touching anything.

    strict: every source and target layer must pair with equal shapes and no
    configuration error; otherwise what pairs is kept and the rest reported.
    """
    src, tgt = list(source_nodes), list(target_nodes)
    pairs = []
    for s_path, t_path in (hints or {}).items():
        a, b = _find(src, s_path, "source"), _find(tgt, t_path, "target")
        p = pair(a, b)
        if p is None:
            raise MatchError(f"hint pairs {describe(a)} with {describe(b)}, but no rule handles both")
        pairs.append(p)
        src.remove(a)
        tgt.remove(b)

    classes = _classes(src, _classes(tgt)).values()
    scrambled = [m for m in classes if _scrambled(m)]
    # look-alikes with different names (query, key...) pair by name where names agree, before order
    named = any(len({_template(a.path) for a in m}) > 1 for m in classes)
    positional = _by_path(src, tgt) or (None if scrambled or named else _positional(src, tgt))
    if positional is None or not all(p.shapes_agree for p in positional):
        positional = _by_class(src, tgt) or positional  # else keep it, for its precise shape errors
    if positional is None and scrambled:
        raise _scrambled_error(scrambled[0])  # an alignment by order would pair them blindly
    plan = Plan()
    if positional is not None:
        for p in positional:
            if p.shapes_agree:
                pairs.append(p)
                continue
            msg = (f"source layer {describe(p.source)} does not fit target layer {describe(p.target)}: "
                   f"expected {_fmt_shapes(p.target_shapes)}, found {_fmt_shapes(p.source_shapes)}{_config_note(p)}")
            if strict:
                raise ShapeMismatchError(msg + "; the target was not changed. Fix the model, pass hints=, "
                                         "or strict=False to copy only what fits")
            plan.unmatched_source.append(describe(p.source))
            plan.unmatched_target.append(describe(p.target))
    else:
        aligned = _align(src, tgt)
        used_s = {id(p.source) for p in aligned}
        used_t = {id(p.target) for p in aligned}
        plan.unmatched_source += [describe(a) for a in src if id(a) not in used_s]
        plan.unmatched_target += [describe(b) for b in tgt if id(b) not in used_t]
        pairs += aligned
        if strict and (plan.unmatched_source or plan.unmatched_target):
            raise MatchError(
                f"the source has {len(source_nodes)} rule-bearing layers and the target {len(target_nodes)}; "
                f"these have no counterpart of the same kind and shapes:\n"
                + "".join(f"  source: {d}\n" for d in plan.unmatched_source)
                + "".join(f"  target: {d}\n" for d in plan.unmatched_target)
                + "The target was not changed. Pass hints={source_path: target_path}, or strict=False "
                  "to copy only what pairs.")

    kept = []
    for p in pairs:
        if not p.shapes_agree:
            raise ShapeMismatchError(
                f"hinted pair {describe(p.source)} -> {describe(p.target)}: expected "
                f"{_fmt_shapes(p.target_shapes)}, found {_fmt_shapes(p.source_shapes)}{_config_note(p)}; "
                "the target was not changed")
        issues = p.rule.check(p.source_hp, p.target_hp)
        errors = [i for i in issues if i.severity == "error"]
        where = f"{p.source.label} -> {p.target.label} ({p.rule.name})"
        if errors and strict:
            raise ConfigMismatchError(f"{where}: " + "; ".join(map(str, errors))
                                      + ". The target was not changed; make the configurations agree")
        plan.issues += [f"{where}: {i}" for i in issues]
        if errors:
            plan.unmatched_source.append(describe(p.source))
            plan.unmatched_target.append(describe(p.target))
            continue
        kept.append(p)
        plan.steps.append(Step(
            source=p.source.label, target=p.target.label, rule=p.rule.name,
            source_layout=p.source.layout, target_layout=p.target.layout,
            source_hp=p.source_hp, target_hp=p.target_hp, shapes=p.source_shapes,
            transform=_transform_text(p), exact=p.rule.exact(p.source.layout, p.source_hp)
            and p.rule.exact(p.target.layout, p.target_hp)))
    return plan, kept


def _config_note(p: Pair) -> str:
    """Configuration errors that explain a shape difference (use_bias, center, affine...), for its message."""
    errors = [i for i in p.rule.check(p.source_hp, p.target_hp) if i.severity == "error"]
    return ("; the configurations differ: " + "; ".join(map(str, errors))) if errors else ""


def _transform_text(p: Pair) -> str:
    parts = []
    for layout, hp in ((p.source.layout, p.source_hp), (p.target.layout, p.target_hp)):
        if layout != "keras":
            parts.append(f"{layout}: {p.rule.describe(layout, hp)}")
    return " | ".join(parts) or "copy"
