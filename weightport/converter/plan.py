"""Plan: the reviewable list of what a conversion will do, before it touches anything."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


# how a pair of layers was made, as the report says it
EVIDENCE = {
    "hint": "hint",
    "path": "same path",
    "shape": "kind and shapes",
    "structure": "dataflow",
    "name": "name",
    "position": "block position",
    "ordinal": "ordinal and run order",
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


@dataclass
class Plan:
    steps: list = field(default_factory=list)
    unmatched_source: list = field(default_factory=list)  # "path (kind, shapes)" strings
    unmatched_target: list = field(default_factory=list)
    issues: list = field(default_factory=list)  # config differences, as strings

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=_jsonable)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        data = json.loads(text)
        steps = [Step(**{**s, "source_hp": _tuples(s["source_hp"]), "target_hp": _tuples(s["target_hp"]),
                         "shapes": [tuple(x) for x in s["shapes"]]}) for s in data.get("steps", [])]
        return cls(steps=steps,
                   unmatched_source=data.get("unmatched_source", []),
                   unmatched_target=data.get("unmatched_target", []),
                   issues=data.get("issues", []))


def _tuples(value):
    """JSON lists back to the tuples hyperparameters hold (kernel sizes, shapes...)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _jsonable(obj):
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
