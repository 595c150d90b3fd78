"""The dataflow of a Keras model under the jax backend, read from the jaxpr of one traced call.

Run eagerly, an operation written inside a layer's ``call`` goes straight to
``jax.numpy`` and cannot be followed, so the flow would be incomplete. Traced
with ``jax.make_jaxpr`` instead, every operation becomes an equation, and the
equations of each rule-bearing layer carry a name scope of its own: which
layer made each value, and which layers each layer reads, follow from the
equations alone, with nothing compiled or run.
"""
from __future__ import annotations

from ..flow import Flow

_SCOPE = "weightport_node_"


def trace(model, refs, inputs) -> Flow:
    """The Flow of ``model`` called on ``inputs`` among ``refs`` (its rule-bearing layers)."""
    import jax
    import keras

    paths_of: dict = {}
    for ref in refs:
        paths_of.setdefault(id(ref.obj), []).append(ref.path)
    scopes = {f"{_SCOPE}{i}": paths for i, paths in enumerate(paths_of.values())}
    token_of = {key: f"{_SCOPE}{i}" for i, key in enumerate(paths_of)}
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
    return flow_of(closed.jaxpr, scopes)


def flow_of(jaxpr, scopes: dict) -> Flow:
    """Follow every value of ``jaxpr`` from the scoped layer that made it (``scopes``: token -> the paths a
    layer stands for; a stacked layer's paths feed one another in turn)."""
    flow, seen = Flow(), set()
    origin: dict = {}  # var -> the layer paths it comes from; model inputs and constants: none
    made_in: dict = {}  # var -> the token of the layer whose equations made it
    for eqn in jaxpr.eqns:
        names = str(eqn.source_info.name_stack).split("/")
        token = next((n for n in reversed(names) if n in scopes), None)
        variables = [v for v in eqn.invars if type(v).__name__ != "Literal"]
        if token is None:
            made = set().union(*(origin.get(v, ()) for v in variables))
        else:
            paths = scopes[token]
            read = set().union(*(origin.get(v, ()) for v in variables if made_in.get(v) != token))
            flow.feeds.setdefault(paths[0], set()).update(read)
            for before, path in zip(paths, paths[1:]):
                flow.feeds.setdefault(path, set()).add(before)
            if token not in seen:
                seen.add(token)
                flow.order += [p for p in paths if p not in flow.order]
            made = {paths[-1]}
        for v in eqn.outvars:
            origin[v], made_in[v] = made, token
    return flow
