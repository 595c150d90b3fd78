"""DepthwiseConv and SeparableConv <-> a torch depthwise conv, or a container of a depthwise then a pointwise conv.

- Depthwise: Keras (*k, in, multiplier), torch (in*multiplier, 1, *k), output
  channel i*multiplier + j; Flax (*k, 1, in*m) (``feature_group_count == in``).
- Separable: Keras [depthwise (*k, in, m), pointwise (1.., in*m, out), bias];
  torch: a container of a depthwise conv and a pointwise (1x1) conv. torch's
  depthwise conv may hold a bias Keras has no slot for: written as zeros, and
  refused on import unless all zeros.
"""
from __future__ import annotations

from ..errors import UsageError
from .conv_family import (ConvFamily, depthwise_transform, flax_conv_hp, is_depthwise, kernel_transpose,
                          keras_conv_hp, torch_conv_hp, weight_and_bias)
from .introspect import class_names
from .rule import ConfigIssue, link, register
from .samples import sizes, weights
from .transforms import Reshape, ZeroBias

DEPTHWISE_BIAS_REFUSAL = (
    "the depthwise conv's bias (torch slot {slot!r}) is non-zero, and Keras SeparableConv has no slot for it. Fold "
    "it into the pointwise bias first (pointwise.bias += pointwise.weight.flatten(1) @ depthwise.bias, then zero "
    "depthwise.bias): the function is unchanged")


@register
class DepthwiseConvRule(ConvFamily):
    """DepthwiseConv1D/2D <-> a torch Conv1d/2d with groups == in_channels (> 1).

    Ranked above ``conv``: such a torch conv is claimed by both, and pairs with
    a Keras DepthwiseConv through this rule, with a Keras grouped Conv through
    ``conv``. A one-channel depthwise conv is an ordinary conv to torch and is
    left to ``conv``.
    """

    name = "depthwise_conv"
    priority = 1
    classes = {"keras": ("DepthwiseConv1D", "DepthwiseConv2D"), "torch": ("Conv1d", "Conv2d"), "flax": ("Conv",)}
    checks = {k: v for k, v in ConvFamily.checks.items() if k != "groups"}

    def matches(self, layout, layer):
        return super().matches(layout, layer) and (layout == "keras" or is_depthwise(layer))

    def config_keras(self, layer):
        return {"depth_multiplier": layer.depth_multiplier, **keras_conv_hp(layer)}

    def config_torch(self, module):
        return {"depth_multiplier": module.out_channels // module.in_channels, **torch_conv_hp(module)}

    def config_flax(self, module):
        return {"depth_multiplier": module.out_features // module.in_features, **flax_conv_hp(module)}

    def infer_keras(self, shapes):
        """kernel (*k, in, m) + bias (in*m,). Without a bias it looks like a conv, and is left to ``conv``."""
        found = weight_and_bias(shapes, "kernel", ranks=(3, 4))
        if found is None or found[1] is None or found[1] != (found[0][-2] * found[0][-1],):
            return None
        k = found[0]
        return {"depth_multiplier": k[-1], "kernel_size": k[:-2], "use_bias": True}

    def infer_torch(self, shapes):
        """Always None: weight (in*m, 1, *k) is also a one-input-channel conv, which ``conv`` infers."""
        return None

    def canonical(self, hp):
        return ["kernel", "bias"] if hp.get("use_bias", True) else ["kernel"]

    def examples(self, layout, rng):
        c, m, k1, k2 = sizes(rng, 4)
        return [({"depth_multiplier": m, "kernel_size": (k1, k2), "use_bias": True},
                 weights(rng, (k1, k2, c, m), (c * m,))),
                ({"depth_multiplier": m, "kernel_size": (k1,), "use_bias": False}, weights(rng, (k1, c, m)))]

    def links_torch(self, hp):
        return [link("kernel", "weight", depthwise_transform(hp["kernel_size"], hp["depth_multiplier"])),
                link("bias", "bias")]

    def links_flax(self, hp):
        """Keras (*k, in, m) -> Flax (*k, 1, in*m): output channel i*m + j, as a grouped conv orders them."""
        k = tuple(hp["kernel_size"])
        return [link("kernel", "kernel", Reshape(k + (-1, hp["depth_multiplier"]), k + (1, -1))),
                link("bias", "bias")]



def separable_children(module):
    """(depthwise name, module, pointwise name, module) when ``module`` is exactly a separable conv, else None.

    That is: no parameters of its own, and exactly two children, convs of one
    dimensionality (1-D or 2-D, as Keras has), the first depthwise, the
    second pointwise (kernel all 1s, groups 1, stride 1, no padding) taking
    the first one's channels. The container is assumed to run them in order.
    """
    try:
        children = list(module.named_children())
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
    except (AttributeError, TypeError):
        return None
    if own or len(children) != 2:
        return None
    (dw_name, dw), (pw_name, pw) = children
    for dims in ("Conv1d", "Conv2d"):
        if dims in class_names(dw) and dims in class_names(pw):
            break
    else:
        return None
    unpadded = isinstance(pw.padding, str) or not any(pw.padding)  # 'same' adds nothing to a 1x1 kernel
    if not (is_depthwise(dw) and set(pw.kernel_size) == {1} and pw.groups == 1 and set(pw.stride) == {1}
            and unpadded and pw.in_channels == dw.out_channels):
        return None
    return dw_name, dw, pw_name, pw



@register
class SeparableConvRule(ConvFamily):
    """SeparableConv1D/2D <-> a torch container of a depthwise conv then a pointwise conv.

    The container may be any module class, its children any names (see
    ``separable_children``); torch slots are state_dict names relative to it.
    """

    name = "separable_conv"
    priority = 1
    classes = {"keras": ("SeparableConv1D", "SeparableConv2D"), "torch": ()}
    composite = True  # into a Keras DepthwiseConv + 1x1 Conv, the two torch convs pair one by one
    shared = ("depth_multiplier",)  # a checkpoint's shapes give in*m, never m
    describe_classes = {"torch": "a container (any class) of a depthwise Conv1d/2d then a pointwise 1x1 Conv"}
    checks = {k: v for k, v in ConvFamily.checks.items() if k != "groups"}

    def matches(self, layout, layer):
        if layout == "torch":
            return separable_children(layer) is not None
        return super().matches(layout, layer)

    def config_keras(self, layer):
        return {"filters": layer.filters, "depth_multiplier": layer.depth_multiplier, **keras_conv_hp(layer)}

    def config_torch(self, module):
        dw_name, dw, pw_name, pw = separable_children(module)
        hp = {"filters": pw.out_channels, "depth_multiplier": dw.out_channels // dw.in_channels,
              **torch_conv_hp(dw), "use_bias": pw.bias is not None, "children": (dw_name, pw_name)}
        if dw.bias is not None:
            hp["depthwise_bias"] = "non-zero" if bool(dw.bias.detach().ne(0).any()) else "zero"
        return hp

    def check(self, source_hp, target_hp):
        issues = super().check(source_hp, target_hp)
        if source_hp.get("depthwise_bias") == "non-zero":
            issues.append(ConfigIssue(
                "depthwise_bias", "non-zero", "no such slot", "error",
                "fold it into the pointwise bias first: pointwise.bias += pointwise.weight.flatten(1) @ "
                "depthwise.bias, then zero depthwise.bias"))
        return issues

    def infer_keras(self, shapes):
        """depthwise_kernel (*k, in, m), pointwise_kernel (1.., in*m, out) [+ bias (out,)]."""
        dw, pw, b = shapes.get("depthwise_kernel"), shapes.get("pointwise_kernel"), shapes.get("bias")
        if (set(shapes) - {"depthwise_kernel", "pointwise_kernel", "bias"} or dw is None or pw is None
                or len(dw) not in (3, 4) or len(pw) != len(dw) or set(pw[:-2]) != {1}
                or pw[-2] != dw[-2] * dw[-1] or (b is not None and tuple(b) != (pw[-1],))):
            return None
        return {"filters": pw[-1], "depth_multiplier": dw[-1], "kernel_size": tuple(dw[:-2]), "use_bias": b is not None}

    def infer_torch(self, shapes):
        """hp for a checkpoint group of two convs, a depthwise ((in*m, 1, *k)) then a 1x1 pointwise reading it.

        The multiplier is not in the shapes: the paired Keras layer gives it.
        """
        modules: dict = {}
        for name, shape in shapes.items():
            module, _, leaf = name.rpartition(".")
            if leaf not in ("weight", "bias") or not module or "." in module:
                return None
            modules.setdefault(module, {})[leaf] = tuple(shape)
        if len(modules) != 2 or any("weight" not in m for m in modules.values()):
            return None
        (a, wa), (b, wb) = ((n, m["weight"]) for n, m in modules.items())
        for (dw, d), (pw, p) in (((a, wa), (b, wb)), ((b, wb), (a, wa))):
            if (len(d) == len(p) in (3, 4) and d[1] == 1 and set(p[2:]) == {1} and p[1] == d[0]
                    and set(d[2:]) != {1}):
                hp = {"children": (dw, pw), "kernel_size": d[2:], "filters": p[0], "use_bias": "bias" in modules[pw],
                      "padding": "unknown"}
                if "bias" in modules[dw]:
                    hp["depthwise_bias"] = "unknown"
                return hp
        return None

    def canonical(self, hp):
        names = ["depthwise_kernel", "pointwise_kernel"]
        return names + ["bias"] if hp.get("use_bias", True) else names

    def examples(self, layout, rng):
        c, m, o, k1, k2 = sizes(rng, 5)
        hp = {"filters": o, "depth_multiplier": m, "kernel_size": (k1, k2), "use_bias": True, "children": ("dw", "pw")}
        out = [(hp, weights(rng, (k1, k2, c, m), (1, 1, c * m, o), (o,))),
               ({**hp, "kernel_size": (k1,), "use_bias": False}, weights(rng, (k1, c, m), (1, c * m, o)))]
        if layout == "torch":
            out.append(({**hp, "depthwise_bias": "zero"}, out[0][1]))
        return out

    def links_torch(self, hp):
        dw, pw = hp.get("children", ("depthwise", "pointwise"))
        if "depth_multiplier" not in hp:
            raise UsageError(f"a checkpoint's separable conv ({dw}, {pw}): its depth multiplier is not in the shapes; "
                             "port it into a Keras model (whose SeparableConv knows it) or pass model=")
        depthwise = depthwise_transform(hp["kernel_size"], hp["depth_multiplier"])
        if "depthwise_bias" in hp:
            dw_link = link("depthwise_kernel", (f"{dw}.weight", f"{dw}.bias"), depthwise >> ZeroBias(
                DEPTHWISE_BIAS_REFUSAL.format(slot=f"{dw}.bias"), axes=1, what="depthwise bias"))
        else:
            dw_link = link("depthwise_kernel", f"{dw}.weight", depthwise)
        return [dw_link, link("pointwise_kernel", f"{pw}.weight", kernel_transpose(len(hp["kernel_size"]))),
                link("bias", f"{pw}.bias")]
