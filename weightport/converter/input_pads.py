"""Zeros a model adds to a layer's input in an operation of its own, counted as that layer's configuration.

transformers pads inside ``forward`` (SegFormer's patch convs pad in the conv,
MobileNet's TF-style "same" in a ``nn.functional.pad`` before a conv that pads
nothing), keras-hub and keras.applications in a ZeroPadding layer, sometimes
inside a layer of their own where the functional graph cannot show it. The
layer's own settings then differ while the two compute the same thing. Where
a pair's check finds its rule's ``input_pad`` key differing, each side that
can be traced is run once, and the zero pad that run saw feed the layer
(``Flow.padded``) is handed to the rule (``Rule.with_input_pad``) before the
pair is checked again: a difference that stays is real, at least at the size
the run saw.
"""
from __future__ import annotations


def counted(pairs, side_flow) -> list:
    """``pairs`` with each side's hp completed by the zero pad a traced run saw feed its layer, for the pairs
    whose rule's ``input_pad`` check differs; ``side_flow(side)`` gives the source's (0) or target's (1) Flow,
    or None, and is called only when such a pair exists; the pairs are updated in place."""
    for p in pairs:
        key = p.rule.input_pad
        if key and any(i.key == key for i in p.rule.check(p.source_hp, p.target_hp)):
            p.source_hp = _padded(p.rule, p.source, p.source_hp, side_flow(0))
            p.target_hp = _padded(p.rule, p.target, p.target_hp, side_flow(1))
    return pairs


def _padded(rule, node, hp: dict, flow) -> dict:
    """``hp`` as the rule reads it with the pad ``flow`` saw feed ``node``, where one did."""
    seen = flow.padded.get(node.path) if flow is not None else None
    return rule.with_input_pad(node.layout, hp, *seen) if seen else hp
