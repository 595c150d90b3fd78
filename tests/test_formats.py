"""Checkpoint containers: every format round-trips every dtype bit for bit, lazily, in stored order."""
import collections
import gc
import json
import os
import struct
import weakref

import ml_dtypes
import numpy as np
import pytest

from weightport.converter.checkpoint import MODEL_KEY, Checkpoint, TensorSource, detect_layout
from weightport.converter.formats import format_for, open_checkpoint, write_checkpoint
from weightport.converter.formats import keras as keras_format
from weightport.errors import UsageError

FORMATS = ["model.safetensors", "model.npz", "model.pt", "model.weights.h5"]


def sample_tensors():
    """Every dtype we promise, distinct non-square shapes, torch-style names (order deliberately unsorted)."""
    rng = np.random.default_rng(3)
    return {
        "encoder.proj.weight": rng.standard_normal((7, 5)).astype(np.float32),
        "encoder.proj.bias": rng.standard_normal(5).astype(np.float16),  # 10 bytes: later tensors unaligned
        "decoder.out.weight": rng.standard_normal((5, 3)).astype(ml_dtypes.bfloat16),
        "decoder.out.bias": rng.standard_normal(3).astype(ml_dtypes.bfloat16),
        "embed.ids": rng.integers(-2**40, 2**40, size=(2, 3), dtype=np.int64),
        "attn.mask": rng.random((3, 2)) > 0.5,
        "norm.running_mean": rng.standard_normal((11,)).astype(np.float64),
        "norm.num_batches_tracked": np.array(17, dtype=np.int64),
        "empty.weight": np.zeros((0, 3), np.float32),
    }


def assert_same_tensors(ckpt, expected):
    assert list(ckpt) == list(expected), "names or their order changed"
    for name, want in expected.items():
        got = ckpt[name]
        assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
        assert got.shape == want.shape and ckpt.shape(name) == want.shape and ckpt.dtype(name) == want.dtype
        assert np.asarray(got).tobytes() == want.tobytes(), f"{name} changed"


@pytest.mark.parametrize("filename", FORMATS)
@pytest.mark.keras_free
def test_round_trip_is_bitwise_for_every_dtype(tmp_path, filename):
    tensors = sample_tensors()
    written = write_checkpoint(tmp_path / filename, tensors, metadata={"weightport_layout": "torch"})
    assert written == [str(tmp_path / filename)]
    with open_checkpoint(tmp_path / filename) as ckpt:
        assert isinstance(ckpt, Checkpoint) and ckpt.layout == "torch"
        assert ckpt.nbytes == sum(a.nbytes for a in tensors.values())
        assert_same_tensors(ckpt, tensors)
    assert sorted(os.listdir(tmp_path)) == [filename], "temporary files were left behind"


@pytest.mark.parametrize("filename", FORMATS)
@pytest.mark.keras_free
def test_checkpoint_converts_to_every_format_bitwise(tmp_path, filename):
    tensors = sample_tensors()
    write_checkpoint(tmp_path / "source.safetensors", tensors)
    with open_checkpoint(tmp_path / "source.safetensors") as src:
        write_checkpoint(tmp_path / filename, src)
    with open_checkpoint(tmp_path / filename) as ckpt:
        assert_same_tensors(ckpt, tensors)


@pytest.mark.parametrize("filename", ["model.safetensors", "model.npz", "model.weights.h5"])
@pytest.mark.keras_free
def test_metadata_layout_beats_names(tmp_path, filename):
    write_checkpoint(tmp_path / filename, sample_tensors(), metadata={"weightport_layout": "keras", "note": "x"})
    with open_checkpoint(tmp_path / filename) as ckpt:
        assert ckpt.layout == "keras" and ckpt.metadata["note"] == "x"


@pytest.mark.keras_free
def test_layout_is_detected_from_names_not_format():
    assert detect_layout(["fc.weight", "fc.bias", "bn.running_mean"]) == "torch"
    assert detect_layout(["dense/kernel", "dense/bias", "bn/moving_mean"]) == "keras"
    assert detect_layout(["dense/kernel:0", "dense/bias:0"]) == "keras"
    assert detect_layout(["layers/dense/vars/0", "layers/block/layers/conv2d/vars/1"]) == "keras"
    assert detect_layout(["a/vars/0", "blocks/block/proj/vars/1", "vars/0"]) == "keras"  # subclassed models
    assert detect_layout(["params/Dense_0/kernel", "params/Dense_0/bias"]) is None  # Flax, not Keras
    assert detect_layout(["fc.weight", "dense/kernel", "x", "y"]) is None
    assert detect_layout([]) is None


@pytest.mark.keras_free
def test_sharded_safetensors_round_trip(tmp_path):
    tensors = sample_tensors()
    written = write_checkpoint(tmp_path / "model.safetensors", tensors, shard_size=64,
                               metadata={"weightport_layout": "torch"})
    index_path = str(tmp_path / "model.safetensors.index.json")
    assert written[-1] == index_path and len(written) >= 4
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in written)
    index = json.loads(open(index_path).read())
    assert set(index["weight_map"]) == set(tensors)
    assert set(index["weight_map"].values()) == {os.path.basename(p) for p in written[:-1]}
    assert int(index["metadata"]["total_size"]) == sum(a.nbytes for a in tensors.values())
    from safetensors.torch import load_file

    for shard in written[:-1]:  # no shard grows past the limit unless one tensor alone does
        with open_checkpoint(shard) as part:
            assert part.nbytes <= 64 or len(part) == 1
            assert set(load_file(shard)) == set(part)
    with open_checkpoint(index_path) as ckpt:
        assert ckpt.layout == "torch"
        assert_same_tensors(ckpt, tensors)


@pytest.mark.keras_free
def test_safetensors_written_here_load_with_the_safetensors_library(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from weightport.converter.arrays import torch_to_numpy

    tensors = sample_tensors()
    path = tmp_path / "model.safetensors"
    write_checkpoint(path, tensors, metadata={"weightport_layout": "torch"})
    raw = path.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    assert (8 + header_len) % 8 == 0, "the spec asks for an 8-byte aligned header"
    loaded = load_file(str(path))
    assert list(loaded) == list(tensors) or set(loaded) == set(tensors)
    for name, want in tensors.items():
        got = torch_to_numpy(loaded[name])
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), name
    assert loaded["decoder.out.weight"].dtype == torch.bfloat16
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"weightport_layout": "torch", "format": "pt"}


@pytest.mark.keras_free
def test_safetensors_written_by_the_library_read_here(tmp_path):
    import torch
    from safetensors.torch import save_file

    tensors = {"b.weight": torch.randn(7, 5).to(torch.bfloat16), "a.bias": torch.arange(5, dtype=torch.int32),
               "c.weight": torch.randn(3, 2, dtype=torch.float16)}
    save_file(tensors, str(tmp_path / "lib.safetensors"), metadata={"format": "pt"})
    with open_checkpoint(tmp_path / "lib.safetensors") as ckpt:
        assert ckpt.metadata == {"format": "pt"} and ckpt.layout == "torch"
        for name, t in tensors.items():
            want = t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
            assert ckpt[name].tobytes() == want.tobytes() and ckpt.shape(name) == tuple(t.shape)
        assert ckpt.dtype("b.weight") == np.dtype(ml_dtypes.bfloat16)


@pytest.mark.keras_free
def test_magic_bytes_beat_the_suffix(tmp_path):
    tensors = sample_tensors()
    write_checkpoint(tmp_path / "model.safetensors", tensors)
    os.rename(tmp_path / "model.safetensors", tmp_path / "pytorch_model.bin")
    with open_checkpoint(tmp_path / "pytorch_model.bin") as ckpt:
        assert ckpt.format == "safetensors"
        assert_same_tensors(ckpt, tensors)
    assert format_for("x.safetensors").NAME == "safetensors" and format_for("m.weights.h5").NAME == "keras"
    with pytest.raises(UsageError, match="model.xyz"):
        format_for("model.xyz")


@pytest.mark.parametrize("filename", ["model.safetensors", "model.npz", "model.weights.h5", "model.pt"])
@pytest.mark.keras_free
def test_writers_hold_one_tensor_at_a_time(tmp_path, filename):
    """Each tensor is loaded just before it is written and dropped after (torch.save is the known exception)."""
    live, peak, progress = [], [0], []
    sizes = [(7, 5), (3, 11), (13,), (2, 3, 5)]

    def loader(shape):
        def load():
            gc.collect()
            alive = [r for r in live if r() is not None]
            peak[0] = max(peak[0], len(alive) + 1)
            arr = np.ones(shape, np.float32)
            live.append(weakref.ref(arr))
            return arr
        return load

    sources = [TensorSource(f"t{i}.weight", s, np.float32, loader(s)) for i, s in enumerate(sizes)]
    write_checkpoint(tmp_path / filename, sources, progress=progress.append)
    assert sum(progress) == sum(4 * np.prod(s) for s in sizes) and len(progress) == len(sizes)
    if filename != "model.pt":
        assert peak[0] == 1, f"{peak[0]} tensors were held at once"


@pytest.mark.keras_free
def test_torch_files_unwrap_training_checkpoints_and_skip_non_tensors(tmp_path):
    import torch

    sd = {"fc.weight": torch.randn(5, 7), "fc.bias": torch.randn(5).to(torch.bfloat16)}
    torch.save({"epoch": 3, "state_dict": sd, "optimizer": {"lr": 0.1}}, tmp_path / "train.ckpt")
    torch.save({"model": {**sd, "version": 2}}, tmp_path / "wrapped.pth")
    torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ["train.ckpt", "wrapped.pth", "legacy.pt"]:
        with open_checkpoint(tmp_path / name) as ckpt:
            assert ckpt.format == "torch" and list(ckpt) == ["fc.weight", "fc.bias"] and ckpt.layout == "torch"
            assert ckpt["fc.weight"].tobytes() == sd["fc.weight"].numpy().tobytes()
            assert ckpt["fc.bias"].dtype == np.dtype(ml_dtypes.bfloat16)
            assert ckpt["fc.bias"].view(np.int16).tobytes() == sd["fc.bias"].view(torch.int16).numpy().tobytes()


class HarmlessDict(collections.OrderedDict):
    """Not on torch's weights_only allow-list, yet harmless: what trust_pickle is for."""


@pytest.mark.keras_free
def test_trust_pickle_opts_in_to_full_unpickling(tmp_path):
    import torch

    from weightport.errors import UnsafePickleError

    torch.save({"model": {"w.weight": torch.ones(2, 3)}, "extra": HarmlessDict(a=1)}, tmp_path / "custom.pt")
    with pytest.raises(UnsafePickleError, match="trust_pickle=True"):
        open_checkpoint(tmp_path / "custom.pt")
    with open_checkpoint(tmp_path / "custom.pt", trust_pickle=True) as ckpt:
        assert list(ckpt) == ["w.weight"]


@pytest.mark.keras_free
def test_npz_is_plain_numpy_and_keeps_bf16(tmp_path):
    tensors = sample_tensors()
    write_checkpoint(tmp_path / "model.npz", tensors)
    with np.load(tmp_path / "model.npz", allow_pickle=False) as plain:  # anyone can read it without pickle
        assert set(plain.files) == set(tensors)
        assert plain["decoder.out.weight"].dtype == np.uint16
        assert plain["decoder.out.weight"].tobytes() == tensors["decoder.out.weight"].tobytes()
    with open_checkpoint(tmp_path / "model.npz") as ckpt:
        assert ckpt.dtype("decoder.out.weight") == np.dtype(ml_dtypes.bfloat16)


@pytest.mark.keras_free
def test_npz_leaves_out_a_model_record_too_long_for_its_comment_rather_than_cut_its_notes(tmp_path):
    """A zip comment holds 64 KiB; zipfile would cut longer notes, losing the bf16 dtypes and the layout with them."""
    notes = {"weightport_layout": "keras", MODEL_KEY: json.dumps({"class_name": "Functional", "pad": "x" * 70_000})}
    write_checkpoint(tmp_path / "model.npz", sample_tensors(), metadata=notes)
    with open_checkpoint(tmp_path / "model.npz") as ckpt:
        assert ckpt.layout == "keras" and MODEL_KEY not in ckpt.metadata
        assert ckpt.dtype("decoder.out.weight") == np.dtype(ml_dtypes.bfloat16)
    notes[MODEL_KEY] = json.dumps({"class_name": "Functional"})  # a record that fits is kept
    write_checkpoint(tmp_path / "small.npz", sample_tensors(), metadata=notes)
    with open_checkpoint(tmp_path / "small.npz") as ckpt:
        assert ckpt.metadata[MODEL_KEY] == notes[MODEL_KEY]


# -- Keras files ------------------------------------------------------------------------------------------


def _keras_model(dtype=None):
    import keras

    inner = keras.Sequential([keras.layers.Dense(4, name="inner_a"), keras.layers.Dense(6, name="inner_b")])
    x_in = keras.Input((7,))
    x = keras.layers.Dense(5, dtype=dtype)(x_in)
    x = keras.layers.BatchNormalization()(x)
    x = inner(x)
    out = keras.layers.Dense(3, dtype=dtype)(x)
    return keras.Model(x_in, out)


def _randomize(model, seed):
    from util import randomize_keras

    randomize_keras(model, seed)


def _predict(model, x):
    from weightport.converter.arrays import to_numpy

    return np.asarray(to_numpy(model(x, training=False))).astype(np.float32)


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_weights_h5_written_here_loads_into_keras(tmp_path, dtype):
    from util import keras_weights

    src, dst = _keras_model(dtype), _keras_model(dtype)
    _randomize(src, 1)
    _randomize(dst, 2)
    x = np.random.default_rng(0).standard_normal((4, 7)).astype(np.float32)
    assert not np.array_equal(_predict(src, x), _predict(dst, x))
    paths = keras_format.variable_paths(src)
    assert len(paths) == len(src.weights) and len(set(paths)) == len(paths)
    sources = [(p, w) for p, w in zip(paths, keras_weights(src))]
    write_checkpoint(tmp_path / "ours.weights.h5", sources)
    dst.load_weights(str(tmp_path / "ours.weights.h5"))
    assert np.array_equal(_predict(src, x), _predict(dst, x))
    for a, b in zip(keras_weights(src), keras_weights(dst)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if dtype:
        assert any(a.dtype == np.dtype(ml_dtypes.bfloat16) for a in keras_weights(dst))


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_weights_h5_saved_by_keras_reads_in_its_order(tmp_path, dtype):
    from util import keras_weights

    model = _keras_model(dtype)
    _randomize(model, 3)
    model.save_weights(str(tmp_path / "ref.weights.h5"))
    with open_checkpoint(tmp_path / "ref.weights.h5") as ckpt:
        assert ckpt.format == "keras" and ckpt.layout == "keras" and ckpt.metadata["keras_file"] == "weights.h5"
        assert list(ckpt) == keras_format.variable_paths(model)
        for name, want in zip(ckpt, keras_weights(model)):
            assert ckpt[name].dtype == want.dtype and ckpt[name].tobytes() == want.tobytes(), name
        assert ckpt.layers["layers/sequential/layers/dense"]["name"] == "inner_a"


def test_keras_archive_exposes_layer_classes(tmp_path):
    from util import keras_weights

    model = _keras_model()
    _randomize(model, 4)
    model.save(str(tmp_path / "model.keras"))
    with open_checkpoint(tmp_path / "model.keras") as ckpt:
        assert ckpt.metadata["keras_file"] == "keras" and ckpt.metadata["model_class"] == "Functional"
        assert list(ckpt) == keras_format.variable_paths(model)
        for name, want in zip(ckpt, keras_weights(model)):
            assert ckpt[name].tobytes() == want.tobytes()
        classes = {path: info["class_name"] for path, info in ckpt.layers.items()}
        assert classes["layers/dense"] == "Dense" and classes["layers/batch_normalization"] == "BatchNormalization"
        assert classes["layers/sequential"] == "Sequential" and classes["layers/sequential/layers/dense_1"] == "Dense"
        assert ckpt.layers["layers/sequential/layers/dense_1"]["config"]["units"] == 6
        from_config = {path: info["name"] for path, info in ckpt.layers.items()}
    # the paths derived from config.json agree with the layer names Keras writes on each vars group
    model.save_weights(str(tmp_path / "model.weights.h5"))
    with open_checkpoint(tmp_path / "model.weights.h5") as plain:
        from_groups = {path: info["name"] for path, info in plain.layers.items()}
    assert len(from_groups) >= 5 and all(from_config[p] == n for p, n in from_groups.items())


def test_legacy_h5_reads_in_layer_order(tmp_path):
    from util import keras_weights

    model = _keras_model()
    _randomize(model, 5)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(str(tmp_path / "legacy.h5"))
    with open_checkpoint(tmp_path / "legacy.h5") as ckpt:
        assert ckpt.metadata["keras_file"] == "legacy-h5" and ckpt.layout == "keras"
        names = list(ckpt)[: len(model.weights)]
        assert [n.split("/")[-1] for n in names] == [v.path.split("/")[-1] for v in model.weights]
        for name, want in zip(names, keras_weights(model)):
            assert ckpt[name].tobytes() == want.tobytes()
        norm = next(layer for layer in model.layers if type(layer).__name__ == "BatchNormalization")
        assert ckpt.layers[f"model_weights/{norm.name}"]["class_name"] == "BatchNormalization"


@pytest.mark.keras_free
def test_keras2_style_h5_weight_names_are_followed(tmp_path):
    import h5py

    kernel, bias = np.arange(35, dtype=np.float32).reshape(7, 5), np.arange(5, dtype=np.float32)
    with h5py.File(tmp_path / "k2.h5", "w") as f:  # what Keras 2's save_weights wrote
        f.attrs["layer_names"] = [b"fc"]
        g = f.create_group("fc")
        g.attrs["weight_names"] = [b"fc/kernel:0", b"fc/bias:0"]
        g.create_dataset("fc/bias:0", data=bias)
        g.create_dataset("fc/kernel:0", data=kernel)
    with open_checkpoint(tmp_path / "k2.h5") as ckpt:
        assert list(ckpt) == ["fc/fc/kernel:0", "fc/fc/bias:0"] and ckpt.layout == "keras"
        assert np.array_equal(ckpt["fc/fc/kernel:0"], kernel)


@pytest.mark.keras_free
def test_keras_archive_without_its_model_is_refused(tmp_path):
    with pytest.raises(UsageError, match="weights.h5"):
        write_checkpoint(tmp_path / "model.keras", sample_tensors())
    assert os.listdir(tmp_path) == []
