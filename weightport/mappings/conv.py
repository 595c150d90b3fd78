"""Conv1D/2D/3D <-> torch Conv1d/2d/3d, Flax Conv, Equinox Conv, grouped or not.

Keras (*k, in/groups, out), torch (out, in/groups, *k): a transpose. Flax keeps
Keras' kernel layout, (*k, in/groups, out). Equinox keeps torch's weight
(out, in/groups, *k), but its bias is (out, 1, ..., 1) so that it broadcasts
over the spatial axes (a reshape). The other convolutions are in
``conv_depthwise`` and ``conv_transpose``; what they share in ``conv_family``.
"""
from __future__ import annotations

from .conv_family import (ConvFamily, equinox_bias, equinox_conv_hp, flax_conv_hp, kernel_transpose, keras_conv_hp,
                          torch_conv_hp, weight_and_bias)
from . import onnx_ops
from .rule import link, register
from .samples import sizes, weights


@register
class ConvRule(ConvFamily):
    """Conv1D/2D/3D <-> nn.Conv1d/2d/3d, grouped or not."""

    name = "conv"
    optional_bias = ("use_bias", "bias")
    classes = {"keras": ("Conv1D", "Conv2D", "Conv3D"), "torch": ("Conv1d", "Conv2d", "Conv3d"), "flax": ("Conv",),
               "equinox": ("Conv",), "onnx": ("Conv",)}

    def config_keras(self, layer):
        return {"filters": layer.filters, "groups": layer.groups, **keras_conv_hp(layer)}

    def config_equinox(self, module):
        return equinox_conv_hp(module)

    def links_equinox(self, hp):
        rank = len(hp["kernel_size"])
        return [link("kernel", "weight", kernel_transpose(rank)), link("bias", "bias", equinox_bias(rank))]

    def config_torch(self, module):
        return {"filters": module.out_channels, "groups": module.groups, **torch_conv_hp(module)}

    def config_flax(self, module):
        return {"filters": module.out_features, "groups": module.feature_group_count, **flax_conv_hp(module)}

    def infer_torch(self, shapes):
        """weight (out, in/groups, *k) [+ bias (out,)].

        Groups cannot be told from shapes (a depthwise conv looks like a
        one-input-channel conv), so they are left out of hp: the kernel moves
        the same way for any groups, and the live model it meets has the say.
        """
        found = weight_and_bias(shapes, "weight")
        if found is None or (found[1] is not None and found[1] != found[0][:1]):
            return None
        w, b = found
        return {"filters": w[0], "kernel_size": w[2:], "use_bias": b is not None}

    def infer_keras(self, shapes):
        """kernel (*k, in/groups, out) [+ bias (out,)]; groups are left out of hp, as for torch."""
        found = weight_and_bias(shapes, "kernel")
        if found is None or (found[1] is not None and found[1] != found[0][-1:]):
            return None
        k, b = found
        return {"filters": k[-1], "kernel_size": k[:-2], "use_bias": b is not None}

    def canonical(self, hp):
        return ["kernel", "bias"] if hp.get("use_bias", True) else ["kernel"]

    def infer_flax(self, shapes):
        """As Keras: kernel (*k, in/groups, out) [+ bias (out,)] (a Linen ConvTranspose looks the same)."""
        return self.infer_keras(shapes)

    def examples(self, layout, rng):
        i, o, k1, k2 = sizes(rng, 4)
        return [({"filters": o, "kernel_size": (k1, k2), "groups": 1, "use_bias": True},
                 weights(rng, (k1, k2, i, o), (o,))),
                ({"filters": o, "kernel_size": (k2,), "groups": 1, "use_bias": False}, weights(rng, (k2, i, o)))]

    def links_torch(self, hp):
        return [link("kernel", "weight", kernel_transpose(len(hp["kernel_size"]))), link("bias", "bias")]

    def links_flax(self, hp):
        return [link("kernel", "kernel"), link("bias", "bias")]

    def config_onnx(self, node):
        hp = onnx_ops.conv(node)
        return {"filters": node.slots["W"].shape[0], **hp}

    def links_onnx(self, hp):
        """ONNX Conv's W is torch's (out, in/groups, *k), its bias B (out,)."""
        return [link("kernel", "W", kernel_transpose(len(hp["kernel_size"]))), link("bias", "B")]
