"""The rule-bearing layers of a live model, found by walking it: what a port pairs and moves.

A layer some rule claims is a leaf; any other layer is walked into; the
weights a rule-less layer holds itself become loose parameters, and a leaf
of a class no rule names is read by what it holds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...errors import WeightportError
from ...mappings.rule import Declined, registry, rules_for
from ...mappings.transforms import IDENTITY
from ..structure import kept_canonical_shapes

if TYPE_CHECKING:  # for annotations only: the adapters' base class imports this module
    from . import Framework


@dataclass
class LayerRef:
    """One rule-bearing layer found in a live model."""

    path: str
    obj: object
    framework: Framework
    # (rule, hyperparameters) pairs, most specific rule first
    candidates: list = field(default_factory=list)
    # for a composite rule's layer: its weighted sub-layers, which pair one by one where the other side
    # has no layer of that rule
    parts: list = field(default_factory=list)
    # False for a declared part its object's call does not compute (a reverse projection used elsewhere):
    # a traced run says nothing of it
    runs: bool = True
    # the path of an earlier layer holding the very same tensors (an LM head tied to the token embedding):
    # filled through that layer, never paired on its own
    tied_to: str | None = None
    # for a declared part (``Rule.parts``): the layer holding its tensors, whose name a file stores them under
    owner: LayerRef | None = field(default=None, repr=False, compare=False)
    _shapes: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def layout(self) -> str:
        return self.framework.layout

    @property
    def label(self) -> str:
        return self.path or self.framework.display_name(self.obj)

    def canonical_shapes(self, rule, hp) -> list | None:
        """Shapes of this layer's weights in canonical form under ``rule``, or None if they do not fit it."""
        return kept_canonical_shapes(self._shapes, self.layout, rule, hp,
                                     lambda slots: self.framework.shapes(self.obj, slots))

    def read(self, rule, hp) -> dict:
        return self.framework.read(self.obj, rule.native_slots(self.layout, hp))

    def dtypes(self, rule, hp) -> dict:
        return self.framework.dtypes(self.obj, rule.native_slots(self.layout, hp))


class LooseRef(LayerRef):
    """A weight held directly by a layer no rule claims (a class token, a position table): one node of its own.

    Its one candidate is the ``parameter`` rule, with the weight's name as
    the slot; the matcher pairs it by name and shape like any layer.
    """

    loose = True
    untrained = False  # see Framework.untrained: a target's such weight no source tensor fills is left as it is


@dataclass
class Unmapped:
    """A layer holding weights that no rule claims."""

    path: str
    class_name: str
    weights: list


def join(parent: str, name: str, sep: str) -> str:
    return f"{parent}{sep}{name}" if parent else str(name)


def walk(fw: Framework, model) -> tuple:
    """All rule-bearing layers of ``model`` in order, and the unmapped ones.

    A layer a rule claims is a leaf; any other layer is walked into.
    """
    found = fw.layer_nodes(model)
    if found is not None:
        return found
    refs, unmapped, seen, classes, unknown = [], [], set(), set(), []
    owners: dict = {}  # tensor identity -> path of the first rule-bearing layer holding it

    def visit(layer, path, heads=None):
        if id(layer) in seen:
            return  # shared layers are ported once
        seen.add(id(layer))
        classes.add(type(layer).__name__)
        heads = declared_heads(layer) or heads
        candidates = configured(fw.layout, layer)
        folded = fw.reparametrized(layer) if candidates else None
        for _, hp in candidates:
            if folded:
                hp["reparametrized"] = folded
            if heads:
                hp.setdefault("heads_context", heads)
        if candidates:
            rule, hp = candidates[0]
            parts = rule.expand(fw.layout, hp)
            if len(parts) == 1:
                parts = _parts(fw, layer, path, rule, hp) if rule.composite else []
                refs.append(LayerRef(path, layer, fw, candidates, parts,
                                     tied_to=_tied_to(fw.weight_ids(layer), owners, path)))
            else:  # one live layer standing for several canonical layers
                refs.extend(LayerRef(f"{path}[{i}]", layer, fw, [(rule, part)]) for i, part in enumerate(parts))
            return
        own = fw.own_weights(layer)
        loose = _loose_refs(fw, layer, path, own)
        if loose and len(loose) == len(own) and fw.count_weights(layer) == len(own) and not fw.builtin(layer):
            unknown.append((layer, path, loose, len(refs)))  # a leaf of an unknown class: read by its weights
        refs.extend(loose)
        if len(loose) < len(own):
            unmapped.append(Unmapped(path or fw.display_name(layer), type(layer).__name__, own))
        siblings = fw.children(layer)
        for i, (name, child) in enumerate(siblings):
            before = len(refs)
            visit(child, join(path, name, fw.sep), heads)
            activation = fw.activation_after(siblings, i)
            for ref in refs[before:] if activation and len(refs) == before + 1 and refs[-1].obj is child else ():
                for rule, hp in ref.candidates:
                    if "activation" in rule.checks:
                        hp.setdefault("activation", activation)

    visit(model, "")
    refs = _read_by_weights(fw, refs, unknown)
    _mark_unseen_context(fw, refs, classes)
    return refs, unmapped


def _read_by_weights(fw, refs, unknown) -> list:
    """``refs`` with each leaf of a class no rule names (LlamaRMSNorm, GPT-2's Conv1D) recognised by what it holds.

    A reading (rule) must fit every instance of the class in the model, so
    one instance that contradicts it (a GPT-2 Conv1D whose bias is as long as
    the weight's second axis) rules it out for the square ones too. Where
    every instance is square, readings that move axes are not taken: the
    weights cannot say which way round they are stored. The paired layer
    settles which of the remaining readings applies; none left, the weights
    stay loose parameters.
    """
    rules = sorted(registry, key=lambda r: -r.priority)
    by_class: dict = {}
    for item in unknown:
        by_class.setdefault(type(item[0]), []).append(item)
    replaced = {}
    for items in by_class.values():
        shapes = [{r.candidates[0][1]["slot"]: r.candidates[0][1]["shape"] for r in loose} for _, _, loose, _ in items]
        fits = [{r.name: hp for r in rules if (hp := r.infer(fw.layout, s)) is not None} for s in shapes]
        names = {n for n in set.intersection(*(set(f) for f in fits)) if _one_way_round(registry.get(n), fits)}
        if all(len(set(s)) <= 1 for found in shapes for s in found.values() if len(s) >= 2):
            names = {n for n in names if _moves_no_axes(registry.get(n), fw.layout, fits[0][n])}
        for (layer, path, loose, at), found in zip(items, fits):
            candidates = [(r, {**r.config_by_attributes(layer), **found[r.name]}) for r in rules if r.name in names]
            if candidates:
                replaced[at] = (len(loose), LayerRef(path, layer, fw, candidates))
    out, i = [], 0
    while i < len(refs):
        if i in replaced:
            count, ref = replaced[i]
            out.append(ref)
            i += count
        else:
            out.append(refs[i])
            i += 1
    return out


def _moves_no_axes(rule, layout: str, hp: dict) -> bool:
    """Whether ``rule`` copies every tensor as it is between ``layout`` and the canonical form."""
    try:
        return all(lk.transform is IDENTITY for lk in rule.links(layout, hp))
    except WeightportError:
        return False


def configured(layout: str, layer) -> list:
    """(rule, hp) for each rule that names ``layer``'s class and can read its configuration.

    A class may only share its name with a built-in (libraries define their
    own ``LayerNorm``, ``Conv1D``): a rule whose reader finds an attribute
    missing declines it, and the layer is then recognised by what it holds.
    """
    found = []
    for rule in rules_for(layout, layer):
        try:
            found.append((rule, rule.config(layout, layer)))
        except (AttributeError, KeyError, TypeError, IndexError, Declined):
            continue
    return found


def _one_way_round(rule, fits) -> bool:
    """Whether every instance of a class reads one way round under ``rule`` (its ``layout_keys`` agree);
    instances that cannot say (None) take the others' answer, in place."""
    for key in rule.layout_keys:
        said = {f[rule.name].get(key) for f in fits} - {None}
        if len(said) > 1:
            return False
        for f in fits:
            if f[rule.name].get(key) is None and said:
                f[rule.name][key] = next(iter(said))
    return True


HEAD_COUNTS = ("num_heads", "num_attention_heads", "n_head", "num_query_heads")
KV_HEAD_COUNTS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")


def declared_heads(layer):
    """The attention head counts a module (or its config) declares, as a sorted tuple, else None: the
    projections inside it split their features that way, which a layer alone cannot show."""
    found = set()
    for owner in (layer, getattr(layer, "config", None)):
        for name in HEAD_COUNTS + KV_HEAD_COUNTS:
            value = getattr(owner, name, None) if owner is not None else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                found.add(value)
    return tuple(sorted(found)) or None


def _tied_to(ids: set, owners: dict, path: str):
    """The one earlier layer holding every tensor in ``ids``, or None (recording ``path`` as their owner)."""
    held_by = {owners.get(i) for i in ids}
    if ids and len(held_by) == 1 and None not in held_by:
        return held_by.pop()
    for i in ids:
        owners.setdefault(i, path)
    return None


def _parts(fw, layer, path, rule, hp) -> list:
    """The parts of a composite layer: those its rule declares, or its rule-bearing sub-layers when they hold
    all its weights; else []."""
    declared = rule.parts(fw.layout, hp)
    if declared:
        owner = LayerRef(path, layer, fw, [(rule, hp)])
        return [LayerRef(join(path, name, fw.sep), layer, fw, [(registry.get(rule_name), part_hp)], runs=i == 0,
                         owner=owner) for i, (name, rule_name, part_hp) in enumerate(declared)]
    refs, heads = [], declared_heads(layer)
    for name, child in fw.children(layer):
        found, unmapped = walk(fw, child)
        for _, part_hp in (c for r in found for c in r.candidates) if heads else ():
            part_hp.setdefault("heads_context", heads)
        if unmapped or any(getattr(r, "loose", False) or r.parts for r in found):
            return []
        refs += [LayerRef(join(join(path, name, fw.sep), r.path, fw.sep) if r.path else join(path, name, fw.sep),
                          r.obj, fw, r.candidates) for r in found]
    total = fw.count_weights(layer)
    if not refs or total is None:
        return []
    held = sum(fw.count_weights(r.obj) for r in {id(r.obj): r for r in refs}.values())
    return refs if total == held else []


def _loose_refs(fw, layer, path, own) -> list:
    """One LooseRef per weight ``layer`` holds itself, or [] where some cannot be read by name."""
    rule = registry.get("parameter")
    slots = [name.rsplit("/", 1)[-1] for name in own]  # a Keras variable's path ends in its name
    try:
        shapes = fw.shapes(layer, slots)
    except WeightportError:
        return []
    if set(shapes) != set(slots):
        return []
    refs = [LooseRef(join(path, slot, fw.sep), layer, fw, [(rule, {"slot": slot, "shape": tuple(shapes[slot])})])
            for slot in slots]
    for ref in refs:
        ref.untrained = ref.candidates[0][1]["slot"] in fw.untrained(layer)
    return refs


def _mark_unseen_context(fw, refs, classes) -> None:
    """Flag layers whose rule reads the model's graph (``Rule.graph_sensitive``) where there is none to read.

    A Keras Dense after a Flatten needs its rows permuted, which only the
    graph shows; a subclassed model called eagerly records no graph. The
    rule then sees ``hp["graph_unknown"]`` (the classes that may matter) and
    can warn rather than guess.
    """
    for ref in refs:
        rule = ref.candidates[0][0]
        near = classes.intersection(getattr(rule, "graph_sensitive", {}).get(fw.layout, ()))
        if near and not fw.has_graph(ref.obj):
            for _, hp in ref.candidates:
                hp["graph_unknown"] = sorted(near)
