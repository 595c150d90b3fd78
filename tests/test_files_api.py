"""Files on either side of port, save and convert: the results load with the frameworks' own loaders."""
import os

import numpy as np
import pytest

import weightport as wp
from util import randomize_keras, randomize_torch

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

IN, HID, OUT = 7, 5, 3


def torch_net():
    return torch.nn.Sequential(torch.nn.Linear(IN, HID), torch.nn.BatchNorm1d(HID), torch.nn.Tanh(),
                               torch.nn.Linear(HID, OUT))


def keras_net():
    return keras.Sequential([keras.Input((IN,)), keras.layers.Dense(HID), keras.layers.BatchNormalization(
        epsilon=1e-5, momentum=0.9), keras.layers.Activation("tanh"), keras.layers.Dense(OUT)])


X = np.random.default_rng(3).standard_normal((4, IN)).astype("float32")


def test_keras_model_saved_as_weights_h5_loads_with_keras(tmp_path):
    t, k = torch_net(), keras_net()
    randomize_torch(t)
    wp.save(t, tmp_path / "m.weights.h5", like=k)
    fresh = keras_net()
    fresh.load_weights(tmp_path / "m.weights.h5")
    assert wp.verify(t, fresh, X).ok


def test_torch_layout_safetensors_from_keras_loads_with_load_state_dict(tmp_path):
    t, k = torch_net(), keras_net()
    randomize_keras(k)
    wp.save(k, tmp_path / "m.safetensors", layout="torch", like=t)
    fresh = torch_net()
    fresh.load_state_dict(load_file(tmp_path / "m.safetensors"), strict=True)
    assert wp.verify(fresh, k, X).ok
    assert fresh[1].num_batches_tracked.item() == 0


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".npz"])
def test_port_from_a_torch_checkpoint_into_keras(tmp_path, suffix):
    t, k = torch_net(), keras_net()
    randomize_torch(t)
    path = tmp_path / f"m{suffix}"
    wp.save(t, path)
    report = wp.port(str(path), k)
    assert len(report.steps) == 3
    assert wp.verify(t, k, X).ok


def test_keras_layout_file_round_trip_bitwise(tmp_path):
    k = keras_net()
    randomize_keras(k)
    wp.save(k, tmp_path / "k.safetensors")
    assert wp.load(tmp_path / "k.safetensors").layout == "keras"
    wp.convert(tmp_path / "k.safetensors", tmp_path / "t.safetensors", to="torch")
    wp.convert(tmp_path / "t.safetensors", tmp_path / "k2.safetensors", to="keras")
    a, b = wp.load(tmp_path / "k.safetensors"), wp.load(tmp_path / "k2.safetensors")
    assert list(a) == list(b)
    for name in a:
        assert a.dtype(name) == b.dtype(name) and np.array_equal(a[name], b[name])


def test_convert_into_weights_h5_with_model_and_back(tmp_path):
    t, k = torch_net(), keras_net()
    randomize_torch(t)
    wp.save(t, tmp_path / "t.safetensors")
    wp.convert(tmp_path / "t.safetensors", tmp_path / "k.weights.h5", model=k)
    fresh = keras_net()
    fresh.load_weights(tmp_path / "k.weights.h5")
    assert wp.verify(t, fresh, X).ok
    # and back, with the Keras model describing the h5 file
    wp.convert(tmp_path / "k.weights.h5", tmp_path / "back.safetensors", model=fresh, to="torch", )
    t2 = torch_net()
    wp.port(tmp_path / "back.safetensors", t2, hints=None)
    assert wp.verify(t2, fresh, X).ok


def test_state_dict_and_dtype_cast(tmp_path):
    t, k = torch_net(), keras_net()
    randomize_torch(t)
    wp.port(t.state_dict(), k)
    assert wp.verify(t, k, X).ok
    wp.save(t, tmp_path / "half.safetensors", dtype="bfloat16")
    ckpt = wp.load(tmp_path / "half.safetensors")
    assert ckpt.dtype("0.weight").name == "bfloat16" and ckpt.dtype("1.num_batches_tracked") == np.int64
    np.testing.assert_allclose(ckpt["0.weight"].astype("float32"), t[0].weight.detach().numpy(), rtol=1e-2)


def test_existing_output_refused_and_untouched(tmp_path):
    t = torch_net()
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"precious")
    with pytest.raises(wp.OutputExistsError):
        wp.save(t, path)
    assert path.read_bytes() == b"precious"
    wp.save(t, path, overwrite=True)
    assert len(wp.load(path)) == len(t.state_dict())


def test_refused_conversion_leaves_no_output(tmp_path):
    t = torch_net()
    wp.save(t, tmp_path / "t.safetensors")
    small = keras.Sequential([keras.Input((IN,)), keras.layers.Dense(HID), keras.layers.Dense(2)])
    with pytest.raises(wp.MatchError):  # the last Dense has no counterpart
        wp.convert(tmp_path / "t.safetensors", tmp_path / "k.weights.h5", model=small)
    assert sorted(os.listdir(tmp_path)) == ["t.safetensors"]


def test_ambiguous_file_groups_are_reported_not_guessed(tmp_path):
    # a bare (out, in) matrix with no bias: a Linear(bias=False) or an Embedding table
    path = tmp_path / "bare.safetensors"
    from weightport.converter.formats import write_checkpoint

    write_checkpoint(path, {"proj.weight": np.ones((5, 7), "float32")})
    with pytest.raises(wp.UsageError, match="several rules"):
        wp.convert(path, tmp_path / "out.safetensors", to="keras")
    assert not (tmp_path / "out.safetensors").exists()


def test_stacked_rnn_checkpoint_is_every_layer(tmp_path):
    t = torch.nn.LSTM(7, 5, num_layers=2, batch_first=True, bidirectional=True)
    randomize_torch(t)
    torch.save(t.state_dict(), tmp_path / "lstm.pt")
    k = keras.Sequential([keras.Input((4, 7))] + [keras.layers.Bidirectional(keras.layers.LSTM(
        5, return_sequences=True)) for _ in range(2)])
    wp.port(tmp_path / "lstm.pt", k)

    class Out(torch.nn.Module):
        def forward(self, x):
            return t(x)[0]

    x = np.random.default_rng(4).standard_normal((3, 4, 7)).astype("float32")
    assert wp.verify(Out(), k, x).ok
    report = wp.convert(tmp_path / "lstm.pt", tmp_path / "k.safetensors", to="keras")
    assert len(report.steps) == 2 and len(wp.load(tmp_path / "k.safetensors")) == 12  # 2 layers x 2 directions x 3


def test_bare_checkpoint_groups_take_the_rule_of_the_layer_they_meet(tmp_path):
    # shapes alone read a depthwise conv as a 1-input-channel conv and a GroupNorm as a LayerNorm
    t = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, groups=4), torch.nn.GroupNorm(2, 8))
    randomize_torch(t)
    torch.save(t.state_dict(), tmp_path / "t.pt")
    k = keras.Sequential([keras.Input((7, 6, 4)), keras.layers.DepthwiseConv2D(3, depth_multiplier=2),
                          keras.layers.GroupNormalization(2, epsilon=1e-5)])
    report = wp.port(tmp_path / "t.pt", k)
    assert [s.rule for s in report.steps] == ["depthwise_conv", "group_normalization"]
    x = np.random.default_rng(5).standard_normal((2, 4, 7, 6)).astype("float32")
    assert wp.verify(t, k, (x, x.transpose(0, 2, 3, 1))).ok


def test_files_weightport_wrote_say_which_rule_wrote_each_layer(tmp_path):
    # a bias-free Linear and an Embedding look alike in a torch file: (rows, cols) "weight"
    t = torch.nn.Sequential(torch.nn.Embedding(11, 7), torch.nn.Linear(7, 5, bias=False))
    randomize_torch(t)
    wp.save(t, tmp_path / "t.safetensors")
    wp.convert(tmp_path / "t.safetensors", tmp_path / "k.safetensors", to="keras")
    k = wp.load(tmp_path / "k.safetensors")
    assert {n: k.shape(n) for n in k} == {"0/embeddings": (11, 7), "1/kernel": (7, 5)}
    np.testing.assert_array_equal(k["1/kernel"], t[1].weight.detach().numpy().T)
    # the same tensors without weightport's record are ambiguous, and said to be
    from weightport.converter.formats import write_checkpoint

    write_checkpoint(tmp_path / "plain.safetensors", {n: v.numpy() for n, v in t.state_dict().items()})
    with pytest.raises(wp.UsageError, match="several rules"):
        wp.convert(tmp_path / "plain.safetensors", tmp_path / "k2.safetensors", to="keras")


def test_each_tensor_keeps_its_own_dtype_within_a_layer(tmp_path):
    lin = torch.nn.Linear(7, 5)
    lin.weight.data = lin.weight.data.to(torch.bfloat16)  # a mixed-precision layer: bf16 kernel, f32 bias
    wp.save(lin, tmp_path / "k.safetensors", layout="keras")
    ckpt = wp.load(tmp_path / "k.safetensors")
    assert (ckpt.dtype("kernel").name, ckpt.dtype("bias").name) == ("bfloat16", "float32")
    assert np.array_equal(ckpt["kernel"].view(np.uint16), wp.get_weights(lin)[0].view(np.uint16))


def test_integer_bookkeeping_tensors_do_not_block_a_port(tmp_path):
    t, k = torch_net(), keras_net()
    randomize_torch(t)
    state = dict(t.state_dict())
    state["embeddings.position_ids"] = torch.arange(9)[None]  # as Hugging Face checkpoints carry
    report = wp.port(state, k)
    assert any("position_ids" in note for note in report.unmatched_source)
    assert wp.verify(t, k, X).ok
    state["logit_scale"] = torch.tensor(2.0)  # a float tensor the target does not ask for: reported, warned about
    with pytest.warns(wp.WeightportWarning, match="logit_scale"):
        report = wp.port(state, keras_net())
    assert any("logit_scale" in note for note in report.unmatched_source)
    with pytest.raises(wp.MatchError, match="logit_scale"):  # unless both sides must pair in full
        wp.port(state, keras_net(), strict="both")


@pytest.mark.parametrize("suffix", [".msgpack", ".npz", ".safetensors"])
def test_keras_layout_round_trip_through_every_format_that_keeps_metadata(tmp_path, suffix):
    k = keras_net()
    randomize_keras(k)
    before = [w.copy() for w in k.get_weights()]
    wp.save(k, tmp_path / f"k{suffix}")
    assert wp.load(tmp_path / f"k{suffix}").layout == "keras"
    fresh = keras_net()
    wp.port(tmp_path / f"k{suffix}", fresh)
    for a, b in zip(before, fresh.get_weights()):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_a_keras_model_saves_its_own_weights_h5_and_sharded_names_open_by_their_name(tmp_path):
    k = keras_net()
    randomize_keras(k)
    wp.save(k, tmp_path / "own.weights.h5")
    fresh = keras_net()
    fresh.load_weights(tmp_path / "own.weights.h5")
    for a, b in zip(k.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    t = torch_net()
    randomize_torch(t)
    files = wp.save(t, tmp_path / "sharded.safetensors", shard_size=64).files
    assert len(files) > 2 and not (tmp_path / "sharded.safetensors").exists()
    assert wp.verify(t, wp.port(tmp_path / "sharded.safetensors", keras_net()).target, X).ok


def test_a_keras_archive_ports_from_its_config_without_building_the_model(tmp_path, monkeypatch):
    """Each variable's layer class and config are in the archive: no keras.saving.load_model (which would run
    whatever sizes the config claims), unless the config cannot say (a Flatten before a Dense)."""
    k = keras.Sequential([keras.Input((IN,)), keras.layers.Dense(HID), keras.layers.BatchNormalization(epsilon=1e-5),
                          keras.layers.LayerNormalization(epsilon=1e-5), keras.layers.Dense(OUT, use_bias=False)])
    randomize_keras(k)
    k.save(tmp_path / "m.keras")
    t = torch.nn.Sequential(torch.nn.Linear(IN, HID), torch.nn.BatchNorm1d(HID), torch.nn.LayerNorm(HID),
                            torch.nn.Linear(HID, OUT, bias=False)).eval()

    def refuse(*args, **kwargs):
        raise AssertionError("the archive's model was built")
    monkeypatch.setattr(keras.saving, "load_model", refuse)
    report = wp.port(tmp_path / "m.keras", t)
    assert [s.rule for s in report.steps] == ["dense", "batch_normalization", "layer_normalization", "dense"]
    assert wp.verify(t, k, X).ok
    flat = keras.Sequential([keras.Input((2, 3, 4)), keras.layers.Flatten(), keras.layers.Dense(OUT)])
    flat.save(tmp_path / "flat.keras")
    with pytest.raises(AssertionError, match="built"):  # a Flatten's row order needs the graph: the model is built
        wp.port(tmp_path / "flat.keras", torch.nn.Linear(24, OUT))
