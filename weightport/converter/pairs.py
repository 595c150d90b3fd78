"""What makes two layer nodes a pair: a rule both sides have, a rule one side adopts, or a loose tensor read as
the ``parameter`` rule; with the shapes each side has under it, and how a node is described in messages."""
from __future__ import annotations

from ..errors import UsageError, WeightportError
from ..mappings.parameter import canonical_shape
from ..mappings.transforms import IDENTITY
from . import naming
from .plan import Pair


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


def parameter_view(node):
    """hp under the ``parameter`` rule: a loose node's own, or a single-tensor layer's tensor as it is stored
    (under the first of its readings that stores it so: a file's (N, H) ``weight`` may be an Embedding).

    A layer whose rule moves axes (a torch depthwise Conv1d's (C, 1, K) to Keras' (K, C, 1)) is read so only
    where its stored shape, size-1 axes dropped, differs from its canonical one: a loose (C, K) tensor then
    fits the stored form alone, and the values are copied in memory order, never transposed on a guess.
    """
    if getattr(node, "loose", False):
        return node.candidates[0][1]
    for rule, hp in node.candidates:
        try:
            links = rule.links(node.layout, hp)
        except WeightportError:
            continue
        if len(links) != 1 or len(links[0].canonical) != 1 or len(links[0].native) != 1:
            continue
        shapes = shapes_or_none(node, rule, hp)
        stored = stored_shape(links[0], shapes)
        if stored is not None:
            return {"slot": links[0].native[0], "shape": stored}
    return None


def stored_shape(lk, shapes):
    """The one tensor's shape as stored, where reading it as a loose tensor cannot be mistaken for its
    canonical form (see ``parameter_view``); None otherwise."""
    if not shapes:
        return None
    if lk.transform is IDENTITY:
        return tuple(shapes[0])
    try:
        stored = tuple(lk.transform.forward_shapes((tuple(shapes[0]),))[0])
    except (KeyError, ValueError, TypeError, NotImplementedError):
        return None
    return stored if canonical_shape(stored) != canonical_shape(shapes[0]) else None


def as_parameters(a, b):
    """The ``parameter`` rule for a loose tensor and its counterpart: another loose tensor, or a single-tensor
    layer whose name agrees (HF ViT's ``position_embeddings`` and keras-hub's ``position_embedding`` table)."""
    loose = getattr(a, "loose", False), getattr(b, "loose", False)
    if not any(loose) or (not all(loose) and not words(a) & words(b)) or naming.clash(words(a), words(b)):
        return None
    ha, hb = parameter_view(a), parameter_view(b)
    if ha is None or hb is None:
        return None
    from ..mappings.rule import registry

    return registry.get("parameter"), ha, hb


def pair(a, b, evidence: str = "shape") -> Pair | None:
    found = common_rule(a, b) or adopted_rule(a, b) or as_parameters(a, b)
    if found is None:
        return None
    rule, hp_a, hp_b = found
    return Pair(a, b, rule, hp_a, hp_b, a.canonical_shapes(rule, hp_a), b.canonical_shapes(rule, hp_b), evidence)


def fitting(left_s, left_t) -> set:
    """{(id(a), id(b))} for every source and target node whose pair's shapes agree. A pair is tried once per
    two kinds of node (``FileNode.pairing_kind``: checkpoint groups alike in all that pairing reads); a node
    with no kind (a live layer, a loose tensor) is a kind of its own, and a pair with a loose side is always
    tried itself, since its names count too."""
    def kind(n):
        found = n.pairing_kind() if hasattr(n, "pairing_kind") else None
        return ("node", id(n)) if found is None else found

    kinds_s, kinds_t = [kind(a) for a in left_s], [kind(b) for b in left_t]
    tried, fits = {}, set()
    for a, ka in zip(left_s, kinds_s):
        for b, kb in zip(left_t, kinds_t):
            loose = getattr(a, "loose", False) or getattr(b, "loose", False)
            key = None if loose else (ka, kb)
            agree = tried.get(key)
            if agree is None:
                agree = (p := pair(a, b)) is not None and p.shapes_agree
                if key is not None:
                    tried[key] = agree
            if agree:
                fits.add((id(a), id(b)))
    return fits


def broken_ties(tied_t, pairs, left_s) -> list:
    """(source node, tied target node) where the target fills a layer through its tie (an ``lm_head`` tied to
    the token table) while the source keeps separate weights of that kind and shape for it, left unpaired: the
    target cannot hold them, and the port would change what that layer computes."""
    filled = {p.target.path for p in pairs}
    found = []
    for t in tied_t:
        if t.tied_to not in filled:
            continue
        fits = [a for a in left_s if (p := pair(a, t)) is not None and p.shapes_agree]
        found += [(fits[0], t)] if fits else []
    return found


def tied_head_hint(left_t, pairs) -> str:
    """For a refusal: where a target layer left unfilled is a source table read backwards (an output head of the
    table's transposed shape), the source most likely ties its head to that table and holds it once."""
    tables = {tuple(p.source_shapes[0][::-1]): p for p in pairs
              if p.rule.reads_inputs and len(p.source_shapes) == 1 and len(p.source_shapes[0]) == 2}
    for b in left_t:
        for rule, hp in b.candidates:
            shapes = shapes_or_none(b, rule, hp)
            p = tables.get(tuple(shapes[0])) if shapes and len(shapes) == 1 else None
            if p is not None:
                return (f" Target layer {b.label} has the shape of the source table {p.source.label} read backwards: "
                        "if the source ties its output head to that table (one tensor), build the target tied too "
                        f"(tie_word_embeddings=True in a transformers config), so {b.label} is filled through "
                        f"{p.target.label}.")
    return ""


def describe(node) -> str:
    rule, hp = node.candidates[0]
    shapes = node.canonical_shapes(rule, hp)
    return f"{node.label} ({rule.name}, {fmt_shapes(shapes)})"


def fmt_shapes(shapes) -> str:
    if shapes is None:
        return "weights not in the expected layout"
    return ", ".join("x".join(map(str, s)) or "scalar" for s in shapes) or "no weights"


def shapes_or_none(node, rule, hp):
    """Canonical shapes, or None where they need what only the paired layer knows (MHA heads from a file)."""
    try:
        return node.canonical_shapes(rule, hp)
    except WeightportError:
        return None


def words(node) -> frozenset:
    obj = getattr(node, "obj", None)
    return naming.words(node.path, type(obj).__name__ if obj is not None else "")


def refuse_unsettled(p) -> None:
    """Refuse pair ``p``, before anything is changed, where a side's layout is one its weights cannot show
    and no option settled (``Rule.unsettled``)."""
    for hp in (p.source_hp, p.target_hp):
        why = p.rule.unsettled(hp)
        if why:
            raise UsageError(f"{p.source.label} -> {p.target.label}: {why}. Nothing was changed")


class Fixed:
    """The source of a target layer set to values no source tensor holds (zeros for a table the source lacks,
    state the source model computes): a node of the matcher's protocol reading ``arrays`` (slot -> array, in
    the target's layout)."""

    def __init__(self, target, arrays: dict, label: str):
        self.target, self.arrays = target, arrays
        self.path = self.label = label
        self.layout, self.candidates = target.layout, target.candidates

    def canonical_shapes(self, rule, hp):
        return self.target.canonical_shapes(rule, hp)

    def dtypes(self, rule, hp) -> dict:
        return {s: a.dtype for s, a in self.arrays.items()}

    def read(self, rule, hp) -> dict:
        return dict(self.arrays)
