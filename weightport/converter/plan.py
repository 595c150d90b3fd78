"""Plan: the reviewable list of what a conversion will do, before it touches anything."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..errors import UsageError
from ..mappings.rule import ConfigIssue

# 2: steps that read a part of a packed layer, or assemble one, record it in ``Step.split``
PLAN_VERSION = 2


# how a pair of layers was made, as the report says it
EVIDENCE = {
    "hint": "hint",
    "path": "same path",
    "shape": "kind and shapes",
    "structure": "dataflow",
    "name": "name",
    "position": "block position",
    "ordinal": "ordinal and run order",
    "activation": "dataflow (activation)",
    "training": "trained vs computed state",
    "split": "a packed layer's name and sizes",
    "zeros": "zeros (the source has none)",
    "constant": "what the source computes",
    "state": "same path (state kept beside a trained copy)",
}


@dataclass
class Step:
    """Copy one source layer into one target layer through one rule."""

    source: str
    target: str
    rule: str
    source_layout: str
    target_layout: str
    source_hp: dict
    target_hp: dict
    shapes: list  # canonical (Keras-layout) shapes, in get_weights() order
    transform: str = ""  # how the slots move, source layout -> canonical -> target layout
    exact: bool = True  # False: function-preserving, not bitwise-reversible (e.g. a bias sum)
    evidence: str = ""  # how the two layers were paired: hint, path, shape, structure, name, position
    # file conversions: slot -> tensor name on each side, so the plan can be run again without a model
    source_names: dict = field(default_factory=dict)
    target_names: dict = field(default_factory=dict)
    # a packed layer's part read (``packed`` + ``cut``) or parts assembled (``packed`` + ``parts``): see split_plans
    split: dict = field(default_factory=dict)


@dataclass
class Plan:
    version: int = PLAN_VERSION  # of the JSON form; a plan without one is version 1
    steps: list = field(default_factory=list)
    unmatched_source: list = field(default_factory=list)  # "path (kind, shapes)" strings
    unmatched_target: list = field(default_factory=list)
    issues: list = field(default_factory=list)  # config differences, as strings

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=jsonable)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        data = json.loads(text)
        version = data.get("version", 1)
        if not isinstance(version, int) or version > PLAN_VERSION:
            raise UsageError(f"the plan is of version {version!r}, and this weightport reads plans up to version "
                             f"{PLAN_VERSION}; upgrade weightport, or make the plan again with this one")
        steps = [Step(**{**s, "source_hp": tuples(s["source_hp"]), "target_hp": tuples(s["target_hp"]),
                         "shapes": [tuple(x) for x in s["shapes"]], "split": tuples(s.get("split", {}))})
                 for s in data.get("steps", [])]
        return cls(version=version, steps=steps,
                   unmatched_source=data.get("unmatched_source", []),
                   unmatched_target=data.get("unmatched_target", []),
                   issues=data.get("issues", []))


@dataclass
class Pair:
    """Two layers paired through one rule: each side's hyperparameters, and its shapes in canonical form."""

    source: object
    target: object
    rule: object
    source_hp: dict
    target_hp: dict
    source_shapes: list | None
    target_shapes: list | None
    evidence: str = "shape"

    @property
    def shapes_agree(self) -> bool:
        return self.source_shapes is not None and self.source_shapes == self.target_shapes


def transform_text(p: Pair) -> str:
    """How the tensors move, read in the port's direction: out of the source's layout, into the target's."""
    parts = [node.cut for node in (p.source, p.target) if getattr(node, "cut", None)]  # a packed layer's part
    for layout, hp, into in ((p.source.layout, p.source_hp, True), (p.target.layout, p.target_hp, False)):
        if layout != "keras":
            parts.append(f"{layout}: {p.rule.describe(layout, hp, into_canonical=into)}")
    return " | ".join(parts) or "copy"


def reparametrized_notes(p: Pair) -> list:
    """Caveats for weights a side computes from others (torch's weight_norm): folded into one tensor when read,
    split back into a magnitude and a direction when written; equal up to rounding, never bit for bit."""
    notes = []
    for hp, text in ((p.source_hp, "the source computes {} from a magnitude g and a direction v ({}): the target "
                                   "receives g*v/|v| as one tensor, equal up to rounding, and the split is lost"),
                     (p.target_hp, "the target computes {} from a magnitude g and a direction v ({}): written as "
                                   "g=|W| and v=W, which compute W again up to rounding")):
        folded = hp.get("reparametrized")
        if folded:
            notes.append(ConfigIssue("reparametrized", None, None, "caveat",
                                     text.format(", ".join(folded), ", ".join(sorted(set(folded.values()))))))
    return notes


def tuples(value):
    """JSON lists back to the tuples hyperparameters hold (kernel sizes, shapes...)."""
    if isinstance(value, list):
        return tuple(tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: tuples(v) for k, v in value.items()}
    return value


def jsonable(obj):
    if isinstance(obj, tuple):
        return list(obj)
    try:
        return obj.item()  # numpy scalars
    except AttributeError:
        return str(obj)


class Report:
    """What a port did: the plan it ran, the target it filled, and a printable table."""

    def __init__(self, plan: Plan, target=None):
        self.plan = plan
        self.target = target

    @property
    def steps(self):
        return self.plan.steps

    @property
    def warnings(self):
        return self.plan.issues

    @property
    def unmatched_source(self):
        return self.plan.unmatched_source

    @property
    def unmatched_target(self):
        return self.plan.unmatched_target

    @property
    def exact(self) -> bool:
        """True when every step is bitwise reversible (no bias sums, no dropped counters)."""
        return all(s.exact for s in self.plan.steps)

    def to_json(self) -> str:
        return self.plan.to_json()

    def __len__(self):
        return len(self.plan.steps)

    def __str__(self) -> str:
        head = ("source", "target", "rule", "paired by", "transform", "shape")
        rows = [(s.source, s.target, s.rule, EVIDENCE.get(s.evidence, s.evidence),
                 s.transform + ("" if s.exact else "  [function-preserving, not bitwise-reversible]"),
                 ", ".join("x".join(map(str, sh)) or "scalar" for sh in s.shapes)) for s in self.plan.steps]
        widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
        line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
        out = [line(head), line(tuple("-" * w for w in widths))] + [line(r) for r in rows]
        out.append(f"{len(rows)} layer{'s' * (len(rows) != 1)} ported")
        for title, items in (("not ported from the source", self.plan.unmatched_source),
                             ("left as it was in the target", self.plan.unmatched_target),
                             ("warnings", self.plan.issues)):
            if items:
                out.append(f"{title}:")
                out += [f"  {x}" for x in items]
        return "\n".join(out)

    __repr__ = __str__
