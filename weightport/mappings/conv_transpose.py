"""Conv1D/2D/3DTranspose <-> torch ConvTranspose1d/2d/3d, Flax and Equinox ConvTranspose.

Keras (*k, out, in), torch (in, out/groups, *k) (Keras has no groups: torch's
must be 1). Flax keeps (*k, out, in) with ``transpose_kernel=True``, the same
as Keras; by default (False) it convolves the stretched input with the kernel
as it is, so the kernel is Keras' flipped spatially, (*k, in, out). Flax pads
like Keras ('SAME'/'VALID', as lax defines them for transposed convs), or by
explicit (low, high) pairs. Equinox holds (out, in/groups, *k) and runs it as
a plain convolution over the stretched input: the transposed kernel, flipped
spatially (Keras (*k, out, in) -> (out, in, *k), then every spatial axis
reversed).
"""
from __future__ import annotations

from .conv_family import (ConvFamily, equinox_bias, equinox_conv_hp, flax_conv_hp, kernel_transpose, keras_conv_hp,
                          torch_conv_hp, weight_and_bias)
from . import onnx_ops
from .conv_padding import transpose_pads
from .rule import link, register
from .samples import sizes, weights
from .transforms import Flip, Transpose


@register
class ConvTransposeRule(ConvFamily):
    """Conv1D/2D/3DTranspose <-> nn.ConvTranspose1d/2d/3d (Keras has no groups: torch's must be 1)."""

    name = "conv_transpose"
    classes = {"keras": ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"),
               "torch": ("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"), "flax": ("ConvTranspose",),
               "equinox": ("ConvTranspose",), "onnx": ("ConvTranspose",)}
    pads = staticmethod(transpose_pads)
    input_pad = ""  # zeros before a transposed conv are not the zeros it adds to its stretched input

    def config_equinox(self, module):
        hp = {**equinox_conv_hp(module), "output_padding": tuple(module.output_padding)}
        if hp["padding_mode"] != "zeros":
            hp["stretched_pads"] = (hp["padding_mode"],)  # wraps around: differs from every Keras padding
        elif hasattr(module, "_padding_transpose"):
            hp["stretched_pads"] = tuple(tuple(p) for p in module._padding_transpose())
        return hp

    def links_equinox(self, hp):
        rank = len(hp["kernel_size"])
        swap_and_flip = Transpose(rank, rank + 1, *range(rank)) >> Flip(*range(2, rank + 2))
        return [link("kernel", "weight", swap_and_flip), link("bias", "bias", equinox_bias(rank))]

    def config_keras(self, layer):
        extra = layer.output_padding
        return {"filters": layer.filters, "groups": 1, **keras_conv_hp(layer),
                "output_padding": None if extra is None else tuple(extra)}

    def config_torch(self, module):
        return {"filters": module.out_channels, "groups": module.groups, **torch_conv_hp(module),
                "output_padding": tuple(module.output_padding)}

    def config_flax(self, module):
        hp = {"filters": module.out_features, "groups": 1, **flax_conv_hp(module), "output_padding": None,
              "transpose_kernel": bool(module.transpose_kernel)}
        if not isinstance(hp["padding"], str):
            del hp["padding"]  # explicit pairs pad the stretched input as they are: not Keras' or torch's words
        return hp

    def infer_torch(self, shapes):
        """weight (in, out, *k) + bias (out,). Without a bias it looks like a conv, and is left to ``conv``;
        with in == out, ``conv`` claims it too and the group is ambiguous."""
        found = weight_and_bias(shapes, "weight")
        if found is None or found[1] is None or found[1] != found[0][1:2]:
            return None
        w = found[0]
        return {"filters": w[1], "kernel_size": w[2:], "use_bias": True}

    def infer_keras(self, shapes):
        """kernel (*k, out, in) + bias (out,). Without a bias it looks like a conv, and is left to ``conv``;
        with in == out, ``conv`` claims it too and the group is ambiguous."""
        found = weight_and_bias(shapes, "kernel")
        if found is None or found[1] is None or found[1] != found[0][-2:-1]:
            return None
        k = found[0]
        return {"filters": k[-2], "kernel_size": k[:-2], "groups": 1, "use_bias": True}

    def in_channels(self, hp, kernel_shape) -> int:
        return kernel_shape[-1]  # Keras (*k, out, in)

    def canonical(self, hp):
        return ["kernel", "bias"] if hp.get("use_bias", True) else ["kernel"]

    def examples(self, layout, rng):
        i, o, k1, k2 = sizes(rng, 4)
        out = [({"filters": o, "kernel_size": (k1, k2), "groups": 1, "use_bias": True},
                weights(rng, (k1, k2, o, i), (o,))),
               ({"filters": o, "kernel_size": (k1,), "groups": 1, "use_bias": False}, weights(rng, (k1, o, i)))]
        if layout == "flax":
            out.append(({**out[0][0], "transpose_kernel": True}, out[0][1]))
        return out

    def links_torch(self, hp):
        return [link("kernel", "weight", kernel_transpose(len(hp["kernel_size"]))), link("bias", "bias")]

    def config_onnx(self, node):
        return onnx_ops.conv_transpose(node)

    def links_onnx(self, hp):
        """ONNX ConvTranspose's W is torch's (in, out/group, *k), its bias B (out,)."""
        return [link("kernel", "W", kernel_transpose(len(hp["kernel_size"]))), link("bias", "B")]

    def check(self, source_hp, target_hp):
        return super().check(source_hp, target_hp) + onnx_ops.padding_unknown_issues(source_hp, target_hp)

    def links_flax(self, hp):
        if hp.get("transpose_kernel", False):
            return [link("kernel", "kernel"), link("bias", "bias")]
        rank = len(hp["kernel_size"])
        swap = Transpose(*range(rank), rank + 1, rank)
        return [link("kernel", "kernel", Flip(*range(rank)) >> swap), link("bias", "bias")]
