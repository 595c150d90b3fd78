"""What every convolution rule shares: kernel transforms, configuration readers per framework, the checks.

Keras keeps spatial axes first and channels last in every kernel, whatever its
``data_format``; torch keeps channels first. Neither framework flips the
kernel spatially (both compute cross-correlation, and both transposed
convolutions are its adjoint), so between them only axes move. Configuration
is read into Keras' words (``kernel_size``, ``strides``, ``dilation_rate``,
``padding``, ``use_bias``) so the checks compare like with like; padding is
compared as the zeros each side adds (``conv_padding``).
"""
from __future__ import annotations

import numpy as np

from .conv_padding import PADDING_HINT, conv_pads, padding_text, strided_same_hint
from .introspect import keras_activation, keras_graph
from .rule import ACTIVATION_HINT, ConfigIssue, Rule
from .transforms import Chain, Reshape, Transpose

CHANNELS_FIRST = ("torch", "equinox", "onnx")  # layouts whose convolutions read (batch, channels, *spatial)
STRIDE_HINT = "the layers stride differently, so outputs differ"
DILATION_HINT = "the layers dilate the kernel differently, so outputs differ"


def kernel_transpose(rank: int) -> Transpose:
    """Keras (*k, a, b) -> torch (b, a, *k); right for Conv and ConvTranspose kernels alike."""
    return Transpose(rank + 1, rank, *range(rank))


def depthwise_transform(kernel_size, multiplier: int) -> Chain:
    """Keras (*k, in, m) -> torch (in*m, 1, *k): channel-major, so output channel i*m + j is (i, j)."""
    k, rank = tuple(kernel_size), len(kernel_size)
    return Chain(Transpose(rank, rank + 1, *range(rank)), Reshape((-1, multiplier) + k, (-1, 1) + k))


def equinox_bias(rank: int) -> Reshape:
    """Keras (out,) bias -> Equinox (out, 1, ..., 1)."""
    return Reshape((-1,), (-1,) + (1,) * rank)


class ConvFamily(Rule):
    """Shared checks: configuration that weights cannot carry, padding compared as zeros added."""

    checks = {"groups": "error", "use_bias": "error", "strides": "warning", "dilation_rate": "warning",
              "activation": "warning"}
    check_hints = {"groups": "grouped and ungrouped kernels of these shapes connect channels differently",
                   "activation": ACTIVATION_HINT,
                   "strides": STRIDE_HINT, "dilation_rate": DILATION_HINT}
    pads = staticmethod(conv_pads)
    input_pad = "padding"

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

    def with_input_pad(self, layout, hp, widths, shape):
        """The zeros a separate pad adds on the spatial axes, kept as ``input_pads`` (with the spatial size they
        were seen at, ``input_pads_at``: a pad may depend on it, as TF-style "same" written by hand does); as it
        is where the pad touches the batch or channel axis, or the graph already showed it (``padding_layer``)."""
        rank = len(hp.get("kernel_size") or ())
        if not rank or hp.get("padding_layer") or len(widths) != rank + 2 or "input_pads" in hp:
            return hp
        first = layout in CHANNELS_FIRST or hp.get("data_format") == "channels_first"
        axes = list(range(2, rank + 2) if first else range(1, rank + 1))
        if any(widths[i] != (0, 0) for i in range(rank + 2) if i not in axes):
            return hp
        return {**hp, "input_pads": tuple(tuple(widths[i]) for i in axes),
                "input_pads_at": tuple(shape[i] for i in axes)}

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


def keras_conv_hp(layer) -> dict:
    """hp every Keras conv layer spells the same way, and the spatial size it was built for, where fixed."""
    padding = keras_padding(layer)
    hp = {"kernel_size": tuple(layer.kernel_size), "strides": tuple(layer.strides),
          "dilation_rate": tuple(layer.dilation_rate), "padding": padding, "use_bias": bool(layer.use_bias)}
    if padding is not layer.padding:
        hp["padding_layer"] = True  # a ZeroPadding layer's zeros, read from the graph: not to be counted twice
    if getattr(layer, "data_format", None) == "channels_first":
        hp["data_format"] = "channels_first"
    if keras_activation(layer):
        hp["activation"] = keras_activation(layer)
    shape = next(iter((getattr(layer, "_build_shapes_dict", None) or {}).values()), None)
    if shape is not None and len(shape) == len(hp["kernel_size"]) + 2:
        spatial = shape[2:] if getattr(layer, "data_format", "") == "channels_first" else shape[1:-1]
        hp["input_size"] = tuple(spatial)  # None where the model takes any size
    return hp


def keras_padding(layer):
    """The conv's padding, with a ZeroPadding1D/2D/3D that feeds it (and nothing else) taken as its own.

    Keras "same" pads unevenly at strides > 1, so implementations that must
    match torch's symmetric padding (keras-hub) pad in a layer of their own
    before a "valid" conv: the zeros that conv sees are that layer's.
    The graph is the Keras adapter's to read.
    """
    padding = layer.padding
    if str(padding).lower() != "valid":
        return padding
    graph = keras_graph()
    calls = graph.calls(layer)
    parents = graph.feeding(calls[0]) if len(calls) == 1 else []
    if len(parents) != 1:
        return padding
    pad = graph.operation(parents[0])
    if not type(pad).__name__.startswith("ZeroPadding") or getattr(pad, "data_format", "channels_last") != getattr(
            layer, "data_format", "channels_last"):
        return padding
    pads = pad.padding
    pairs = (pads,) if isinstance(pads[0], int) else pads  # ZeroPadding1D keeps one (left, right) pair
    return tuple(tuple(int(x) for x in p) for p in pairs)


def torch_conv_hp(module) -> dict:
    padding = module.padding if isinstance(module.padding, str) else tuple(module.padding)
    return {"kernel_size": tuple(module.kernel_size), "strides": tuple(module.stride),
            "dilation_rate": tuple(module.dilation), "padding": padding, "padding_mode": module.padding_mode,
            "use_bias": module.bias is not None}


def _per_axis(value, rank: int) -> tuple:
    """A Flax int-or-sequence setting (None means 1) as one int per spatial axis."""
    if value is None:
        return (1,) * rank
    return (int(value),) * rank if isinstance(value, int) else tuple(int(v) for v in value)


def flax_conv_hp(module) -> dict:
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


def equinox_conv_hp(module) -> dict:
    """hp of an Equinox Conv/ConvTranspose, in Keras' words ('SAME' -> 'same', pairs kept as pairs)."""
    padding = module.padding
    padding = padding.lower() if isinstance(padding, str) else tuple(tuple(int(x) for x in p) for p in padding)
    return {"filters": module.out_channels, "groups": module.groups, "kernel_size": tuple(module.kernel_size),
            "strides": tuple(module.stride), "dilation_rate": tuple(module.dilation), "padding": padding,
            "padding_mode": str(module.padding_mode).lower(), "use_bias": bool(module.use_bias)}


def weight_and_bias(shapes, weight: str, ranks=(3, 4, 5)):
    """(weight shape, bias shape or None) when ``shapes`` is exactly {weight[, bias]} of a conv's ranks."""
    w, b = shapes.get(weight), shapes.get("bias")
    if set(shapes) - {weight, "bias"} or w is None or len(w) not in ranks or (b is not None and len(b) != 1):
        return None
    return tuple(w), (tuple(b) if b is not None else None)



def is_depthwise(module) -> bool:
    if hasattr(module, "feature_group_count"):  # Flax
        return module.feature_group_count == module.in_features > 1
    return module.groups == module.in_channels > 1

