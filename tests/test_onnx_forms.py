"""ONNX forms exporters do not write, built with onnx.helper: Gemm alpha/beta, LSTM direction=reverse, GRU
linear_before_reset=0, the ``layout`` attribute, an initializer two nodes share. onnxruntime is the reference."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
keras = pytest.importorskip("keras")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import weightport as wp  # noqa: E402
from util import close, ort_run, run_keras  # noqa: E402
from weightport.errors import (ConfigMismatchError, ShapeMismatchError, UnsupportedLayerError,  # noqa: E402
                               WeightportError)

RNG = np.random.default_rng(17)
L = keras.layers
T, N, IN, U = 6, 2, 7, 5  # time, batch, features, units


def save(path, nodes, inits, x_shape, opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for n, a in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return str(path)


def normal(*shape):
    return RNG.normal(size=shape).astype("float32") * 0.5


# -- Gemm alpha / beta -------------------------------------------------------------------------------------


def gemm_graph(path, alpha, beta, trans_b):
    w1 = normal(5, 7) if trans_b else normal(7, 5)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=trans_b, alpha=alpha, beta=beta),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], alpha=beta, beta=alpha)]
    return save(path, nodes, {"w1": w1, "b1": normal(5), "w2": normal(5, 3), "b2": normal(3)}, (N, 7))


@pytest.mark.parametrize("alpha, beta, trans_b", [(0.3, 2.0, 0), (0.5, 1.5, 1)])
def test_gemm_alpha_beta_are_folded(tmp_path, alpha, beta, trans_b):
    path = gemm_graph(tmp_path / "g.onnx", alpha, beta, trans_b)
    x = normal(N, 7)
    expected = ort_run(path, x)
    model = keras.Sequential([keras.Input((7,)), L.Dense(5, activation="relu"), L.Dense(3)])
    wp.port(path, model, quiet=True)
    assert close(run_keras(model, x), expected)
    linear = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    wp.port(path, linear, quiet=True)
    with torch.no_grad():
        assert close(linear(torch.from_numpy(x)).numpy(), expected)
    model.layers[1].set_weights([w * 1.5 for w in model.layers[1].get_weights()])
    wp.convert(model, tmp_path / "tuned.onnx", like=path, quiet=True)
    assert close(ort_run(tmp_path / "tuned.onnx", x), run_keras(model, x))
    # negative control: the initializers as they are, without the factors folded in, compute something else
    ckpt = wp.load(path)
    raw = keras.Sequential([keras.Input((7,)), L.Dense(5, activation="relu"), L.Dense(3)])
    w1 = ckpt["w1"].T if trans_b else ckpt["w1"]
    raw.set_weights([w1, ckpt["b1"], ckpt["w2"], ckpt["b2"]])
    assert not close(run_keras(raw, x), expected)


def test_gemm_zero_factor_is_refused(tmp_path):
    path = gemm_graph(tmp_path / "g.onnx", 0.0, 1.0, 0)
    model = keras.Sequential([keras.Input((7,)), L.Dense(5), L.Dense(3)])
    with pytest.raises(UnsupportedLayerError, match="alpha=0"):
        wp.port(path, model, quiet=True)


# -- recurrent nodes ------------------------------------------------------------------------------------------


def recurrent_graph(path, op, gates, layout=0, **attrs):
    """One ``op`` node reading x (time, batch, features), its Y reshaped to (batch, time, units) by Transposes."""
    inits = {"W": normal(1, gates * U, IN), "R": normal(1, gates * U, U), "B": normal(1, 2 * gates * U)}
    x_shape = (T, N, IN) if layout == 0 else (N, T, IN)
    nodes = [helper.make_node(op, ["x", "W", "R", "B"], ["y4"], f"{op.lower()}_node", hidden_size=U, layout=layout,
                              **attrs),
             helper.make_node("Squeeze", ["y4", "axis"], ["y3"]),
             helper.make_node("Transpose", ["y3"], ["y"], perm=[1, 0, 2])]
    inits["axis"] = np.array([1], "int64")
    return save(path, nodes, inits, x_shape, opset=14)


def test_lstm_reverse_is_keras_go_backwards(tmp_path):
    path = recurrent_graph(tmp_path / "lstm.onnx", "LSTM", 4, direction="reverse")
    x = normal(T, N, IN)
    expected = ort_run(path, x)  # (batch, time, units), each step where the input step was
    model = keras.Sequential([keras.Input((T, IN)), L.LSTM(U, return_sequences=True, go_backwards=True)])
    wp.port(path, model, quiet=True)
    batch_first = x.transpose(1, 0, 2)
    assert close(run_keras(model, batch_first)[:, ::-1], expected)  # Keras returns the steps reversed
    model.layers[0].set_weights([w * 0.75 for w in model.layers[0].get_weights()])
    wp.convert(model, tmp_path / "tuned.onnx", like=path, quiet=True)
    assert close(ort_run(tmp_path / "tuned.onnx", x), run_keras(model, batch_first)[:, ::-1])
    forward = keras.Sequential([keras.Input((T, IN)), L.LSTM(U, return_sequences=True)])
    with pytest.raises(ConfigMismatchError, match="go_backwards"):
        wp.port(path, forward, quiet=True)
    with pytest.raises(ConfigMismatchError, match="go_backwards"):  # torch has no reverse-only LSTM
        wp.port(path, torch.nn.LSTM(IN, U), quiet=True)


def test_gru_linear_before_reset_0(tmp_path):
    """Keras' GRU(reset_after=False) computes it; torch's GRU cannot, so a port into one is refused."""
    path = recurrent_graph(tmp_path / "gru.onnx", "GRU", 3, linear_before_reset=0)
    x = normal(T, N, IN)
    model = keras.Sequential([keras.Input((T, IN)), L.GRU(U, return_sequences=True, reset_after=False)])
    wp.port(path, model, quiet=True)
    assert close(run_keras(model, x.transpose(1, 0, 2)), ort_run(path, x))
    module = torch.nn.GRU(IN, U)
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(ConfigMismatchError, match="'gru_node'.*linear_before_reset=0"):
        wp.port(path, module, quiet=True)
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))
    with pytest.raises(ConfigMismatchError, match="linear_before_reset=0"):
        wp.port(path, keras.Sequential([keras.Input((T, IN)), L.GRU(U, return_sequences=True)]), quiet=True)


def test_layout_attribute_moves_no_weight(tmp_path):
    """layout=1 (batch-first data; onnxruntime cannot run it) reads the same weights as layout=0."""
    state = RNG.bit_generator.state
    first = recurrent_graph(tmp_path / "a.onnx", "RNN", 1)
    RNG.bit_generator.state = state
    second = recurrent_graph(tmp_path / "b.onnx", "RNN", 1, layout=1)
    got = []
    for path in (first, second):
        model = keras.Sequential([keras.Input((T, IN)), L.SimpleRNN(U, return_sequences=True)])
        wp.port(path, model, quiet=True)
        got.append(model.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*got))


def test_forms_no_layer_computes_are_refused(tmp_path):
    path = recurrent_graph(tmp_path / "clip.onnx", "LSTM", 4, clip=3.0)
    with pytest.raises(UnsupportedLayerError, match="clip"):
        wp.port(path, keras.Sequential([keras.Input((T, IN)), L.LSTM(U)]), quiet=True)


# -- an initializer two nodes read ------------------------------------------------------------------------


def test_shared_initializer_is_written_once(tmp_path):
    nodes = [helper.make_node("Gemm", ["x", "w1", "b"], ["h1"], transB=1), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "w2", "c"], ["h2"], transB=1), helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("Gemm", ["r2", "w3", "b"], ["y"], transB=1)]
    path = save(tmp_path / "g.onnx", nodes, {"w1": normal(5, 7), "b": normal(5), "w2": normal(3, 5), "c": normal(3),
                                             "w3": normal(5, 3)}, (N, 7))
    model = keras.Sequential([keras.Input((7,)), L.Dense(5, activation="relu"), L.Dense(3, activation="relu"),
                              L.Dense(5)])
    wp.port(path, model, quiet=True)
    x = normal(N, 7)
    assert close(run_keras(model, x), ort_run(path, x))
    for layer in model.layers:  # kernels tuned, the shared bias kept equal in both layers
        layer.set_weights([layer.get_weights()[0] * 1.5, layer.get_weights()[1]])
    wp.convert(model, tmp_path / "tuned.onnx", like=path, quiet=True)
    assert close(ort_run(tmp_path / "tuned.onnx", x), run_keras(model, x))
    kernel, bias = model.layers[2].get_weights()
    model.layers[2].set_weights([kernel, bias + 0.25])  # now the two layers' biases differ: one slot cannot hold both
    with pytest.raises(ShapeMismatchError, match="'b'.*differ"):
        wp.convert(model, tmp_path / "differs.onnx", like=path, quiet=True)
    assert not (tmp_path / "differs.onnx").exists()


# -- plans ----------------------------------------------------------------------------------------------------


def test_plan_replay_reads_through_the_graph(tmp_path):
    """A plan made from a graph runs again on it with no model at hand, giving what the direct conversion gives."""
    path = gemm_graph(tmp_path / "g.onnx", 0.5, 1.5, 1)
    wp.convert(path, tmp_path / "direct.safetensors", to="keras", quiet=True)
    report = wp.convert(path, tmp_path / "planned.safetensors", to="keras", dry_run=True, quiet=True)
    (tmp_path / "plan.json").write_text(report.to_json())
    wp.convert(path, tmp_path / "planned.safetensors", plan=tmp_path / "plan.json", quiet=True)
    direct, planned = wp.load(tmp_path / "direct.safetensors"), wp.load(tmp_path / "planned.safetensors")
    assert list(direct) == list(planned) and len(direct) == 4
    assert all(np.array_equal(direct[n], planned[n]) for n in direct)
    model = onnx.load(path)  # another graph: its layer reads an initializer of another name
    for t in model.graph.initializer:
        t.name = t.name.replace("w1", "w9")
    model.graph.node[0].input[1] = "w9"
    onnx.save(model, str(tmp_path / "other.onnx"))
    with pytest.raises(ShapeMismatchError, match="w1"):
        wp.convert(tmp_path / "other.onnx", tmp_path / "never.safetensors", plan=tmp_path / "plan.json", quiet=True)
    assert not (tmp_path / "never.safetensors").exists()


# -- the GroupNormalization op --------------------------------------------------------------------------------


def group_norm_graph(path, scale_size, opset):
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], "gn_node", num_groups=3, epsilon=1e-5)
    return save(path, [node], {"s": normal(scale_size), "b": normal(scale_size)}, (N, 6, 5, 3), opset=opset)


def test_group_normalization_op(tmp_path):
    """Opset 21: per-channel scale and bias, ported into torch and Keras; opset 18's per-group ones refused."""
    path = group_norm_graph(tmp_path / "gn.onnx", 6, 21)
    x = normal(N, 6, 5, 3)
    expected = ort_run(path, x)
    module = torch.nn.GroupNorm(3, 6)
    wp.port(path, module, quiet=True)
    with torch.no_grad():
        assert close(module(torch.from_numpy(x)).numpy(), expected)
    model = keras.Sequential([keras.Input((5, 3, 6)), L.GroupNormalization(3, epsilon=1e-5)])
    wp.port(path, model, quiet=True)
    assert close(run_keras(model, x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2), expected)
    with pytest.raises(UnsupportedLayerError, match="gn_node.*per group"):
        wp.port(group_norm_graph(tmp_path / "gn18.onnx", 3, 18), torch.nn.GroupNorm(3, 6), quiet=True)


def test_grouped_conv_transpose_into_torch_not_keras(tmp_path):
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], "up_node", group=2, strides=[2, 1],
                            pads=[1, 0, 1, 0], output_padding=[1, 0])
    path = save(tmp_path / "ct.onnx", [node], {"w": normal(4, 3, 3, 2), "b": normal(6)}, (N, 4, 5, 3))
    x = normal(N, 4, 5, 3)
    module = torch.nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), output_padding=(1, 0), groups=2)
    wp.port(path, module, quiet=True)
    with torch.no_grad():
        assert close(module(torch.from_numpy(x)).numpy(), ort_run(path, x))
    model = keras.Sequential([keras.Input((5, 3, 4)), L.Conv2DTranspose(6, (3, 2), strides=(2, 1))])
    with pytest.raises(WeightportError, match="up_node.*groups: source has 2, target has 1"):
        wp.port(path, model, quiet=True)


class Stacked(torch.nn.Module):
    """A two-layer LSTM (two ONNX nodes for one torch module) and an RNN with relu."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(IN, U, num_layers=2, batch_first=True)
        self.rnn = torch.nn.RNN(U, 3, batch_first=True, nonlinearity="relu")

    def forward(self, x):
        return self.rnn(self.lstm(x)[0])[0]


def test_stacked_lstm_and_relu_rnn(tmp_path):
    import contextlib
    import io
    import warnings

    x = normal(N, T, IN)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(Stacked().eval(), (torch.from_numpy(x),), str(tmp_path / "s.onnx"), dynamo=False,
                          input_names=["x"])
    path = str(tmp_path / "s.onnx")
    module = Stacked().eval()
    wp.port(path, module, quiet=True)
    with torch.no_grad():
        assert close(module(torch.from_numpy(x)).numpy(), ort_run(path, x))

    def keras_model(activation):
        return keras.Sequential([keras.Input((T, IN)), L.LSTM(U, return_sequences=True),
                                 L.LSTM(U, return_sequences=True),
                                 L.SimpleRNN(3, activation=activation, return_sequences=True)])
    model = keras_model("relu")
    wp.port(path, model, quiet=True)
    assert close(run_keras(model, x), ort_run(path, x))
    with pytest.raises(ConfigMismatchError, match="activation"):
        wp.port(path, keras_model("tanh"), quiet=True)
