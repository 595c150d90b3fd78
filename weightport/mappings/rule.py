"""Rules: what one kind of layer's tensors mean in every layout, and the registry of them.

A rule is declared once, against the canonical form (Keras layout, in
``layer.get_weights()`` order). Per non-Keras layout it lists ``Link``s: which
canonical slots become which layout slots, through which invertible
transform. Both directions (to and from canonical) are derived from that one
list. Rules read hyperparameters from live layers with plain attribute access
and never import a framework, so loading them is cheap.

Write a rule as a subclass with, per layout it supports:

- ``classes = {"keras": ("Dense",), "torch": ("Linear",)}``: class names it
  recognises (any class in the object's MRO counts, so subclasses match);
- ``config_<layout>(layer) -> dict``: hyperparameters, in one shared vocabulary
  (Keras conventions: ``epsilon``, ``momentum``, ``use_bias``, ``units``...);
- ``links_<layout>(hp) -> [Link]`` for every layout but ``keras``;
- ``canonical(hp) -> [slot names]`` in ``get_weights()`` order;
- ``examples(layout, rng) -> [(hp, canonical weights)]``: samples the round-trip test of every rule uses.

Register it with ``@register`` or through the ``weightport.rules`` entry-point
group (an entry point may name a module of rules or a Rule subclass).
"""
from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..errors import UsageError
from .introspect import has_class
from .link_options import optioned
from .transforms import IDENTITY, Transform


class Declined(Exception):
    """Raised by a config reader: the layer has this rule's class but not what the rule reads."""


@dataclass(frozen=True)
class Link:
    """Canonical slots -> layout slots through one transform (``forward`` direction)."""

    canonical: tuple
    native: tuple
    transform: Transform = IDENTITY


def link(canonical, native, transform: Transform = IDENTITY) -> Link:
    """Shorthand: ``link("kernel", "weight", Transpose(1, 0))``; names may be tuples."""
    as_tuple = lambda x: (x,) if isinstance(x, str) else tuple(x)  # noqa: E731
    return Link(as_tuple(canonical), as_tuple(native), transform)


@dataclass(frozen=True)
class ConfigIssue:
    """A configuration difference between two paired layers."""

    key: str
    source: object
    target: object
    severity: str  # "error" or "warning"
    hint: str = ""

    def __str__(self):
        if self.source is None and self.target is None:  # a caveat, not a difference
            return f"{self.key}: {self.hint}"
        text = f"{self.key}: source has {self.source!r}, target has {self.target!r}"
        return f"{text} ({self.hint})" if self.hint else text


class Rule:
    """One layer kind across layouts. Subclass it; see the module docstring."""

    name: str = ""
    classes: dict = {}
    priority: int = 0
    # hyperparameters compared between paired layers: key -> "error" | "warning"
    checks: dict = {}
    check_hints: dict = {}
    # hyperparameters only one side can know (e.g. the feature-map shape before a
    # Keras Flatten): copied to the other side's hp when two layers are paired
    shared: tuple = ()
    # layout -> class names whose presence in a model makes this rule's config depend on
    # the model's graph; where the graph is unknown, hp["graph_unknown"] lists those present
    graph_sensitive: dict = {}
    # a layer of several weighted sub-layers (attention's q/k/v/o projections): when the other side has no
    # layer of this rule, the matcher pairs the sub-layers one by one instead (``parts`` of the node)
    composite: bool = False
    # words in a checkpoint group's path (canonical, see converter.naming) that speak for this rule where the
    # shapes fit several: "head" and "proj" for a projection, "tokemb" for an embedding, "norm" for a norm
    name_words: frozenset = frozenset()
    # hp keys saying which way round a layer stores its weights: a class no rule names stores them one way in
    # all its instances, so instances whose shapes cannot say (square ones) take the others' answer
    layout_keys: tuple = ()
    # layout -> regular expressions a whole slot name matches, for layout detection of bare checkpoints where
    # slot names depend on hyperparameters (``weight_ih_l3``); without it, the slots are read from the links
    slot_patterns: dict = {}
    # a layer of this kind reads the model's inputs (an embedding table), so it is never a head the target may
    # go without: left unpaired with weights that are not all zero, it refuses a strict port
    reads_inputs: bool = False
    # (hp key, canonical slot) of a bias the layer adds to its output only where that key is true (``use_bias``):
    # one side's layer may lack it where the other's has it (``converter.biases``)
    optional_bias: tuple = ()
    # the canonical slot of a per-channel vector the layer subtracts from its input before anything else (a
    # BatchNorm's moving mean): a bias added just before, by a layer it alone reads, can be folded into it
    input_shift: str = ""
    # the hp key whose check a constant zero pad written just before the layer can settle (a conv's padding:
    # transformers and keras-hub often pad in an operation or layer of their own); see ``with_input_pad``
    input_pad: str = ""

    # -- recognising ------------------------------------------------------
    def layouts(self) -> tuple:
        return tuple(self.classes)

    def matches(self, layout: str, layer) -> bool:
        """Whether this rule handles ``layer`` (a live object of ``layout``)."""
        names = self.classes.get(layout)
        return bool(names) and has_class(layer, *names)

    def parts(self, layout: str, hp: dict) -> list:
        """For a composite layer whose weights are not held by sub-layers: ``(name, rule name, hp)`` for each
        group of its weights that another implementation keeps as a layer of its own, the part the layer's
        call computes first. [] by default."""
        return []

    def expand(self, layout: str, hp: dict) -> list:
        """One hp per node a live layer stands for (a torch ``num_layers=N`` RNN is N Keras layers)."""
        return [hp]

    def with_input_pad(self, layout: str, hp: dict, widths, shape) -> dict:
        """``hp`` with a traced run's zero pad of the layer's input (``widths``: (low, high) per axis of an
        input of ``shape``) counted as the layer's own, where the rule declares ``input_pad``; as it is otherwise."""
        return hp

    def given(self, hp: dict, canonical_shapes: list) -> dict:
        """``hp`` completed by the canonical shapes a caller hands over (``set_weights``), for what only the
        other side knows (a Keras PReLU's alpha shape). As it is, by default."""
        return hp

    def share(self, source_hp: dict, target_hp: dict) -> tuple:
        """Both sides' hp, each completed with the ``shared`` keys only the other side knows."""
        a, b = dict(source_hp), dict(target_hp)
        for key in self.shared:
            if key in a and key not in b:
                b[key] = a[key]
            elif key in b and key not in a:
                a[key] = b[key]
        return a, b

    def infer(self, layout: str, shapes: dict):
        """hp for a bare checkpoint group this rule explains, else None.

        ``shapes`` maps the group's local tensor names (``weight``, ``bias``,
        ``running_mean``... or ``kernel``, ``bias``... for Keras paths) to
        shapes. Define ``infer_<layout>(shapes)`` to support a layout; return
        None unless the names and ranks fit exactly, so two rules rarely both
        claim a group (when they do, the group is reported as ambiguous).
        """
        fn = getattr(self, f"infer_{layout}", None)
        return fn(shapes) if fn else None

    def config_by_attributes(self, layer) -> dict:
        """What a layer of a class this rule does not name (recognised by its weights) says through common
        attribute names, for the configuration checks; {} by default."""
        return {}

    def examples(self, layout: str, rng) -> list:
        """A few ``(hp, canonical weights)`` this rule links in ``layout``, sizes drawn from ``rng``
        (``mappings.samples``): the round trip every registered rule is tested with. [] until a rule offers some,
        which fails that test, naming the rule."""
        return []

    def sample_inputs(self, layout: str, hp: dict, shapes) -> list:
        """Small batches this layer could read, in ``layout``'s axis order, likeliest first.

        A model that starts with this layer reads them too (an image model may
        insist on one size, hence several). ``shapes`` are the layer's
        canonical weight shapes. Used to trace a model's dataflow when the
        caller gives no input; [] where unknown.
        """
        return []

    # -- per-layout declarations -----------------------------------------------
    def config(self, layout: str, layer) -> dict:
        fn = getattr(self, f"config_{layout}", None)
        return dict(fn(layer)) if fn else {}

    def canonical(self, hp: dict) -> list:
        raise NotImplementedError(f"rule {self.name!r} must define canonical(hp)")

    def links(self, layout: str, hp: dict) -> list:
        """The links for ``layout``, restricted to slots that exist under ``hp``; a part of a larger layer
        (``parts``) stores its slots under that layer's names, given as ``hp["slot_names"]``."""
        present = set(self.canonical(hp))
        if layout == "keras" and not hasattr(self, "links_keras"):  # the canonical form is Keras' own, as a rule
            found = [Link((s,), (s,)) for s in self.canonical(hp)]  # keeps it; one whose Keras forms vary says so
        else:
            fn = getattr(self, f"links_{layout}", None)
            if fn is None:
                raise UsageError(f"rule {self.name!r} has no {layout!r} layout (it knows {self.layouts()})")
            found = [lk for lk in fn(hp) if set(lk.canonical) <= present]
        names = hp.get("slot_names")
        if names:
            found = [Link(lk.canonical, tuple(names.get(s, s) for s in lk.native), lk.transform) for lk in found]
        return optioned(found, hp)  # what weights cannot show (rotary order, weight_norm), where hp says so

    def native_slots(self, layout: str, hp: dict) -> list:
        """The layout's slot names, in declaration order."""
        return [s for lk in self.links(layout, hp) for s in lk.native]

    def exact(self, layout: str, hp: dict) -> bool:
        return all(lk.transform.exact for lk in self.links(layout, hp))

    def describe(self, layout: str, hp: dict, into_canonical: bool = False) -> str:
        """How the slots move, for reports: out of the canonical form into ``layout``, or back into it
        (``into_canonical``, a port whose source is in ``layout``). Plain copies and renames are left out."""
        parts = []
        for lk in self.links(layout, hp):
            if lk.transform is IDENTITY:
                continue
            ends = ["+".join(lk.canonical), "+".join(lk.native)]
            if into_canonical:
                ends.reverse()
            move = lk.transform.describe_inverse() if into_canonical else lk.transform.describe()
            parts.append(" -> ".join(e for e in ends if e) + f": {move}")
        return "; ".join(parts) or "copy"

    # -- moving tensors -----------------------------------------------------
    def to_canonical(self, layout: str, hp: dict, native: dict) -> list:
        """Layout tensors (slot -> array) to the Keras-ordered canonical list."""
        out = {}
        for lk in self.links(layout, hp):
            if not lk.canonical:
                continue  # layout-only tensor (e.g. a counter) that Keras does not keep
            missing = [s for s in lk.native if s not in native]
            if missing:
                raise KeyError(missing[0])
            arrays = lk.transform.inverse(tuple(native[s] for s in lk.native))
            out.update(zip(lk.canonical, arrays))
        return [out[s] for s in self.canonical(hp)]

    def from_canonical(self, layout: str, hp: dict, canonical: Sequence) -> dict:
        """The Keras-ordered canonical list to layout tensors (slot -> array)."""
        names = self.canonical(hp)
        if len(canonical) != len(names):
            raise ValueError(f"{self.name}: expected {len(names)} weights {names}, got {len(canonical)}")
        by_name = dict(zip(names, canonical))
        out = {}
        for lk in self.links(layout, hp):
            out.update(zip(lk.native, lk.transform.forward(tuple(by_name[s] for s in lk.canonical))))
        return out

    def canonical_shapes(self, layout: str, hp: dict, native_shapes: dict) -> list:
        out = {}
        for lk in self.links(layout, hp):
            if not lk.canonical:
                continue
            out.update(zip(lk.canonical, lk.transform.inverse_shapes(tuple(native_shapes[s] for s in lk.native))))
        return [tuple(out[s]) for s in self.canonical(hp)]

    def native_shapes(self, layout: str, hp: dict, canonical_shapes: Sequence) -> dict:
        by_name = dict(zip(self.canonical(hp), canonical_shapes))
        out = {}
        for lk in self.links(layout, hp):
            shapes = lk.transform.forward_shapes(tuple(by_name[s] for s in lk.canonical))
            out.update(zip(lk.native, (tuple(s) for s in shapes)))
        return out

    # -- configuration checks ----------------------------------------------------
    def unsettled(self, hp: dict):
        """What this side's weights cannot show and the layout needs (how q, k and v share a packed tensor), as
        the message to refuse with, or None; an option settles it (``converter.options``)."""
        return None

    def check(self, source_hp: dict, target_hp: dict) -> list:
        """Differences in configuration that weights cannot carry."""
        issues = []
        for key, severity in self.checks.items():
            if key not in source_hp or key not in target_hp:
                continue
            a, b = source_hp[key], target_hp[key]
            if not same_value(a, b):
                issues.append(ConfigIssue(key, a, b, severity, self.check_hints.get(key, "")))
        return issues


ACTIVATION_HINT = ("the activation is applied inside the layer on one side and by what follows it on the other; "
                   "they must compute the same function (GELU exact vs its tanh approximation, ReLU6 vs ReLU, "
                   "SiLU/swish...): make them agree")
def same_value(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return a == b


def definition(rule) -> str:
    """Where a rule's class is written: ``module.Class``."""
    cls = type(rule)
    return f"{cls.__module__}.{cls.__qualname__}"


def builtin_modules() -> list:
    """Every module of this package, by name: a rule module registers its rules when imported, others nothing.

    Found by scanning the package, so adding a rule is adding one file.
    """
    package = importlib.import_module(__package__)
    return sorted(info.name for info in pkgutil.iter_modules(package.__path__))


class Registry:
    """All known rules; built-ins and entry points are loaded on first use."""

    def __init__(self):
        self._rules: dict = {}
        self._loaded = False

    def add(self, rule: Rule) -> Rule:
        """Add ``rule``, refusing a second rule of its name: names are stored in files' metadata and plans."""
        if not rule.name:
            raise UsageError(f"rule {type(rule).__name__} needs a name")
        known = self._rules.get(rule.name)
        if known is not None and definition(known) != definition(rule):
            raise UsageError(
                f"two rules are named {rule.name!r}: {definition(known)} and {definition(rule)}. A rule's name is "
                "stored in converted files' metadata and in plans, so it must be unique: rename one of them")
        self._rules[rule.name] = rule  # the same class again (an entry point naming a registered rule) replaces it
        return rule

    def _load(self):
        if self._loaded:
            return
        self._loaded = True
        for mod in builtin_modules():
            importlib.import_module(f"{__package__}.{mod}")
        from ..plugins import entry_points

        for ep in entry_points("weightport.rules"):
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, Rule):
                self.add(obj())

    def __iter__(self):
        self._load()
        return iter(sorted(self._rules.values(), key=lambda r: r.name))

    def get(self, name: str) -> Rule:
        self._load()
        try:
            return self._rules[name]
        except KeyError:
            raise UsageError(f"no rule named {name!r}; known: {sorted(self._rules)}") from None

    def candidates(self, layout: str, layer) -> list:
        """Rules that handle ``layer``, most specific (highest priority) first, ties in registration order."""
        self._load()
        found = [r for r in self._rules.values() if r.matches(layout, layer)]
        return sorted(found, key=lambda r: -r.priority)


registry = Registry()


def register(cls):
    """Class decorator: instantiate a Rule subclass and add it to the registry."""
    registry.add(cls())
    return cls


def rules_for(layout: str, layer) -> list:
    return registry.candidates(layout, layer)


def all_rules() -> Iterable[Rule]:
    return iter(registry)
