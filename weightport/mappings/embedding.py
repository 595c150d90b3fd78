"""Embedding <-> Embedding: a (vocab, dim) table in both, one row per token id, no transpose.

torch ``padding_idx`` is not a weight: torch zero-initialises that row and
keeps its gradient at zero, but a lookup returns whatever the row holds, so
the ported table computes the same function (Keras ``mask_zero`` is likewise
a mask, not a weight). torch ``max_norm`` renormalises looked-up rows, in
place, at every forward pass, which Keras never does: it is warned about.
Flax's ``Embed`` keeps the same table as ``embedding``, Equinox's ``Embedding`` as ``weight``.
HF's learned position tables (BART, OPT) declare an ``offset``: position i is
row i + offset, the rows before it unused; only the rows in use are the table.
Others (RoBERTa, XLM-R, ESM) count positions from ``padding_idx + 1`` without
declaring it: a table with ``padding_idx`` p >= 1 and exactly p + 1 rows more
than its counterpart has those rows reserved, and is read the same way.
"""
import numpy as np

from .rule import Declined, Rule, link, register
from .samples import sizes, weights
from .transforms import IDENTITY, ReservedRows


@register
class EmbeddingRule(Rule):
    name = "embedding"
    name_words = frozenset({"embedding", "tokemb", "posemb", "embed"})
    classes = {"keras": ("Embedding",), "torch": ("Embedding",), "flax": ("Embed",), "equinox": ("Embedding",),
               "onnx": ("Gather",)}
    checks = {"max_norm": "warning"}
    reads_inputs = True
    check_hints = {"max_norm": ("torch rescales looked-up rows to at most max_norm (and writes them back); "
                                "Keras does not, so outputs differ wherever a row is longer: build the torch "
                                "Embedding with max_norm=None")}

    def config_keras(self, layer):
        if len(layer.weights) > 1:
            raise Declined("an Embedding subclass that holds more than its table")
        return {"input_dim": int(layer.input_dim), "output_dim": int(layer.output_dim), "max_norm": None}

    def config_torch(self, module):
        hp = {"input_dim": int(module.num_embeddings), "output_dim": int(module.embedding_dim),
              "max_norm": module.max_norm, "padding_idx": module.padding_idx}
        offset = getattr(module, "offset", None)  # HF's learned positions (BART, OPT): row i + offset for i
        if isinstance(offset, int) and not isinstance(offset, bool) and 0 < offset < hp["input_dim"]:
            hp["offset"] = offset
        return hp

    def share(self, source_hp, target_hp):
        a, b = super().share(source_hp, target_hp)
        return _reserved_by_padding(a, b), _reserved_by_padding(b, a)

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
        found = [({"input_dim": vocab, "output_dim": dim}, weights(rng, (vocab, dim)))]
        if layout == "torch":  # a learned position table with reserved rows first (HF BART, OPT)
            found.append(({"input_dim": vocab + 2, "output_dim": dim, "offset": 2}, weights(rng, (vocab, dim))))
        return found

    def canonical(self, hp):
        return ["embeddings"]

    def sample_inputs(self, layout, hp, shapes):
        vocab = shapes[0][0] if shapes else 2
        return [(np.arange(8, dtype="int64") % vocab).reshape(1, 8)]

    def links_torch(self, hp):
        return [link("embeddings", "weight", ReservedRows(hp["offset"]) if hp.get("offset") else IDENTITY)]

    def links_flax(self, hp):
        return [link("embeddings", "embedding")]

    def config_onnx(self, node):
        from .onnx_ops import gather_table

        return gather_table(node)

    def links_onnx(self, hp):
        return [link("embeddings", "data")]


def _reserved_by_padding(hp, other):
    """``hp`` with an ``offset`` where its padding row says the rows up to it are reserved: positions counted from
    ``padding_idx + 1`` (HF RoBERTa's), seen as exactly that many extra rows against the paired table."""
    pad = hp.get("padding_idx")
    if hp.get("offset") or not isinstance(pad, int) or pad < 1 or other.get("offset"):
        return hp
    if hp.get("input_dim") == other.get("input_dim", -1) + pad + 1:
        return {**hp, "offset": pad + 1}
    return hp


def _table(shapes, name):
    """hp for a group holding only a (vocab, dim) table under ``name``, else None."""
    table = shapes.get(name)
    if set(shapes) != {name} or len(table) != 2:
        return None
    return {"input_dim": table[0], "output_dim": table[1]}


@register
class ReversibleEmbeddingRule(Rule):
    """keras-hub's ``ReversibleEmbedding`` with ``tie_weights=False``: a token table and, beside it, the output
    projection back to the vocabulary (``reverse_embeddings``, (dim, vocab), used as ``x @ reverse``).

    Other implementations keep those as two layers (HF's ``embed_tokens`` and
    ``lm_head``), so the two are this layer's parts: an embedding, and a
    bias-free dense whose kernel it stores under its own name. A tied one
    holds the table alone and is a plain embedding.
    """

    name = "reversible_embedding"
    classes = {"keras": ("ReversibleEmbedding",)}
    composite = True
    priority = 1

    def config_keras(self, layer):
        if getattr(layer, "tie_weights", True) or len(layer.weights) != 2:
            raise Declined("a tied ReversibleEmbedding holds one table: a plain embedding")
        return {"input_dim": int(layer.input_dim), "output_dim": int(layer.output_dim)}

    def canonical(self, hp):
        return ["embeddings", "reverse_embeddings"]

    def examples(self, layout, rng):
        vocab, dim = sizes(rng, 2)
        return [({"input_dim": vocab, "output_dim": dim}, weights(rng, (vocab, dim), (dim, vocab)))]

    def parts(self, layout, hp):
        vocab, dim = hp["input_dim"], hp["output_dim"]
        return [("embeddings", "embedding", {"input_dim": vocab, "output_dim": dim, "max_norm": None}),
                ("reverse_embeddings", "dense", {"units": vocab, "use_bias": False,
                                                 "slot_names": {"kernel": "reverse_embeddings"}})]

    def sample_inputs(self, layout, hp, shapes):
        return EmbeddingRule.sample_inputs(self, layout, hp, shapes)
