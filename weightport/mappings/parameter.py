"""Loose parameters: a tensor held directly by a layer no rule claims (a class token, a position table, a scale).

Such tensors belong to no layer kind, so they pair by name and shape like
any layer, and their canonical form is the tensor itself with its size-1
axes dropped, which moves no value: HF ViT's ``position_embeddings``
(1, N, H) and a Keras position ``Embedding`` table (N, H) hold the same
numbers, as do a depthwise torch Conv1d weight (C, 1, K) and a bare (C, K)
kernel, or a (1,) scale and a scalar. A tensor
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
    """``shape`` without its size-1 axes (a squeeze keeps memory order); ``(1,)`` for a one-value tensor, so a
    scalar and a (1,) tensor agree."""
    return tuple(int(d) for d in shape if int(d) != 1) or (1,)


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
