"""The dataflow of a Keras model under the jax backend, read from the jaxpr of one traced call.

Run eagerly, an operation written inside a layer's ``call`` goes straight to
``jax.numpy`` and cannot be followed, so the flow would be incomplete. Traced
with ``jax.make_jaxpr`` instead, every operation becomes an equation, and the
equations of each rule-bearing layer carry a name scope of its own: which
layer made each value, and which layers each layer reads, follow from the
equations alone, with nothing compiled or run.
"""
from __future__ import annotations

from ..flow import ACTIVATIONS, UNKNOWN, Flow

_SCOPE = "weightport_node_"


def trace(model, refs, inputs) -> Flow:
    """The Flow of ``model`` called on ``inputs`` among ``refs`` (its rule-bearing layers)."""
    import jax
    import keras

    from .keras import applies_activation

    paths_of: dict = {}
    for ref in refs:
        paths_of.setdefault(id(ref.obj), (ref.obj, []))[1].append(ref.path)
    scopes = {f"{_SCOPE}{i}": paths for i, (_, paths) in enumerate(paths_of.values())}
    token_of = {key: f"{_SCOPE}{i}" for i, key in enumerate(paths_of)}
    activating = {token_of[key] for key, (obj, _) in paths_of.items() if applies_activation(obj)}
    layer_call = keras.Layer.__call__

    def scoped(layer, *args, **kwargs):
        token = token_of.get(id(layer))
        if token is None:
            return layer_call(layer, *args, **kwargs)
        with jax.named_scope(token):
            return layer_call(layer, *args, **kwargs)

    keras.Layer.__call__ = scoped
    try:
        closed = jax.make_jaxpr(lambda x: model(x, training=False))(inputs)
    finally:
        keras.Layer.__call__ = layer_call
    holders: dict = {}  # id of a layer's weight value -> the tokens of the rule-bearing layers holding it
    for key, (obj, _) in paths_of.items():
        for v in getattr(obj, "weights", ()):
            holders.setdefault(id(v.value), set()).add(token_of[key])
    held = {var: holders[id(c)] for var, c in zip(closed.jaxpr.constvars, closed.consts) if id(c) in holders}
    return flow_of(closed.jaxpr, scopes, activating, held)


def flow_of(jaxpr, scopes: dict, activating=frozenset(), held=None) -> Flow:
    """Follow every value of ``jaxpr`` from the scoped layer that made it (``scopes``: token -> the paths a
    layer stands for; a stacked layer's paths feed one another in turn; ``activating``: the tokens of layers
    that apply an activation of their own; ``held``: constant var -> the tokens of the layers whose weight it
    is: read outside all of them, it stands for a layer the run never called, so what it makes has an unknown
    origin, as ``Provenance.hold`` says)."""
    flow, seen, held = Flow(sees_activations=True), set(), held or {}
    origin: dict = {}  # var -> the layer paths it comes from; model inputs and constants: none
    through: dict = {}  # var -> those of its origins whose values passed an activation on the way
    made_in: dict = {}  # var -> the token of the layer whose equations made it
    padded: dict = {}  # var -> (zeros per axis, shape before) of a constant zero pad outside every layer
    for eqn in jaxpr.eqns:
        names = str(eqn.source_info.name_stack).split("/")
        token = next((n for n in reversed(names) if n in scopes), None)
        variables = [v for v in eqn.invars if type(v).__name__ != "Literal"]
        off_trace = {UNKNOWN} if any(v in held and not held[v] & set(names) for v in variables) else set()
        if token is None:
            flow.tapped.update(scopes[made_in[v]][-1] for v in variables if made_in.get(v) is not None)
            made = set().union(off_trace, *(origin.get(v, ()) for v in variables))
            widths = zero_pad(eqn)
            if widths is not None:
                padded[eqn.outvars[0]] = (widths, tuple(eqn.invars[0].aval.shape))
            passed = set().union(*(through.get(v, ()) for v in variables)) | (made if _activates(eqn) else set())
        else:
            paths = scopes[token]
            outside = [v for v in variables if made_in.get(v) != token]
            read = set().union(off_trace, *(origin.get(v, ()) for v in outside))
            for v in outside[:1]:
                if v in padded:
                    flow.padded.setdefault(paths[0], padded[v])
            flow.feeds.setdefault(paths[0], set()).update(read)
            flow.activated.setdefault(paths[0], set()).update(*(through.get(v, ()) for v in outside))
            for before, path in zip(paths, paths[1:]):
                flow.feeds.setdefault(path, set()).add(before)
            if token not in seen:
                seen.add(token)
                flow.order += [p for p in paths if p not in flow.order]
            made = {paths[-1]}
            passed = made if token in activating else set()
        _cuts(flow, eqn, variables, token, made_in, scopes)
        for v in eqn.outvars:
            origin[v], through[v], made_in[v] = made, passed, token
    returned = [v for v in jaxpr.outvars if type(v).__name__ != "Literal"]
    flow.tapped.update(scopes[made_in[v]][-1] for v in returned if made_in.get(v) is not None)
    return flow


def zero_pad(eqn):
    """(low, high) zeros per axis where ``eqn`` pads its first operand with a literal zero (``lax.pad``, or a
    call of a jaxpr doing only that, as ``jnp.pad`` is), cropping and interleaving nothing; else None."""
    call = eqn.params.get("jaxpr")
    call = getattr(call, "jaxpr", call)
    if eqn.primitive.name == "pad":
        pad, outer = eqn, {}
    elif hasattr(call, "eqns"):
        pads = [e for e in call.eqns if e.primitive.name == "pad"]
        if len(pads) != 1 or any(e.primitive.name not in ("pad", "convert_element_type") for e in call.eqns):
            return None
        pad, outer = pads[0], {id(a): b for a, b in zip(call.invars, eqn.invars)}
        outer.update({id(e.outvars[0]): outer.get(id(e.invars[0])) for e in call.eqns if e is not pad})
    else:
        return None
    operand, value = (outer.get(id(v), v) for v in pad.invars[:2])
    if operand is not eqn.invars[0] or type(value).__name__ != "Literal" or getattr(value, "val", None) != 0:
        return None
    config = pad.params["padding_config"]
    if any(int(lo) < 0 or int(hi) < 0 or int(mid) for lo, hi, mid in config):
        return None
    return tuple((int(lo), int(hi)) for lo, hi, _ in config)


def _cuts(flow: Flow, eqn, variables, token, made_in: dict, scopes: dict) -> None:
    """Record how an equation outside a layer reads that layer's output (``Flow.cuts``): the shape of what it
    makes, and, for a slice along the last axis only, where the piece starts."""
    for v in variables[:1]:
        maker = made_in.get(v)
        if maker is None or maker == token:
            continue
        starts = eqn.params.get("start_indices") if eqn.primitive.name == "slice" else None
        offset = int(starts[-1]) if starts is not None and not any(starts[:-1]) else None
        for out in eqn.outvars:
            shape = tuple(getattr(out.aval, "shape", ()))
            flow.cuts.setdefault(scopes[maker][-1], []).append((eqn.primitive.name, shape, offset))


def _activates(eqn) -> bool:
    """Whether an equation is, or calls a jaxpr holding, an elementwise activation (tanh, logistic, erf...)."""
    if eqn.primitive.name in ACTIVATIONS:
        return True
    inner = [getattr(p, "jaxpr", p) for p in eqn.params.values() if hasattr(p, "eqns") or hasattr(p, "jaxpr")]
    return any(_activates(e) for j in inner if hasattr(j, "eqns") for e in j.eqns)
