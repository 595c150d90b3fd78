"""ONNX files: lazy reading with external data, inspect, and damaged or hostile files refused by name."""
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

import weightport as wp  # noqa: E402
from weightport.errors import FormatError, WeightportError  # noqa: E402

pytestmark = pytest.mark.keras_free  # never imports Keras: runs under one backend (conftest.py)

W = np.arange(35, dtype="float32").reshape(5, 7) / 10  # Gemm transB=1: (out, in)
B = np.arange(5, dtype="float32")


def save_graph(path, external=False, w_dims=None):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(W, "fc.weight")
    if w_dims is not None:
        del w.dims[:]
        w.dims.extend(w_dims)
    node = helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["y"], transB=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
                              [w, numpy_helper.from_array(B, "fc.bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
              location=os.path.basename(str(path)) + ".data", size_threshold=0)
    return str(path)


def test_load_is_lazy_and_reads_external_data(tmp_path):
    path = save_graph(tmp_path / "m.onnx", external=True)
    ckpt = wp.load(path)
    assert ckpt.format == "onnx" and ckpt.layout == "onnx"
    assert list(ckpt) == ["fc.weight", "fc.bias"]
    assert ckpt.shape("fc.weight") == (5, 7)
    assert np.array_equal(ckpt["fc.weight"], W) and np.array_equal(ckpt["fc.bias"], B)


def test_inspect_names_the_consuming_op(tmp_path):
    path = save_graph(tmp_path / "m.onnx")
    out = subprocess.run([sys.executable, "-m", "weightport", "inspect", path], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Gemm" in out.stdout and "input B" in out.stdout and "input C" in out.stdout


def test_importing_weightport_and_inspecting_others_imports_no_onnx(tmp_path):
    np.savez(tmp_path / "a.npz", w=W)
    code = ("import sys, weightport as wp; wp.load(sys.argv[1]); "
            "assert 'onnx' not in sys.modules, 'onnx imported'")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.npz")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_truncated_file(tmp_path):
    path = save_graph(tmp_path / "m.onnx")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(FormatError, match="m.onnx"):
        wp.load(path)
    torch = pytest.importorskip("torch")
    with pytest.raises(FormatError, match="m.onnx"):
        wp.port(path, torch.nn.Linear(7, 5))
    out = tmp_path / "out.safetensors"
    with pytest.raises(FormatError):
        wp.convert(path, out, to="keras")
    assert not out.exists()


def test_initializer_shape_the_data_contradicts(tmp_path):
    path = save_graph(tmp_path / "m.onnx", w_dims=[5, 8])
    with pytest.raises(FormatError, match="fc.weight"):
        wp.load(path)


def test_initializer_shape_the_graph_contradicts(tmp_path):
    from onnx import TensorProto, helper

    path = save_graph(tmp_path / "m.onnx")
    model = onnx.load(path)
    model.graph.value_info.append(helper.make_tensor_value_info("fc.weight", TensorProto.FLOAT, [7, 5]))
    onnx.save(model, path)
    with pytest.raises(FormatError, match="declares"):
        wp.load(path)


def test_missing_or_short_external_data(tmp_path):
    path = save_graph(tmp_path / "m.onnx", external=True)
    data = path + ".data"
    content = open(data, "rb").read()
    with open(data, "wb") as f:
        f.write(content[:40])
    with pytest.raises(FormatError, match="short"):
        wp.load(path)
    os.remove(data)
    with pytest.raises(FormatError, match="does not exist"):
        wp.load(path)
    out = tmp_path / "out.safetensors"
    with pytest.raises(WeightportError):
        wp.convert(path, out, to="keras")
    assert not out.exists()


def test_external_data_outside_the_folder(tmp_path):
    inner = tmp_path / "model"
    inner.mkdir()
    path = save_graph(inner / "m.onnx", external=True)
    os.replace(path + ".data", tmp_path / "secret.data")
    model = onnx.load(path, load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../secret.data"
    onnx.save(model, path)
    with pytest.raises(FormatError, match="outside"):
        wp.load(path)


def test_writing_onnx_needs_a_template(tmp_path):
    torch = pytest.importorskip("torch")
    with pytest.raises(WeightportError, match="like="):
        wp.convert(torch.nn.Linear(7, 5), tmp_path / "new.onnx", to="onnx")
    assert not (tmp_path / "new.onnx").exists()


def test_write_back_keeps_external_template_values(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    path = save_graph(tmp_path / "m.onnx", external=True)
    linear = torch.nn.Linear(7, 5)
    wp.port(path, linear, quiet=True)
    assert np.array_equal(linear.weight.detach().numpy(), W)
    with torch.no_grad():
        linear.weight.mul_(2)
    out = tmp_path / "sub"
    out.mkdir()
    wp.convert(linear, out / "tuned.onnx", like=path, quiet=True)
    ckpt = wp.load(str(out / "tuned.onnx"))
    assert np.array_equal(ckpt["fc.weight"], 2 * W) and np.array_equal(ckpt["fc.bias"], B)
