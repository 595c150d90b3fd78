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

    def get(source_nodes, target_nodes, side: int):
        nodes = source_nodes if side == 0 else target_nodes
        key = (side, tuple(n.path for n in nodes))
        if key not in runs:
            model = source if side == 0 else target
            runs[key] = trace(model, _live(model, nodes), in_a if side == 0 else in_b)
        return runs[key]
    return get


def _live(model, nodes) -> list:
    """The live layers of ``model`` standing at the paths of ``nodes`` (themselves, where they are live)."""
    if model is None or all(hasattr(n, "obj") for n in nodes):
        return list(nodes)
    from .frameworks import walk

    refs, _ = walk(adapter_for(model), model)
    by_path = {n.path: n for r in refs for n in (r, *r.parts)}
    return [by_path[n.path] for n in nodes if n.path in by_path]
