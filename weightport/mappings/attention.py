"""Attention: Keras MultiHeadAttention <-> torch nn.MultiheadAttention or four Linear projections.

Keras keeps one EinsumDense per projection, split by head: query/key/value
kernels (in, heads, head_dim) with biases (heads, head_dim), and an output
kernel (heads, head_dim, out) with bias (out,). torch keeps (out, in) matrices
whose rows are the heads laid end to end, so every Keras kernel is a reshape
and a transpose of its torch weight. nn.MultiheadAttention also packs q, k, v
into one ``in_proj_weight`` / ``in_proj_bias`` when kdim == vdim == embed_dim.

Flax's MultiHeadAttention (NNX; Linen's MultiHeadDotProductAttention as
file or variables groups) keeps Keras' split-by-head kernels under the names
query, key, value and out: copies. Equinox's MultiheadAttention keeps four
Linear layers (query_proj, key_proj, value_proj, output_proj) with torch's
(out, in) weights, heads laid end to end, as a torch projection module does.

Dropout is not compared: it does nothing at inference. torch's add_bias_kv
and add_zero_attn, and Keras' use_gate, have no counterpart and are refused.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedLayerError, UsageError
from .attention_parts import (HEAD_ATTRIBUTES, PROJECTIONS, head_bias, heads_attribute, heads_of, kv_heads,
                              linear_projections, output_projection, packed_projections, projection,
                              projection_groups, projection_slots, role_of, torch_packs_qkv, weighted_leaves)
from .introspect import has_class
from .rule import Rule, link, register
from .samples import sizes, weights
from .transforms import Chain, Concat, Each, Reshape, Transpose


@register
class MultiHeadAttentionRule(Rule):
    """Keras MultiHeadAttention <-> torch nn.MultiheadAttention."""

    name = "multi_head_attention"
    classes = {"keras": ("MultiHeadAttention", "GroupedQueryAttention"), "torch": ("MultiheadAttention",),
               "flax": ("MultiHeadAttention",), "equinox": ("MultiheadAttention",)}
    composite = True
    slot_patterns = {"torch": ("in_proj_weight", "in_proj_bias", "weight", "bias")}
    # a bare torch checkpoint, or a Linear-projection module without a heads attribute, learns them here
    shared = ("num_heads", "key_dim", "value_dim", "num_kv_heads")
    checks = {"num_heads": "error", "key_dim": "error", "value_dim": "error", "use_bias": "error",
              "attention_axes": "error", "num_kv_heads": "error"}
    check_hints = {
        "num_heads": "the heads cut the projections differently; build both with the same num_heads",
        "key_dim": "per-head query/key size (torch: embed_dim // num_heads)",
        "value_dim": "per-head value size (torch: embed_dim // num_heads)",
        "use_bias": "torch bias= and Keras use_bias= must agree",
        "attention_axes": "torch attends over one sequence axis; Keras attends over these axes",
    }

    # -- Keras ----------------------------------------------------------------
    def config_keras(self, layer):
        if not layer.built or getattr(layer, "_query_dense", None) is None:
            raise UsageError(
                f"Keras MultiHeadAttention '{layer.name}' is not built, so its weights do not exist yet: "
                "call it once on inputs (or build the model from keras.Input) before porting")
        if getattr(layer, "_use_gate", False):
            raise UnsupportedLayerError(
                f"Keras MultiHeadAttention '{layer.name}' has use_gate=True: its gate projection has no "
                "counterpart in torch attention; rebuild it with use_gate=False or port it by hand")
        inputs = [sub.kernel.shape[0] for sub in (layer._query_dense, layer._key_dense, layer._value_dense)]
        if has_class(layer, "GroupedQueryAttention"):
            heads, kv, dk, dv, axes = (layer.num_query_heads, layer.num_key_value_heads, layer.head_dim,
                                       layer.head_dim, (1,))
        else:
            heads, dk, dv, axes = layer.num_heads, layer.key_dim, layer.value_dim, tuple(layer.attention_axes)
            kv = heads
        return {"num_heads": heads, "num_kv_heads": kv, "key_dim": dk, "value_dim": dv,
                "use_bias": bool(layer.use_bias), "dropout": float(getattr(layer, "dropout", 0.0)),
                "attention_axes": axes, "packed": kv == heads and torch_packs_qkv(heads * dk, inputs)}

    def infer_keras(self, shapes):
        use_bias = "query/bias" in shapes
        if set(shapes) != {s for p in PROJECTIONS for s in projection_slots(p, use_bias)}:
            return None
        q, k, v, o = (shapes[f"{p}/kernel"] for p in PROJECTIONS)
        if not all(len(s) == 3 for s in (q, k, v, o)):
            return None
        heads, key_dim, value_dim, kv = q[1], q[2], v[2], k[1]
        if k[2] != key_dim or v[1] != kv or heads % kv or o[:2] != (heads, value_dim):
            return None
        if use_bias and (shapes["query/bias"] != q[1:] or shapes["key/bias"] != k[1:]
                         or shapes["value/bias"] != v[1:] or shapes["attention_output/bias"] != o[2:]):
            return None
        return {"num_heads": heads, "num_kv_heads": kv, "key_dim": key_dim, "value_dim": value_dim,
                "use_bias": use_bias, "packed": kv == heads and torch_packs_qkv(heads * key_dim, [q[0], k[0], v[0]])}

    def examples(self, layout, rng):
        """Any sizes where the layout keeps each projection apart; torch's in_proj_bias needs key_dim == value_dim,
        its packed in_proj_weight inputs as wide as the heads."""
        h, dk, dv, dq, di, do = sizes(rng, 6)
        hp = {"num_heads": h, "num_kv_heads": h, "key_dim": dk, "value_dim": dv, "use_bias": True}
        if layout != "torch":
            return [(hp, example_weights(rng, hp, (dq, di, do), do)),
                    ({**hp, "use_bias": False}, example_weights(rng, {**hp, "use_bias": False}, (dq, di, do), do))]
        e, hp = h * dk, {**hp, "value_dim": dk}
        return [({**hp, "packed": True}, example_weights(rng, hp, (e, e, e), e)),
                ({**hp, "packed": False}, example_weights(rng, hp, (dq, di, do), dv))]

    def canonical(self, hp):
        return [s for p in PROJECTIONS for s in projection_slots(p, hp.get("use_bias", True))]

    def sample_inputs(self, layout, hp, shapes):
        if not shapes:
            return []
        # a sequence of the query's width; torch without batch_first reads (time, batch, width): fits either
        shape = (5, 1, shapes[0][0]) if layout == "torch" else (1, 5, shapes[0][0])
        return [np.full(shape, 0.5, "float32")]

    # -- Flax -----------------------------------------------------------------
    def config_flax(self, module):
        if getattr(module, "normalize_qk", False):
            raise UnsupportedLayerError(
                "Flax MultiHeadAttention with normalize_qk=True layer-normalises queries and keys, which Keras "
                "MultiHeadAttention does not; build it with normalize_qk=False, or port this layer by hand")
        d = module.head_dim
        return {"num_heads": module.num_heads, "key_dim": d, "value_dim": d, "use_bias": bool(module.use_bias),
                "dropout": float(module.dropout_rate), "attention_axes": (1,)}

    def infer_flax(self, shapes):
        renamed = {("attention_output" + k[3:] if k.startswith("out/") else k): v for k, v in shapes.items()}
        return self.infer_keras(renamed)

    def links_flax(self, hp):
        return [link(s, s.replace("attention_output/", "out/")) for s in self.canonical(hp)]

    # -- Equinox --------------------------------------------------------------
    def config_equinox(self, module):
        flags = {module.use_query_bias, module.use_key_bias, module.use_value_bias, module.use_output_bias}
        if len(flags) != 1:
            raise UnsupportedLayerError(
                "Equinox MultiheadAttention has a bias on some projections and not on others "
                f"(query {module.use_query_bias}, key {module.use_key_bias}, value {module.use_value_bias}, "
                f"output {module.use_output_bias}), but Keras' use_bias covers all four; build it with all four "
                "equal, or port this layer by hand")
        return {"num_heads": module.num_heads, "key_dim": module.qk_size, "value_dim": module.vo_size,
                "use_bias": flags.pop(), "dropout": float(module.dropout.p), "attention_axes": (1,)}

    def links_equinox(self, hp):
        h, dk, dv = hp["num_heads"], hp["key_dim"], hp["value_dim"]
        return [
            link("query/kernel", "query_proj.weight", projection(h, dk)),
            link("query/bias", "query_proj.bias", head_bias(h, dk)),
            link("key/kernel", "key_proj.weight", projection(h, dk)),
            link("key/bias", "key_proj.bias", head_bias(h, dk)),
            link("value/kernel", "value_proj.weight", projection(h, dv)),
            link("value/bias", "value_proj.bias", head_bias(h, dv)),
            link("attention_output/kernel", "output_proj.weight", output_projection(h, dv)),
            link("attention_output/bias", "output_proj.bias"),
        ]

    # -- torch ----------------------------------------------------------------
    def config_torch(self, module):
        if getattr(module, "bias_k", None) is not None or getattr(module, "add_zero_attn", False):
            raise UnsupportedLayerError(
                "torch nn.MultiheadAttention with add_bias_kv=True or add_zero_attn=True has no Keras "
                "MultiHeadAttention counterpart (Keras appends no learned or zero key/value); "
                "build it without them, or port this layer by hand")
        d = module.head_dim
        return {"num_heads": module.num_heads, "key_dim": d, "value_dim": d,
                "use_bias": module.in_proj_bias is not None, "dropout": float(module.dropout),
                "attention_axes": (1,), "packed": bool(module._qkv_same_embed_dim)}

    def infer_torch(self, shapes, num_heads=None):
        """hp for an nn.MultiheadAttention checkpoint group; the heads only when ``num_heads`` is given.

        Heads cannot be read off torch shapes ((3E, E) fits any divisor of E).
        Without them the group is still claimed, and the heads come from the
        layer it pairs with (``shared``); with nothing to pair it with, its
        tensors cannot be laid out and the conversion says so.
        """
        use_bias, packed = "in_proj_bias" in shapes, "in_proj_weight" in shapes
        names = ({"in_proj_weight"} if packed else {"q_proj_weight", "k_proj_weight", "v_proj_weight"}) \
            | {"out_proj.weight"} | ({"in_proj_bias", "out_proj.bias"} if use_bias else set())
        out = shapes.get("out_proj.weight", ())
        if set(shapes) != names or len(out) != 2 or out[0] != out[1] or (num_heads and out[0] % num_heads):
            return None
        e = out[0]
        inputs = [shapes["in_proj_weight"]] if packed else [shapes[f"{p}_proj_weight"] for p in "qkv"]
        if (packed and inputs[0] != (3 * e, e)) or (not packed and any(len(s) != 2 or s[0] != e for s in inputs)):
            return None
        if use_bias and (shapes["in_proj_bias"] != (3 * e,) or shapes["out_proj.bias"] != (e,)):
            return None
        hp = {"use_bias": use_bias, "packed": packed}
        if num_heads:
            hp.update(num_heads=num_heads, key_dim=e // num_heads, value_dim=e // num_heads)
        return hp

    def links_torch(self, hp):
        h, dk, dv = heads_of(hp, "torch nn.MultiheadAttention tensors (in_proj_weight...)",
                              "pass model= (the torch model the checkpoint belongs to)")
        e = h * dk
        if hp.get("packed", True):
            kernels = [link(("query/kernel", "key/kernel", "value/kernel"), "in_proj_weight",
                            Chain(Each(3, projection(h, dk)), Concat(0, (e, e, e))))]
        else:
            kernels = [link("query/kernel", "q_proj_weight", projection(h, dk)),
                       link("key/kernel", "k_proj_weight", projection(h, dk)),
                       link("value/kernel", "v_proj_weight", projection(h, dv))]
        return kernels + [
            link(("query/bias", "key/bias", "value/bias"), "in_proj_bias",
                 Chain(Each(3, head_bias(h, dk)), Concat(0, (e, e, e)))),
            link("attention_output/kernel", "out_proj.weight", output_projection(h, dv)),
            link("attention_output/bias", "out_proj.bias"),
        ]



@register
class AttentionProjectionsRule(MultiHeadAttentionRule):
    """Keras MultiHeadAttention <-> a torch module of four Linear projections (Hugging Face style).

    Recognised by structure: exactly four nn.Linear below the module, named
    like q/k/v/o (q_proj, k_proj, v_proj, o_proj / out_proj; query, key,
    value, output.dense; q_lin...; to_q... to_out.0), no other weights, and
    either all four with a bias or none. The heads come from the module's
    num_heads-like attribute or its config, else from the paired Keras layer.
    """

    name = "attention_projections"
    classes = {"keras": ("MultiHeadAttention", "GroupedQueryAttention"), "torch": ("Module",)}
    describe_classes = {"torch": "a module of four Linear q/k/v/o projections (q_proj, k_proj, v_proj, o_proj; "
                                 "query, key, value, out...), num_heads on it or its config"}
    infer_keras = None  # a Keras group is claimed by multi_head_attention alone
    infer_flax = None  # a Flax group is claimed by multi_head_attention alone

    def infer_torch(self, shapes):
        """hp for a checkpoint group of exactly four q/k/v/o projections (each ``weight`` and maybe ``bias``).

        Four such Linear groups may as well be four Dense layers: the node
        keeps them as its parts, and the layer it meets settles which reading
        holds. The heads come from that layer too.
        """
        modules = projection_groups(shapes)
        if modules is None:
            return None
        roles = {}
        for module, tensors in modules.items():
            role = role_of(module)
            if role is None or role in roles or len(tensors.get("weight", ())) != 2:
                return None
            roles[role] = module
        if len(roles) != 4 or len({"bias" in t for t in modules.values()}) != 1:
            return None
        return {"projections": tuple(roles[p] for p in PROJECTIONS), "use_bias": "bias" in modules[roles["query"]],
                "attention_axes": (1,)}

    def examples(self, layout, rng):
        """Grouped-query attention included: fewer key/value heads, each serving a group of query heads."""
        g, m, dk, dv, e = sizes(rng, 5)
        hp = {"projections": ("q_proj", "k_proj", "v_proj", "o_proj"), "num_heads": g * m, "num_kv_heads": g,
              "key_dim": dk, "value_dim": dv, "use_bias": True}
        return [(hp, example_weights(rng, hp, (e, e, e), e)),
                ({**hp, "num_kv_heads": g * m}, example_weights(rng, {**hp, "num_kv_heads": g * m}, (e, e, e), e))]

    def matches(self, layout, layer):
        if layout == "torch":
            return linear_projections(layer) is not None
        return super().matches(layout, layer)

    def config_torch(self, module):
        found = linear_projections(module)
        q, v = found["query"], found["value"]
        hp = {"projections": tuple(found[p][0] for p in PROJECTIONS), "use_bias": q[1].bias is not None,
              "attention_axes": (1,), "module": type(module).__name__}
        heads = heads_attribute(module)
        if heads and q[1].out_features % heads == 0:
            head_dim = q[1].out_features // heads
            kv = found["key"][1].out_features // head_dim  # fewer key/value heads: grouped-query attention
            if kv and heads % kv == 0:
                hp.update(num_heads=heads, num_kv_heads=kv, key_dim=head_dim, value_dim=v[1].out_features // kv)
        return hp

    def links_torch(self, hp):
        what = f"torch module {hp.get('module', '')} with projections {list(hp['projections'])}"
        h, dk, dv = heads_of(hp, what, f"set one of {list(HEAD_ATTRIBUTES)} on it (e.g. module.num_heads = 8)")
        g = kv_heads(hp)
        q, k, v, o = hp["projections"]
        return [
            link("query/kernel", f"{q}.weight", projection(h, dk)), link("query/bias", f"{q}.bias", head_bias(h, dk)),
            link("key/kernel", f"{k}.weight", projection(g, dk)), link("key/bias", f"{k}.bias", head_bias(g, dk)),
            link("value/kernel", f"{v}.weight", projection(g, dv)), link("value/bias", f"{v}.bias", head_bias(g, dv)),
            link("attention_output/kernel", f"{o}.weight", output_projection(h, dv)),
            link("attention_output/bias", f"{o}.bias"),
        ]



@register
class PackedAttentionRule(MultiHeadAttentionRule):
    """Keras MultiHeadAttention <-> a torch module of two projections: q, k, v packed in one, and the output.

    GPT-2's ``c_attn`` (in, 3E) and ``c_proj``, stored (in, out) as its Conv1D
    does, or (out, in) as a Linear does: the biases say which. The packed
    projection holds q, k and v side by side, each heads x head_dim wide.
    """

    name = "packed_attention_projections"
    classes = {"keras": ("MultiHeadAttention",), "torch": ("Module",)}
    describe_classes = {"torch": "a module of two projections, q/k/v packed in one (GPT-2's c_attn) and the output"}
    infer_keras = None
    infer_flax = None

    def examples(self, layout, rng):
        """Stored (in, out) as GPT-2's Conv1D does, and (out, in) as a Linear does."""
        h, d, e, o = sizes(rng, 4)
        hp = {"projections": ("c_attn", "c_proj"), "num_heads": h, "key_dim": d, "value_dim": d, "use_bias": True}
        return [({**hp, "in_out": in_out, "packing": packing}, example_weights(rng, hp, (e, e, e), o))
                for in_out in (True, False) for packing in PACKINGS]

    def matches(self, layout, layer):
        if layout == "torch":
            return packed_projections(weighted_leaves(layer)) is not None
        return super().matches(layout, layer)

    def unsettled(self, hp):
        if "in_out" not in hp or hp.get("packing") in PACKINGS:
            return None
        return (f"torch module {hp.get('module', '')} packs q, k and v in one Linear {hp['projections'][0]!r}, "
                "either one after another (timm's qkv) or interleaved head by head (GPT-NeoX's, Bloom's "
                "query_key_value): its weights cannot show which. Pass options={'packed_qkv': 'blocks'} or "
                "{'packed_qkv': 'per_head'}")

    def config_torch(self, module):
        hp = dict(packed_projections(weighted_leaves(module)), attention_axes=(1,), module=type(module).__name__)
        heads = heads_attribute(module)
        if heads and hp["width"] % heads == 0:
            hp.update(num_heads=heads, key_dim=hp["width"] // heads, value_dim=hp["width"] // heads)
        return hp

    def infer_torch(self, shapes):
        leaves = projection_groups(shapes)
        if leaves is None:
            return None
        return packed_projections({m: (t.get("weight"), t.get("bias")) for m, t in leaves.items()})

    def links_torch(self, hp):
        h, dk, dv = heads_of(hp, f"torch module {hp.get('module', '')} with packed projections "
                                  f"{list(hp['projections'])}", f"set one of {list(HEAD_ATTRIBUTES)} on it")
        packed, out = hp["projections"]
        e = h * dk
        flat = Each(3, Reshape((-1, h, dk), (-1, e)))
        qkv = Chain(flat, Concat(1, (e, e, e))) if hp["in_out"] else Chain(Each(3, projection(h, dk)),
                                                                             Concat(0, (e, e, e)))
        bias = Chain(Each(3, head_bias(h, dk)), Concat(0, (e, e, e)))
        if hp.get("packing") == "per_head":  # rows (head, q/k/v, head_dim), as GPT-NeoX's view reads them
            qkv, bias = Chain(qkv, per_head_rows(h, dk, 1 if hp["in_out"] else 0)), \
                Chain(bias, per_head_rows(h, dk, 0, ndim=1))
        output = Reshape((h, dv, -1), (h * dv, -1)) if hp["in_out"] else output_projection(h, dv)
        return [link(("query/kernel", "key/kernel", "value/kernel"), f"{packed}.weight", qkv),
                link(("query/bias", "key/bias", "value/bias"), f"{packed}.bias", bias),
                link("attention_output/kernel", f"{out}.weight", output),
                link("attention_output/bias", f"{out}.bias")]


PACKINGS = ("blocks", "per_head")


def per_head_rows(h: int, dk: int, axis: int, ndim: int = 2):
    """q, k, v packed one after another -> interleaved head by head, along ``axis`` of an ``ndim``-D tensor."""
    e3 = 3 * h * dk
    if ndim == 1:
        return Chain(Reshape((e3,), (3, h, dk)), Transpose(1, 0, 2), Reshape((h, 3, dk), (e3,)))
    if axis == 0:
        return Chain(Reshape((e3, -1), (3, h, dk, -1)), Transpose(1, 0, 2, 3), Reshape((h, 3, dk, -1), (e3, -1)))
    return Chain(Reshape((-1, e3), (-1, 3, h, dk)), Transpose(0, 2, 1, 3), Reshape((-1, h, 3, dk), (-1, e3)))


def example_weights(rng, hp, inputs, out) -> list:
    """Canonical weights of an attention layer of ``hp``, reading query/key/value ``inputs`` wide, writing ``out``."""
    h, g, dk, dv = hp["num_heads"], kv_heads(hp), hp["key_dim"], hp["value_dim"]
    shapes = [(inputs[0], h, dk), (h, dk), (inputs[1], g, dk), (g, dk), (inputs[2], g, dv), (g, dv), (h, dv, out),
              (out,)]
    if not hp.get("use_bias", True):
        shapes = shapes[::2]
    return weights(rng, *shapes)
