"""A bank of gated feed-forward experts (mixture-of-experts blocks), its weights stacked over the experts.

keras-hub (Mixtral, Qwen MoE) keeps three kernels, each expert's as Keras
does, (in, out): gate and up ``(experts, hidden, units)``, down ``(experts,
units, hidden)``. transformers (5.x) keeps torch's (out, in) per expert, with
gate and up packed along the output axis: ``gate_up_proj (experts, 2 * units,
hidden)`` (gate first: ``.chunk(2)`` gives gate, up) and ``down_proj
(experts, hidden, units)``; but the files it writes for Mixtral, like the
released checkpoints, keep each expert as three Linear weights of its own
(``experts.3.w1.weight``: w1 gate, w3 up, w2 down; ``gate_proj``... in
others). Neither library names a class any other shares, so every form is
recognised by the names and shapes of what it holds. keras-hub's Qwen MoE
packs gate and up too, Keras' way: ``(experts, hidden, 2 * units)``.
"""
import re

from .rule import Rule, link, register
from .samples import sizes, weights
from .transforms import Chain, Concat, Each, Transpose, Unstack

PER_EXPERT_TRANSPOSE = Transpose(0, 2, 1)
# a slot name's words: which of the three kernels it is
KERNEL_WORDS = {"gate": r"gate|w1", "up": r"intermediate|(^|_)up(_|$)|w3", "down": r"output|down|w2"}


@register
class ExpertBankRule(Rule):
    name = "expert_bank"
    classes = {"keras": (), "torch": ()}  # no class of its own anywhere: recognised by its weights
    name_words = frozenset({"expert", "experts"})

    def canonical(self, hp):
        return ["gate", "up", "down"]

    def infer_keras(self, shapes):
        if len(shapes) == 2:
            return _packed_keras(shapes)
        if len(shapes) != 3 or any(len(s) != 3 for s in shapes.values()):
            return None
        named = _kernels_named(shapes)
        if named is None:
            return None
        (e, h, units), up, down = (tuple(shapes[named[k]]) for k in ("gate", "up", "down"))
        if up != (e, h, units) or down != (e, units, h):
            return None
        return {"experts": e, "hidden": h, "units": units, "slot_names": named}

    def infer_torch(self, shapes):
        if set(shapes) != {"gate_up_proj", "down_proj"}:
            return _per_expert(shapes)
        packed, down = tuple(shapes["gate_up_proj"]), tuple(shapes["down_proj"])
        if len(packed) != 3 or len(down) != 3 or packed[1] % 2:
            return None
        e, units, h = packed[0], packed[1] // 2, packed[2]
        return {"experts": e, "hidden": h, "units": units} if down == (e, h, units) else None

    def links_keras(self, hp):
        if hp.get("packed"):  # keras-hub's Qwen MoE: gate and up side by side along the output axis
            return [link(("gate", "up"), "gate", Concat(2, (hp["units"], hp["units"]))), link("down", "down")]
        return [link(kernel, kernel) for kernel in self.canonical(hp)]

    def links_torch(self, hp):
        units, apart = hp["units"], hp.get("per_expert")
        if apart:  # expert e's (out, in) weights under names of its own
            return [link(kernel, tuple(f"{e}.{apart[kernel]}.weight" for e in range(hp["experts"])),
                         Chain(PER_EXPERT_TRANSPOSE, Unstack(hp["experts"]))) for kernel in ("gate", "up", "down")]
        return [link(("gate", "up"), "gate_up_proj", Chain(Each(2, PER_EXPERT_TRANSPOSE), Concat(1, (units, units)))),
                link("down", "down_proj", PER_EXPERT_TRANSPOSE)]

    def examples(self, layout, rng):
        e, h, units = sizes(rng, 3)
        found = [({"experts": e, "hidden": h, "units": units},
                  weights(rng, (e, h, units), (e, h, units), (e, units, h)))]
        if layout == "keras":  # gate and up in one kernel, as keras-hub's Qwen MoE keeps them
            found.append(({**found[0][0], "packed": True}, weights(rng, (e, h, units), (e, h, units), (e, units, h))))
        if layout == "torch":  # each expert's weights apart, as Mixtral's files keep them
            found.append(({**found[0][0], "per_expert": {"gate": "w1", "up": "w3", "down": "w2"}},
                          weights(rng, (e, h, units), (e, h, units), (e, units, h))))
        return found


def _kernels_named(names):
    """kernel -> the one of ``names`` naming it (gate, up, down), all three, each name used; else None."""
    named = {}
    for kernel, pattern in KERNEL_WORDS.items():
        hits = [n for n in names if re.search(pattern, n) and n not in named.values()]
        if len(hits) != 1:
            return None
        named[kernel] = hits[0]
    return named if set(names) == set(named.values()) else None


def _packed_keras(shapes):
    """hp for gate and up kept in one (experts, hidden, 2 * units) kernel, gate first, and down; else None."""
    names = {k: n for k, n in zip(("gate", "down"), sorted(shapes, key=lambda n: not re.search("gate", n)))}
    if not re.search("gate", names["gate"]) or not re.search(KERNEL_WORDS["down"], names["down"]):
        return None
    packed, down = tuple(shapes[names["gate"]]), tuple(shapes[names["down"]])
    if len(packed) != 3 or len(down) != 3 or packed[2] % 2:
        return None
    e, h, units = packed[0], packed[1], packed[2] // 2
    if down != (e, units, h):
        return None
    return {"experts": e, "hidden": h, "units": units, "packed": True, "slot_names": names}


def _per_expert(shapes):
    """hp for experts kept apart (``<e>.<name>.weight``, (out, in) each), numbered from 0, else None."""
    found: dict = {}
    for key, shape in shapes.items():
        parts = key.split(".")
        if len(parts) != 3 or not parts[0].isdigit() or parts[2] != "weight" or len(shape) != 2:
            return None
        found.setdefault(parts[1], {})[int(parts[0])] = tuple(shape)
    named = _kernels_named(found)
    if named is None:
        return None
    count = len(found[named["gate"]])
    if any(set(v) != set(range(count)) or len(set(v.values())) != 1 for v in found.values()):
        return None
    (units, h), up, down = (found[named[k]][0] for k in ("gate", "up", "down"))
    if up != (units, h) or down != (h, units):
        return None
    return {"experts": count, "hidden": h, "units": units, "per_expert": named}
