"""ONNX graphs as models: exported by both torch exporters, ported into torch and Keras, written back.

onnxruntime's output of the original graph must equal the ported models'; after Keras weights are written
back into a copy of the graph, onnxruntime's output of that copy must equal Keras'. Each graph is exported
once per module (export is the slow part).
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
from weightport.errors import UnsupportedLayerError  # noqa: E402

RNG = np.random.default_rng(7)


class Image(torch.nn.Module):
    """Conv2d, grouped Conv2d, Flatten -> Linear, BatchNorm1d, LayerNorm, Linear: distinct, non-square sizes."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, (3, 2))
        self.grouped = torch.nn.Conv2d(4, 6, (2, 1), groups=2, padding=(1, 0))
        self.fc = torch.nn.Linear(6 * 6 * 4, 7)
        self.bn = torch.nn.BatchNorm1d(7)
        self.ln = torch.nn.LayerNorm(7)
        self.head = torch.nn.Linear(7, 5)

    def forward(self, x):
        x = torch.relu(self.grouped(torch.relu(self.conv(x)))).flatten(1)
        return self.head(self.ln(self.bn(torch.relu(self.fc(x)))))


class Tokens(torch.nn.Module):
    """Embedding, Linear on a sequence (MatMul + Add), Conv1d."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(11, 6)
        self.fc = torch.nn.Linear(6, 7)
        self.conv = torch.nn.Conv1d(7, 5, 3, padding=1)

    def forward(self, t):
        return self.conv(self.fc(self.emb(t)).transpose(1, 2))


def randomized(module):
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
    return module.eval()


def export(module, x, path, dynamo):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(x),), str(path), dynamo=dynamo, input_names=["x"])
    return str(path)


def ort_run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


IMAGE_X = RNG.normal(size=(2, 3, 7, 5)).astype("float32")
TOKENS_X = (np.arange(16) * 5 % 11).reshape(2, 8).astype("int64")


@pytest.fixture(scope="module", params=[False, True], ids=["torchscript", "dynamo"])
def graphs(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    dyn = request.param
    return {"image": export(randomized(Image()), IMAGE_X, folder / f"image_{dyn}.onnx", dyn),
            "tokens": export(randomized(Tokens()), TOKENS_X, folder / f"tokens_{dyn}.onnx", dyn)}


def keras_image():
    L = keras.layers
    return keras.Sequential([keras.Input((7, 5, 3)), L.Conv2D(4, (3, 2), activation="relu"),
                             L.ZeroPadding2D(((1, 1), (0, 0))), L.Conv2D(6, (2, 1), groups=2, activation="relu"),
                             L.Flatten(), L.Dense(7, activation="relu"), L.BatchNormalization(epsilon=1e-5),
                             L.LayerNormalization(epsilon=1e-5), L.Dense(5)])


def keras_tokens():
    L = keras.layers
    return keras.Sequential([keras.Input((8,), dtype="int64"), L.Embedding(11, 6), L.Dense(7),
                             L.Conv1D(5, 3, padding="same")])


def run_keras(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def close(a, b):
    return np.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_graph_into_torch(graphs):
    for kind, module, x in (("image", Image(), IMAGE_X), ("tokens", Tokens(), TOKENS_X)):
        module.eval()
        wp.port(graphs[kind], module, quiet=True)
        with torch.no_grad():
            assert close(module(torch.from_numpy(x)).numpy(), ort_run(graphs[kind], x)), kind


def test_graph_into_keras_and_back(graphs, tmp_path):
    for kind, model, x, to_keras in (("image", keras_image(), IMAGE_X, lambda a: a.transpose(0, 2, 3, 1)),
                                     ("tokens", keras_tokens(), TOKENS_X, lambda a: a)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # momentum differs (Keras 0.99, torch 0.9): training only
            wp.port(graphs[kind], model, quiet=True)
        expected = ort_run(graphs[kind], x)
        got = run_keras(model, to_keras(x))
        got = got.transpose(0, 2, 1) if kind == "tokens" else got
        assert close(got, expected), kind
        for layer in model.layers:  # fine-tuned: new values, written back into the same graph
            layer.set_weights([w * 1.25 + 0.01 for w in layer.get_weights()])
        out = tmp_path / f"{kind}_tuned.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wp.convert(model, out, like=graphs[kind], quiet=True)
        tuned = run_keras(model, to_keras(x))
        tuned = tuned.transpose(0, 2, 1) if kind == "tokens" else tuned
        assert close(ort_run(out, x), tuned), kind
        assert not close(ort_run(out, x), expected)
        before, after = onnx.load(graphs[kind]).graph, onnx.load(str(out)).graph
        assert [n.op_type for n in before.node] == [n.op_type for n in after.node]
        assert [(t.name, t.data_type, tuple(t.dims)) for t in before.initializer] == \
               [(t.name, t.data_type, tuple(t.dims)) for t in after.initializer]


def ported_image_model(graphs):
    """The Keras image model ported from its graph, its channels-last input, and what it computes."""
    model = keras_image()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wp.port(graphs["image"], model, quiet=True)
    x = IMAGE_X.transpose(0, 2, 3, 1)
    return model, x, run_keras(model, x)


def test_negative_controls(graphs):
    """Weights copied without the rule's transform (reshaped to fit) compute something else."""
    model, x, good = ported_image_model(graphs)
    for index in (0, 4, 7):  # conv kernel, dense after the flatten, head
        layer = model.layers[index]
        weights = layer.get_weights()
        kernel = weights[0]
        onnx_order = kernel.T if kernel.ndim == 2 else kernel.transpose(3, 2, 0, 1)
        layer.set_weights([onnx_order.reshape(kernel.shape)] + weights[1:])
        assert not close(run_keras(model, x), good), layer.name
        layer.set_weights(weights)
    assert close(run_keras(model, x), good)


def test_verify_runs_a_graph(graphs):
    module = Image().eval()
    wp.port(graphs["image"], module, quiet=True)
    assert wp.verify(graphs["image"], module, IMAGE_X).ok


def test_convert_to_keras_file(graphs, tmp_path):
    out = tmp_path / "image.safetensors"
    wp.convert(graphs["image"], out, to="torch", quiet=True)
    module = Image().eval()
    wp.port(str(out), module, quiet=True)
    with torch.no_grad():
        assert close(module(torch.from_numpy(IMAGE_X)).numpy(), ort_run(graphs["image"], IMAGE_X))


# -- graphs built by hand: forms exporters do not write -----------------------------------------------------


def gemm_matmul_graph(path, trans_a=0, alpha=1.0):
    from onnx import TensorProto, helper, numpy_helper

    w1 = RNG.normal(size=(7, 5)).astype("float32")  # (in, out): transB=0
    b1 = RNG.normal(size=(5,)).astype("float32")
    w2 = RNG.normal(size=(5, 3)).astype("float32")
    b2 = RNG.normal(size=(3,)).astype("float32")
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=0, transA=trans_a, alpha=alpha),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["m"]),
             helper.make_node("Add", ["b2", "m"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("b1", b1), ("w2", w2),
                                                                         ("b2", b2))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def test_gemm_trans_b0_and_matmul_add(tmp_path):
    path = gemm_matmul_graph(tmp_path / "g.onnx")
    L = keras.layers
    model = keras.Sequential([keras.Input((7,)), L.Dense(5, activation="relu"), L.Dense(3)])
    wp.port(path, model, quiet=True)
    x = RNG.normal(size=(2, 7)).astype("float32")
    assert close(run_keras(model, x), ort_run(path, x))
    linear = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    wp.port(path, linear, quiet=True)
    with torch.no_grad():
        assert close(linear(torch.from_numpy(x)).numpy(), ort_run(path, x))


def test_gemm_trans_a_is_refused(tmp_path):
    """transA=1 multiplies the transposed input, which no Dense computes (alpha/beta: tests/test_onnx_forms.py)."""
    path = gemm_matmul_graph(tmp_path / "g.onnx", trans_a=1)
    model = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5), keras.layers.Dense(3)])
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(UnsupportedLayerError, match="Gemm"):
        wp.port(path, model, quiet=True)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_flatten_rows_are_permuted(graphs):
    """The Dense after the Flatten, given the graph's weight merely transposed (no row permutation), differs."""
    model, x, good = ported_image_model(graphs)
    dense = model.layers[4]
    kernel, bias = dense.get_weights()
    ckpt = wp.load(graphs["image"])
    weight = next(ckpt[n] for n in ckpt if ckpt.shape(n) == (7, 144))
    assert not np.allclose(weight.T, kernel)
    dense.set_weights([weight.T, bias])
    assert not close(run_keras(model, x), good)
