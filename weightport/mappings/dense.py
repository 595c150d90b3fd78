"""Dense <-> Linear: the kernel is (in, out) in Keras and Flax, (out, in) in torch."""
from .rule import Rule, link, register
from .transforms import Transpose


@register
class DenseRule(Rule):
    name = "dense"
    classes = {"keras": ("Dense",), "torch": ("Linear",)}
    checks = {"use_bias": "error"}

    def config_keras(self, layer):
        return {"units": layer.units, "use_bias": layer.use_bias}

    def config_torch(self, module):
        return {"units": module.out_features, "use_bias": module.bias is not None}

    def infer_torch(self, shapes):
        w, b = shapes.get("weight"), shapes.get("bias")
        if set(shapes) - {"weight", "bias"} or w is None or len(w) != 2 or (b is not None and b != (w[0],)):
            return None
        return {"units": w[0], "use_bias": b is not None}

    def infer_keras(self, shapes):
        k, b = shapes.get("kernel"), shapes.get("bias")
        if set(shapes) - {"kernel", "bias"} or k is None or len(k) != 2 or (b is not None and b != (k[1],)):
            return None
        return {"units": k[1], "use_bias": b is not None}

    def canonical(self, hp):
        return ["kernel", "bias"] if hp.get("use_bias", True) else ["kernel"]

    def links_torch(self, hp):
        return [link("kernel", "weight", Transpose(1, 0)), link("bias", "bias")]
