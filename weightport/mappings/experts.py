"""A bank of gated feed-forward experts (mixture-of-experts blocks), its weights stacked over the experts.

keras-hub (Mixtral, Qwen MoE) keeps three kernels, each expert's as Keras
does, (in, out): gate and up ``(experts, hidden, units)``, down ``(experts,
units, hidden)``. transformers (5.x) keeps torch's (out, in) per expert, with
gate and up packed along the output axis: ``gate_up_proj (experts, 2 * units,
hidden)`` (gate first: ``.chunk(2)`` gives gate, up) and ``down_proj
(experts, hidden, units)``. Neither library names a class any other shares,
so both are recognised by the names and shapes of what they hold.
"""
import re

from .rule import Rule, link, register
from .samples import sizes, weights
from .transforms import Chain, Concat, Each, Transpose

PER_EXPERT_TRANSPOSE = Transpose(0, 2, 1)
# a slot name's words: which of the three kernels it is
KERNEL_WORDS = {"gate": r"gate", "up": r"intermediate|(^|_)up(_|$)|w3", "down": r"output|down|w2"}


@register
class ExpertBankRule(Rule):
    name = "expert_bank"
    classes = {"keras": (), "torch": ()}  # no class of its own anywhere: recognised by its weights
    name_words = frozenset({"expert", "experts"})

    def canonical(self, hp):
        return ["gate", "up", "down"]

    def infer_keras(self, shapes):
        if len(shapes) != 3 or any(len(s) != 3 for s in shapes.values()):
            return None
        named = {}
        for kernel, pattern in KERNEL_WORDS.items():
            found = [n for n in shapes if re.search(pattern, n) and n not in named.values()]
            if len(found) != 1:
                return None
            named[kernel] = found[0]
        (e, h, units), up, down = (tuple(shapes[named[k]]) for k in ("gate", "up", "down"))
        if up != (e, h, units) or down != (e, units, h):
            return None
        return {"experts": e, "hidden": h, "units": units, "slot_names": named}

    def infer_torch(self, shapes):
        if set(shapes) != {"gate_up_proj", "down_proj"}:
            return None
        packed, down = tuple(shapes["gate_up_proj"]), tuple(shapes["down_proj"])
        if len(packed) != 3 or len(down) != 3 or packed[1] % 2:
            return None
        e, units, h = packed[0], packed[1] // 2, packed[2]
        return {"experts": e, "hidden": h, "units": units} if down == (e, h, units) else None

    def links_torch(self, hp):
        units = hp["units"]
        return [link(("gate", "up"), "gate_up_proj", Chain(Each(2, PER_EXPERT_TRANSPOSE), Concat(1, (units, units)))),
                link("down", "down_proj", PER_EXPERT_TRANSPOSE)]

    def examples(self, layout, rng):
        e, h, units = sizes(rng, 3)
        return [({"experts": e, "hidden": h, "units": units},
                 weights(rng, (e, h, units), (e, h, units), (e, units, h)))]
