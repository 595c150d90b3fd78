"""Both sides of a port, run once: the dataflow the matcher pairs look-alikes by, and each layer's output.

Tracing is evidence, never a requirement: a side that is a checkpoint, or a
model that cannot run on the made-up inputs (built from its first layer and
input tables, and from the inputs it declares: a Keras functional model's
specs, a torch ``forward``'s other inputs such as a decoder's token ids),
gives no flow, and the matcher then relies on weaker evidence or refuses.
"""
from __future__ import annotations

from ..errors import WeightportError
from .frameworks import adapter_for


def split_inputs(inputs) -> tuple:
    """(inputs for the first model, for the second): a pair is split, anything else serves both."""
    if isinstance(inputs, tuple) and len(inputs) == 2:
        return inputs
    return inputs, inputs


def trace(model, nodes, inputs=None, capture: bool = False):
    """The Flow of one run of a live ``model`` among ``nodes``, or None where it cannot be had."""
    fw = adapter_for(model) if model is not None else None
    # loose tensors' layers are not rule-bearing; a part its layer's call does not compute is not seen running
    nodes = [n for n in nodes or () if not getattr(n, "loose", False) and getattr(n, "runs", True)]
    if fw is None or not nodes:
        return None
    try:
        candidates = [inputs] if inputs is not None else fw.sample_inputs(model, nodes)
    except WeightportError:  # the first layer's shapes need what only its pair knows (heads from a file)
        return None
    for candidate in candidates:
        try:
            return fw.trace(model, nodes, candidate, capture=capture)
        except Exception:  # noqa: BLE001 - a model that does not run on this input gives no evidence
            continue
    return None


def flows(source, target, inputs=None):
    """A callable ``get(source_nodes, target_nodes, side)`` giving the source's (0) or target's (1) flow; for
    ``matcher.match(flows=)``.

    The nodes are those the matcher pairs (composite layers may have been
    split into their parts). A side whose nodes are a checkpoint's groups is
    traced through ``source`` (the checkpoint's own model), whose layers have
    the same paths.
    """
    in_a, in_b = split_inputs(inputs) if inputs is not None else (None, None)
    runs: dict = {}  # one run per side and set of layers: asked again (a view of a node in its stead), kept
    failed: dict = {}  # side -> "no model" (a checkpoint alone) or "did not run" (on the inputs tried)

    def get(source_nodes, target_nodes, side: int):
        nodes = source_nodes if side == 0 else target_nodes
        key = (side, tuple(n.path for n in nodes))
        if key not in runs:
            model = source if side == 0 else target
            runs[key] = trace(model, _live(model, nodes), in_a if side == 0 else in_b)
            if runs[key] is None:
                failed[side] = "no model" if model is None else "did not run"
        return runs[key]
    get.failed, get.given = failed, inputs is not None  # for a refusal: why a side gave no flow
    return get


SIDES = ("source", "target")


def unseen(flows: tuple, classes) -> dict:
    """side -> labels of the look-alikes in ``classes`` (``src``, ``tgt``) that side's traced run never reached."""
    found = {}
    for side, flow in enumerate(flows):
        ran = set(flow.order)
        labels = [n.label for c in classes for n in (c.src, c.tgt)[side] if n.path not in ran]
        if labels:
            found[side] = labels
    return found


def why_unsettled(traced: bool, failed: dict, unseen: dict, checkpoint: bool, given: bool) -> str:
    """For a refusal of look-alikes: why no run settled them, and what would (a refusal must not ask for a
    model= already given). ``failed``: see ``flows``; ``unseen``: side -> labels of look-alikes its traced run
    never reached (a vision tower when the made-up inputs hold no image); ``checkpoint``: the source is a file."""
    rerun = ("port the file into that model first (wp.port(path, model)), then port that model with "
             "check=(its inputs, the target's inputs)" if checkpoint else
             "pass check=(inputs_a, inputs_b), inputs both models accept")
    inputs = "the inputs given" if given else "made-up inputs"
    if traced:
        text = "neither their names nor the dataflow of a traced run tell which is which"
        for side, labels in unseen.items():
            listed = ", ".join(labels[:3]) + (" ..." if len(labels) > 3 else "")
            text += f" (the {SIDES[side]}'s run on {inputs} never reached {listed}: {rerun}, that run them)"
        return text
    stuck = [s for s in sorted(failed) if failed[s] == "did not run"]
    if stuck:
        names = " and ".join("the source's own model (model=)" if checkpoint and s == 0 else f"the {SIDES[s]}"
                             for s in stuck)
        how = f"{names} could not be run on {inputs}: {rerun}, so they can be traced"
    elif checkpoint:
        how = "a checkpoint cannot be run: pass its own model as model= so its dataflow can be traced"
    else:
        how = f"{rerun}, so they can be traced"
    return f"their names do not tell which is which, and no run of both models could show what feeds what ({how})"


def _live(model, nodes) -> list:
    """The live layers of ``model`` standing at the paths of ``nodes`` (themselves, where they are live)."""
    if model is None or all(hasattr(n, "obj") for n in nodes):
        return list(nodes)
    from .frameworks import walk

    refs, _ = walk(adapter_for(model), model)
    by_path = {n.path: n for r in refs for n in (r, *r.parts)}
    return [by_path[n.path] for n in nodes if n.path in by_path]
