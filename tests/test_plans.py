"""Plans: a dry run writes nothing; its saved plan runs again without the model, names and shapes checked."""
import os

import numpy as np
import pytest

import weightport as wp
from util import randomize_torch

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")


def nets():
    t = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    k = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5), keras.layers.LayerNormalization(epsilon=1e-5),
                          keras.layers.Dense(3)])
    return t, k


def test_dry_run_then_replay_without_the_model(tmp_path):
    t, k = nets()
    randomize_torch(t)
    wp.save(t, tmp_path / "t.safetensors")
    report = wp.convert(tmp_path / "t.safetensors", tmp_path / "k.weights.h5", like=k, dry_run=True)
    assert report.files == [] and os.listdir(tmp_path) == ["t.safetensors"]
    (tmp_path / "plan.json").write_text(report.to_json())
    wp.convert(tmp_path / "t.safetensors", tmp_path / "k.weights.h5", plan=str(tmp_path / "plan.json"))
    fresh = nets()[1]
    fresh.load_weights(tmp_path / "k.weights.h5")
    x = np.random.default_rng(1).standard_normal((4, 7)).astype("float32")
    assert wp.verify(t, fresh, x).ok


def test_replay_refuses_a_checkpoint_that_does_not_fit(tmp_path):
    t, k = nets()
    wp.save(t, tmp_path / "t.safetensors")
    plan = wp.convert(tmp_path / "t.safetensors", tmp_path / "k.safetensors", to="keras", dry_run=True).plan
    other = torch.nn.Sequential(torch.nn.Linear(7, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 3))
    wp.save(other, tmp_path / "other.safetensors")
    with pytest.raises(wp.ShapeMismatchError, match="0"):
        wp.convert(tmp_path / "other.safetensors", tmp_path / "k.safetensors", plan=plan)
    assert not (tmp_path / "k.safetensors").exists()


def test_streamed_transpose_in_many_blocks_matches(tmp_path, monkeypatch):
    from weightport.converter import engine

    lin = torch.nn.Linear(300, 700)  # 700 output rows of the Keras kernel... in blocks of 64 below
    randomize_torch(lin)
    wp.save(lin, tmp_path / "t.safetensors")
    original = engine.transposed_blocks
    calls = []

    def small_blocks(a, dtype, rows=256, check=None):
        blocks = [(b.copy(), finite) for b, finite in original(a, dtype, rows=64, check=check)]
        calls.append(len(blocks))
        return iter(blocks)

    monkeypatch.setattr(engine, "transposed_blocks", small_blocks)
    from weightport.converter.checkpoint import TensorSource

    # the one-writer stream (safetensors is written in parts by the workers otherwise: test_file_engine.py)
    monkeypatch.setattr(TensorSource, "fillable", property(lambda self: False))
    for out in ("k.safetensors", "k.npz"):
        wp.convert(tmp_path / "t.safetensors", tmp_path / out, to="keras")
    ckpt = wp.load(tmp_path / "k.safetensors")
    assert calls and calls[0] == 5  # 300 kernel rows in blocks of 64
    np.testing.assert_array_equal(ckpt["weight/kernel" if "weight/kernel" in ckpt else "kernel"],
                                  lin.weight.detach().numpy().T)
    np.testing.assert_array_equal(wp.load(tmp_path / "k.npz")["kernel"], lin.weight.detach().numpy().T)


def test_transposed_blocks_reuse_buffers_but_yield_the_transpose():
    from weightport.converter.engine import transposed_blocks

    a = np.arange(37 * 1000, dtype=np.float32).reshape(37, 1000)
    rows = [b.copy() for b, _ in transposed_blocks(a, np.float32, rows=96)]
    assert [len(b) for b in rows] == [96] * 10 + [40]
    np.testing.assert_array_equal(np.concatenate(rows), a.T)
    half = np.concatenate([b.copy() for b, _ in transposed_blocks(a, np.float16, rows=96)])
    assert half.dtype == np.float16 and np.array_equal(half, a.T.astype(np.float16))
