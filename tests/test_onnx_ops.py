"""ONNX ConvTranspose, GroupNorm (as exporters write it), PRelu, LSTM, GRU and RNN, from both torch exporters.

onnxruntime's output of each graph must equal the ported torch and Keras models'; after Keras weights are
written back into a copy of the graph, onnxruntime's output of the copy must equal Keras'. Each graph is
exported once per module. Negative controls: the ported weights moved as a converter that skipped the rule's
transform would move them compute something else.
"""
import contextlib
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
keras = pytest.importorskip("keras")

import weightport as wp  # noqa: E402
from util import close, ort_run, run_keras  # noqa: E402
from weightport.errors import ConfigMismatchError, WeightportError  # noqa: E402

RNG = np.random.default_rng(11)
L = keras.layers


class Image(torch.nn.Module):
    """ConvTranspose2d (strided), Conv2d, GroupNorm, PReLU per channel and shared: distinct, non-square sizes."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.ConvTranspose2d(4, 3, (3, 2), stride=(2, 1))
        self.conv = torch.nn.Conv2d(3, 6, 1)
        self.gn = torch.nn.GroupNorm(3, 6)
        self.act = torch.nn.PReLU(6)
        self.shared = torch.nn.PReLU()

    def forward(self, x):
        return self.shared(self.act(self.gn(self.conv(self.up(x)))))


class Recurrent(torch.nn.Module):
    """LSTM, GRU and a bidirectional LSTM, batch first."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(7, 5, batch_first=True)
        self.gru = torch.nn.GRU(5, 3, batch_first=True)
        self.bi = torch.nn.LSTM(3, 2, batch_first=True, bidirectional=True)

    def forward(self, x):
        return self.bi(self.gru(self.lstm(x)[0])[0])[0]


class Simple(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.RNN(7, 4, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0]


def keras_image():
    return keras.Sequential([keras.Input((5, 3, 4)), L.Conv2DTranspose(3, (3, 2), strides=(2, 1)), L.Conv2D(6, 1),
                             L.GroupNormalization(3, epsilon=1e-5), L.PReLU(shared_axes=[1, 2]),
                             L.PReLU(shared_axes=[1, 2, 3])])


def keras_recurrent():
    return keras.Sequential([keras.Input((6, 7)), L.LSTM(5, return_sequences=True), L.GRU(3, return_sequences=True),
                             L.Bidirectional(L.LSTM(2, return_sequences=True))])


def keras_simple():
    return keras.Sequential([keras.Input((6, 7)), L.SimpleRNN(4, return_sequences=True)])


IMAGE_X = RNG.normal(size=(2, 4, 5, 3)).astype("float32")
SEQ_X = RNG.normal(size=(2, 6, 7)).astype("float32")
KINDS = {  # torch model, Keras model, input, input for Keras, Keras output as torch's
    "image": (Image, keras_image, IMAGE_X, lambda a: a.transpose(0, 2, 3, 1), lambda a: a.transpose(0, 3, 1, 2)),
    "recurrent": (Recurrent, keras_recurrent, SEQ_X, lambda a: a, lambda a: a),
    "simple": (Simple, keras_simple, SEQ_X, lambda a: a, lambda a: a),
}


def randomized(module):
    torch.manual_seed(5)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return module.eval()


def export(module, x, path, dynamo):
    quiet = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
    with warnings.catch_warnings(), quiet[0], quiet[1]:
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(x),), str(path), dynamo=dynamo, input_names=["x"])
    return str(path)


@pytest.fixture(scope="module", params=[False, True], ids=["torchscript", "dynamo"])
def graphs(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_ops")
    return {kind: export(randomized(make()), x, folder / f"{kind}_{request.param}.onnx", request.param)
            for kind, (make, _, x, _, _) in KINDS.items()}, request.param


def ported_keras(path, kind):
    _, make, x, to_keras, back = KINDS[kind]
    model = make()
    wp.port(path, model, quiet=True)
    return model, to_keras(x), back


def test_graph_into_torch(graphs):
    paths, dynamo = graphs
    for kind, (make, _, x, _, _) in KINDS.items():
        module = make().eval()
        if dynamo and kind == "simple":  # the dynamo exporter unrolls nn.RNN into per-step MatMul/Add nodes
            before = [p.detach().clone() for p in module.parameters()]
            with pytest.raises(WeightportError, match="no rule"):
                wp.port(paths[kind], module, quiet=True)
            assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))
            continue
        wp.port(paths[kind], module, quiet=True)
        with torch.no_grad():
            assert close(module(torch.from_numpy(x)).numpy(), ort_run(paths[kind], x)), kind


def test_graph_into_keras_and_back(graphs, tmp_path):
    paths, dynamo = graphs
    for kind in KINDS:
        if dynamo and kind == "simple":
            continue
        model, x, back = ported_keras(paths[kind], kind)
        expected = ort_run(paths[kind], KINDS[kind][2])
        assert close(back(run_keras(model, x)), expected), kind
        for layer in model.layers:  # fine-tuned: new values, written back into the same graph
            layer.set_weights([w * 1.25 + 0.01 for w in layer.get_weights()])
        out = tmp_path / f"{kind}_tuned.onnx"
        wp.convert(model, out, like=paths[kind], quiet=True)
        tuned = ort_run(out, KINDS[kind][2])
        assert close(tuned, back(run_keras(model, x))), kind
        assert not close(tuned, expected), kind
        before, after = onnx.load(paths[kind]).graph, onnx.load(str(out)).graph
        assert [n.op_type for n in before.node] == [n.op_type for n in after.node]


def _differs(model, x, good, layer, weights):
    """Whether ``layer`` given ``weights`` changes the model's output (its own weights are put back)."""
    kept = layer.get_weights()
    layer.set_weights(weights)
    out = run_keras(model, x)
    layer.set_weights(kept)
    return not close(out, good)


def test_negative_controls(graphs):
    """Each rule's transform matters: the weights as a converter that skipped it would leave them differ (the
    rules are the exporters' same: checked on one exporter's graphs)."""
    paths, dynamo = graphs
    if dynamo:
        pytest.skip("the transforms are checked on the TorchScript exporter's graphs")
    model, x, _ = ported_keras(paths["image"], "image")
    good = run_keras(model, x)
    up, _, norm, act, shared = model.layers
    kernel, bias = up.get_weights()  # (kh, kw, out, in); ONNX's W is (in, out, kh, kw), merely reshaped
    assert _differs(model, x, good, up, [kernel.transpose(3, 2, 0, 1).reshape(kernel.shape), bias])
    gamma, beta = norm.get_weights()
    assert _differs(model, x, good, norm, [gamma[::-1].copy(), beta])  # channels out of order
    assert _differs(model, x, good, act, [np.zeros_like(act.get_weights()[0])])  # the slopes are used
    assert close(run_keras(model, x), good)

    model, x, _ = ported_keras(paths["recurrent"], "recurrent")
    good = run_keras(model, x)
    lstm, gru, bi = model.layers
    k, rk, b = lstm.get_weights()
    onnx_order = [np.concatenate([np.split(w, 4, axis=-1)[j] for j in (0, 3, 1, 2)], axis=-1) for w in (k, rk, b)]
    assert _differs(model, x, good, lstm, onnx_order)  # ONNX gates i, o, f, c left as they are
    k, rk, b = gru.get_weights()
    assert _differs(model, x, good, gru, [k, rk, b[::-1].copy()])  # input and recurrent biases swapped
    w = bi.get_weights()
    assert _differs(model, x, good, bi, w[3:] + w[:3])  # directions swapped
    assert close(run_keras(model, x), good)


def test_group_count_that_differs_is_refused(graphs):
    paths, dynamo = graphs
    model = keras.Sequential([keras.Input((5, 3, 4)), L.Conv2DTranspose(3, (3, 2), strides=(2, 1)), L.Conv2D(6, 1),
                              L.GroupNormalization(2, epsilon=1e-5), L.PReLU(shared_axes=[1, 2]),
                              L.PReLU(shared_axes=[1, 2, 3])])
    with pytest.raises(ConfigMismatchError, match="groups"):
        wp.port(paths["image"], model, quiet=True)


def test_locate_names_the_layer_that_diverges_inside_the_graph(graphs):
    paths, dynamo = graphs
    if not dynamo:
        pytest.skip("checked on the dynamo exporter's graph (node names there are not the module's)")
    model, x, _ = ported_keras(paths["image"], "image")
    norm = model.layers[2]
    assert wp.verify(paths["image"], model, (IMAGE_X, x)).ok
    gamma, beta = norm.get_weights()
    norm.set_weights([gamma, beta + 0.5])  # damaged after the port
    result = wp.verify(paths["image"], model, (IMAGE_X, x), locate=True)
    assert not result.ok and result.diverging is not None
    assert result.diverging.target == norm.name and result.diverging.rule == "group_normalization"
