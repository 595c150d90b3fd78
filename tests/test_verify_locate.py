"""verify(locate=True) names the first paired layer whose outputs part; output= picks one of several outputs."""
import numpy as np
import pytest

import weightport as wp
from util import randomize_torch

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

WIDTHS = (7, 9, 6, 8, 5, 9, 4, 7, 6, 5, 3)  # ten Dense layers of distinct shapes


def models():
    t = torch.nn.Sequential(*[m for a, b in zip(WIDTHS, WIDTHS[1:]) for m in (torch.nn.Linear(a, b), torch.nn.Tanh())])
    k = keras.Sequential([keras.Input((WIDTHS[0],))] + [keras.layers.Dense(b, activation="tanh") for b in WIDTHS[1:]])
    randomize_torch(t)
    return t, k


X = np.random.default_rng(5).standard_normal((4, WIDTHS[0])).astype("float32")


def test_a_damaged_middle_layer_is_located():
    t, k = models()
    report = wp.port(t, k)
    clean = wp.verify(t, k, X, locate=True, report=report)
    assert clean.ok and clean.diverging is None
    kernel, bias = k.layers[4].get_weights()
    k.layers[4].set_weights([kernel, bias + 0.05])  # the fifth Dense, damaged after the port
    result = wp.verify(t, k, X, locate=True, report=report)
    assert not result.ok
    assert (result.diverging.source, result.diverging.target) == ("8", k.layers[4].name)
    assert "first diverging layer: 8 ->" in str(result)
    # without the report the layers are paired again, with the same answer
    assert wp.verify(t, k, X, locate=True).diverging.target == k.layers[4].name


def test_output_selects_one_of_several():
    lstm = torch.nn.LSTM(7, 5, batch_first=True)
    randomize_torch(lstm)
    k = keras.Sequential([keras.Input((6, 7)), keras.layers.LSTM(5, return_sequences=True)])
    wp.port(lstm, k)
    x = np.random.default_rng(6).standard_normal((2, 6, 7)).astype("float32")
    with pytest.raises(wp.UsageError, match="outputs"):
        wp.verify(lstm, k, x)  # (output, (h, c)) against one output
    assert wp.verify(lstm, k, x, output=(0, None)).ok
    assert not wp.verify(lstm, k, x, output=(lambda out: out[0][:, ::-1], None)).ok  # negative control
    with pytest.raises(wp.UsageError, match="output=5"):
        wp.verify(lstm, k, x, output=(5, None))


class _TwoOutputs(torch.nn.Module):
    """A Linear whose forward returns (output, a second array), as HF models return several."""

    def __init__(self):
        super().__init__()
        self.dense = torch.nn.Linear(7, 5)

    def forward(self, x):
        y = self.dense(x)
        return y, y.sum(-1)


def test_an_index_into_a_single_tensor_output_is_that_output_not_its_first_row():
    t = _TwoOutputs()
    randomize_torch(t)
    k = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5)])
    wp.port(t, k)
    x = np.random.default_rng(7).standard_normal((3, 7)).astype("float32")
    # the same index for both: the tuple's first output, and the Keras model's only one (not its first row)
    result = wp.verify(t, k, x, output=0)
    assert result.ok and result.outputs == 1
    assert wp.verify(t, k, x, output=(0, -1)).ok
    kernel, bias = k.layers[0].get_weights()
    k.layers[0].set_weights([kernel, bias + 0.05])
    assert not wp.verify(t, k, x, output=0).ok  # negative control: a damaged model still fails
    with pytest.raises(wp.UsageError, match="returns one array"):
        wp.verify(t, k, x, output=(0, 1))  # a second output the Keras model does not have
