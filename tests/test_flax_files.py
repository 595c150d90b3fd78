"""Flax Linen variables (ported into new dicts, never in place) and Flax msgpack files (lazy reading,
streaming writing that flax reads back), against torch, Keras and NNX twins."""
import json

import numpy as np
import pytest

import weightport as wp
from test_flax import (B, C, CO, E, HEADS, IN, OUT, SEQ, H, W, FlaxCNN, Seq, TorchCNN, channels_first, image,
                       keras_model, randomize_flax, rngs)
from util import assert_forward_equal, randomize_keras, randomize_torch

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
nn = pytest.importorskip("flax.linen")
serialization = pytest.importorskip("flax.serialization")
jnp = jax.numpy


class LinenCNN(nn.Module):
    """Conv, BatchNorm, Dense: the Linen twin of test_flax's TorchCNN (parameters sorted by name in Linen)."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(CO, (3, 2), padding="VALID")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3)(x)
        return nn.Dense(OUT)(nn.relu(x).mean(axis=(1, 2)))


def linen_cnn(dtype=jnp.float32):
    """The module and its variables, the conv and dense in ``dtype`` (BatchNorm stays float32, as in Keras)."""
    module = LinenCNN()
    variables = module.init(jax.random.PRNGKey(0), jnp.ones((1, H, W, C)))
    cast = lambda path, a: a if "BatchNorm" in jax.tree_util.keystr(path) else a.astype(dtype)  # noqa: E731
    return module, jax.tree_util.tree_map_with_path(cast, variables)


def copy_tree(tree):
    return jax.tree.map(lambda a: np.array(a), tree)


def assert_tree_bits(a, b):
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), f"{path} differs"


# -- Linen variables ------------------------------------------------------------------------------------


def test_port_into_linen_variables_returns_a_new_dict_and_leaves_the_input_alone():
    module, variables = linen_cnn()
    snapshot = copy_tree(variables)
    t = TorchCNN()
    randomize_torch(t)
    report = wp.port(t, variables)
    assert [s.rule for s in report.steps] == ["conv", "batch_normalization", "dense"]
    assert_tree_bits(variables, snapshot)  # unchanged, bit for bit
    new = report.target
    assert new is not variables and type(new) is type(variables)
    assert jax.tree.structure(new) == jax.tree.structure(variables)
    for old, fresh in zip(jax.tree.leaves(variables), jax.tree.leaves(new)):
        assert isinstance(fresh, jax.Array) and fresh.dtype == old.dtype and fresh.devices() == old.devices()
    x = image(B, H, W, C)
    assert_forward_equal((module, new), t, x, channels_first(x))


def test_linen_pair_in_and_out_and_back_to_torch():
    module, variables = linen_cnn()
    t = TorchCNN()
    randomize_torch(t)
    pair = wp.port(t, (module, variables)).target
    assert isinstance(pair, tuple) and pair[0] is module
    back = TorchCNN()
    wp.port(pair, back)  # a pair is a source too; the torch counter is dropped, so compare the function
    x = image(B, H, W, C)
    assert_forward_equal(pair, back, x, channels_first(x))
    for name, tensor in back.state_dict().items():
        if tensor.is_floating_point():
            assert torch.equal(tensor, t.state_dict()[name]), name


def test_linen_keras_linen_bitwise_with_bf16_and_frozen_dict():
    from flax.core import freeze

    module, variables = linen_cnn(jnp.bfloat16)
    randomized = jax.tree.map(lambda a: jnp.asarray(np.random.default_rng(1).standard_normal(a.shape) * 0.5 + 1,
                                                    a.dtype), variables)
    frozen = freeze(randomized)
    k = keras.Sequential([keras.Input((H, W, C)), keras.layers.Conv2D(CO, (3, 2), dtype="bfloat16"),
                          keras.layers.BatchNormalization(), keras.layers.ReLU(),
                          keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(OUT, dtype="bfloat16")])
    wp.port(frozen, k)
    zeros = freeze(jax.tree.map(jnp.zeros_like, randomized))
    back = wp.port(k, zeros).target
    assert type(back) is type(frozen)
    assert_tree_bits(back, frozen)


def test_bare_params_tree_and_unrecognised_groups():
    class Odd(nn.Module):
        @nn.compact
        def __call__(self, x):
            self.param("temperature", nn.initializers.ones, (3, 1, 2))
            return nn.Dense(OUT)(x)

    module = Odd()
    params = module.init(jax.random.PRNGKey(0), jnp.ones((1, IN)))["params"]
    lin = torch.nn.Linear(IN, OUT)
    with pytest.raises(wp.UnsupportedLayerError, match="temperature"):
        wp.port(lin, params)
    report = wp.port(lin, params, strict=False)
    assert report.steps[0].target == "Dense_0" and report.unmatched_target
    np.testing.assert_array_equal(np.asarray(report.target["Dense_0"]["kernel"]), lin.weight.detach().numpy().T)
    np.testing.assert_array_equal(report.target["temperature"], params["temperature"])


def test_variables_without_their_module_cannot_run():
    _, variables = linen_cnn()
    with pytest.raises(wp.UsageError, match=r"\(module, variables\)"):
        wp.verify(variables, variables, image(B, H, W, C))


class LinenRNN(nn.Module):
    cell: str

    @nn.compact
    def __call__(self, x):
        return nn.RNN(getattr(nn, self.cell)(OUT))(x)


@pytest.mark.parametrize("cell, torch_rnn, rule", [("LSTMCell", "LSTM", "lstm"), ("OptimizedLSTMCell", "LSTM", "lstm"),
                                                   ("GRUCell", "GRU", "gru"), ("SimpleCell", "RNN", "simple_rnn")])
def test_linen_cells_against_torch_and_keras(cell, torch_rnn, rule):
    """Linen keeps one dense per gate; GRU's recurrent z/r biases fold into the input ones (hn keeps its own)."""
    module = LinenRNN(cell)
    x = image(B, SEQ, IN)
    variables = module.init(jax.random.PRNGKey(0), jnp.asarray(x))
    t = Seq(getattr(torch.nn, torch_rnn)(IN, OUT, batch_first=True))
    randomize_torch(t)
    report = wp.port(t, variables)
    assert [s.rule for s in report.steps] == [rule]
    ported = report.target
    assert_forward_equal((module, ported), t, x)
    k = keras_model((SEQ, IN), getattr(keras.layers, {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "SimpleRNN"}[rule])(
        OUT, return_sequences=True))
    wp.port(ported, k)
    assert_forward_equal((module, ported), k, x)
    back = wp.port(k, variables).target  # Flax -> Keras -> Flax: bitwise
    assert_tree_bits(back, ported)


class LinenEncoder(nn.Module):
    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(11, E)(ids)
        x = x + nn.MultiHeadDotProductAttention(HEADS)(nn.LayerNorm(epsilon=1e-5)(x))
        return nn.Dense(OUT)(nn.RMSNorm(epsilon=1e-6)(x))


class TorchEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(11, E)
        self.norm = torch.nn.LayerNorm(E)
        self.attn = torch.nn.MultiheadAttention(E, HEADS, batch_first=True)
        self.rms = torch.nn.RMSNorm(E, eps=1e-6)
        self.head = torch.nn.Linear(E, OUT)

    def forward(self, ids):
        x = self.embed(ids)
        h = self.norm(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return self.head(self.rms(x))


def test_linen_encoder_groups_inferred_from_names_and_shapes():
    module, t = LinenEncoder(), TorchEncoder()
    ids = np.random.default_rng(0).integers(0, 11, (B, SEQ)).astype("int32")
    variables = module.init(jax.random.PRNGKey(0), jnp.asarray(ids))
    randomize_torch(t)
    report = wp.port(t, variables)
    assert sorted(s.rule for s in report.steps) == ["dense", "embedding", "layer_normalization",
                                                    "multi_head_attention", "rms_normalization"]
    assert_forward_equal((module, report.target), t, ids, ids.astype("int64"))


# -- msgpack files -----------------------------------------------------------------------------------------


@pytest.fixture
def linen_file(tmp_path):
    module, variables = linen_cnn(jnp.bfloat16)
    variables = jax.tree.map(lambda a: a + jnp.asarray(0.25, a.dtype), variables)
    path = tmp_path / "cnn.msgpack"
    path.write_bytes(serialization.to_bytes(variables))
    return module, variables, path


def test_msgpack_reads_flax_files_lazily_and_rewrites_them_byte_for_byte(linen_file, tmp_path):
    _, variables, path = linen_file
    ckpt = wp.load(path)
    assert ckpt.format == "msgpack" and ckpt.layout == "flax"
    expected = {"/".join(k.key for k in p): np.asarray(a) for p, a in jax.tree_util.tree_leaves_with_path(variables)}
    assert sorted(ckpt) == sorted(expected) and "batch_stats/BatchNorm_0/mean" in ckpt
    for name, array in expected.items():
        assert ckpt.shape(name) == array.shape and ckpt.dtype(name) == array.dtype
        loaded = ckpt[name]
        assert isinstance(loaded, np.memmap)  # read on demand, straight from the file
        assert np.array_equal(loaded.view(np.uint8), array.view(np.uint8)), name
    out = tmp_path / "again.msgpack"
    wp.converter.formats.write_checkpoint(out, ckpt)
    assert out.read_bytes() == path.read_bytes()


def test_msgpack_chunked_arrays_both_ways(tmp_path, monkeypatch):
    from weightport.converter.formats import msgpack as wp_msgpack

    big = {"params": {"embed": {"embedding": np.arange(7 * 5, dtype="float32").reshape(7, 5)}}}
    monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", 48)  # flax splits it into 12-float chunks
    flax_file = tmp_path / "flax.msgpack"
    flax_file.write_bytes(serialization.msgpack_serialize(big))
    ckpt = wp.load(flax_file)
    assert list(ckpt) == ["params/embed/embedding"]
    np.testing.assert_array_equal(ckpt["params/embed/embedding"], big["params"]["embed"]["embedding"])
    monkeypatch.setattr(wp_msgpack, "MAX_CHUNK_SIZE", 48)
    ours = tmp_path / "ours.msgpack"
    wp.converter.formats.write_checkpoint(ours, ckpt)
    restored = serialization.msgpack_restore(ours.read_bytes())
    np.testing.assert_array_equal(restored["params"]["embed"]["embedding"], big["params"]["embed"]["embedding"])


def test_msgpack_file_ports_into_torch_and_keras_by_inference(linen_file):
    module, variables, path = linen_file
    t = TorchCNN()
    report = wp.port(str(path), t)  # layers in the file's (Linen's alphabetical) order
    assert sorted(s.rule for s in report.steps) == ["batch_normalization", "conv", "dense"]
    x = image(B, H, W, C)
    f32 = jax.tree.map(lambda a: a.astype(jnp.float32), variables)
    assert_forward_equal((module, f32), t, x, channels_first(x))
    k = keras.Sequential([keras.Input((H, W, C)), keras.layers.Conv2D(CO, (3, 2), dtype="bfloat16"),
                          keras.layers.BatchNormalization(epsilon=1e-3), keras.layers.ReLU(),
                          keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(OUT, dtype="bfloat16")])
    wp.port(str(path), k)
    assert keras_weights_equal(k, [variables["params"]["Conv_0"]["kernel"], variables["params"]["Conv_0"]["bias"]])


def keras_weights_equal(model, arrays):
    found = [np.asarray(keras.ops.convert_to_numpy(v.value)) for v in model.weights[:len(arrays)]]
    return all(a.dtype == np.asarray(b).dtype and np.array_equal(a.view(np.uint8), np.asarray(b).view(np.uint8))
               for a, b in zip(found, arrays))


def test_convert_torch_to_msgpack_for_a_linen_model(tmp_path):
    module, variables = linen_cnn()
    t = TorchCNN()
    randomize_torch(t)
    out = tmp_path / "from_torch.msgpack"
    wp.convert(t, out, like=(module, variables))
    restored = serialization.from_bytes(variables, out.read_bytes())  # flax's own loader, Linen names
    x = image(B, H, W, C)
    assert_forward_equal((module, restored), t, x, channels_first(x))


def test_save_nnx_layout_without_a_target_and_load_it_into_nnx(tmp_path):
    from flax import nnx

    t = TorchCNN()
    randomize_torch(t)
    path = tmp_path / "cnn.msgpack"
    wp.save(t, path, layout="flax")
    ckpt = wp.load(path)
    assert sorted(ckpt) == ["bn/bias", "bn/mean", "bn/scale", "bn/var", "conv/bias", "conv/kernel", "head/bias",
                            "head/kernel"]
    f = FlaxCNN(rngs())
    wp.port(path, f)
    x = image(B, H, W, C)
    assert_forward_equal(f, t, x, channels_first(x))
    # what NNX users save: the pure dict of the model's state
    randomize_flax(f, seed=4)
    state = tmp_path / "state.msgpack"
    state.write_bytes(serialization.to_bytes(nnx.to_pure_dict(nnx.state(f))))
    back = TorchCNN()
    wp.port(state, back)
    assert_forward_equal(f, back, x, channels_first(x))


def test_inspect_lists_flattened_names(linen_file, capsys):
    from weightport.cli import main

    _, _, path = linen_file
    assert main(["inspect", str(path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["format"] == "msgpack" and listed["layout"] == "flax"
    assert {"name": "params/Conv_0/kernel", "shape": [3, 2, C, CO], "dtype": "bfloat16",
            "nbytes": 3 * 2 * C * CO * 2} in listed["tensors"]


def test_damaged_msgpack_files_are_refused(linen_file, tmp_path):
    _, _, path = linen_file
    data = path.read_bytes()
    cut = tmp_path / "cut.msgpack"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(wp.FormatError, match="truncated"):
        wp.load(cut)
    junk = tmp_path / "junk.msgpack"
    junk.write_bytes(b"\x81\xa1a\xc1")
    with pytest.raises(wp.FormatError, match="0xc1"):
        wp.load(junk)
    extra = tmp_path / "extra.msgpack"
    extra.write_bytes(data + b"\x00")
    with pytest.raises(wp.FormatError, match="follow"):
        wp.load(extra)


def test_keras_to_linen_through_a_file(tmp_path):
    """Keras (on the suite's backend) -> msgpack for a Linen model -> Linen computes what Keras does."""
    module, variables = linen_cnn()
    k = keras.Sequential([keras.Input((H, W, C)), keras.layers.Conv2D(CO, (3, 2)),
                          keras.layers.BatchNormalization(), keras.layers.ReLU(),
                          keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(OUT)])
    randomize_keras(k)
    out = tmp_path / "k.msgpack"
    wp.save(k, out, like=(module, variables))
    restored = serialization.from_bytes(variables, out.read_bytes())
    assert_forward_equal((module, restored), k, image(B, H, W, C))


def test_nnx_recurrent_state_file_ports_into_torch(tmp_path):
    from flax import nnx

    f = nnx.RNN(nnx.LSTMCell(IN, OUT, rngs=rngs()))
    randomize_flax(f)
    path = tmp_path / "lstm.msgpack"
    path.write_bytes(serialization.to_bytes(nnx.to_pure_dict(nnx.state(f, nnx.Param))))  # no RNG keys
    t = Seq(torch.nn.LSTM(IN, OUT, batch_first=True))
    report = wp.port(path, t)
    assert [(s.source, s.rule) for s in report.steps] == [("cell", "lstm")]
    assert_forward_equal(f, t, image(B, SEQ, IN))


def test_get_weights_of_linen_variables_is_keras_ordered():
    module, variables = linen_cnn()
    t = TorchCNN()
    randomize_torch(t)
    ported = wp.port(t, variables).target
    expected = wp.get_weights(t.bn) + wp.get_weights(t.conv) + wp.get_weights(t.head)  # Linen sorts by name
    found = wp.get_weights(ported)
    assert len(found) == len(expected) == 8
    for a, b in zip(found, expected):
        np.testing.assert_array_equal(a, b)
