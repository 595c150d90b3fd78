"""BatchNormalization <-> torch BatchNorm1d/2d/3d, Flax BatchNorm (Equinox's is refused); see ``norm``."""
from __future__ import annotations

from ..errors import UnsupportedLayerError
from . import onnx_ops
from .norm import EPSILON_HINT, epsilon_attribute, shape_of
from .rule import Rule, link, register
from .samples import sizes, weights
from .transforms import Constant


@register
class BatchNormRule(Rule):
    """BatchNormalization <-> BatchNorm1d/2d/3d.

    Keras keeps [gamma?, beta?, moving_mean, moving_variance] (gamma iff
    scale, beta iff center); torch keeps weight, bias (iff affine),
    running_mean, running_var and a ``num_batches_tracked`` counter that only
    matters when momentum=None: it is dropped on import and written as 0 on
    export. A torch BatchNorm built with track_running_stats=False keeps no
    statistics at all (it always uses batch statistics), which no Keras
    BatchNormalization can reproduce: that pairing is refused.
    """

    name = "batch_normalization"
    input_shift = "moving_mean"
    config_by_attributes = staticmethod(epsilon_attribute)
    name_words = frozenset({"norm"})
    classes = {"keras": ("BatchNormalization",),
               "torch": ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "_BatchNorm"),
               "flax": ("BatchNorm",), "equinox": ("BatchNorm",), "onnx": ("BatchNormalization",)}
    checks = {"track_running_stats": "error", "center": "error", "scale": "error",
              "epsilon": "warning", "momentum": "warning"}
    check_hints = {
        "epsilon": EPSILON_HINT,
        "momentum": ("momentum only changes training (Keras momentum = 1 - torch momentum, compared here in Keras "
                     "terms; a torch momentum of None keeps a cumulative average instead of a moving one): "
                     "set it to match if you will train on"),
        "center": "Keras center=True/scale=True correspond to torch affine=True; make them agree",
        "scale": "Keras center=True/scale=True correspond to torch affine=True; make them agree",
        "track_running_stats": ("torch BatchNorm with track_running_stats=False keeps no running statistics and "
                                "always normalises with batch statistics; Keras BatchNormalization always keeps "
                                "moving_mean/moving_variance. Build the torch layer with track_running_stats=True"),
    }

    def config_keras(self, layer):
        return {"epsilon": float(layer.epsilon), "momentum": float(layer.momentum), "center": bool(layer.center),
                "scale": bool(layer.scale), "axis": layer.axis, "track_running_stats": True}

    def config_torch(self, module):
        m = module.momentum
        momentum = "cumulative average (torch momentum=None)" if m is None else round(1.0 - float(m), 12)
        return {"epsilon": float(module.eps), "momentum": momentum, "center": bool(module.affine),
                "scale": bool(module.affine), "track_running_stats": bool(module.track_running_stats),
                "channels": module.num_features}

    def config_flax(self, module):
        return {"epsilon": float(module.epsilon), "momentum": float(module.momentum),
                "center": bool(module.use_bias), "scale": bool(module.use_scale), "axis": module.axis,
                "track_running_stats": True, "channels": module.num_features}

    def config_equinox(self, module):
        raise UnsupportedLayerError(
            "Equinox BatchNorm keeps its running mean and variance in an eqx.nn.State, outside the module, so "
            "porting the module alone would drop them (or leave them stale) and change what it computes at "
            "inference. Nothing was changed. Port the layer by hand (its weight/bias and the State's running "
            "statistics), or replace it with a GroupNorm/LayerNorm model")

    def infer_flax(self, shapes):
        stats = shape_of(shapes, "mean")
        if (set(shapes) - {"scale", "bias", "mean", "var"} or stats is None or len(stats) != 1
                or any(shape_of(shapes, n) != stats for n in shapes)):
            return None
        return {"center": "bias" in shapes, "scale": "scale" in shapes, "track_running_stats": True,
                "channels": stats[0]}

    def infer_torch(self, shapes):
        stats = shape_of(shapes, "running_mean")
        if (set(shapes) - {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
                or stats is None or len(stats) != 1 or shape_of(shapes, "running_var") != stats
                or ("weight" in shapes) != ("bias" in shapes)
                or any(shape_of(shapes, n) != stats for n in ("weight", "bias") if n in shapes)
                or shape_of(shapes, "num_batches_tracked") not in (None, ())):
            return None
        affine = "weight" in shapes
        return {"center": affine, "scale": affine, "track_running_stats": True, "channels": stats[0]}

    def infer_keras(self, shapes):
        stats = shape_of(shapes, "moving_mean")
        if (set(shapes) - {"gamma", "beta", "moving_mean", "moving_variance"} or stats is None or len(stats) != 1
                or any(shape_of(shapes, n) != stats for n in shapes)):
            return None
        return {"center": "beta" in shapes, "scale": "gamma" in shapes, "track_running_stats": True}

    def examples(self, layout, rng):
        c, = sizes(rng, 1)
        gamma, beta, mean, var = weights(rng, (c,), (c,), (c,), (c,))
        hp = {"center": True, "scale": True, "track_running_stats": True}
        return [(hp, [gamma, beta, mean, abs(var) + 0.5]),
                ({**hp, "center": False}, [gamma, mean, abs(var) + 0.5])]

    def canonical(self, hp):
        names = (["gamma"] if hp.get("scale", True) else []) + (["beta"] if hp.get("center", True) else [])
        # a torch layer without running statistics holds only its affine part
        return names + (["moving_mean", "moving_variance"] if hp.get("track_running_stats", True) else [])

    def links_torch(self, hp):
        return [link("gamma", "weight"), link("beta", "bias"),
                link("moving_mean", "running_mean"), link("moving_variance", "running_var"),
                link((), "num_batches_tracked", Constant(0, "int64"))]

    def links_flax(self, hp):
        return [link("gamma", "scale"), link("beta", "bias"), link("moving_mean", "mean"),
                link("moving_variance", "var")]

    def config_onnx(self, node):
        return onnx_ops.batch_norm(node)

    def links_onnx(self, hp):
        """ONNX keeps momentum in Keras' convention (``running = running * momentum + batch * (1 - momentum)``)."""
        return [link("gamma", "scale"), link("beta", "B"), link("moving_mean", "input_mean"),
                link("moving_variance", "input_var")]
