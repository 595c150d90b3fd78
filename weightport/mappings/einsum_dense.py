"""Keras EinsumDense <-> torch Linear, when the einsum kernel is a reshaped (in, out) matrix, axes in any order."""
from __future__ import annotations

import math

from .rule import ConfigIssue, Rule, link, register
from .samples import sizes, weights
from .transforms import Chain, Reshape, Transpose


@register
class EinsumDenseRule(Rule):
    """Keras EinsumDense <-> torch Linear, when the einsum kernel is a reshaped (in, out) matrix.

    E.g. "abc,cde->abde" with kernel (in, heads, head_dim) is a Linear to
    heads*head_dim features, "abcd,cde->abe" with kernel (heads, head_dim,
    out) a Linear from heads*head_dim, and keras-hub Gemma's "btd,ndh->btnh"
    with kernel (heads, in, head_dim) one whose kernel axes are permuted
    first. A torch Linear alone stays a Dense (lower priority); the kernel
    shape and axis order only the Keras side knows are shared.
    """

    name = "einsum_dense"
    classes = {"keras": ("EinsumDense",), "torch": ("Linear",)}
    priority = -1
    checks = {"use_bias": "error"}
    check_hints = {"num_heads": "the projection's features are cut into heads differently on the two sides: "
                                "build both with the same number of (query and key/value) heads"}
    shared = ("kernel_shape", "inputs", "permutation")

    def matches(self, layout, layer):
        if not super().matches(layout, layer):
            return False
        if layout != "keras":
            return True
        plain = not getattr(layer, "lora_enabled", False) and getattr(layer, "quantization_mode", None) is None
        return plain and linear_form(layer.equation, layer.bias_axes) is not None

    def config_keras(self, layer):
        permutation, inputs = linear_form(layer.equation, layer.bias_axes)
        hp = {"use_bias": layer.bias_axes is not None, "inputs": inputs, "equation": layer.equation}
        if permutation != tuple(range(len(permutation))):
            hp["permutation"] = permutation
        if layer.built:
            hp["kernel_shape"] = tuple(layer.kernel.shape)
            hp["units"] = math.prod(hp["kernel_shape"][i] for i in permutation[inputs:])
        return hp

    def check(self, source_hp, target_hp):
        """Besides use_bias: a kernel with a heads axis must have as many heads as the other side's attention
        module declares (``heads_context``); same-sized projections cut differently compute another function."""
        issues = super().check(source_hp, target_hp)
        for mine, theirs in ((source_hp, target_hp), (target_hp, source_hp)):
            heads = head_count(mine)
            if heads is not None and theirs.get("heads_context") and heads not in theirs["heads_context"]:
                issues.append(ConfigIssue("num_heads", *((theirs["heads_context"], heads) if mine is target_hp
                                                         else (heads, theirs["heads_context"])), "error",
                                          self.check_hints["num_heads"]))
        return issues

    def config_torch(self, module):
        return {"units": module.out_features, "use_bias": module.bias is not None}

    def canonical(self, hp):
        return ["kernel", "bias"] if hp.get("use_bias", True) else ["kernel"]

    def examples(self, layout, rng):
        e, h, d = sizes(rng, 3)
        return [({"use_bias": True, "inputs": 1, "kernel_shape": (e, h, d)}, weights(rng, (e, h, d), (h, d))),
                ({"use_bias": True, "inputs": 2, "kernel_shape": (h, d, e)}, weights(rng, (h, d, e), (e,))),
                ({"use_bias": True, "inputs": 1, "kernel_shape": (h, e, d), "permutation": (1, 0, 2)},
                 weights(rng, (h, e, d), (h, d))),
                ({"use_bias": False}, weights(rng, (e, d)))]

    def links_torch(self, hp):
        shape, n = hp.get("kernel_shape"), hp.get("inputs", 1)
        if not shape:
            return [link("kernel", "weight", Transpose(1, 0)), link("bias", "bias")]
        order = tuple(hp.get("permutation") or range(len(shape)))
        shape = tuple(shape[i] for i in order)  # (input axes..., output axes...) as the einsum reads them
        fan_in, fan_out = math.prod(shape[:n]), math.prod(shape[n:])
        steps = [Reshape(shape, (fan_in, fan_out)), Transpose(1, 0)]
        if order != tuple(range(len(order))):
            steps.insert(0, Transpose(*order))
        return [link("kernel", "weight", Chain(*steps)), link("bias", "bias", Reshape(shape[n:], (fan_out,)))]


def head_count(hp):
    """The heads a kernel of (heads, head_dim) output or input axes cuts its features into, else None."""
    shape, n = hp.get("kernel_shape"), hp.get("inputs", 1)
    if not shape:
        return None
    ordered = [shape[i] for i in (hp.get("permutation") or range(len(shape)))]
    ins, outs = ordered[:n], ordered[n:]
    return outs[0] if len(outs) == 2 else ins[0] if len(ins) == 2 else None


def linear_form(equation: str, bias_axes):
    """(kernel axis order, how many input axes) when an EinsumDense is a Linear in disguise; else None.

    That is: every kernel axis is either contracted (in the input, not the
    output) or produced (in the output, not the input); the contracted ones
    are the input's last axes; the output is the input's other axes followed
    by the produced ones; the bias (if any) covers exactly the produced axes.
    The order puts the kernel's axes as the input holds the contracted ones,
    then as the output holds the produced ones: flattened, the Linear's
    (in, out) matrix.
    """
    try:
        lhs, out = equation.replace(" ", "").split("->")
        inp, ker = lhs.split(",")
    except (AttributeError, ValueError):
        return None
    inp, out = inp.removeprefix("..."), out.removeprefix("...")
    if "." in inp + ker + out or len(set(ker)) != len(ker) or len(set(inp)) != len(inp):
        return None
    contracted = [a for a in ker if a in inp and a not in out]
    produced = [a for a in ker if a in out and a not in inp]
    n = len(contracted)
    if not n or not produced or n + len(produced) != len(ker) or sorted(inp[len(inp) - n:]) != sorted(contracted):
        return None
    batch, outputs = inp[:len(inp) - n], out[len(inp) - n:]
    if out[:len(batch)] != batch or sorted(outputs) != sorted(produced):
        return None
    if bias_axes is not None and set(bias_axes) != set(produced):
        return None
    return tuple(ker.index(a) for a in inp[len(inp) - n:] + outputs), n
