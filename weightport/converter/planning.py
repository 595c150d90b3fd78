"""Plans made with no target model: a saved plan run again, and a source written out as it is.

Both end in pairs whose targets exist only as the tensor names they will be
written under (``Virtual``), for the engine to stream into a file.
"""
from __future__ import annotations

from ..errors import AmbiguityError, ShapeMismatchError, UsageError, WeightportError
from ..mappings.rule import registry
from . import biases, folding, split_plans
from .pairs import refuse_unsettled
from .plan import PLAN_VERSION, Pair, Plan, Step, reparametrized_notes, transform_text
from .structure import FileNode


class Virtual:
    """A target layer that exists only as the names it will be written under."""

    def __init__(self, path, layout):
        self.path, self.label, self.layout = path, path or "<root>", layout


def read_plan(plan) -> Plan:
    """``plan`` itself, or the Plan saved as JSON at that path."""
    if isinstance(plan, Plan):
        return plan
    try:
        with open(plan, encoding="utf-8") as f:
            return Plan.from_json(f.read())
    except UsageError:
        raise
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UsageError(f"cannot read the plan {plan}: {exc}; give a file written by "
                         "`weightport convert --dry-run --save-plan` (or report.to_json())") from None


def replay(plan: Plan, ckpt) -> tuple:
    """(pairs, names_of) that run a saved plan on a checkpoint, every name, shape and slice bound checked first. A
    file an adapter walks as a model (an ONNX graph, whose layers read initializers through Transposes) is walked
    again, and each step's layer found by its path, reading the tensors the plan names. A step reading a part of a
    packed layer, or assembling one, is rebuilt from what it recorded (``split_plans``)."""
    walked = _walked(ckpt)
    pairs = []
    for step in plan.steps:
        rule = registry.get(step.rule)
        if not step.target_names:
            _no_names(step)

        def layer(path, layout, rule, hp, names, step=step):
            return _layer(walked, ckpt, step, path, layout, rule, hp, names)

        if step.split:
            node = split_plans.replayed(step, ckpt, layer)
        elif step.evidence == "split":
            raise UsageError(f"plan step {step.source} -> {step.target} reads a part of a packed layer (or assembles "
                             f"one), but the plan (version {plan.version}) does not record where its parts lie; make "
                             f"the plan again with this weightport (plan version {PLAN_VERSION}), which records them")
        else:
            node = layer(step.source, step.source_layout, rule, step.source_hp, step.source_names)
        shapes = node.canonical_shapes(rule, step.source_hp)
        if shapes is None or [tuple(s) for s in shapes] != [tuple(s) for s in step.shapes]:
            raise ShapeMismatchError(f"{ckpt.path}: {step.source} has shapes {shapes}, the plan expects "
                                     f"{step.shapes}; nothing was written")
        pairs.append(Pair(node, Virtual(step.target, step.target_layout), rule, step.source_hp,
                          step.target_hp, shapes, shapes))
    names = {id(p): step.target_names for p, step in zip(pairs, plan.steps)}
    return pairs, lambda p, slot: names[id(p)][slot]


def _no_names(step):
    raise UsageError(f"plan step {step.source} -> {step.target} records no tensor names; only plans of "
                     "file conversions (convert/save with dry_run=True) can be run again")


def _layer(walked, ckpt, step, path, layout, rule, hp, names):
    """The layer at ``path`` of ``ckpt`` reading tensors ``names`` (slot -> name), each checked to be there."""
    if not names:
        _no_names(step)
    missing = [n for n in names.values() if n not in ckpt]
    if missing:
        raise ShapeMismatchError(f"{ckpt.path}: the plan needs tensors {missing[:5]} for {path}, "
                                 "which the checkpoint does not hold; nothing was written")
    if walked is None:
        node = FileNode(path, layout, [(rule, hp)], ckpt, names)
    else:
        node = _walked_node(walked, path, names, rule, hp, ckpt)
    return biases.replayed(folding.replayed(node, hp, ckpt), hp, ckpt)


def _walked(ckpt):
    """{layer path: node} where an adapter walks the checkpoint's file as a model, else None."""
    from .frameworks import adapter_for, walk

    fw = adapter_for(ckpt.path) if getattr(ckpt, "path", None) else None
    if fw is None:
        return None
    nodes, _ = walk(fw, ckpt.path)
    return {node.path: node for node in nodes}


def _walked_node(walked, path, names, rule, hp, ckpt):
    """The walked layer at ``path``, reading the very tensors the plan recorded (``names``), under ``rule``."""
    from dataclasses import replace

    node = walked.get(path)
    found = dict(getattr(node, "names", {})) if node is not None else None
    if found is None or any(found.get(slot) != name for slot, name in names.items()):
        raise ShapeMismatchError(f"{ckpt.path}: the plan reads {names} for layer {path}, but "
                                 f"the graph's layer there reads {found}; the file is not the one the plan was "
                                 "made for. Nothing was written")
    return replace(node, candidates=[(rule, hp)], _shapes={})


def as_it_is(src_nodes, layout) -> tuple:
    """(plan, pairs) writing the source's own layers in ``layout``, no target model to match."""
    plan, pairs = Plan(), []
    for node in _laid_out(src_nodes):
        rules = [r for r, _ in node.candidates]
        # a live layer's class settles its rule; names and shapes alone may not
        if layout != node.layout and len(rules) > 1 and getattr(node, "inferred", False) \
                and not _moved_alike(node, layout):
            raise AmbiguityError(f"{node.label}: its tensors fit several rules ({', '.join(r.name for r in rules)}), "
                                 f"which differ in {layout} layout; pass model= or like= to say which")
        rule, hp = node.candidates[0]
        if layout not in rule.layouts():
            raise UsageError(f"{node.label}: rule {rule.name!r} has no {layout!r} layout")
        shapes = node.canonical_shapes(rule, hp)
        written = {k: v for k, v in hp.items() if k != "reparametrized"}  # the file holds the folded weight
        p = Pair(node, Virtual(node.path, layout), rule, hp, written, shapes, shapes)
        refuse_unsettled(p)
        pairs.append(p)
        plan.issues += [f"{node.label}: {note}" for note in reparametrized_notes(p)]
        plan.steps.append(Step(node.label, node.label, rule.name, node.layout, layout, hp, written, shapes,
                               transform_text(p), rule.exact(node.layout, hp) and rule.exact(layout, hp)
                               and not hp.get("reparametrized")))
    return plan, pairs


def _laid_out(nodes) -> list:
    """Nodes as they can be written alone: a composite group whose layout needs what only a paired layer says
    (the heads of attention projections read from a file) is written as its parts (four Linear layers)."""
    out = []
    for node in nodes:
        rule, hp = node.candidates[0]
        try:
            node.canonical_shapes(rule, hp)
            whole = True
        except WeightportError:
            whole = False
        out += [node] if whole or not getattr(node, "parts", None) else node.parts
    return out


def _moved_alike(node, layout) -> bool:
    """Whether every reading of a group moves its tensors between its layout and ``layout`` the same way
    (a lone scale as a LayerNorm's gamma or an RMSNorm's scale: a copy either way), so the choice is moot."""
    ways = set()
    for rule, hp in node.candidates:
        try:
            ways.add(tuple(lk.transform.describe() for lay in (node.layout, layout) for lk in rule.links(lay, hp)))
        except WeightportError:
            return False
    return len(ways) == 1
