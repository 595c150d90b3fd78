"""A model that reads two inputs (an encoder's and a decoder's token ids) is traced from the inputs it declares:
torch's ``forward(src, tgt)``, Keras' two functional inputs. Its three look-alike Dense layers have names that
say nothing, so only the dataflow can pair them."""
import numpy as np
import pytest

import weightport as wp
from util import randomize_torch

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

SRC = np.random.default_rng(1).integers(0, 13, (2, 5))
TGT = np.random.default_rng(2).integers(0, 11, (2, 4))


class TwoInputs(torch.nn.Module):
    """Declared in another order than it runs: the layer read last comes first."""

    def __init__(self):
        super().__init__()
        self.c = torch.nn.Linear(6, 6)
        self.src_table = torch.nn.Embedding(13, 6)
        self.tgt_table = torch.nn.Embedding(11, 6)
        self.b = torch.nn.Linear(6, 6)
        self.a = torch.nn.Linear(6, 6)

    def forward(self, src, tgt):
        memory = torch.tanh(self.a(self.src_table(src))).mean(1, keepdim=True)
        return self.c(torch.tanh(self.b(self.tgt_table(tgt))) + memory)


def keras_model():
    src, tgt = keras.Input((None,), dtype="int32", name="src"), keras.Input((None,), dtype="int32", name="tgt")
    memory = keras.ops.mean(keras.layers.Dense(6, activation="tanh", name="x")(
        keras.layers.Embedding(13, 6, name="table_1")(src)), axis=1, keepdims=True)
    hidden = keras.layers.Dense(6, activation="tanh", name="y")(keras.layers.Embedding(11, 6, name="table_2")(tgt))
    out = keras.layers.Dense(6, name="z")(hidden + memory)
    return keras.Model([src, tgt], out)


def test_two_input_models_are_traced_and_paired_by_dataflow():
    t, k = TwoInputs(), keras_model()
    randomize_torch(t)
    report = wp.port(t, k)
    assert {(s.source, s.target) for s in report.steps if s.rule == "dense"} == {("a", "x"), ("b", "y"), ("c", "z")}
    assert all(s.evidence in ("structure", "shape") for s in report.steps)
    assert wp.verify(t, k, ((SRC, TGT), [SRC, TGT])).ok
    # negative control: the encoder's and decoder's Dense crossed give other outputs
    x, y = k.get_layer("x"), k.get_layer("y")
    wx, wy = x.get_weights(), y.get_weights()
    x.set_weights(wy)
    y.set_weights(wx)
    assert not wp.verify(t, k, ((SRC, TGT), [SRC, TGT])).ok
    back = TwoInputs()
    wp.port(k, back)  # Keras -> torch: the crossed weights go back crossed
    with torch.no_grad():
        assert torch.equal(back.a.weight, torch.from_numpy(wy[0].T.copy()))
