"""Keras EinsumDense <-> torch Linear, when the einsum kernel is a reshaped (in, out) matrix."""
from __future__ import annotations

import math

from .rule import Rule, link, register
from .samples import sizes, weights
from .transforms import Chain, Reshape, Transpose


@register
class EinsumDenseRule(Rule):
    """Keras EinsumDense <-> torch Linear, when the einsum kernel is a reshaped (in, out) matrix.

    E.g. "abc,cde->abde" with kernel (in, heads, head_dim) is a Linear to
    heads*head_dim features, and "abcd,cde->abe" with kernel (heads, head_dim,
    out) a Linear from heads*head_dim. A torch Linear alone stays a Dense
    (lower priority); the kernel shape only the Keras side knows is shared.
    """

    name = "einsum_dense"
    classes = {"keras": ("EinsumDense",), "torch": ("Linear",)}
    priority = -1
    checks = {"use_bias": "error"}
    shared = ("kernel_shape", "inputs")

    def matches(self, layout, layer):
        if not super().matches(layout, layer):
            return False
        if layout != "keras":
            return True
        plain = not getattr(layer, "lora_enabled", False) and getattr(layer, "quantization_mode", None) is None
        return plain and contracted_axes(layer.equation, layer.bias_axes) is not None

    def config_keras(self, layer):
        hp = {"use_bias": layer.bias_axes is not None, "inputs": contracted_axes(layer.equation, layer.bias_axes),
              "equation": layer.equation}
        if layer.built:
            hp["kernel_shape"] = tuple(layer.kernel.shape)
            hp["units"] = math.prod(hp["kernel_shape"][hp["inputs"]:])
        return hp

    def config_torch(self, module):
        return {"units": module.out_features, "use_bias": module.bias is not None}

    def canonical(self, hp):
        return ["kernel", "bias"] if hp.get("use_bias", True) else ["kernel"]

    def examples(self, layout, rng):
        e, h, d = sizes(rng, 3)
        return [({"use_bias": True, "inputs": 1, "kernel_shape": (e, h, d)}, weights(rng, (e, h, d), (h, d))),
                ({"use_bias": True, "inputs": 2, "kernel_shape": (h, d, e)}, weights(rng, (h, d, e), (e,))),
                ({"use_bias": False}, weights(rng, (e, d)))]

    def links_torch(self, hp):
        shape, n = hp.get("kernel_shape"), hp.get("inputs", 1)
        if not shape:
            return [link("kernel", "weight", Transpose(1, 0)), link("bias", "bias")]
        shape = tuple(shape)
        fan_in, fan_out = math.prod(shape[:n]), math.prod(shape[n:])
        return [link("kernel", "weight", Chain(Reshape(shape, (fan_in, fan_out)), Transpose(1, 0))),
                link("bias", "bias", Reshape(shape[n:], (fan_out,)))]


def contracted_axes(equation: str, bias_axes) -> int | None:
    """How many leading kernel axes an EinsumDense contracts, when it is a Linear in disguise; else None.

    That is: the input's last n axes are the kernel's first n, the output is
    the input's other axes followed by the kernel's rest, and the bias (if
    any) covers exactly those output axes.
    """
    try:
        lhs, out = equation.replace(" ", "").split("->")
        inp, ker = lhs.split(",")
    except (AttributeError, ValueError):
        return None
    inp, out = inp.removeprefix("..."), out.removeprefix("...")
    if "." in inp + ker + out or len(set(ker)) != len(ker):
        return None
    for n in range(1, len(ker)):
        contracted, produced = ker[:n], ker[n:]
        batch = inp[:len(inp) - n]
        if (inp.endswith(contracted) and out == batch + produced and not set(batch) & set(ker)
                and (bias_axes is None or set(bias_axes) == set(produced))):
            return n
    return None
