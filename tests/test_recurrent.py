"""SimpleRNN/LSTM/GRU <-> nn.RNN/LSTM/GRU: forward equivalence (sequences, last step, bidirectional, stacked),
round trips (bitwise where the mapping is exact, function-preserving where torch's two biases are summed),
negative controls (gate reorder, bias sum, transposes), configuration refusals and checkpoint-group inference."""
import numpy as np
import pytest

import weightport as wp
from util import (assert_forward_differs, assert_forward_equal, assert_keras_roundtrip, randomize_keras,
                  randomize_torch, skip_transforms)
from weightport.mappings import transforms as T
from weightport.mappings.rule import registry

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

IN, UNITS, SEQ, BATCH = 12, 9, 6, 4
TORCH = {"simple_rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
KERAS = {"simple_rnn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}
# (stacked layers, bidirectional, return_sequences of the last layer)
VARIANTS = [(1, False, True), (1, False, False), (1, True, True), (1, True, False), (2, False, False),
            (2, True, True)]


class TorchSequence(torch.nn.Module):
    """A torch RNN returning what the Keras model returns: the output sequence, or the last step."""

    def __init__(self, rnn, return_sequences):
        super().__init__()
        self.rnn, self.return_sequences = rnn, return_sequences

    def forward(self, x):
        out = self.rnn(x)[0]
        if not self.rnn.batch_first:
            out = out.transpose(0, 1)
        if self.return_sequences:
            return out
        if not self.rnn.bidirectional:
            return out[:, -1]
        # Keras: the forward layer's last step, then the backward layer's last step (input position 0)
        return torch.cat([out[:, -1, :UNITS], out[:, 0, UNITS:]], dim=-1)


def torch_model(kind, layers=1, bidirectional=False, return_sequences=True, batch_first=True, **kw):
    rnn = getattr(torch.nn, TORCH[kind])(IN, UNITS, num_layers=layers, bidirectional=bidirectional,
                                         batch_first=batch_first, **kw)
    return TorchSequence(rnn, return_sequences)


def keras_model(kind, layers=1, bidirectional=False, return_sequences=True, **kw):
    stack = [keras.Input((SEQ, IN))]
    for i in range(layers):
        layer = getattr(keras.layers, KERAS[kind])(UNITS, return_sequences=return_sequences or i < layers - 1, **kw)
        stack.append(keras.layers.Bidirectional(layer) if bidirectional else layer)
    return keras.Sequential(stack)


def pair(kind, *variant, **kw):
    return torch_model(kind, *variant), keras_model(kind, *variant, **kw)


def inputs():
    return np.random.randn(BATCH, SEQ, IN).astype("float32")


# -- forward equivalence ------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"layers{v[0]}-{'bi' if v[1] else 'uni'}-"
                         f"{'seq' if v[2] else 'last'}")
@pytest.mark.parametrize("kind", list(TORCH))
def test_torch_to_keras_forward(kind, variant):
    t, k = pair(kind, *variant)
    randomize_torch(t)
    report = wp.port(t, k)
    assert [s.rule for s in report.steps] == [kind] * variant[0]
    assert_forward_equal(t, k, inputs())


@pytest.mark.parametrize("variant", VARIANTS[::2] + [VARIANTS[3]], ids=str)
@pytest.mark.parametrize("kind", list(TORCH))
def test_keras_to_torch_forward(kind, variant):
    t, k = pair(kind, *variant)
    randomize_keras(k)
    wp.port(k, t)
    assert_forward_equal(t, k, inputs())


def test_relu_simple_rnn_both_directions():
    t = torch_model("simple_rnn", nonlinearity="relu")
    k = keras_model("simple_rnn", activation="relu")
    randomize_torch(t)
    wp.port(t, k)
    assert_forward_equal(t, k, inputs())
    randomize_keras(k)
    wp.port(k, t)
    assert_forward_equal(t, k, inputs())


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_batch_first_false_takes_time_major_input(kind):
    t = torch_model(kind, 1, True, True, batch_first=False)
    k = keras_model(kind, 1, True, True)
    randomize_torch(t)
    wp.port(t, k)
    x = inputs()
    assert_forward_equal(t, k, np.ascontiguousarray(x.transpose(1, 0, 2)), x)


# -- round trips ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", [(1, False, True), (2, True, False)], ids=["plain", "stacked-bi"])
@pytest.mark.parametrize("kind", list(TORCH))
def test_keras_torch_keras_bitwise(kind, variant):
    t, k = pair(kind, *variant)
    assert_keras_roundtrip(k, t)


@pytest.mark.parametrize("kind", ["lstm", "simple_rnn"])
def test_torch_keras_torch_is_function_preserving_only(kind):
    t, k = pair(kind, 2, True, True)
    back = torch_model(kind, 2, True, True)
    randomize_torch(t)
    there = wp.port(t, k)
    again = wp.port(k, back)
    for report in (there, again):
        assert report.exact is False
        assert "function-preserving, not bitwise" in str(report)
    assert_forward_equal(t, back, inputs())
    before, after = t.state_dict(), back.state_dict()
    for name, value in before.items():
        if "bias_hh" in name:
            assert not after[name].any(), "bias_hh should come back as zeros"
        elif "bias_ih" in name:
            hh = before[name.replace("bias_ih", "bias_hh")]
            assert not torch.equal(after[name], value)
            torch.testing.assert_close(after[name], value + hh)
        else:
            assert torch.equal(after[name], value), name


def test_gru_torch_keras_torch_bitwise():
    t, k = pair("gru", 2, True, True)
    back = torch_model("gru", 2, True, True)
    randomize_torch(t)
    assert wp.port(t, k).exact and wp.port(k, back).exact
    for name, value in t.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name


# -- negative controls ----------------------------------------------------------------------------------------

def test_negative_control_without_gru_gate_reorder(monkeypatch):
    t, k = pair("gru", 1, True, True)
    randomize_torch(t)
    monkeypatch.setattr(registry.get("gru"), "torch_gate_order", (0, 1, 2))
    wp.port(t, k)
    assert_forward_differs(t, k, inputs())


class _KeepFirstBias(T.SumSplit):
    """What a converter that ignores bias_hh does."""

    def inverse(self, arrays):
        return (arrays[0],)


@pytest.mark.parametrize("kind", ["lstm", "simple_rnn"])
def test_negative_control_without_bias_sum(kind, monkeypatch):
    t, k = pair(kind, 1, False, True)
    randomize_torch(t)
    monkeypatch.setattr(registry.get(kind), "bias_transform", lambda: _KeepFirstBias(2))
    wp.port(t, k)
    assert_forward_differs(t, k, inputs())


@pytest.mark.parametrize("kind", list(TORCH))
def test_negative_control_without_transforms(kind, monkeypatch):
    t, k = pair(kind, 1, False, True)
    randomize_torch(t)
    skip_transforms(monkeypatch, kind)
    wp.port(t, k)
    assert_forward_differs(t, k, inputs())


# -- configuration the weights cannot carry -----------------------------------------------------------------

def _unchanged(model, before):
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind, keras_kw, key", [
    ("lstm", {"activation": "relu"}, "activation"),
    ("gru", {"recurrent_activation": "hard_sigmoid"}, "recurrent_activation"),
    ("simple_rnn", {"activation": "relu"}, "activation"),
])
def test_activation_mismatch_is_refused(kind, keras_kw, key):
    t, k = pair(kind, **keras_kw)
    before = k.get_weights()
    with pytest.raises(wp.ConfigMismatchError, match=f"{key}: source has 'tanh'|{key}: source has 'sigmoid'"):
        wp.port(t, k)
    _unchanged(k, before)
    with pytest.raises(wp.ConfigMismatchError, match=key):
        wp.port(k, t)


def test_bidirectional_directions_must_agree():
    t = torch_model("lstm", 1, True)
    fwd = keras.layers.LSTM(UNITS, return_sequences=True)
    bwd = keras.layers.LSTM(UNITS, return_sequences=True, activation="relu", go_backwards=True)
    k = keras.Sequential([keras.Input((SEQ, IN)), keras.layers.Bidirectional(fwd, backward_layer=bwd)])
    with pytest.raises(wp.ConfigMismatchError, match="activation"):
        wp.port(t, k)


@pytest.mark.parametrize("torch_kw, keras_kw", [({"bias": False}, {}), ({}, {"use_bias": False})])
def test_use_bias_mismatch_is_refused(torch_kw, keras_kw):
    t = torch_model("lstm", **torch_kw)
    k = keras_model("lstm", **keras_kw)
    with pytest.raises(wp.WeightportError, match="lstm"):
        wp.port(t, k)


def test_no_bias_ports():
    t = torch_model("gru", 1, True, bias=False)
    k = keras_model("gru", 1, True, use_bias=False)
    randomize_torch(t)
    wp.port(t, k)
    assert_forward_equal(t, k, inputs())


def test_direction_mismatch_is_refused():
    t = torch_model("gru", 1, bidirectional=True)
    k = keras_model("gru", 1, bidirectional=False)
    with pytest.raises(wp.WeightportError, match="gru"):
        wp.port(t, k)


def test_merge_mode_other_than_concat_warns():
    t = torch_model("lstm", 1, True)
    k = keras.Sequential([keras.Input((SEQ, IN)),
                          keras.layers.Bidirectional(keras.layers.LSTM(UNITS, return_sequences=True),
                                                     merge_mode="sum")])
    randomize_torch(t)
    with pytest.warns(wp.WeightportWarning, match="merge_mode"):
        report = wp.port(t, k)
    assert any("merge_mode" in w for w in report.warnings)


@pytest.mark.parametrize("direction", ["torch_to_keras", "keras_to_torch"])
def test_gru_reset_after_false_is_refused(direction):
    t = torch_model("gru")
    k = keras.Sequential([keras.Input((SEQ, IN)),
                          keras.layers.GRU(UNITS, return_sequences=True, reset_after=False, name="old_gru")])
    before, torch_before = k.get_weights(), {n: v.clone() for n, v in t.state_dict().items()}
    src, tgt = (t, k) if direction == "torch_to_keras" else (k, t)
    with pytest.raises(wp.ConfigMismatchError, match=r"'old_gru'.*reset_after=False.*reset_after=True"):
        wp.port(src, tgt)
    _unchanged(k, before)
    for name, value in t.state_dict().items():
        assert torch.equal(value, torch_before[name])


def test_lstm_projection_is_refused():
    t = torch_model("lstm", proj_size=5)
    k = keras_model("lstm")
    with pytest.raises(wp.UnsupportedLayerError, match="proj_size=5"):
        wp.port(t, k)


# -- bare checkpoint groups -------------------------------------------------------------------------------------

RULES = list(TORCH)


@pytest.mark.parametrize("kind", RULES)
def test_infer_torch_group_and_translate(kind):
    t, k = pair(kind, 2, True, True)
    randomize_torch(t)
    wp.port(t, k)
    state = {n: v.detach().numpy() for n, v in t.rnn.state_dict().items()}
    shapes = {n: tuple(v.shape) for n, v in state.items()}
    claims = {name: registry.get(name).infer("torch", shapes) for name in RULES + ["dense"]}
    assert [name for name, hp in claims.items() if hp] == [kind]
    rule, hp = registry.get(kind), claims[kind]
    assert (hp["units"], hp["num_layers"], hp["bidirectional"], hp["use_bias"]) == (UNITS, 2, True, True)
    got = [w for part in rule.expand("torch", hp) for w in rule.to_canonical("torch", part, state)]
    for a, b in zip(got, k.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", RULES)
def test_infer_torch_rejects_groups_that_do_not_fit(kind):
    shapes = {n: tuple(v.shape) for n, v in torch_model(kind, 2).rnn.state_dict().items()}
    rule = registry.get(kind)
    assert rule.infer("torch", shapes) is not None
    assert rule.infer("torch", {**shapes, "weight": (3, 4)}) is None
    assert rule.infer("torch", {n: s for n, s in shapes.items() if n != "bias_hh_l1"}) is None
    assert rule.infer("torch", {n: s for n, s in shapes.items() if not n.endswith("_l0")}) is None


@pytest.mark.parametrize("kind, kw, extra", [
    ("simple_rnn", {}, {}), ("lstm", {}, {}), ("gru", {}, {"reset_after": True}),
    ("gru", {"reset_after": False}, {"reset_after": False}), ("lstm", {"use_bias": False}, {"use_bias": False}),
])
def test_infer_keras_group(kind, kw, extra):
    k = keras_model(kind, **kw)
    shapes = {v.path.rsplit("/", 1)[-1]: tuple(v.shape) for v in k.layers[0].weights}
    claims = {name: registry.get(name).infer("keras", shapes) for name in RULES + ["dense"]}
    assert [name for name, hp in claims.items() if hp] == [kind]
    assert claims[kind]["units"] == UNITS
    assert extra.items() <= claims[kind].items()
    assert registry.get(kind).infer("keras", {**shapes, "gamma": (UNITS,)}) is None


def test_generic_keras_rnn_wrapping_a_cell():
    t = torch_model("lstm")
    k = keras.Sequential([keras.Input((SEQ, IN)),
                          keras.layers.RNN(keras.layers.LSTMCell(UNITS), return_sequences=True)])
    randomize_torch(t)
    assert [s.rule for s in wp.port(t, k).steps] == ["lstm"]
    assert_forward_equal(t, k, inputs())


def test_get_and_set_weights_on_a_model_holding_a_stacked_rnn():
    model = torch.nn.Sequential(torch.nn.LSTM(IN, UNITS, num_layers=2, batch_first=True))
    weights = wp.get_weights(model)
    assert [w.shape for w in weights] == [(IN, 4 * UNITS), (UNITS, 4 * UNITS), (4 * UNITS,),
                                         (UNITS, 4 * UNITS), (UNITS, 4 * UNITS), (4 * UNITS,)]
    shifted = [w + 1 for w in weights]
    wp.set_weights(model, shifted)
    for got, want in zip(wp.get_weights(model), shifted):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    before = [w.copy() for w in wp.get_weights(model)]
    with pytest.raises(wp.ShapeMismatchError, match="6 weights"):
        wp.set_weights(model, shifted[:5])
    with pytest.raises(wp.ShapeMismatchError, match="nothing was assigned"):
        wp.set_weights(model, shifted[:5] + [np.zeros(3, "float32")])
    for got, want in zip(wp.get_weights(model), before):
        np.testing.assert_array_equal(got, want)
