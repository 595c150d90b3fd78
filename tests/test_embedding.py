"""Embedding <-> Embedding: forward equivalence both ways, bitwise round trip, and controls that fail
when the table is transposed or its rows are reordered."""
import numpy as np
import pytest

import weightport as wp
from util import (assert_forward_differs, assert_forward_equal, assert_keras_roundtrip, randomize_keras,
                  randomize_torch)
from weightport.mappings import transforms as T
from weightport.mappings.rule import registry

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

VOCAB, DIM, SEQ = 11, 7, 5


def pair(padding_idx=None):
    t = torch.nn.Embedding(VOCAB, DIM, padding_idx=padding_idx)
    k = keras.Sequential([keras.Input((SEQ,), dtype="int32"), keras.layers.Embedding(VOCAB, DIM)])
    return t, k


def tokens():
    x = np.random.randint(0, VOCAB, size=(4, SEQ)).astype("int64")
    x[0, :2] = 0  # the padding row, when there is one, is looked up too
    return x


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_torch_to_keras_forward(padding_idx):
    t, k = pair(padding_idx)
    randomize_torch(t)  # also fills the padding row: it is an ordinary weight, only its gradient is zeroed
    report = wp.port(t, k)
    assert [s.rule for s in report.steps] == ["embedding"] and report.exact and not report.warnings
    np.testing.assert_array_equal(k.layers[0].get_weights()[0], t.weight.detach().numpy())
    assert_forward_equal(t, k, tokens())


def test_keras_to_torch_forward():
    t, k = pair()
    randomize_keras(k)
    wp.port(k, t)
    assert_forward_equal(t, k, tokens())


def test_keras_torch_keras_bitwise():
    t, k = pair()
    assert_keras_roundtrip(k, t)


def test_swapped_vocab_and_dim_is_refused():
    # a (vocab, dim) table read as (dim, vocab) would need a transpose that no rule does: refused, not copied
    t, _ = pair()
    k = keras.Sequential([keras.Input((SEQ,), dtype="int32"), keras.layers.Embedding(DIM, VOCAB)])
    before = k.get_weights()[0].copy()
    with pytest.raises(wp.ShapeMismatchError, match="expected 7x11, found 11x7"):
        wp.port(t, k)
    np.testing.assert_array_equal(k.get_weights()[0], before)


def test_negative_control_wrong_row_order(monkeypatch):
    # token i must get row i: a mapping that reverses the rows keeps the shape and must fail the forward check
    t, k = pair()
    randomize_torch(t)
    rule = registry.get("embedding")
    monkeypatch.setattr(rule, "links_torch",
                        lambda hp: [wp.link("embeddings", "weight", T.ReorderBlocks(0, range(VOCAB - 1, -1, -1)))])
    wp.port(t, k)
    assert_forward_differs(t, k, tokens())


def test_max_norm_is_warned_about():
    t, k = pair()
    t.max_norm = 1.0
    with pytest.warns(wp.WeightportWarning, match="max_norm"):
        wp.port(t, k)


def test_infer_bare_groups():
    rule = registry.get("embedding")
    assert rule.infer("torch", {"weight": (VOCAB, DIM)}) == {"input_dim": VOCAB, "output_dim": DIM}
    assert rule.infer("torch", {"weight": (VOCAB, DIM), "bias": (VOCAB,)}) is None
    assert rule.infer("torch", {"weight": (VOCAB,)}) is None
    assert rule.infer("keras", {"embeddings": (VOCAB, DIM)}) == {"input_dim": VOCAB, "output_dim": DIM}
    assert rule.infer("keras", {"kernel": (VOCAB, DIM)}) is None
