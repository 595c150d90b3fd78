"""Both sides of a port, run once: the dataflow the matcher pairs look-alikes by, and each layer's output.

Tracing is evidence, never a requirement: a side that is a checkpoint, or a
model that cannot run on the made-up input (one built from its first layer
or its input specs), gives no flow, and the matcher then relies on weaker
evidence or refuses.
"""
from __future__ import annotations

from .frameworks import adapter_for


def split_inputs(inputs) -> tuple:
    """(inputs for the first model, for the second): a pair is split, anything else serves both."""
    if isinstance(inputs, tuple) and len(inputs) == 2:
        return inputs
    return inputs, inputs


def trace(model, nodes, inputs=None, capture: bool = False):
    """The Flow of one run of a live ``model`` among ``nodes``, or None where it cannot be had."""
    fw = adapter_for(model) if model is not None else None
    nodes = [n for n in nodes or () if not getattr(n, "loose", False)]  # their layers are not rule-bearing
    if fw is None or not nodes:
        return None
    for candidate in [inputs] if inputs is not None else fw.sample_inputs(model, nodes):
        try:
            return fw.trace(model, nodes, candidate, capture=capture)
        except Exception:  # noqa: BLE001 - a model that does not run on this input gives no evidence
            continue
    return None


def flows(source, source_nodes, target, target_nodes, inputs=None):
    """A callable giving (source flow, target flow), traced on first call; for ``matcher.match(flows=)``."""
    in_a, in_b = split_inputs(inputs) if inputs is not None else (None, None)
    found = []

    def get():
        if not found:
            a = trace(source, source_nodes, in_a)
            found.append((a, trace(target, target_nodes, in_b) if a is not None else None))
        return found[0]
    return get
