"""dtype= / --dtype: every floating type a format can store is accepted by name, written, and read back."""
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import weightport as wp
from weightport.converter.arrays import cast_dtype, dtype_of

torch = pytest.importorskip("torch")

FLOAT8 = ("float8_e4m3fn", "float8_e5m2")
# format suffix -> the floating dtypes it stores (beyond float32/float64)
STORES = {
    "safetensors": ("float16", "bfloat16") + FLOAT8,
    "npz": ("float16", "bfloat16") + FLOAT8,
    "msgpack": ("float16", "bfloat16") + FLOAT8,
    "pt": ("float16", "bfloat16") + FLOAT8,
    "weights.h5": ("float16", "bfloat16"),
}
NOT_YET = set()


def linear():
    torch.manual_seed(3)
    lin = torch.nn.Linear(7, 5)
    with torch.no_grad():  # values float8 holds exactly: the round trip must then be exact
        lin.weight.copy_(torch.arange(35, dtype=torch.float32).reshape(5, 7) % 9 / 4 - 1)
        lin.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.25, -0.125]))
    return lin


def expected(lin, name):
    return {n: t.detach().numpy().astype(dtype_of(name)) for n, t in lin.state_dict().items()}


@pytest.mark.parametrize("suffix,name", [(s, n) for s, names in STORES.items() for n in names + ("float32",)] + [
    pytest.param(s, n, marks=pytest.mark.xfail(strict=True, reason=f"the {s} writer does not store {n} yet"))
    for s, n in sorted(NOT_YET)])
def test_save_writes_each_dtype_and_reads_it_back(tmp_path, suffix, name):
    lin, path = linear(), tmp_path / f"lin.{suffix}"
    if suffix == "weights.h5":
        pytest.importorskip("keras")
        import keras

        like = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5)])
        wp.save(lin, path, like=like, dtype=name)
        back = wp.load(path)
        got = {"weight": np.asarray(back["layers/dense/vars/0"]).T, "bias": np.asarray(back["layers/dense/vars/1"])}
    else:
        wp.save(lin, path, dtype=name)
        back = wp.load(path)
        got = {n.split("/")[-1].split(".")[-1]: np.asarray(back[n]) for n in back}
    for slot, want in expected(lin, name).items():
        assert got[slot].dtype == dtype_of(name), (slot, got[slot].dtype)
        np.testing.assert_array_equal(got[slot].astype(np.float32), want.astype(np.float32))


@pytest.mark.parametrize("name", ["bfloat16", "float16", "float8_e4m3fn"])
@pytest.mark.keras_free
def test_convert_casts_by_name(tmp_path, name):
    wp.save(linear(), tmp_path / "lin.safetensors")
    wp.convert(tmp_path / "lin.safetensors", tmp_path / "k.safetensors", to="keras", dtype=name)
    k = wp.load(tmp_path / "k.safetensors")
    assert {k.dtype(n) for n in k} == {dtype_of(name)}
    np.testing.assert_array_equal(np.asarray(k["kernel"]).astype(np.float32),
                                  expected(linear(), name)["weight"].T.astype(np.float32))


@pytest.mark.keras_free
def test_cli_dtype_bfloat16(tmp_path):
    wp.save(linear(), tmp_path / "lin.safetensors")
    cli = os.path.join(os.path.dirname(sys.executable), "weightport")
    out = subprocess.run([cli, "convert", "lin.safetensors", "bf.safetensors", "--to", "keras", "--dtype", "bfloat16",
                          "--quiet"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    k = wp.load(tmp_path / "bf.safetensors")
    assert [k.dtype(n).name for n in k] == ["bfloat16", "bfloat16"]


@pytest.mark.parametrize("name,want", [("bfloat16", ml_dtypes.bfloat16), ("BF16", ml_dtypes.bfloat16),
                                       ("torch.bfloat16", ml_dtypes.bfloat16), ("fp16", np.float16),
                                       ("F8_E4M3", ml_dtypes.float8_e4m3fn), ("float8_e5m2", ml_dtypes.float8_e5m2),
                                       (ml_dtypes.bfloat16, ml_dtypes.bfloat16), (np.float16, np.float16)])
@pytest.mark.keras_free
def test_dtype_names(name, want):
    assert dtype_of(name) == np.dtype(want)


@pytest.mark.parametrize("name", ["int8", "finfo", "bfloat17"])
@pytest.mark.keras_free
def test_a_cast_to_a_non_float_or_unknown_name_is_a_usage_error(name):
    with pytest.raises(wp.UsageError, match="float16"):
        cast_dtype(name)


@pytest.mark.parametrize("name", FLOAT8)
def test_weights_h5_refuses_float8_by_name_and_writes_nothing(tmp_path, name):
    keras = pytest.importorskip("keras")
    like = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5)])
    with pytest.raises(wp.UsageError, match=f"{name}.*cannot hold"):
        wp.save(linear(), tmp_path / "lin.weights.h5", like=like, dtype=name)
    assert os.listdir(tmp_path) == []
