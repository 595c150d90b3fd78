"""PReLU <-> PReLU: the learned negative slopes.

Keras ``alpha`` has the input's shape minus the batch axis, with every
``shared_axes`` entry collapsed to 1: an (H, W, C) input with shared_axes=[1, 2]
gives (1, 1, C), and a channels-first (C, H, W) one with shared_axes=[2, 3]
gives (C, 1, 1). torch keeps ``weight`` of shape (num_parameters,): one slope
per channel (applied on axis 1, NCHW) or a single one. So the Keras alpha must
vary along at most one axis, its channel axis (the last, or the first for
channels-first), and maps to torch by a reshape; one slope per position (no
shared axes on an image) has no torch counterpart and is refused.

torch knows nothing of the Keras shape, so ``alpha_shape`` is shared from the
Keras side when two layers are paired; alone, a torch PReLU's canonical alpha
is (num_parameters,), what a Keras PReLU on a (batch, C) input holds.
"""
from ..errors import UnsupportedLayerError
from .rule import Rule, link, register
from .samples import sizes, weights
from .transforms import Reshape


def slopes_layout(alpha_shape) -> tuple:
    """The Keras alpha shape with its channel axis as -1 (the torch weight is that axis alone).

    With -1 in place of the channel size, a torch weight of another length
    gives a different Keras shape, so mismatches show up as shape errors.
    """
    shape = tuple(int(d) for d in alpha_shape)
    varying = [i for i, d in enumerate(shape) if d != 1]
    if not varying:
        return shape[:-1] + (-1,)
    if len(varying) == 1 and varying[0] in (0, len(shape) - 1):
        return tuple(-1 if i == varying[0] else 1 for i in range(len(shape)))
    raise UnsupportedLayerError(
        f"a Keras PReLU with alpha of shape {shape} keeps a slope per position along "
        f"{len(varying)} axes, but torch nn.PReLU keeps one slope per channel or one in all: build the Keras "
        "PReLU with shared_axes covering every axis but the channel axis (e.g. shared_axes=[1, 2] for images)")


@register
class PReLURule(Rule):
    name = "prelu"
    classes = {"keras": ("PReLU",), "torch": ("PReLU",), "onnx": ("PRelu",)}
    shared = ("alpha_shape",)

    def config_keras(self, layer):
        alpha = getattr(layer, "alpha", None)
        return {} if alpha is None else {"alpha_shape": tuple(int(d) for d in alpha.shape)}

    def config_torch(self, module):
        return {"num_parameters": int(module.num_parameters)}

    def infer_torch(self, shapes):
        w = shapes.get("weight")
        if set(shapes) != {"weight"} or len(w) != 1:
            return None
        return {"num_parameters": w[0]}

    def infer_keras(self, shapes):
        a = shapes.get("alpha")
        if set(shapes) != {"alpha"} or not a:
            return None
        return {"alpha_shape": tuple(a)}

    def examples(self, layout, rng):
        c, = sizes(rng, 1)
        if layout == "onnx":  # (Keras alpha, ONNX slope with its channel axis as -1)
            forms = (((1, 1, c), (-1, 1, 1)), ((1, 1, c), (1, -1, 1, 1)), ((c,), (-1,)), ((1, 1, 1), (1, 1, -1)))
            return [({"alpha_shape": a, "slope_shape": s}, weights(rng, a)) for a, s in forms]
        return [({"alpha_shape": shape}, weights(rng, shape)) for shape in ((1, 1, c), (c, 1, 1), (c,))]

    def canonical(self, hp):
        return ["alpha"]

    def given(self, hp, canonical_shapes):
        # a Keras alpha of the input's shape with the shared axes set to 1: (1, 1, C), (C, 1, 1), (C,)...
        if canonical_shapes and "alpha_shape" not in hp:
            return {**hp, "alpha_shape": tuple(canonical_shapes[0])}
        return hp

    def config_onnx(self, node):
        from .onnx_ops import slopes

        return slopes(node)

    def links_onnx(self, hp):
        """ONNX's slope broadcasts against (N, C, ...): (C, 1, 1) or (1, C, 1, 1) as exporters write it."""
        shape = hp.get("alpha_shape") or hp["alpha_default"]
        return [link("alpha", "slope", Reshape(slopes_layout(shape), hp["slope_shape"]))]

    def links_torch(self, hp):
        shape = hp.get("alpha_shape") or (hp["num_parameters"],)
        return [link("alpha", "weight", Reshape(slopes_layout(shape), (-1,)))]
