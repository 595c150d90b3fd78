"""Normalisation layers: LayerNorm, GroupNorm, RMSNorm here, BatchNorm in ``batch_norm``.

Every tensor here is per channel (or per normalised element) and has the same
shape in Keras and torch, so the links are plain copies. What weights cannot
carry is the configuration, and that is where "converted, but outputs differ"
comes from: the defaults disagree (epsilon 1e-3 in Keras, 1e-5 in torch;
momentum 0.99 in Keras means 0.1 in torch). The rules compare it all in Keras
conventions and say what differs.

Channel axes: torch normalises over axis 1 (NCHW) for BatchNorm and GroupNorm;
the paired Keras layer must use the channel axis of its own data layout (``-1``
for channels-last, ``1`` for channels-first). The weights are the same (C,)
vectors either way.

Flax (NNX classes; Linen and file groups by names) keeps the same vectors as
``scale``/``bias`` and, for BatchNorm, ``mean``/``var`` (Linen puts those in
the ``batch_stats`` collection). Its momentum follows the Keras convention;
its epsilon defaults differ again (1e-5 for BatchNorm, 1e-6 for the others).

Equinox keeps ``weight``/``bias`` like torch (LayerNorm and RMSNorm over the
whole of the ``shape`` they are built with; GroupNorm per channel, channels
first). Its BatchNorm keeps the running statistics in an ``eqx.nn.State``
outside the module, where a port into or out of the module cannot reach
them: refused. Its RMSNorm adds a bias by default, which Keras' and torch's
have no slot for: written as zeros, and refused on import unless all zeros.
"""
from __future__ import annotations

import sys

import numpy as np

from .rule import Rule, link, register
from .samples import sizes, weights
from .transforms import IDENTITY, Reshape, ZeroBias

EQUINOX_BIAS_REFUSAL = (
    "an Equinox RMSNorm's bias is non-zero, and Keras RMSNormalization / torch RMSNorm have no slot for it (dropping "
    "it would change the function). Nothing was changed; port this layer by hand, or into a model that keeps such a "
    "bias")
EPSILON_HINT = ("epsilon is added to the variance before the square root; Keras defaults to 1e-3, torch to 1e-5, "
                "so outputs will differ (most where variances are small): set the target's epsilon to the source's")


def _axes(axis, rank=None):
    """Normalised axes as a tuple of negative ints, or None when the input rank is needed but unknown."""
    axes = [axis] if isinstance(axis, int) else list(axis)
    if any(a >= 0 for a in axes):
        if rank is None:
            return None
        axes = [a - rank if a >= 0 else a for a in axes]
    return tuple(sorted(axes))


def _keras_axes(layer):
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    shape = next(iter(shapes.values()), None)
    return _axes(layer.axis, len(shape) if shape is not None else None)


def epsilon_attribute(layer) -> dict:
    """{"epsilon": ...} from the names norms of every library use for it (eps, epsilon, variance_epsilon)."""
    for name in ("eps", "epsilon", "variance_epsilon"):
        value = getattr(layer, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"epsilon": float(value)}
    return {}


def _maybe(hp, key, value):
    """``hp`` with ``key`` set, unless the value is unknown (then the check is skipped)."""
    if value is not None:
        hp[key] = value
    return hp


def shape_of(shapes, name):
    """The shape of ``name`` in a checkpoint group's shapes, as a tuple, or None."""
    s = shapes.get(name)
    return None if s is None else tuple(s)


TF_NAMES = {"gamma": "weight", "beta": "bias"}


def _layer_norm_hp(shapes, scale_name):
    """LayerNorm hp for a group of a scale (under ``scale_name``) and an optional ``bias`` of one shape."""
    scale = shape_of(shapes, scale_name)
    if set(shapes) - {scale_name, "bias"} or not scale or shape_of(shapes, "bias") not in (None, scale):
        return None
    return {"center": "bias" in shapes, "scale": True, "rms_scaling": False, "axis": tuple(range(-len(scale), 0))}


@register
class LayerNormRule(Rule):
    """LayerNormalization <-> LayerNorm.

    Keras gamma/beta span the normalised axes, so ``axis=(-2, -1)`` gives
    them the shape (d1, d2): the same as torch ``normalized_shape=(d1, d2)``.
    torch only normalises trailing axes; a Keras axis list that is not
    trailing cannot be ported. Keras ``rms_scaling=True`` computes
    ``x / sqrt(var + eps) * gamma`` (no centring, but divided by the
    variance, not the mean square), which neither torch LayerNorm nor RMSNorm
    computes: that pairing is refused (use Keras RMSNormalization <->
    torch RMSNorm for RMS normalisation).
    """

    name = "layer_normalization"
    config_by_attributes = staticmethod(epsilon_attribute)
    name_words = frozenset({"norm"})
    classes = {"keras": ("LayerNormalization",), "torch": ("LayerNorm",), "flax": ("LayerNorm",),
               "equinox": ("LayerNorm",), "onnx": ("LayerNormalization",)}
    checks = {"rms_scaling": "error", "axis": "error", "center": "error", "scale": "error", "epsilon": "warning"}
    check_hints = {
        "epsilon": EPSILON_HINT,
        "rms_scaling": ("Keras LayerNormalization(rms_scaling=True) computes x / sqrt(var(x) + eps) * gamma, which "
                        "neither torch LayerNorm nor RMSNorm computes; use keras.layers.RMSNormalization with "
                        "torch.nn.RMSNorm"),
        "axis": "torch LayerNorm normalises the trailing axes of normalized_shape; make the Keras axis list match",
        "center": "Keras center corresponds to torch bias (elementwise_affine=True, bias=True); make them agree",
        "scale": "Keras scale corresponds to torch elementwise_affine; make them agree",
    }

    def config_keras(self, layer):
        hp = {"epsilon": float(layer.epsilon), "center": bool(layer.center), "scale": bool(layer.scale),
              "rms_scaling": bool(getattr(layer, "rms_scaling", False))}
        return _maybe(hp, "axis", _keras_axes(layer))

    def config_torch(self, module):
        affine = bool(module.elementwise_affine)
        n = len(module.normalized_shape)
        return {"epsilon": float(module.eps), "center": affine and module.bias is not None, "scale": affine,
                "rms_scaling": False, "axis": tuple(range(-n, 0))}

    def infer_torch(self, shapes):
        hp = _layer_norm_hp(shapes, "weight")
        if hp is None and "gamma" in shapes:  # checkpoints converted from TensorFlow (early BERT's gamma/beta)
            hp = _layer_norm_hp({TF_NAMES.get(k, k): v for k, v in shapes.items()}, "weight")
            if hp is not None:
                hp["slot_names"] = {v: k for k, v in TF_NAMES.items() if k in shapes}
        return hp

    def config_flax(self, module):
        hp = {"epsilon": float(module.epsilon), "center": bool(module.use_bias), "scale": bool(module.use_scale),
              "rms_scaling": False}
        return _maybe(hp, "axis", _axes(module.reduction_axes))

    def config_equinox(self, module):
        hp = {"epsilon": float(module.eps), "center": bool(module.use_bias), "scale": bool(module.use_weight),
              "rms_scaling": False}
        return _maybe(hp, "axis", None if module.shape is None else tuple(range(-len(module.shape), 0)))

    def links_equinox(self, hp):
        return self.links_torch(hp)

    def infer_flax(self, shapes):
        # a lone scale is also what an RMSNorm keeps: the matcher settles it against a target, or reports it
        return _layer_norm_hp(shapes, "scale")

    def infer_keras(self, shapes):
        found = [shape_of(shapes, n) for n in ("gamma", "beta") if n in shapes]
        if set(shapes) - {"gamma", "beta"} or not found or not found[0] or len(set(found)) != 1:
            return None
        return {"center": "beta" in shapes, "scale": "gamma" in shapes}

    def examples(self, layout, rng):
        d1, d2 = sizes(rng, 2)
        hp = {"center": True, "scale": True, "rms_scaling": False}
        return [({**hp, "axis": (-1,)}, weights(rng, (d1,), (d1,))),
                ({**hp, "axis": (-2, -1)}, weights(rng, (d1, d2), (d1, d2))),
                ({**hp, "center": False, "axis": (-1,)}, weights(rng, (d2,)))]

    def canonical(self, hp):
        rms = hp.get("rms_scaling", False)
        return ((["gamma"] if hp.get("scale", True) or rms else [])
                + (["beta"] if hp.get("center", True) and not rms else []))

    def config_onnx(self, node):
        from . import onnx_ops

        return onnx_ops.layer_norm(node)

    def links_onnx(self, hp):
        return [link("gamma", "Scale"), link("beta", "B")]

    def links_torch(self, hp):
        return [link("gamma", "weight"), link("beta", "bias")]

    def links_flax(self, hp):
        return [link("gamma", "scale"), link("beta", "bias")]


@register
class GroupNormRule(Rule):
    """GroupNormalization <-> GroupNorm.

    Both split the channels into contiguous groups and keep per-channel
    gamma/beta (weight/bias), so the tensors are copies; the number of groups
    is not in the weights, so it is compared (and a bare checkpoint group
    cannot be told from a LayerNorm: this rule infers nothing).
    """

    name = "group_normalization"
    config_by_attributes = staticmethod(epsilon_attribute)
    name_words = frozenset({"norm"})
    classes = {"keras": ("GroupNormalization",), "torch": ("GroupNorm",), "flax": ("GroupNorm",),
               "equinox": ("GroupNorm",), "onnx": ("GroupNormalization",)}
    checks = {"groups": "error", "center": "error", "scale": "error", "epsilon": "warning"}
    check_hints = {
        "groups": "the number of groups changes which channels are normalised together; make them agree",
        "epsilon": EPSILON_HINT,
        "center": "Keras center=True/scale=True correspond to torch affine=True; make them agree",
        "scale": "Keras center=True/scale=True correspond to torch affine=True; make them agree",
    }

    def config_keras(self, layer):
        return {"groups": int(layer.groups), "epsilon": float(layer.epsilon), "center": bool(layer.center),
                "scale": bool(layer.scale), "axis": layer.axis}

    def config_torch(self, module):
        return {"groups": int(module.num_groups), "epsilon": float(module.eps), "center": bool(module.affine),
                "scale": bool(module.affine), "channels": module.num_channels}

    def config_flax(self, module):
        return {"groups": int(module.num_groups), "epsilon": float(module.epsilon), "center": bool(module.use_bias),
                "scale": bool(module.use_scale)}

    def config_equinox(self, module):
        affine = bool(module.channelwise_affine)
        return {"groups": int(module.groups), "epsilon": float(module.eps), "center": affine, "scale": affine}

    def links_equinox(self, hp):
        return self.links_torch(hp)

    def examples(self, layout, rng):
        g, c = sizes(rng, 2)
        out = [({"groups": g, "center": True, "scale": True}, weights(rng, (g * c,), (g * c,)))]
        if layout == "onnx":  # per-channel (C, 1, 1), as torch exporters write the Mul and Add after the norm
            out.append(({**out[0][0], "onnx_shape": (-1, 1, 1)}, weights(rng, (g * c,), (g * c,))))
        return out

    def config_onnx(self, node):
        from .onnx_ops import group_norm

        return group_norm(node)

    def links_onnx(self, hp):
        shape = tuple(hp.get("onnx_shape", (-1,)))
        move = Reshape((-1,), shape) if shape != (-1,) else IDENTITY
        return [link("gamma", "scale", move), link("beta", "bias", move)]

    def canonical(self, hp):
        return (["gamma"] if hp.get("scale", True) else []) + (["beta"] if hp.get("center", True) else [])

    def links_torch(self, hp):
        return [link("gamma", "weight"), link("beta", "bias")]

    def links_flax(self, hp):
        return [link("gamma", "scale"), link("beta", "bias")]


def _torch_machine_epsilon(module) -> float:
    """What torch RMSNorm uses for eps=None: the machine epsilon of its compute type.

    fp16/bf16/fp32 compute in fp32, fp64 in fp64; the input dtype decides, and
    the weight's dtype is the best guess for it (fp32 without weights).
    """
    weight = getattr(module, "weight", None)
    torch = sys.modules.get("torch")
    wide = weight is not None and torch is not None and weight.dtype == torch.float64
    return float(np.finfo(np.float64 if wide else np.float32).eps)


@register
class RMSNormRule(Rule):
    """RMSNormalization <-> RMSNorm: ``x * rsqrt(mean(x**2) + eps) * scale`` in both.

    Keras always keeps ``scale`` (shape of the normalised axes; epsilon
    defaults to 1e-6); torch keeps ``weight`` unless elementwise_affine=False,
    and its eps=None means the machine epsilon of the compute type (about
    1.19e-7 for fp32), which is what gets compared.
    """

    name = "rms_normalization"
    config_by_attributes = staticmethod(epsilon_attribute)
    name_words = frozenset({"norm"})
    classes = {"keras": ("RMSNormalization",), "torch": ("RMSNorm",), "flax": ("RMSNorm",),
               "equinox": ("RMSNorm",)}
    checks = {"axis": "error", "scale": "error", "epsilon": "warning"}
    check_hints = {
        "epsilon": ("epsilon is added to the mean square; Keras defaults to 1e-6, torch eps=None means the machine "
                    "epsilon (1.19e-7 for fp32): set the target's epsilon to the source's"),
        "axis": "torch RMSNorm normalises the trailing axes of normalized_shape; make the Keras axis list match",
        "scale": "Keras RMSNormalization always has a scale; build the torch RMSNorm with elementwise_affine=True",
    }

    def config_keras(self, layer):
        return _maybe({"epsilon": float(layer.epsilon), "scale": True}, "axis", _keras_axes(layer))

    def config_torch(self, module):
        eps = _torch_machine_epsilon(module) if module.eps is None else float(module.eps)
        n = len(module.normalized_shape)
        return {"epsilon": eps, "scale": bool(module.elementwise_affine), "axis": tuple(range(-n, 0))}

    def infer_torch(self, shapes):
        w = shape_of(shapes, "weight")
        if set(shapes) != {"weight"} or not w:
            return None
        return {"scale": True, "axis": tuple(range(-len(w), 0))}

    def infer_keras(self, shapes):
        # a custom Keras layer keeping its scale as ``weight`` (keras-hub's T5LayerNorm) reads like torch's
        name = next(iter(shapes)) if len(shapes) == 1 else None
        if name not in ("scale", "weight") or not shape_of(shapes, name):
            return None
        return {"scale": True} if name == "scale" else {"scale": True, "slot_names": {"scale": "weight"}}

    def config_flax(self, module):
        return _maybe({"epsilon": float(module.epsilon), "scale": bool(module.use_scale)}, "axis",
                      _axes(module.reduction_axes))

    def config_equinox(self, module):
        hp = {"epsilon": float(module.eps), "scale": bool(module.use_weight), "equinox_bias": bool(module.use_bias)}
        return _maybe(hp, "axis", None if module.shape is None else tuple(range(-len(module.shape), 0)))

    def links_equinox(self, hp):
        if hp.get("equinox_bias"):
            return [link("scale", ("weight", "bias"), ZeroBias(EQUINOX_BIAS_REFUSAL))]
        return self.links_torch(hp)

    def infer_flax(self, shapes):
        s = shape_of(shapes, "scale")
        return {"scale": True, "axis": tuple(range(-len(s), 0))} if set(shapes) == {"scale"} and s else None

    def examples(self, layout, rng):
        d1, d2 = sizes(rng, 2)
        out = [({"scale": True, "axis": (-1,)}, weights(rng, (d1,))), ({"scale": True, "axis": (-2, -1)},
                                                                      weights(rng, (d1, d2)))]
        if layout == "equinox":
            out.append(({"scale": True, "axis": (-1,), "equinox_bias": True}, weights(rng, (d2,))))
        return out

    def canonical(self, hp):
        return ["scale"] if hp.get("scale", True) else []

    def links_torch(self, hp):
        return [link("scale", "weight")]

    def links_flax(self, hp):
        return [link("scale", "scale")]
