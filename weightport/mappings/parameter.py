"""Loose parameters: a tensor held directly by a layer no rule claims (a class token, a position table, a scale).

Such tensors belong to no layer kind, so they pair by name and shape like
any layer, and their canonical form is the tensor itself with leading
singleton axes dropped: HF ViT's ``position_embeddings`` (1, N, H) and a
Keras position ``Embedding`` table (N, H) hold the same numbers. A tensor
that is one single-slot layer's only weight, stored as it is in its layout
(an Embedding table, a norm's scale), can pair with a loose one this way too.
Nothing moves axes here: a loose tensor that is really a transposed kernel
cannot be told from one that is not, which is why the matcher accepts square
ones on names alone and says so.
"""
from ..layouts import names as layout_names
from .rule import Rule, link, register
from .samples import sizes, weights
from .transforms import Reshape


def canonical_shape(shape) -> tuple:
    """``shape`` without its leading singleton axes (one axis kept for a scalar-like tensor)."""
    shape = tuple(int(d) for d in shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


@register
class ParameterRule(Rule):
    name = "parameter"
    classes = {}  # never recognised by class: the matcher and the walkers create these nodes

    def layouts(self):
        return layout_names()

    def examples(self, layout, rng):
        n, d = sizes(rng, 2)
        return [({"shape": (1, n, d), "slot": "position_embeddings"}, weights(rng, (n, d))),
                ({"shape": (1, 1, d), "slot": "cls_token"}, weights(rng, (d,)))]

    def canonical(self, hp):
        return ["value"]

    def links(self, layout, hp):
        shape = tuple(hp["shape"])
        return [link("value", hp["slot"], Reshape(canonical_shape(shape), shape))]
