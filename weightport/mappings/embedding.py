"""Embedding <-> Embedding: a (vocab, dim) table in both, one row per token id, no transpose.

torch ``padding_idx`` is not a weight: torch zero-initialises that row and
keeps its gradient at zero, but a lookup returns whatever the row holds, so
the ported table computes the same function (Keras ``mask_zero`` is likewise
a mask, not a weight). torch ``max_norm`` renormalises looked-up rows, in
place, at every forward pass, which Keras never does: it is warned about.
Flax's ``Embed`` keeps the same table as ``embedding``, Equinox's ``Embedding`` as ``weight``.
"""
import numpy as np

from .rule import Rule, link, register
from .samples import sizes, weights


@register
class EmbeddingRule(Rule):
    name = "embedding"
    name_words = frozenset({"embedding", "tokemb", "posemb", "embed"})
    classes = {"keras": ("Embedding",), "torch": ("Embedding",), "flax": ("Embed",), "equinox": ("Embedding",)}
    checks = {"max_norm": "warning"}
    check_hints = {"max_norm": ("torch rescales looked-up rows to at most max_norm (and writes them back); "
                                "Keras does not, so outputs differ wherever a row is longer: build the torch "
                                "Embedding with max_norm=None")}

    def config_keras(self, layer):
        return {"input_dim": int(layer.input_dim), "output_dim": int(layer.output_dim), "max_norm": None}

    def config_torch(self, module):
        return {"input_dim": int(module.num_embeddings), "output_dim": int(module.embedding_dim),
                "max_norm": module.max_norm, "padding_idx": module.padding_idx}

    def infer_torch(self, shapes):
        # also what a bias-free Linear looks like: the matcher settles it against a target, or reports it
        return _table(shapes, "weight")

    def infer_keras(self, shapes):
        return _table(shapes, "embeddings")

    def config_flax(self, module):
        return {"input_dim": int(module.num_embeddings), "output_dim": int(module.features), "max_norm": None}

    def infer_flax(self, shapes):
        return _table(shapes, "embedding")

    def config_equinox(self, module):
        return {"input_dim": int(module.num_embeddings), "output_dim": int(module.embedding_size), "max_norm": None}

    def links_equinox(self, hp):
        return [link("embeddings", "weight")]

    def examples(self, layout, rng):
        vocab, dim = sizes(rng, 2)
        return [({"input_dim": vocab, "output_dim": dim}, weights(rng, (vocab, dim)))]

    def canonical(self, hp):
        return ["embeddings"]

    def sample_inputs(self, layout, hp, shapes):
        vocab = shapes[0][0] if shapes else 2
        return [(np.arange(8, dtype="int64") % vocab).reshape(1, 8)]

    def links_torch(self, hp):
        return [link("embeddings", "weight")]

    def links_flax(self, hp):
        return [link("embeddings", "embedding")]


def _table(shapes, name):
    """hp for a group holding only a (vocab, dim) table under ``name``, else None."""
    table = shapes.get(name)
    if set(shapes) != {name} or len(table) != 2:
        return None
    return {"input_dim": table[0], "output_dim": table[1]}
