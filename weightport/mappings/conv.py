"""Convolutions: Conv, DepthwiseConv, SeparableConv and ConvTranspose, Keras <-> torch.

Keras keeps spatial axes first and channels last in every kernel, whatever its
``data_format``; torch keeps channels first:

- Conv:          Keras (*k, in/groups, out)   torch (out, in/groups, *k)
- ConvTranspose: Keras (*k, out, in)          torch (in, out/groups, *k)
- Depthwise:     Keras (*k, in, multiplier)   torch (in*multiplier, 1, *k), output channel i*multiplier + j
- Separable:     Keras [depthwise (*k, in, m), pointwise (1.., in*m, out), bias]
                 torch: a container of a depthwise conv and a pointwise (1x1) conv

Neither framework flips the kernel spatially (both compute cross-correlation,
and both transposed convolutions are its adjoint), so only axes move.

Flax keeps Keras' kernel layout: Conv (*k, in/groups, out), a depthwise conv
(``feature_group_count == in_features``) (*k, 1, in*m). Its ConvTranspose
keeps (*k, out, in) with ``transpose_kernel=True``, the same as Keras; by
default (False) it convolves the stretched input with the kernel as it is, so
the kernel is Keras' flipped spatially, (*k, in, out). Flax pads like Keras
('SAME'/'VALID', also for transposed convs, as lax defines them), or by
explicit (low, high) pairs.

Equinox keeps torch's Conv weight (out, in/groups, *k), but its bias is
(out, 1, ..., 1) so that it broadcasts over the spatial axes (a reshape).
Its ConvTranspose holds (out, in/groups, *k) too, and runs it as a plain
convolution over the stretched input: the transposed kernel, flipped
spatially (Keras (*k, out, in) -> (out, in, *k), then every spatial axis
reversed).

Padding is spoken differently ('valid'/'same'/'causal' against integers), so
it is compared as the zeros each side actually adds, and only where that is
fixed by the configuration: Keras 'same' with a stride > 1 pads by an amount
that depends on the input size, and is then left unjudged.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigMismatchError, UsageError
from .rule import ACTIVATION_HINT, ConfigIssue, Rule, keras_activation, link, register
from .transforms import Chain, Reshape, Transform, Transpose, Unary

STRIDE_HINT = "the layers stride differently, so outputs differ"
DILATION_HINT = "the layers dilate the kernel differently, so outputs differ"
PADDING_HINT = "the layers pad differently, so outputs differ"


def kernel_transpose(rank: int) -> Transpose:
    """Keras (*k, a, b) -> torch (b, a, *k); right for Conv and ConvTranspose kernels alike."""
    return Transpose(rank + 1, rank, *range(rank))


def depthwise_transform(kernel_size, multiplier: int) -> Chain:
    """Keras (*k, in, m) -> torch (in*m, 1, *k): channel-major, so output channel i*m + j is (i, j)."""
    k, rank = tuple(kernel_size), len(kernel_size)
    return Chain(Transpose(rank, rank + 1, *range(rank)), Reshape((-1, multiplier) + k, (-1, 1) + k))


class Flip(Unary):
    """Reverse the given axes (its own inverse): a kernel applied as a correlation vs as a transposed conv."""

    def __init__(self, *axes: int):
        self.axes = tuple(axes)

    def fwd(self, a):
        return np.ascontiguousarray(np.flip(a, self.axes))

    inv = fwd

    def fwd_shape(self, s):
        return s

    inv_shape = fwd_shape

    def describe(self):
        return "flip" + str(self.axes).replace(" ", "")

    describe_inverse = describe


class ZeroBias(Transform):
    """A torch-only depthwise bias that Keras' SeparableConv has no slot for.

    Written as zeros on export; on import it must be all zeros, else the
    conversion is refused (dropping it would change the function).
    """

    n_in, n_out = 1, 2

    def __init__(self, slot: str):
        self.slot = slot

    def forward(self, arrays):
        (w,) = arrays
        return w, np.zeros((w.shape[0],), dtype=w.dtype)

    def inverse(self, arrays):
        w, b = arrays
        if np.any(b != 0):
            raise ConfigMismatchError(
                f"the depthwise conv's bias (torch slot {self.slot!r}) is non-zero, and Keras SeparableConv has no "
                "slot for it. Fold it into the pointwise bias first (pointwise.bias += "
                "pointwise.weight.flatten(1) @ depthwise.bias, then zero depthwise.bias): the function is unchanged")
        return (w,)

    def forward_shapes(self, shapes):
        (s,) = shapes
        return tuple(s), (s[0],)

    def inverse_shapes(self, shapes):
        return (tuple(shapes[0]),)

    def describe(self):
        return "+ zero depthwise bias"


# -- padding, as the zeros actually added ------------------------------------------

def _effective(hp) -> list:
    kernel = hp["kernel_size"]
    return [d * (k - 1) + 1 for k, d in zip(kernel, hp.get("dilation_rate") or (1,) * len(kernel))]


def conv_pads(hp):
    """(left, right) zeros per spatial axis of a convolution's input, or None where not fixed by hp."""
    if "padding" not in hp or "kernel_size" not in hp:
        return None
    padding, spans = hp["padding"], _effective(hp)
    strides = hp.get("strides") or (1,) * len(spans)
    if isinstance(padding, str):
        padding = padding.lower()
        if padding == "valid" or all(e == 1 for e in spans):
            pads = [(0, 0)] * len(spans)
        elif padding == "same":
            if any(s > 1 and e > 1 for s, e in zip(strides, spans)):
                return None  # depends on the input size
            pads = [((e - 1) // 2, (e - 1) - (e - 1) // 2) for e in spans]
        elif padding == "causal":
            pads = [(e - 1, 0) for e in spans]
        else:
            return None
    else:  # per axis: one int for both sides (torch), or a (low, high) pair (Flax)
        pads = [tuple(int(x) for x in p) if isinstance(p, (tuple, list)) else (int(p), int(p)) for p in padding]
    mode = hp.get("padding_mode", "zeros")
    if mode != "zeros" and any(a or b for a, b in pads):
        return (mode,) + tuple(pads)  # not zeros at all: differs from every Keras padding
    return tuple(pads)


def same_pads(hp, size: int, axis: int):
    """(left, right) zeros Keras/TF "same" adds on one axis of this input size (it depends on the size
    once the stride exceeds 1: the odd zero goes right)."""
    e, s = _effective(hp)[axis], (hp.get("strides") or (1,) * len(hp["kernel_size"]))[axis]
    total = max((-(-size // s) - 1) * s + e - size, 0)
    return total // 2, total - total // 2


def strided_same_hint(hp_same, hp_other):
    """Where one side pads "same" at a stride > 1 and the other a fixed amount: which input sizes (per axis,
    among 8..15) they differ at and what to use instead; None where they always agree."""
    fixed = conv_pads(hp_other)
    if fixed is None or isinstance(fixed[0], str) or len(fixed) != len(hp_same["kernel_size"]):
        return None
    known = hp_same.get("input_size") or ()
    sizes = [[known[axis]] if axis < len(known) and known[axis] else range(8, 16) for axis in range(len(fixed))]
    differ = {axis: [n for n in sizes[axis] if same_pads(hp_same, n, axis) != fixed[axis]]
              for axis in range(len(fixed))}
    differ = {axis: sizes for axis, sizes in differ.items() if sizes}
    if not differ:
        return None
    where = "; ".join(f"axis {axis}: sizes {sizes}" for axis, sizes in differ.items())
    return (f"Keras 'same' at strides {tuple(hp_same['strides'])} pads by an amount that depends on the input "
            f"size, putting the odd zero last, while the other side always pads (left, right) {fixed}: outputs "
            f"differ for input {where}. Use a ZeroPadding layer with padding='valid' in Keras (as keras-hub "
            "does), or pad asymmetrically on the other side")


def transpose_pads(hp):
    """(left, right) zeros per axis of a transposed convolution's stretched input, or None."""
    if "stretched_pads" in hp:  # worked out by the layer's own framework
        return hp["stretched_pads"]
    if "padding" not in hp or "kernel_size" not in hp:
        return None
    padding, spans = hp["padding"], _effective(hp)
    strides = hp.get("strides") or (1,) * len(spans)
    extra = hp.get("output_padding")
    if not isinstance(padding, str):  # torch: crop `padding` both sides, then add output_padding on the right
        extra = extra or (0,) * len(spans)
        return tuple((e - 1 - p, e - 1 - p + o) for e, p, o in zip(spans, padding, extra))
    pads = []
    for i, (e, s) in enumerate(zip(spans, strides)):  # Keras, as its backends define it
        o = None if extra is None else extra[i]
        if padding.lower() == "valid":
            o = max(e, s) - e if o is None else o
            pads.append((e - 1, e - 1 + o))
        elif padding.lower() == "same":
            total = s + e - 2 if o is None else e + e % 2 - 2 + o
            left = min(total // 2 + total % 2, e - 1)
            pads.append((left, total - left))
        else:
            return None
    return tuple(pads)


class ConvFamily(Rule):
    """Shared checks: configuration that weights cannot carry, padding compared as zeros added."""

    checks = {"groups": "error", "use_bias": "error", "strides": "warning", "dilation_rate": "warning",
              "activation": "warning"}
    check_hints = {"groups": "grouped and ungrouped kernels of these shapes connect channels differently",
                   "activation": ACTIVATION_HINT,
                   "strides": STRIDE_HINT, "dilation_rate": DILATION_HINT}
    pads = staticmethod(conv_pads)

    def in_channels(self, hp, kernel_shape) -> int:
        """The input channels a canonical kernel (*k, in/groups, out) reads."""
        return kernel_shape[-2] * int(hp.get("groups", 1) or 1)

    def sample_inputs(self, layout, hp, shapes):
        if not shapes:
            return []
        kernel = shapes[0]
        rank = len(kernel) - 2
        channels = self.in_channels(hp, kernel)
        out = []
        for size in ((64, 32, 224) if rank <= 2 else (16,)):  # models with position tables insist on one size
            spatial = (size,) * rank
            shape = (1, channels) + spatial if layout in ("torch", "equinox") else (1,) + spatial + (channels,)
            out.append(np.full(shape, 0.5, "float32"))
        return out

    def check(self, source_hp, target_hp):
        issues = super().check(source_hp, target_hp)
        a, b = self.pads(source_hp), self.pads(target_hp)
        if a is not None and b is not None and a != b:
            issues.append(ConfigIssue("padding", padding_text(source_hp), padding_text(target_hp), "warning",
                                      f"{PADDING_HINT}; (left, right) per axis: {a} vs {b}"))
        elif self.pads is conv_pads and (a is None) != (b is None):  # one side's zeros depend on the input size
            same, other = (source_hp, target_hp) if a is None else (target_hp, source_hp)
            if str(same.get("padding", "")).lower() == "same":
                hint = strided_same_hint(same, other)
                if hint:
                    issues.append(ConfigIssue("padding", padding_text(source_hp), padding_text(target_hp),
                                              "warning", hint))
        return issues


def padding_text(hp) -> str:
    """The padding as its side spells it, with the torch mode and transposed output_padding when they matter."""
    text = str(hp["padding"])
    if hp.get("padding_mode", "zeros") != "zeros":
        text += f" ({hp['padding_mode']})"
    if "output_padding" in hp:
        extra = hp["output_padding"]
        text += f", output_padding {'default' if extra is None else tuple(extra)}"
    return text


def _common(layer) -> dict:
    """hp every Keras conv layer spells the same way, and the spatial size it was built for, where fixed."""
    hp = {"kernel_size": tuple(layer.kernel_size), "strides": tuple(layer.strides),
          "dilation_rate": tuple(layer.dilation_rate), "padding": _padding(layer), "use_bias": bool(layer.use_bias)}
    if keras_activation(layer):
        hp["activation"] = keras_activation(layer)
    shape = next(iter((getattr(layer, "_build_shapes_dict", None) or {}).values()), None)
    if shape is not None and len(shape) == len(hp["kernel_size"]) + 2:
        spatial = shape[2:] if getattr(layer, "data_format", "") == "channels_first" else shape[1:-1]
        hp["input_size"] = tuple(spatial)  # None where the model takes any size
    return hp


def _padding(layer):
    """The conv's padding, with a ZeroPadding1D/2D/3D that feeds it (and nothing else) taken as its own.

    Keras "same" pads unevenly at strides > 1, so implementations that must
    match torch's symmetric padding (keras-hub) pad in a layer of their own
    before a "valid" conv: the zeros that conv sees are that layer's.
    Read from the functional graph with plain attribute access.
    """
    padding = layer.padding
    nodes = getattr(layer, "_inbound_nodes", None) or []
    parents = getattr(nodes[-1], "parent_nodes", None) or [] if nodes else []
    if str(padding).lower() != "valid" or len(nodes) != 1 or len(parents) != 1:
        return padding
    pad = parents[0].operation
    if not type(pad).__name__.startswith("ZeroPadding") or getattr(pad, "data_format", "channels_last") != getattr(
            layer, "data_format", "channels_last"):
        return padding
    pads = pad.padding
    pairs = (pads,) if isinstance(pads[0], int) else pads  # ZeroPadding1D keeps one (left, right) pair
    return tuple(tuple(int(x) for x in p) for p in pairs)


def _torch_common(module) -> dict:
    padding = module.padding if isinstance(module.padding, str) else tuple(module.padding)
    return {"kernel_size": tuple(module.kernel_size), "strides": tuple(module.stride),
            "dilation_rate": tuple(module.dilation), "padding": padding, "padding_mode": module.padding_mode,
            "use_bias": module.bias is not None}


def _per_axis(value, rank: int) -> tuple:
    """A Flax int-or-sequence setting (None means 1) as one int per spatial axis."""
    if value is None:
        return (1,) * rank
    return (int(value),) * rank if isinstance(value, int) else tuple(int(v) for v in value)


def _flax_common(module) -> dict:
    """hp of a Flax NNX Conv/ConvTranspose, in Keras' words ('SAME' -> 'same', pairs kept as pairs)."""
    kernel_size = tuple(module.kernel_shape[:-2])
    rank = len(kernel_size)
    hp = {"kernel_size": kernel_size, "strides": _per_axis(module.strides, rank),
          "dilation_rate": _per_axis(module.kernel_dilation, rank), "use_bias": bool(module.use_bias)}
    padding = module.padding
    if isinstance(padding, str):
        circular = padding.upper() == "CIRCULAR"
        hp["padding"] = "same" if circular else padding.lower()
        if circular:
            hp["padding_mode"] = "circular"
    elif isinstance(padding, int):
        hp["padding"] = ((padding, padding),) * rank
    else:
        hp["padding"] = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    return hp


def _equinox_common(module) -> dict:
    """hp of an Equinox Conv/ConvTranspose, in Keras' words ('SAME' -> 'same', pairs kept as pairs)."""
    padding = module.padding
    padding = padding.lower() if isinstance(padding, str) else tuple(tuple(int(x) for x in p) for p in padding)
    return {"filters": module.out_channels, "groups": module.groups, "kernel_size": tuple(module.kernel_size),
            "strides": tuple(module.stride), "dilation_rate": tuple(module.dilation), "padding": padding,
            "padding_mode": str(module.padding_mode).lower(), "use_bias": bool(module.use_bias)}


def equinox_bias(rank: int) -> Reshape:
    """Keras (out,) bias -> Equinox (out, 1, ..., 1)."""
    return Reshape((-1,), (-1,) + (1,) * rank)


def _weight_and_bias(shapes, weight: str, ranks=(3, 4, 5)):
    """(weight shape, bias shape or None) when ``shapes`` is exactly {weight[, bias]} of a conv's ranks."""
    w, b = shapes.get(weight), shapes.get("bias")
    if set(shapes) - {weight, "bias"} or w is None or len(w) not in ranks or (b is not None and len(b) != 1):
        return None
    return tuple(w), (tuple(b) if b is not None else None)


@register
class ConvRule(ConvFamily):
    """Conv1D/2D/3D <-> nn.Conv1d/2d/3d, grouped or not."""

    name = "conv"
    classes = {"keras": ("Conv1D", "Conv2D", "Conv3D"), "torch": ("Conv1d", "Conv2d", "Conv3d"), "flax": ("Conv",),
               "equinox": ("Conv",)}

    def config_keras(self, layer):
        return {"filters": layer.filters, "groups": layer.groups, **_common(layer)}

    def config_equinox(self, module):
        return _equinox_common(module)

    def links_equinox(self, hp):
        rank = len(hp["kernel_size"])
        return [link("kernel", "weight", kernel_transpose(rank)), link("bias", "bias", equinox_bias(rank))]

    def config_torch(self, module):
        return {"filters": module.out_channels, "groups": module.groups, **_torch_common(module)}

    def config_flax(self, module):
        return {"filters": module.out_features, "groups": module.feature_group_count, **_flax_common(module)}

    def infer_torch(self, shapes):
        """weight (out, in/groups, *k) [+ bias (out,)].

        Groups cannot be told from shapes (a depthwise conv looks like a
        one-input-channel conv), so they are left out of hp: the kernel moves
        the same way for any groups, and the live model it meets has the say.
        """
        found = _weight_and_bias(shapes, "weight")
        if found is None or (found[1] is not None and found[1] != found[0][:1]):
            return None
        w, b = found
        return {"filters": w[0], "kernel_size": w[2:], "use_bias": b is not None}

    def infer_keras(self, shapes):
        """kernel (*k, in/groups, out) [+ bias (out,)]; groups are left out of hp, as for torch."""
        found = _weight_and_bias(shapes, "kernel")
        if found is None or (found[1] is not None and found[1] != found[0][-1:]):
            return None
        k, b = found
        return {"filters": k[-1], "kernel_size": k[:-2], "use_bias": b is not None}

    def canonical(self, hp):
        return ["kernel", "bias"] if hp.get("use_bias", True) else ["kernel"]

    def infer_flax(self, shapes):
        """As Keras: kernel (*k, in/groups, out) [+ bias (out,)] (a Linen ConvTranspose looks the same)."""
        return self.infer_keras(shapes)

    def links_torch(self, hp):
        return [link("kernel", "weight", kernel_transpose(len(hp["kernel_size"]))), link("bias", "bias")]

    def links_flax(self, hp):
        return [link("kernel", "kernel"), link("bias", "bias")]


def _is_depthwise(module) -> bool:
    if hasattr(module, "feature_group_count"):  # Flax
        return module.feature_group_count == module.in_features > 1
    return module.groups == module.in_channels > 1


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
        return super().matches(layout, layer) and (layout == "keras" or _is_depthwise(layer))

    def config_keras(self, layer):
        return {"depth_multiplier": layer.depth_multiplier, **_common(layer)}

    def config_torch(self, module):
        return {"depth_multiplier": module.out_channels // module.in_channels, **_torch_common(module)}

    def config_flax(self, module):
        return {"depth_multiplier": module.out_features // module.in_features, **_flax_common(module)}

    def infer_keras(self, shapes):
        """kernel (*k, in, m) + bias (in*m,). Without a bias it looks like a conv, and is left to ``conv``."""
        found = _weight_and_bias(shapes, "kernel", ranks=(3, 4))
        if found is None or found[1] is None or found[1] != (found[0][-2] * found[0][-1],):
            return None
        k = found[0]
        return {"depth_multiplier": k[-1], "kernel_size": k[:-2], "use_bias": True}

    def infer_torch(self, shapes):
        """Always None: weight (in*m, 1, *k) is also a one-input-channel conv, which ``conv`` infers."""
        return None

    def canonical(self, hp):
        return ["kernel", "bias"] if hp.get("use_bias", True) else ["kernel"]

    def links_torch(self, hp):
        return [link("kernel", "weight", depthwise_transform(hp["kernel_size"], hp["depth_multiplier"])),
                link("bias", "bias")]

    def links_flax(self, hp):
        """Keras (*k, in, m) -> Flax (*k, 1, in*m): output channel i*m + j, as a grouped conv orders them."""
        k = tuple(hp["kernel_size"])
        return [link("kernel", "kernel", Reshape(k + (-1, hp["depth_multiplier"]), k + (1, -1))),
                link("bias", "bias")]


def _class_names(obj) -> set:
    return {cls.__name__ for cls in type(obj).__mro__}


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
        if dims in _class_names(dw) and dims in _class_names(pw):
            break
    else:
        return None
    unpadded = isinstance(pw.padding, str) or not any(pw.padding)  # 'same' adds nothing to a 1x1 kernel
    if not (_is_depthwise(dw) and set(pw.kernel_size) == {1} and pw.groups == 1 and set(pw.stride) == {1}
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
        return {"filters": layer.filters, "depth_multiplier": layer.depth_multiplier, **_common(layer)}

    def config_torch(self, module):
        dw_name, dw, pw_name, pw = separable_children(module)
        hp = {"filters": pw.out_channels, "depth_multiplier": dw.out_channels // dw.in_channels,
              **_torch_common(dw), "use_bias": pw.bias is not None, "children": (dw_name, pw_name)}
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

    def links_torch(self, hp):
        dw, pw = hp.get("children", ("depthwise", "pointwise"))
        if "depth_multiplier" not in hp:
            raise UsageError(f"a checkpoint's separable conv ({dw}, {pw}): its depth multiplier is not in the shapes; "
                             "port it into a Keras model (whose SeparableConv knows it) or pass model=")
        depthwise = depthwise_transform(hp["kernel_size"], hp["depth_multiplier"])
        if "depthwise_bias" in hp:
            dw_link = link("depthwise_kernel", (f"{dw}.weight", f"{dw}.bias"), depthwise >> ZeroBias(f"{dw}.bias"))
        else:
            dw_link = link("depthwise_kernel", f"{dw}.weight", depthwise)
        return [dw_link, link("pointwise_kernel", f"{pw}.weight", kernel_transpose(len(hp["kernel_size"]))),
                link("bias", f"{pw}.bias")]


@register
class ConvTransposeRule(ConvFamily):
    """Conv1D/2D/3DTranspose <-> nn.ConvTranspose1d/2d/3d (Keras has no groups: torch's must be 1)."""

    name = "conv_transpose"
    classes = {"keras": ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"),
               "torch": ("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"), "flax": ("ConvTranspose",),
               "equinox": ("ConvTranspose",)}
    pads = staticmethod(transpose_pads)

    def config_equinox(self, module):
        hp = {**_equinox_common(module), "output_padding": tuple(module.output_padding)}
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
        return {"filters": layer.filters, "groups": 1, **_common(layer),
                "output_padding": None if extra is None else tuple(extra)}

    def config_torch(self, module):
        return {"filters": module.out_channels, "groups": module.groups, **_torch_common(module),
                "output_padding": tuple(module.output_padding)}

    def config_flax(self, module):
        hp = {"filters": module.out_features, "groups": 1, **_flax_common(module), "output_padding": None,
              "transpose_kernel": bool(module.transpose_kernel)}
        if not isinstance(hp["padding"], str):
            del hp["padding"]  # explicit pairs pad the stretched input as they are: not Keras' or torch's words
        return hp

    def infer_torch(self, shapes):
        """weight (in, out, *k) + bias (out,). Without a bias it looks like a conv, and is left to ``conv``;
        with in == out, ``conv`` claims it too and the group is ambiguous."""
        found = _weight_and_bias(shapes, "weight")
        if found is None or found[1] is None or found[1] != found[0][1:2]:
            return None
        w = found[0]
        return {"filters": w[1], "kernel_size": w[2:], "use_bias": True}

    def infer_keras(self, shapes):
        """kernel (*k, out, in) + bias (out,). Without a bias it looks like a conv, and is left to ``conv``;
        with in == out, ``conv`` claims it too and the group is ambiguous."""
        found = _weight_and_bias(shapes, "kernel")
        if found is None or found[1] is None or found[1] != found[0][-2:-1]:
            return None
        k = found[0]
        return {"filters": k[-2], "kernel_size": k[:-2], "groups": 1, "use_bias": True}

    def in_channels(self, hp, kernel_shape) -> int:
        return kernel_shape[-1]  # Keras (*k, out, in)

    def canonical(self, hp):
        return ["kernel", "bias"] if hp.get("use_bias", True) else ["kernel"]

    def links_torch(self, hp):
        return [link("kernel", "weight", kernel_transpose(len(hp["kernel_size"]))), link("bias", "bias")]

    def links_flax(self, hp):
        if hp.get("transpose_kernel", False):
            return [link("kernel", "kernel"), link("bias", "bias")]
        rank = len(hp["kernel_size"])
        swap = Transpose(*range(rank), rank + 1, rank)
        return [link("kernel", "kernel", Flip(*range(rank)) >> swap), link("bias", "bias")]
