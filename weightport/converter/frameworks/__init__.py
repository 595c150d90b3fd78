"""Live frameworks: find the adapter for an object and walk its layers.

An adapter knows one framework's object model (children, weights, frozen
state, how to run it) and nothing about layer kinds: which layers bear a rule
is asked of the rule registry.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from ...errors import UsageError, WeightportError
from ...mappings.rule import Declined, registry, rules_for
from ...mappings.transforms import IDENTITY

# Checked in this order: under KERAS_BACKEND=torch every Keras layer is also a
# torch.nn.Module, so Keras must be asked first.
ADAPTER_MODULES = ("keras", "torch", "flax", "equinox", "onnx")


class Framework:
    """Base adapter; one subclass per live framework."""

    layout = ""
    sep = "."  # joins a parent's path and a child's name

    def owns(self, obj) -> bool:
        raise NotImplementedError

    def children(self, layer) -> list:
        """(name, child) pairs of direct sub-layers."""
        raise NotImplementedError

    def own_weights(self, layer) -> list:
        """Names of weights held directly by ``layer`` (not by its children)."""
        raise NotImplementedError

    def read(self, layer, slots) -> dict:
        """slot -> numpy array, for the given layout slot names."""
        raise NotImplementedError

    def shapes(self, layer, slots) -> dict:
        raise NotImplementedError

    def dtypes(self, layer, slots) -> dict:
        raise NotImplementedError

    def write(self, layer, arrays: dict) -> None:
        """Assign slot -> array into ``layer`` in place (shapes already checked)."""
        raise NotImplementedError

    def activation_after(self, siblings, index: int):
        """The activation applied right after ``siblings[index]`` by the next sibling, where this framework
        spells activations as layers of their own (torch's nn.GELU after a Linear); None otherwise."""
        return None

    def count_weights(self, layer):
        """How many tensors ``layer`` holds, its sub-layers' included; None where unknown."""
        return None

    def file_names(self, model, path: str):
        """``names(node, slot)``: what a file at ``path`` calls each tensor of ``model``, where this
        framework names them its own way; None for the layout's usual ``<layer path><separator><slot>``."""
        return None

    def reparametrized(self, layer) -> dict:
        """slot -> how ``layer`` computes that weight from others it stores (torch's ``weight_norm``): read,
        it is folded into one tensor; written, split back. {} for most layers."""
        return {}

    def weight_ids(self, layer) -> set:
        """Identities of the tensor objects ``layer`` holds, sub-layers' included, to see weights two layers
        share (a tied output head); empty where a framework keeps no shared objects."""
        return set()

    def has_graph(self, layer) -> bool:
        """Whether the model records what feeds this layer (Keras: a symbolic graph; others: n/a)."""
        return True

    def is_frozen(self, layer):
        """True/False, or None where the layer has nothing to freeze."""
        return None

    def set_frozen(self, layer, frozen: bool) -> None:
        pass

    def display_name(self, layer) -> str:
        return type(layer).__name__

    def run(self, model, inputs):
        """Forward pass in inference mode; outputs as numpy (nested like the model's)."""
        raise NotImplementedError

    def trace(self, model, refs, inputs, capture: bool = False):
        """The ``Flow`` of one run of ``model`` on ``inputs`` among ``refs`` (its rule-bearing layers), or None
        where this framework cannot follow tensors. ``capture`` keeps each layer's first output."""
        return None

    def sample_inputs(self, model, refs) -> list:
        """Small inputs ``model`` may accept, for tracing, built from what its first layer reads; [] if unknown."""
        for ref in refs[:1]:
            rule, hp = ref.candidates[0]
            return rule.sample_inputs(self.layout, hp, ref.canonical_shapes(rule, hp))
        return []

    def finish(self, model):
        """The object a port returns as ``report.target`` (functional frameworks copy)."""
        return model

    def layer_nodes(self, model):
        """(refs, unmapped) for a model whose layers are not objects with classes, else None (walk() finds them).

        Flax Linen variables are plain nested dicts: their adapter recognises
        layers from tensor names and shapes, as checkpoints are.
        """
        return None


class ArrayFields(Framework):
    """An adapter that finds a layer's arrays by slot (``_arrays``): reading, shapes and dtypes follow from it."""

    def _arrays(self, layer, slots) -> dict:
        """slot -> the array held now, for the slots the layer has."""
        raise NotImplementedError

    def read(self, layer, slots) -> dict:
        from ..arrays import to_numpy

        return {s: to_numpy(a) for s, a in self._arrays(layer, slots).items()}

    def shapes(self, layer, slots) -> dict:
        return {s: tuple(a.shape) for s, a in self._arrays(layer, slots).items()}

    def dtypes(self, layer, slots) -> dict:
        import numpy as np

        return {s: np.dtype(a.dtype) for s, a in self._arrays(layer, slots).items()}


_adapters: list = []


def adapters() -> list:
    if not _adapters:
        for name in ADAPTER_MODULES:
            try:
                mod = importlib.import_module(f"{__name__}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{name}":
                    raise
                continue
            _adapters.append(mod.ADAPTER)
    return _adapters


def adapter_for(obj) -> Framework | None:
    """The adapter owning a live object, or None (checks never import a framework)."""
    for fw in adapters():
        if fw.owns(obj):
            return fw
    return None


def require_adapter(obj, role: str = "object") -> Framework:
    fw = adapter_for(obj)
    if fw is None:
        raise UsageError(
            f"the {role} is a {type(obj).__module__}.{type(obj).__name__}, which weightport cannot read: "
            "pass a Keras layer/model, a torch.nn.Module, a Flax module or variables dict, an Equinox module, "
            "a state dict, or a checkpoint path")
    return fw


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
    _shapes: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def layout(self) -> str:
        return self.framework.layout

    @property
    def label(self) -> str:
        return self.path or self.framework.display_name(self.obj)

    def canonical_shapes(self, rule, hp) -> list | None:
        """Shapes of this layer's weights in canonical form under ``rule``, or None if they do not fit it;
        asked thousands of times while pairing, so kept per (rule, hp)."""
        key = (rule.name, repr(sorted(hp.items())))
        if key not in self._shapes:
            slots = rule.native_slots(self.layout, hp)
            found = self.framework.shapes(self.obj, slots)
            try:
                self._shapes[key] = rule.canonical_shapes(self.layout, hp, found)
            except (KeyError, ValueError):
                self._shapes[key] = None
        return self._shapes[key]

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

    def visit(layer, path):
        if id(layer) in seen:
            return  # shared layers are ported once
        seen.add(id(layer))
        classes.add(type(layer).__name__)
        candidates = configured(fw.layout, layer)
        folded = fw.reparametrized(layer) if candidates else None
        for _, hp in candidates if folded else ():
            hp["reparametrized"] = folded
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
        if loose and len(loose) == len(own) and fw.count_weights(layer) == len(own):
            unknown.append((layer, path, loose, len(refs)))  # a leaf of an unknown class: read by its weights
        refs.extend(loose)
        if len(loose) < len(own):
            unmapped.append(Unmapped(path or fw.display_name(layer), type(layer).__name__, own))
        siblings = fw.children(layer)
        for i, (name, child) in enumerate(siblings):
            before = len(refs)
            visit(child, join(path, name, fw.sep))
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
        return [LayerRef(join(path, name, fw.sep), layer, fw, [(registry.get(rule_name), part_hp)], runs=i == 0)
                for i, (name, rule_name, part_hp) in enumerate(declared)]
    refs = []
    for name, child in fw.children(layer):
        found, unmapped = walk(fw, child)
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
    return [LooseRef(join(path, slot, fw.sep), layer, fw, [(rule, {"slot": slot, "shape": tuple(shapes[slot])})])
            for slot in slots]


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
