"""Orbax checkpoints: folders written by orbax itself (an NNX state, Linen variables in a CheckpointManager) read
lazily and ported into torch and Keras twins; torch written as Orbax by weightport and restored by orbax itself;
negative controls, damaged folders, the CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import weightport as wp
from test_flax import B, C, CO, OUT, H, W, FlaxCNN, TorchCNN, channels_first, image, keras_cnn, randomize_flax, rngs
from test_flax_files import linen_cnn
from util import assert_forward_differs, assert_forward_equal, randomize_torch, skip_transforms
from weightport.errors import FormatError, UsageError

jax = pytest.importorskip("jax")
ocp = pytest.importorskip("orbax.checkpoint")
nnx = pytest.importorskip("flax.nnx")
jnp = jax.numpy

NNX_NAMES = ["bn/bias", "bn/mean", "bn/scale", "bn/var", "conv/bias", "conv/kernel", "head/bias", "head/kernel"]


def orbax_save(path, tree):
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, tree)
        ckptr.wait_until_finished()


@pytest.fixture(scope="module")
def nnx_folder(tmp_path_factory):
    """An NNX CNN's state saved by orbax itself, as the Flax guide does (``nnx.split`` state, ``.../value``)."""
    f = FlaxCNN(rngs(), dtype=jnp.bfloat16)
    randomize_flax(f, seed=2)
    path = tmp_path_factory.mktemp("orbax") / "nnx_state"
    orbax_save(path, nnx.state(f))
    return f, path


def test_nnx_state_reads_lazily_with_flax_names_and_dtypes(nnx_folder):
    f, path = nnx_folder
    ckpt = wp.load(path)
    assert ckpt.format == "orbax" and ckpt.layout == "flax" and sorted(ckpt) == NNX_NAMES
    assert ckpt.shape("conv/kernel") == (3, 2, C, CO) and ckpt.dtype("conv/kernel") == jnp.bfloat16
    state = nnx.to_pure_dict(nnx.state(f))
    for name in NNX_NAMES:
        want = np.asarray(state[name.split("/")[0]][name.split("/")[1]])
        got = ckpt[name]
        assert type(got) is np.ndarray and got.dtype == want.dtype and not got.flags.writeable
        assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), name


def test_nnx_state_ports_into_torch_and_keras_twins(nnx_folder):
    f, path = nnx_folder
    f32 = FlaxCNN(rngs())
    wp.port(path, f32)  # by name, into its own kind of model: float32 values of the bf16 checkpoint
    x = image(B, H, W, C)
    t = TorchCNN()
    wp.port(path, t)
    assert_forward_equal(f32, t, x, channels_first(x))
    k = keras_cnn()
    wp.port(path, k)
    assert_forward_equal(f32, k, x, atol=1e-4)


def test_nnx_negative_control_without_the_conv_transform(nnx_folder, monkeypatch):
    f, path = nnx_folder
    f32 = FlaxCNN(rngs())
    wp.port(path, f32)
    skip_transforms(monkeypatch, "conv")
    t = TorchCNN()
    wp.port(path, t)
    x = image(B, H, W, C)
    assert_forward_differs(f32, t, x, channels_first(x))


def test_linen_variables_in_a_checkpoint_manager_latest_step_into_torch_and_keras(tmp_path):
    module, variables = linen_cnn()
    later = jax.tree.map(lambda a: a * 1.5 + 0.25, variables)
    root = tmp_path / "run"
    with ocp.CheckpointManager(root) as manager:
        manager.save(3, args=ocp.args.StandardSave(variables))
        manager.save(11, args=ocp.args.StandardSave(later))
        manager.wait_until_finished()
    ckpt = wp.load(root)
    assert ckpt.metadata["orbax_step"] == "11" and ckpt.metadata["orbax_item"] == os.path.join("11", "default")
    assert "params/Conv_0/kernel" in ckpt and "batch_stats/BatchNorm_0/var" in ckpt
    np.testing.assert_array_equal(ckpt["params/Dense_0/bias"], np.asarray(later["params"]["Dense_0"]["bias"]))
    x = image(B, H, W, C)
    for source, tree in ((root, later), (root / "3", variables)):  # a step named by its folder
        t = TorchCNN()
        wp.port(source, t)
        assert_forward_equal((module, tree), t, x, channels_first(x))
    k = keras_cnn()
    wp.port(root, k)
    assert_forward_equal((module, later), k, x, atol=1e-4)


def test_torch_to_orbax_restored_by_orbax_into_nnx_and_linen(tmp_path):
    t = TorchCNN()
    randomize_torch(t, seed=4)
    x = image(B, H, W, C)
    f = FlaxCNN(nnx.Rngs(9))
    report = wp.save(t, tmp_path / "nnx_out", format="orbax", like=f)
    assert report.files == [str(tmp_path / "nnx_out")] and os.listdir(tmp_path) == ["nnx_out"]  # no partial left
    abstract = nnx.state(nnx.eval_shape(lambda: FlaxCNN(nnx.Rngs(1))))
    nnx.update(f, ocp.StandardCheckpointer().restore(tmp_path / "nnx_out", abstract))
    assert_forward_equal(f, t, x, channels_first(x))
    module, variables = linen_cnn()
    wp.convert(t, tmp_path / "linen_out", like=(module, variables), format="orbax")
    restored = ocp.StandardCheckpointer().restore(tmp_path / "linen_out", variables)
    assert_forward_equal((module, restored), t, x, channels_first(x))
    assert wp.load(tmp_path / "linen_out").layout == "flax"


def test_orbax_output_with_the_wrong_structure_or_existing_is_refused(tmp_path):
    t = TorchCNN()
    module, variables = linen_cnn()
    renamed = {"params": {f"x_{k}": v for k, v in variables["params"].items()}, "batch_stats": variables["batch_stats"]}
    from weightport.converter.formats import orbax as orbax_format

    with pytest.raises(UsageError, match="no place in the structure"):
        orbax_format.shaped_like({"params/Conv_0/kernel": np.zeros((3, 2, C, CO), "float32")}, renamed, "out")
    with pytest.raises(UsageError, match=r"\(3, 2, 3, 8\) but like= holds"):
        orbax_format.shaped_like({"params/Conv_0/kernel": np.zeros((3, 2, C, CO), "float32")},
                                  {"params": {"Conv_0": {"kernel": np.zeros((2, 3, C, CO))}}}, "out")
    (tmp_path / "taken").mkdir()
    with pytest.raises(wp.errors.OutputExistsError):
        wp.save(t, tmp_path / "taken", format="orbax", like=(module, variables))
    assert sorted(os.listdir(tmp_path)) == ["taken"] and os.listdir(tmp_path / "taken") == []
    wp.save(t, tmp_path / "taken", format="orbax", like=(module, variables), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["taken"] and "_METADATA" in os.listdir(tmp_path / "taken")


def test_torch_layout_without_like_keeps_its_layout(tmp_path):
    t = TorchCNN()
    randomize_torch(t, seed=6)
    wp.save(t, tmp_path / "plain", format="orbax")
    ckpt = wp.load(tmp_path / "plain")
    assert ckpt.layout == "torch" and "conv.weight" in ckpt
    back = TorchCNN()
    wp.port(tmp_path / "plain", back)
    x = channels_first(image(B, H, W, C))
    assert_forward_equal(back, t, x)


def _spoiled(folder, how):
    if how == "no metadata":
        os.remove(folder / "_METADATA")
        return
    data = [os.path.join(r, n) for r, _, files in os.walk(folder) for n in files if os.path.basename(r) == "d"]
    assert data
    for path in data if how == "truncated arrays" else [folder / "_METADATA"]:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("how", ["no metadata", "truncated metadata", "truncated arrays"])
def test_damaged_orbax_folder_is_a_format_error_and_nothing_is_written(tmp_path, how):
    f = FlaxCNN(rngs())
    orbax_save(tmp_path / "ckpt", nnx.state(f))
    _spoiled(tmp_path / "ckpt", how)
    with pytest.raises(FormatError, match="ckpt"):
        ckpt = wp.load(tmp_path / "ckpt")
        for name in ckpt:
            ckpt[name]
    with pytest.raises(FormatError, match="ckpt"):
        wp.convert(tmp_path / "ckpt", tmp_path / "out.safetensors", to="torch")
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_folders_that_are_no_checkpoint(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        wp.load(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="is a folder; give the checkpoint file itself"):
        wp.load(tmp_path / "empty")
    with pytest.raises(FormatError, match="is a folder"):
        wp.load(tmp_path / "empty", format="npz")
    np.savez(tmp_path / "file.npz", a=np.zeros(3))
    with pytest.raises(FormatError, match="not a folder"):
        wp.load(tmp_path / "file.npz", format="orbax")


def test_cli_inspect_and_convert_to_torch_like_a_model_file(nnx_folder, tmp_path):
    f, path = nnx_folder
    from weightport.cli import main

    code = f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); from test_flax import TorchCNN\n"
    (tmp_path / "twins.py").write_text(code)
    out = subprocess.run([sys.executable, "-m", "weightport", "inspect", str(path), "--json"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert listed["format"] == "orbax" and {"name": "head/kernel", "shape": [CO, OUT], "dtype": "bfloat16",
                                            "nbytes": CO * OUT * 2} in listed["tensors"]
    assert main(["convert", str(path), str(tmp_path / "t.safetensors"), "--to", "torch",
                 "--like", f"{tmp_path / 'twins.py'}:TorchCNN"]) == 0
    t = TorchCNN()
    wp.port(tmp_path / "t.safetensors", t)
    f32 = FlaxCNN(rngs())
    wp.port(path, f32)
    x = image(B, H, W, C)
    assert_forward_equal(f32, t, x, channels_first(x))


def test_orbax_is_imported_only_for_an_orbax_folder():
    code = "import sys, weightport; print(sorted(m for m in ('orbax', 'jax', 'flax') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
