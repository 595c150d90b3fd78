"""The pieces attention rules are built of: per-head transforms, and the projections found in a torch module.

Keras splits every projection by head: query/key/value kernels (in, heads,
head_dim), output kernel (heads, head_dim, out); torch keeps (out, in)
matrices whose rows are the heads laid end to end. A torch attention block is
recognised by structure: its weighted leaves, named like q/k/v/o.
"""
from __future__ import annotations

from ..errors import UsageError
from .introspect import has_class
from .transforms import Chain, Reshape, Transpose

PROJECTIONS = ("query", "key", "value", "attention_output")  # Keras sub-layer names, in get_weights() order
# words that name a projection in a torch attention module's children (q_proj, query, to_q, out_lin...)
ROLE_WORDS = {
    "query": {"q", "query", "wq"},
    "key": {"k", "key", "wk"},
    "value": {"v", "value", "wv"},
    "attention_output": {"o", "out", "output", "wo"},
}
HEAD_ATTRIBUTES = ("num_heads", "num_attention_heads", "n_heads", "n_head")


def projection(heads: int, head_dim: int):
    """Keras (in, heads, head_dim) kernel -> torch (heads*head_dim, in) weight."""
    return Chain(Reshape((-1, heads, head_dim), (-1, heads * head_dim)), Transpose(1, 0))


def head_bias(heads: int, head_dim: int):
    """Keras (heads, head_dim) bias -> torch (heads*head_dim,) bias."""
    return Reshape((heads, head_dim), (heads * head_dim,))


def output_projection(heads: int, head_dim: int):
    """Keras (heads, head_dim, out) kernel -> torch (out, heads*head_dim) weight."""
    return Chain(Reshape((heads, head_dim, -1), (heads * head_dim, -1)), Transpose(1, 0))


def heads_of(hp: dict, what: str, how: str) -> tuple:
    """(heads, key_dim, value_dim), or a UsageError saying how to give the heads."""
    if not hp.get("num_heads"):
        raise UsageError(f"{what}: the number of attention heads is unknown, and torch shapes do not tell it; "
                         f"{how}, or port into a Keras model whose MultiHeadAttention knows its heads")
    return hp["num_heads"], hp["key_dim"], hp["value_dim"]


def kv_heads(hp: dict) -> int:
    """Key/value heads: fewer than the query heads in grouped-query attention (each serves a group of them)."""
    return hp.get("num_kv_heads") or hp["num_heads"]


def torch_packs_qkv(embed_dim: int, input_dims) -> bool:
    """Whether torch would pack q, k, v into one in_proj_weight (kdim == vdim == embed_dim)."""
    return all(d == embed_dim for d in input_dims)


def projection_slots(name: str, use_bias: bool) -> list:
    return [f"{name}/kernel", f"{name}/bias"] if use_bias else [f"{name}/kernel"]


def role_of(path: str):
    words = set(path.lower().replace(".", "_").split("_"))
    roles = [r for r, names in ROLE_WORDS.items() if words & names]
    return roles[0] if len(roles) == 1 else None


def own_weights(module) -> bool:
    if next(iter(module.named_parameters(recurse=False)), None) is not None:
        return True
    skip = getattr(module, "_non_persistent_buffers_set", set())
    return any(n not in skip for n, _ in module.named_buffers(recurse=False))



def projection_groups(shapes):
    """{sub-module: {"weight": shape, "bias": shape}} of a checkpoint group made only of such sub-modules, else None."""
    modules: dict = {}
    for name, shape in shapes.items():
        module, _, leaf = name.rpartition(".")
        if leaf not in ("weight", "bias") or not module:
            return None
        modules.setdefault(module, {})[leaf] = tuple(shape)
    return modules


def weighted_leaves(module, limit: int = 8) -> dict:
    """{child path: (weight shape, bias shape or None)} of a module's weighted sub-modules, when each is a leaf
    holding a 2-D ``weight`` (and maybe a ``bias``) and nothing else holds weights; else {}."""
    if not hasattr(module, "named_modules") or own_weights(module):
        return {}
    found = {}
    for i, (path, sub) in enumerate(module.named_modules()):
        if i > limit:
            return {}
        if not path or not own_weights(sub):
            continue
        weight, bias = getattr(sub, "weight", None), getattr(sub, "bias", None)
        tensors = dict(sub.named_parameters(recurse=False))
        if set(tensors) - {"weight", "bias"} or weight is None or weight.dim() != 2 or any(
                True for _ in sub.children()):
            return {}
        found[path] = (tuple(weight.shape), tuple(bias.shape) if bias is not None else None)
    return found


def packed_projections(leaves: dict):
    """hp when ``leaves`` ({path: (weight shape, bias shape)}) are a packed q/k/v projection and an output one,
    stored the same way round; else None."""
    if len(leaves) != 2 or any(w is None or len(w) != 2 or b is None for w, b in leaves.values()):
        return None
    for packed, out in (tuple(leaves), tuple(leaves)[::-1]):
        (pw, pb), (ow, ob) = leaves[packed], leaves[out]
        for in_out in (True, False):
            p_in, p_out = (pw[0], pw[1]) if in_out else (pw[1], pw[0])
            o_in, o_out = (ow[0], ow[1]) if in_out else (ow[1], ow[0])
            if p_out == 3 * o_in and pb == (p_out,) and ob == (o_out,) and p_out != p_in:
                found = {"projections": (packed, out), "in_out": in_out, "use_bias": True, "width": o_in}
                # stored (in, out): GPT-2's Conv1D, whose c_attn always holds q, k, v one after another
                return {**found, "packing": "blocks"} if in_out else found
    return None


def linear_projections(module, limit: int = 32):
    """{role: (child path, Linear)} when ``module`` is four q/k/v/o Linear projections and nothing else weighty."""
    if not hasattr(module, "named_modules") or has_class(module, "Linear") or own_weights(module):
        return None
    found = {}
    for i, (path, sub) in enumerate(module.named_modules()):
        if i > limit:
            return None  # a whole model, not an attention block
        if not path:
            continue
        if has_class(sub, "Linear"):
            role = role_of(path)
            if role is None or role in found or not hasattr(sub, "out_features"):
                return None
            found[role] = (path, sub)
        elif own_weights(sub):
            return None
    if len(found) != 4:
        return None
    if len({lin.bias is not None for _, lin in found.values()}) != 1:
        return None  # Keras use_bias covers all four projections
    return found


def heads_attribute(module):
    for attr in HEAD_ATTRIBUTES:
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    config = getattr(module, "config", None)
    value = getattr(config, "num_attention_heads", None)
    return value if isinstance(value, int) and value > 0 else None
