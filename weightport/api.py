"""The public API: port, get_weights, set_weights, verify (and load, save, convert for files)."""
from __future__ import annotations

import warnings

from .converter import engine, matcher
from .converter.frameworks import require_adapter, walk
from .converter.plan import Report
from .converter.verify import VerifyResult, compare
from .errors import ShapeMismatchError, UnsupportedLayerError, UsageError, WeightportWarning
from .mappings.rule import rules_for


def _live_nodes(obj, role: str, strict: bool):
    fw = require_adapter(obj, role)
    nodes, unmapped = walk(fw, obj)
    if unmapped and strict:
        u = unmapped[0]
        raise UnsupportedLayerError(
            f"{role} layer {u.path!r} ({u.class_name}) holds weights {u.weights} but no rule handles "
            f"{u.class_name}; the target was not changed. Register a rule for it (see `weightport rules`), "
            "or pass strict=False to port everything else")
    return fw, nodes, [f"{u.path} ({u.class_name}: {', '.join(u.weights)}): no rule" for u in unmapped]


def port(source, target, *, hints: dict | None = None, strict: bool = True) -> Report:
    """Copy the weights of ``source`` into ``target``; either may be any supported live model.

    Layers are paired by kind, order and shape; ``hints`` ({source_path:
    target_path}) override the pairing. With ``strict=True`` the target is
    left untouched unless every weight pairs; with ``strict=False`` what pairs
    is copied and the rest reported. Configuration that weights cannot carry
    (epsilon, momentum...) is compared, and differences are warned about and
    listed in ``report.warnings``.
    """
    _, src_nodes, src_unmapped = _live_nodes(source, "source", strict)
    tgt_fw, tgt_nodes, tgt_unmapped = _live_nodes(target, "target", strict)
    plan, pairs = matcher.match(src_nodes, tgt_nodes, hints=hints, strict=strict)
    plan.unmatched_source += src_unmapped
    plan.unmatched_target += tgt_unmapped
    engine.run_into_live(pairs)
    for issue in plan.issues:
        warnings.warn(issue, WeightportWarning, stacklevel=2)
    return Report(plan, tgt_fw.finish(target))


def _single(layer):
    """(framework, rule, hp) for a layer a rule handles, else None."""
    fw = require_adapter(layer, "layer")
    rules = rules_for(fw.layout, layer)
    if not rules:
        return fw, None, None
    return fw, rules[0], rules[0].config(fw.layout, layer)


def get_weights(layer) -> list:
    """The layer's weights as Keras would list them (``get_weights()`` order and layout), as numpy.

    Works for a layer of any supported framework; for a whole model, the lists
    of its rule-bearing layers are concatenated in order, like Keras'
    ``model.get_weights()``.
    """
    fw, rule, hp = _single(layer)
    if rule is not None:
        native = fw.read(layer, rule.native_slots(fw.layout, hp))
        return rule.to_canonical(fw.layout, hp, native)
    _, nodes, _ = _live_nodes(layer, "model", strict=True)
    return [w for n in nodes for w in get_weights(n.obj)]


def set_weights(layer, weights) -> None:
    """Assign a Keras-ordered, Keras-layout weight list to a layer (or model) of any framework."""
    weights = list(weights)
    fw, rule, hp = _single(layer)
    if rule is None:
        _, nodes, _ = _live_nodes(layer, "model", strict=True)
        counts = [len(n.candidates[0][0].canonical(n.candidates[0][1])) for n in nodes]
        if sum(counts) != len(weights):
            raise ShapeMismatchError(f"the model's layers take {sum(counts)} weights in all; got {len(weights)}")
        start = 0
        for node, count in zip(nodes, counts):
            set_weights(node.obj, weights[start:start + count])
            start += count
        return
    import numpy as np

    from .converter.arrays import to_numpy

    names = rule.canonical(hp)
    label = fw.display_name(layer)
    if len(weights) != len(names):
        raise ShapeMismatchError(f"{label} ({rule.name}) takes {len(names)} weights {names}; got {len(weights)}")
    weights = [np.asarray(to_numpy(w)) for w in weights]
    slots = rule.native_slots(fw.layout, hp)
    expected = rule.canonical_shapes(fw.layout, hp, fw.shapes(layer, slots))
    for name, w, shape in zip(names, weights, expected):
        if tuple(w.shape) != tuple(shape):
            raise ShapeMismatchError(f"{label} ({rule.name}) weight {name!r}: expected shape {tuple(shape)} "
                                     f"(Keras layout), got {tuple(w.shape)}; nothing was assigned")
    fw.write(layer, rule.from_canonical(fw.layout, hp, weights))


def verify(a, b, inputs, *, atol: float = 1e-5, rtol: float = 1e-4) -> VerifyResult:
    """Run both models on ``inputs`` in inference mode and compare their outputs.

    ``inputs`` is one input for both models, or a pair ``(inputs_a, inputs_b)``
    when the two need different layouts (e.g. NCHW for torch, NHWC for Keras).
    Outputs that differ only by channels-first vs channels-last are compared
    after moving the axis (said in ``.notes``).
    """
    if isinstance(inputs, tuple) and len(inputs) == 2:
        in_a, in_b = inputs
    else:
        in_a = in_b = inputs
    out_a = require_adapter(a, "first model").run(a, in_a)
    out_b = require_adapter(b, "second model").run(b, in_b)
    if out_a is None or out_b is None:
        raise UsageError("a model returned nothing to compare")
    return compare(out_a, out_b, atol, rtol)
