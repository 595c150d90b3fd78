"""Dense <-> Linear: the kernel is (in, out) in Keras and Flax, (out, in) in torch.

A Dense that reads a flattened channels-last feature map also has its rows in
another order than torch's Linear (see flatten.py): the Keras side records the
feature map as ``flatten_from`` and shares it with the paired torch layer.
Flax (Linen Dense, NNX Linear) flattens channels-last feature maps as Keras
does, so its kernel is Keras' as it is. Equinox's Linear keeps torch's
(out, in) weight, and flattens channels-first feature maps as torch does.
"""
import numpy as np

from . import flatten, onnx_ops
from .introspect import keras_activation
from .rule import ACTIVATION_HINT, ConfigIssue, Rule, link, register
from .samples import sizes, weights
from .transforms import IDENTITY, Chain, Scale, Transpose


@register
class DenseRule(Rule):
    name = "dense"
    layout_keys = ("in_out",)  # one class of a model stores all its weights one way round
    name_words = frozenset({"head", "proj", "fc", "dense", "linear", "up", "down", "gate", "query", "key", "value",
                            "output", "classifier", "pooler", "lm", "score"})
    classes = {"keras": ("Dense",), "torch": ("Linear",), "flax": ("Linear",), "equinox": ("Linear",),
               "onnx": ("Gemm", "MatMul")}
    checks = {"use_bias": "error", "activation": "warning"}
    check_hints = {"activation": ACTIVATION_HINT}
    shared = ("flatten_from",)
    graph_sensitive = {"keras": ("Flatten",)}

    def config_keras(self, layer):
        hp = {"units": layer.units, "use_bias": layer.use_bias}
        if keras_activation(layer):
            hp["activation"] = keras_activation(layer)
        feature_map = flatten.feature_map_before_flatten(layer)
        if feature_map is flatten.UNKNOWN:
            hp["flatten_unknown"] = True
        elif feature_map is not None:
            hp["flatten_from"] = feature_map
        return hp

    def check(self, source_hp, target_hp):
        issues = super().check(source_hp, target_hp) + onnx_ops.flatten_issues(source_hp, target_hp)
        if source_hp.get("graph_unknown") or target_hp.get("graph_unknown"):
            issues.append(ConfigIssue(
                "flatten", None, None, "warning",
                "the Keras model holds a Flatten but records no graph (a subclassed model), so whether this "
                "Dense reads a flattened channels-last feature map, whose rows torch and Equinox order "
                "differently, cannot be seen; check the outputs with wp.verify, or write the model with the "
                "functional API"))
        if source_hp.get("flatten_unknown") or target_hp.get("flatten_unknown"):
            issues.append(ConfigIssue(
                "flatten", None, None, "warning",
                "the Flatten's input comes from outside a nested model, so whether its rows need the "
                "channels-last permutation (a Conv1D map) or not (an embedded sequence) cannot be told; "
                "check the outputs with wp.verify"))
        return issues

    def config_torch(self, module):
        return {"units": module.out_features, "use_bias": module.bias is not None}

    def infer_torch(self, shapes):
        """nn.Linear's (out, in) weight, or (in, out) where the bias says so (GPT-2's Conv1D).

        A square weight with a bias cannot say which: ``in_out`` is None, and
        a live model's other instances of the class settle it (a file's keeps
        torch's usual (out, in)).
        """
        w, b = shapes.get("weight"), shapes.get("bias")
        if set(shapes) - {"weight", "bias"} or w is None or len(w) != 2:
            return None
        if b is None or w[0] == w[1]:
            in_out = False if b is None else None
        elif b in ((w[0],), (w[1],)):
            in_out = b == (w[1],)
        else:
            return None
        return {"units": w[1] if in_out else w[0], "use_bias": b is not None, "in_out": in_out}

    def infer_keras(self, shapes):
        k, b = shapes.get("kernel"), shapes.get("bias")
        if set(shapes) - {"kernel", "bias"} or k is None or len(k) != 2 or (b is not None and b != (k[1],)):
            return None
        return {"units": k[1], "use_bias": b is not None}

    def config_flax(self, module):
        return {"units": module.out_features, "use_bias": module.bias is not None}

    def infer_flax(self, shapes):
        return self.infer_keras(shapes)

    def config_equinox(self, module):
        return {"units": module.out_features, "use_bias": module.bias is not None}

    def links_equinox(self, hp):
        return self.links_torch(hp)

    def canonical(self, hp):
        return ["kernel", "bias"] if hp.get("use_bias", True) else ["kernel"]

    def sample_inputs(self, layout, hp, shapes):
        if hp.get("flatten_from") or not shapes:
            return []  # the model reads a feature map, whose layout the Dense cannot say
        return [np.full((1, shapes[0][0]), 0.5, "float32")]

    def examples(self, layout, rng):
        i, o, h, w = sizes(rng, 4)
        out = [({"units": o, "use_bias": True}, weights(rng, (i, o), (o,))),
               ({"units": o, "use_bias": False}, weights(rng, (i, o)))]
        if layout == "onnx":
            out += [({"units": o, "use_bias": True, "trans_b": True}, weights(rng, (i, o), (o,))),
                    ({"units": o, "use_bias": True, "trans_b": True, "flatten_from": (h, w, i)},
                     weights(rng, (h * w * i, o), (o,))),
                    ({"units": o, "use_bias": False, "flatten_from": (h, w, i)}, weights(rng, (h * w * i, o))),
                    ({"units": o, "use_bias": True, "alpha": 0.5, "beta": 4.0}, weights(rng, (i, o), (o,)))]
        if layout == "torch":
            out += [({"units": o, "use_bias": True, "flatten_from": (h, w, i)}, weights(rng, (h * w * i, o), (o,))),
                    ({"units": o, "use_bias": True, "in_out": True}, weights(rng, (i, o), (o,)))]
        return out

    def links_torch(self, hp):
        feature_map = hp.get("flatten_from")
        if hp.get("in_out") and not feature_map:
            return [link("kernel", "weight"), link("bias", "bias")]  # stored (in, out), as Keras does
        kernel = flatten.flatten_permutation(feature_map) if feature_map else Transpose(1, 0)
        return [link("kernel", "weight", kernel), link("bias", "bias")]

    def links_flax(self, hp):
        return [link("kernel", "kernel"), link("bias", "bias")]

    def config_onnx(self, node):
        return onnx_ops.dense(node)

    def links_onnx(self, hp):
        """Gemm's B is (out, in) with transB=1 (torch's), else (in, out); MatMul's is (in, out). Rows read from
        a channels-first flatten move as torch's do (``flatten_from``, shared by the Keras side). Gemm's alpha
        and beta are folded into the kernel and bias."""
        feature_map = hp.get("flatten_from")
        if feature_map:
            to_torch = flatten.flatten_permutation(feature_map)
            kernel = to_torch if hp.get("trans_b") else Chain(to_torch, Transpose(1, 0))
        else:
            kernel = Transpose(1, 0) if hp.get("trans_b") else IDENTITY
        if "alpha" in hp:
            kernel = Chain(kernel, Scale(hp["alpha"])) if kernel is not IDENTITY else Scale(hp["alpha"])
        return [link("kernel", "B", kernel), link("bias", "C", Scale(hp["beta"]) if "beta" in hp else IDENTITY)]
