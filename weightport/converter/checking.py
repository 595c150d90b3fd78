"""``port(..., check=inputs)``: run both models after the port and refuse, restoring the target, when they differ.

A migration script can leave the check on: a wrong pairing that no rule or
shape could catch shows up as different outputs, and the error names the
first paired layer (in the order the target runs them) whose outputs part.
"""
from __future__ import annotations

import numpy as np

from ..errors import UsageError, VerificationError
from .frameworks import require_adapter
from .pairs import pair
from .tracing import split_inputs, trace
from .verify import Divergence, compare, first_divergence, pick


def snapshot(pairs) -> list:
    """Copies of every tensor the pairs will overwrite in their targets, to put back if the check fails."""
    saved = []
    for p in pairs:
        fw = p.target.framework
        slots = p.rule.native_slots(p.target.layout, p.target_hp)
        saved.append((fw, p.target.obj, {s: np.array(a, copy=True) for s, a in fw.read(p.target.obj, slots).items()}))
    return saved


def restore(saved) -> None:
    for fw, obj, arrays in saved:
        fw.write(obj, arrays)


def run_both(a, b, inputs, atol: float, rtol: float, output=None):
    """The VerifyResult of ``a`` and ``b`` run on ``inputs`` (split as a pair where given), comparing the
    ``output`` selected from each (an index, key or callable; or a pair of them, one per model)."""
    in_a, in_b = split_inputs(inputs)
    which_a, which_b = output if isinstance(output, tuple) and len(output) == 2 else (output, output)
    out_a = pick(require_adapter(a, "first model").run(a, in_a), which_a)
    out_b = pick(require_adapter(b, "second model").run(b, in_b), which_b)
    if out_a is None or out_b is None:
        raise UsageError("a model returned nothing to compare")
    return compare(out_a, out_b, atol, rtol)


def check_port(source, target, source_nodes, target_nodes, pairs, inputs, atol: float, rtol: float, output=None):
    """The verify result of ``source`` against the ported ``target``; raises VerificationError when they differ."""
    in_a, in_b = split_inputs(inputs)
    result = run_both(source, target, (in_a, in_b), atol, rtol, output)
    if result.ok:
        return result
    found = locate(source, target, source_nodes, target_nodes, pairs, (in_a, in_b), atol, rtol)
    where = f"\nThe first paired layer whose outputs differ: {found}" if found is not None else ""
    raise VerificationError(f"the ported model does not compute what its source does: {result}{where}\n"
                            "The target was restored to its weights before the port.")


def locate(a, b, nodes_a, nodes_b, pairs, inputs, atol: float, rtol: float):
    """The first pair, in the order ``b`` runs its layers, whose outputs differ (a ``Divergence``), or None.

    Both models run once more with every paired layer's output kept;
    activations are compared after the same layout alignment as the outputs.
    """
    in_a, in_b = split_inputs(inputs)
    flow_a = trace(a, nodes_a, in_a, capture=True)
    flow_b = trace(b, nodes_b, in_b, capture=True) if flow_a is not None else None
    if flow_a is None or flow_b is None:
        return None
    found = first_divergence(pairs, flow_a, flow_b, atol, rtol)
    if found is None:
        return None
    p, diff = found
    return Divergence(p.source.label, p.target.label, p.rule.name, diff,
                      [str(i) for i in p.rule.check(p.source_hp, p.target_hp)])


def pairs_of(report, nodes_a, nodes_b) -> list:
    """The pairs a port's report made, between the layers of the two models given (in either direction)."""
    a = {n.label: n for n in nodes_a for n in [n] + list(getattr(n, "parts", []))}
    b = {n.label: n for n in nodes_b for n in [n] + list(getattr(n, "parts", []))}
    pairs = []
    for step in report.steps:
        x, y = (a.get(step.source), b.get(step.target)) if step.source in a else (a.get(step.target), b.get(step.source))
        found = pair(x, y, step.evidence) if x is not None and y is not None else None
        if found is not None:
            pairs.append(found)
    return pairs
