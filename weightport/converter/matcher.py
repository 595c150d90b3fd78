"""Pair source layers with target layers, and say how each pair was made; refuse rather than guess.

Works on any layer nodes that offer ``path``, ``label``, ``layout``,
``candidates`` ((rule, hp) pairs) and ``canonical_shapes(rule, hp)``: live
layers and checkpoint groups alike. It never looks at a layer kind by name.

Layers of one kind and shapes ("look-alikes": an attention block's query and
key, a residual block's BatchNorms) are told apart by evidence, strongest
first: hints; identical paths; dataflow (the already-paired layers each one
follows and feeds, from one traced run of each model); the words of their
names; their position among repeated blocks (paths that differ only in
numbers). Declaration order alone is never used: two implementations of one
architecture declare, and even run, look-alikes in different orders. What no
evidence settles is refused with the candidates and a ready ``hints=`` line.
"""
from __future__ import annotations

import difflib
import re

from ..errors import (AmbiguityError, ConfigMismatchError, MatchError, ShapeMismatchError, UnsupportedLayerError,
                      UsageError)
from . import biases, constants, folding, guesses, input_pads, splits, tracing
from .evidence import Pairing
from .pairs import broken_ties, describe, fmt_shapes, pair, refuse_unsettled, tied_head_hint
from .plan import Pair, Plan, Step, reparametrized_notes, transform_text


def _aliases(node) -> set:
    """Every spelling a hint may use for a node: its path, a layer's name, a Keras layer's variable-path
    prefix with and without the model's own name first."""
    obj = getattr(node, "obj", None)
    names = {node.path, node.label, getattr(obj, "name", None)}
    keras_path = getattr(obj, "path", None) if not getattr(node, "loose", False) else None
    if isinstance(keras_path, str):
        names |= {keras_path, keras_path.partition("/")[2]}
    return {n for n in names if n}


def _find(nodes, path, side) -> list:
    """The nodes a hint names: the one it spells, else every node below it (a prefix pairs whole blocks)."""
    path = str(path)
    exact = [n for n in nodes if path in _aliases(n)]
    if exact:
        return exact[:1]
    below = [n for n in nodes if any(a.startswith(path.rstrip("./") + sep) for a in _aliases(n) for sep in "./")]
    if below:
        return below
    close = difflib.get_close_matches(path, [n.path for n in nodes], n=3)
    raise UsageError(f"hint names {side} layer {path!r}, which is not among the {side}'s rule-bearing layers, "
                     "nor a prefix of any" + (f"; did you mean {close}?" if close else ""))


def _by_path(src, tgt) -> list | None:
    """Same names on both sides (a same-layout checkpoint into its model): pair by name."""
    by_path = {b.path: b for b in tgt}
    if len(src) != len(tgt) or set(by_path) != {a.path for a in src}:
        return None
    pairs = [pair(a, by_path[a.path], "path") for a in src]
    return pairs if all(p is not None for p in pairs) else None


def _positional(src, tgt) -> list | None:
    """Same number of layers and the same kinds in the same order: pairs for precise shape errors only."""
    if len(src) != len(tgt):
        return None
    pairs = [pair(a, b) for a, b in zip(src, tgt)]
    return pairs if all(p is not None for p in pairs) else None


# -- the whole match ------------------------------------------------------------------------------


def match(source_nodes, target_nodes, hints: dict | None = None, strict: bool = True, flows=None,
          strict_config: bool = False, source_constants=None, options: dict | None = None) -> tuple:
    """Pair the nodes; return (Plan, [Pair]) or raise without touching anything.

    strict_config: configuration differences that are only warned about
    (epsilon, padding, activation) refuse the port too.
    strict: every target layer must be filled by an unambiguous pair of equal
    shapes and no configuration error; source layers the target does not ask
    for (a head) are reported and warned about, unless ``strict="both"``,
    which refuses them too. strict=False keeps what pairs and reports the
    rest. ``flows``: see ``Pairing``; ``source_constants()``: ``constants.held`` of the source model;
    ``options``: rule options (``converter.options``), for packed projections split here (``splits``).
    """
    src, tgt = _expanded(source_nodes, target_nodes), _expanded(target_nodes, source_nodes)
    source_nodes, target_nodes = list(src), list(tgt)
    # a layer holding another's very tensors (a tied head) is filled through it, never paired itself
    tied_s, tied_t = [n for n in src if getattr(n, "tied_to", None)], [n for n in tgt if getattr(n, "tied_to", None)]
    tied = {id(n) for n in tied_s + tied_t}
    src, tgt = [n for n in src if id(n) not in tied], [n for n in tgt if id(n) not in tied]
    pairs = _hinted(src, tgt, hints or {}, flows)
    plan = Plan()
    src, plan.issues[:0], bias_hint = biases.adapt(src, tgt, lambda: flows and flows(src, tgt, 0), strict)
    traced = (src, tgt)  # the nodes each side is traced among (the pairing's own runs, asked again)
    same = _by_path(src, tgt)
    if same is not None:
        pairs += same
    else:
        pairing, split = _split_packed(src, tgt, flows, options or {})
        pairs += split
        src, tgt = pairing.nodes
        ambiguous = pairing.run()
        pairs += pairing.pairs
        plan.issues += pairing.notes
        if ambiguous:
            error = _ambiguity_error(ambiguous, pairing, bias_hint)
            if strict:
                raise error
            plan.issues.append(str(error).split(". The target")[0])
        used_s = {id(p.source) for p in pairs}
        used_t = {id(p.target) for p in pairs}
        left_s = [a for a in src if id(a) not in used_s]
        left_t = [b for b in tgt if id(b) not in used_t]
        pairs += _orphans_paired(_untied(tied_s, pairs, "source"), _untied(tied_t, pairs, "target"),
                                 left_s, left_t, flows, strict)
        _refuse_broken_ties(broken_ties(tied_t, pairs, left_s), strict, plan)
        left_t = _left_alone(left_t, plan)
        computed, left_t = constants.filled(left_t, source_constants or dict, plan.issues, source_nodes)
        pairs += computed
        left_s = folding.fold_sources(left_s, pairs, lambda: pairing.side_flow(0), plan.issues)
        zeroed, left_t = folding.zero_targets(left_t, pairs, lambda: pairing.side_flow(1), plan.issues)
        pairs += zeroed
        _unmatched(plan, source_nodes, target_nodes, left_s, left_t, strict, tied_head_hint(left_t, pairs) + bias_hint)
    order = {id(a): i for i, a in enumerate(source_nodes)}  # the expanded nodes, parts included
    # a folded table keeps its place; zeros written into a target table come last
    key = lambda p: order.get(id(getattr(p.source, "base", p.source)), len(order))  # noqa: E731
    input_pads.counted(pairs, lambda side: flows and flows(*traced, side))
    return _checked_plan(plan, sorted(pairs, key=key), strict, strict_config)


def _unmatched(plan, source_nodes, target_nodes, left_s, left_t, strict, hint="") -> None:
    """Refuse what ``strict`` does not allow to stay unpaired (``hint`` added to the refusal); report the rest in
    ``plan``."""
    if strict and (left_t or (strict == "both" and left_s)):  # a source's surplus (a head) is only reported
        _refuse_unmatched(list(source_nodes), list(target_nodes), left_s, left_t, hint)
    if strict:
        _refuse_dropped_inputs(left_s)
    if left_s:
        listed = ", ".join(a.label for a in left_s[:8]) + (" ..." if len(left_s) > 8 else "")
        plan.issues.append(f"{len(left_s)} source layer(s) have no counterpart in the target and were not "
                           f"ported: {listed}")
    plan.unmatched_source += [describe(a) for a in left_s]
    plan.unmatched_target += [describe(b) for b in left_t]


def _split_packed(src, tgt, flows, options: dict) -> tuple:
    """(the Pairing of what is left, the pairs) once packed projections are split among separate layers."""
    pairing = Pairing(src, tgt, flows)
    split, used, images = splits.split(src, tgt, pairing.side_flow, options)
    return (pairing.without(used, images) if split else pairing), split


def _hinted(src, tgt, hints: dict, flows) -> list:
    """The pairs ``hints`` make (a hint naming two blocks pairs inside them by the usual evidence); the nodes
    they pair are taken out of ``src`` and ``tgt``."""
    pairs = []
    for s_path, t_path in hints.items():
        mine, theirs = _find(src, s_path, "source"), _find(tgt, t_path, "target")
        if len(mine) == len(theirs) == 1:
            p = pair(mine[0], theirs[0], "hint")
            if p is None:
                raise MatchError(f"hint pairs {describe(mine[0])} with {describe(theirs[0])}, but no rule handles both")
            found = [p]
        else:
            block = Pairing(mine, theirs, flows)
            left = block.run()
            if left:
                raise _ambiguity_error(left, block)
            found = block.pairs
        pairs += found
        for p in found:
            src.remove(p.source)
            tgt.remove(p.target)
    return pairs


def _left_alone(left_t, plan) -> list:
    """``left_t`` less the target input tables that hold zeros (nothing the source has is lost), noted."""
    zeros = [b for b in left_t if _zero_input_table(b)]
    plan.issues += [f"target layer {describe(b)} has no counterpart in the source; it holds only zeros and "
                    "was left as it is" for b in zeros]
    return [b for b in left_t if b not in zeros]


def _orphans_paired(orphans_s, orphans_t, left_s, left_t, flows, strict) -> list:
    """Pairs for tied layers whose owner found no counterpart (an MLM head declared before the token table it
    ties): each pairs in its own right with what is left on the other side. ``left_s``/``left_t`` lose what
    pairs and gain the orphans that do not."""
    found = []
    for mine, theirs in ((orphans_s, left_t), (left_s, orphans_t)):
        if mine and theirs:
            pairing = Pairing(mine, theirs, flows)
            ambiguous = pairing.run()
            if ambiguous and strict:
                raise _ambiguity_error(ambiguous, pairing)
            found += pairing.pairs
    paired = {id(n) for p in found for n in (p.source, p.target)}
    left_s[:] = [n for n in left_s + orphans_s if id(n) not in paired]
    left_t[:] = [n for n in left_t + orphans_t if id(n) not in paired]
    return found


def _untied(tied, pairs, side: str) -> list:
    """Tied nodes whose owner (the layer holding the same tensors) went unpaired: they are not filled either."""
    paired = {getattr(p, side).path for p in pairs}
    return [n for n in tied if n.tied_to not in paired]


def _expanded(nodes, others) -> list:
    """``nodes`` with each composite one (attention's four projections) replaced by its parts where no node
    of ``others`` could take it whole: the other implementation keeps those projections as layers of their own."""
    rules = {rule.name for n in others for rule, _ in n.candidates}
    out = []
    for n in nodes:
        parts = getattr(n, "parts", None)
        whole = any(rule.name in rules for rule, _ in n.candidates)
        out += parts if parts and not whole else [n]
    return out


def _zero_input_table(node) -> bool:
    """Whether ``node`` is an input table holding only zeros: a table whose rows are added to others' (RoBERTa's
    token types) then adds nothing, and one the other side lacks loses nothing."""
    return folding.is_input_table(node) and folding.holds_zeros(node)


def _refuse_broken_ties(broken, strict, plan) -> None:
    """A tie on the target's side only (``pairs.broken_ties``): refused under ``strict``, else said."""
    for a, t in broken:
        text = (f"target layer {t.label} is tied to {t.tied_to} (one tensor, filled from the source's table), but "
                f"the source keeps weights of its own for it in {describe(a)}: the target cannot hold both, and "
                "would compute something else there")
        if strict:
            raise MatchError(f"{text}. The target was not changed. Build the target untied (tie_word_embeddings="
                             f"False in a transformers config) so {t.label} takes them, or pass strict=False to "
                             f"port without {a.label}")
        plan.issues.append(text + f"; {a.label} was not ported")


def _refuse_dropped_inputs(left_s) -> None:
    """A source table that feeds the model is no head: the target computes something else without it."""
    for a in left_s:
        if folding.is_input_table(a) and not _zero_input_table(a):
            raise MatchError(
                f"source layer {describe(a)} feeds the model, but the target has no layer it pairs with, and its "
                "weights are not all zero: the ported target would compute something else. The target was not "
                "changed. Give the target such a layer, fold the table into one the target has yourself, "
                "or pass strict=False to port everything else")


def _untrained_advice(all_src) -> str:
    """What to do about target state no source tensor holds: a checkpoint may lack what its model has; a live
    source that has nothing like it computes without it (a Keras model's own preprocessing statistics)."""
    keep = ("strict=False keeps the target's own values (check that they are what the source's inputs expect) "
            "and ports everything else")
    if any(not hasattr(a, "obj") for a in all_src):
        return ("It is not trained (state the model computes), but the source holds no such tensor to tell its "
                "values: port from the source's live model (or pass it as model=) if that has such a layer; if "
                "not, " + keep)
    return ("It is not trained (state the model computes, as a preprocessing layer's statistics do), and the source "
            "model has no layer holding it, so the port cannot tell its values: " + keep)


def _namesake_note(b, left_s) -> str:
    """Where an unpaired source tensor has the loose target weight's own name, the cause is its shape, not a
    missing layer: say so, with both shapes."""
    slot = b.candidates[0][1]["slot"]
    for a in left_s:
        if re.split(r"[./]", a.path)[-1] == slot:
            return (f"The source's {describe(a)} has its name, but not its shape even with size-1 axes dropped "
                    "(the only change made without a rule, since a squeeze moves no value). ")
    return ""


def _refuse_unmatched(all_src, all_tgt, left_s, left_t, hint=""):
    """Raise the most precise error for layers left without a counterpart."""
    loose = [b for b in left_t if getattr(b, "loose", False)]
    if loose:
        b = loose[0]
        raise UnsupportedLayerError(
            f"target layer {b.label.rpartition(b.framework.sep)[0] or '<root>'!r} "
            f"({b.framework.display_name(b.obj)}) holds the weight {b.candidates[0][1]['slot']!r} "
            f"{tuple(b.candidates[0][1]['shape'])} but no rule handles its class, and no source tensor pairs with "
            "it by name and shape; the target was not changed. " + _namesake_note(b, left_s)
            + (_untrained_advice(all_src) if getattr(b, "untrained", False) and not _namesake_note(b, left_s)
               else "Register a rule for it (see `weightport rules`), or pass strict=False to port everything "
               "else.\n" + guesses.unpaired_advice(left_s, [b])))
    positional = _positional(all_src, all_tgt)
    if positional is not None:
        for p in positional:
            if not p.shapes_agree:
                raise ShapeMismatchError(
                    f"source layer {describe(p.source)} does not fit target layer {describe(p.target)}: "
                    f"expected {fmt_shapes(p.target_shapes)}, found {fmt_shapes(p.source_shapes)}"
                    f"{_config_note(p)}; the target was not changed. Fix the model, pass hints=, "
                    "or strict=False to copy only what fits")
    tables = [b for b in left_t if folding.is_input_table(b)]
    zero_hint = (f" A target table the source lacks ({', '.join(b.label for b in tables)}) keeps the function "
                 "where its rows are added to others' (as RoBERTa's token types) if it holds only zeros: zero it, "
                 "and the port leaves it as it is." if tables and len(tables) == len(left_t) and not left_s else "")
    if any(not hasattr(n, "obj") for n in left_s + left_t):
        zero_hint += (" A checkpoint cannot hold what some layers are configured with (position rows reserved "
                      "before the first in use, head counts): pass model= (a model of the checkpoint's own class, "
                      "its weights unused) to read that from it.")
    raise MatchError(
        f"the source has {len(all_src)} rule-bearing layer{'s' * (len(all_src) != 1)} and the target "
        f"{len(all_tgt)}; "
        "these have no counterpart of the same kind and shapes:\n"
        + "".join(f"  source: {describe(a)}\n" for a in left_s)
        + "".join(f"  target: {describe(b)}\n" for b in left_t)
        + "The target was not changed; strict=False copies only what pairs." + zero_hint + hint + "\n"
        + guesses.unpaired_advice(left_s, left_t))


def _ambiguity_error(classes, pairing, hint: str = "") -> AmbiguityError:
    lines = [f"  source: {', '.join(a.label for a in cls.src)}\n  target: {', '.join(b.label for b in cls.tgt)}"
             for cls in classes]
    unordered = any(getattr(a, "unordered", False) for cls in classes for a in cls.src)
    checkpoint = any(not hasattr(a, "obj") for cls in classes for a in cls.src + cls.tgt)
    traced = pairing.flows() is not None
    failed, given = pairing.untraced()
    why = ("the file stores its tensors in alphabetical, not model, order, and " if unordered else "") + \
        tracing.why_unsettled(traced, failed, tracing.unseen(pairing.flows(), classes) if traced else {},
                              checkpoint, given)
    advice = "\nThe target was not changed. " + guesses.look_alike_advice(classes)
    return AmbiguityError(
        f"layers that look alike (same kind and shapes) cannot be paired safely: {why}.\n" + "\n".join(lines)
        + advice + hint)


def _checked_plan(plan, pairs, strict, strict_config=False) -> tuple:
    """The plan's steps; configuration errors refuse (strict), warnings too with ``strict_config``."""
    kept = []
    for p in pairs:
        if not p.shapes_agree:
            raise ShapeMismatchError(
                f"{'hinted pair' if p.evidence == 'hint' else 'pair'} {describe(p.source)} -> {describe(p.target)}: "
                f"expected {fmt_shapes(p.target_shapes)}, found {fmt_shapes(p.source_shapes)}{_config_note(p)}; "
                "the target was not changed")
        refuse_unsettled(p)
        issues = p.rule.check(p.source_hp, p.target_hp)
        errors = [i for i in issues if i.severity == "error" or strict_config]
        issues += reparametrized_notes(p)
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
            transform=transform_text(p), exact=p.rule.exact(p.source.layout, p.source_hp)
            and p.rule.exact(p.target.layout, p.target_hp) and not p.source_hp.get("reparametrized")
            and not p.source_hp.get("folded") and biases.exact(p.source_hp),
            evidence=p.evidence))
    return plan, kept


def _config_note(p: Pair) -> str:
    """Configuration errors that explain a shape difference (use_bias, center, affine...), for its message."""
    errors = [i for i in p.rule.check(p.source_hp, p.target_hp) if i.severity == "error"]
    return ("; the configurations differ: " + "; ".join(map(str, errors))) if errors else ""
