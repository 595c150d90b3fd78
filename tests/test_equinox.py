"""Equinox layers against their torch and Keras twins: forward equivalence, bitwise round trips
Equinox -> Keras -> Equinox, negative controls, a whole model torch -> Equinox -> torch, and the
input module left unchanged (Equinox modules are immutable: a port returns a new one)."""
import numpy as np
import pytest

import weightport as wp
from util import assert_forward_differs, assert_forward_equal, randomize_keras, randomize_torch, skip_transforms
from weightport.errors import ConfigMismatchError, UnsupportedLayerError
from weightport.mappings.rule import Link, link, registry

eqx = pytest.importorskip("equinox")
keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

IN, OUT, C, CO, H, W, SEQ, B = 7, 5, 3, 8, 9, 8, 6, 2
KEY = jax.random.PRNGKey(0)
L = keras.layers


# -- helpers -------------------------------------------------------------------------------------------


def leaves(module) -> list:
    """Every array of the module, in pytree order, as numpy."""
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(module) if eqx.is_array(a)]


def randomize_eqx(module, seed: int = 0):
    """A copy with every floating array random, in its own dtype."""
    rng = np.random.default_rng(seed)

    def fill(a):
        if not eqx.is_inexact_array(a):
            return a
        return jnp.asarray(rng.standard_normal(a.shape).astype("float32") * 0.5, dtype=a.dtype)

    return jax.tree.map(fill, module)


def zeroed(module):
    return jax.tree.map(lambda a: jnp.zeros_like(a) if eqx.is_inexact_array(a) else a, module)


def assert_same_bits(before: list, after: list) -> None:
    assert len(before) == len(after)
    for x, y in zip(before, after):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), "round trip changed a weight"


def assert_eqx_roundtrip(module, other) -> None:
    """Equinox -> other -> Equinox (into a zeroed copy) gives back every weight bit for bit."""
    module = randomize_eqx(module, seed=7)
    wp.port(module, other)
    back = wp.port(other, zeroed(module)).target
    assert_same_bits(leaves(module), leaves(back))


def keras_model(layer, shape, dtype="float32"):
    inp = keras.Input(shape, dtype=dtype)
    return keras.Model(inp, layer(inp))


class SelfAttention(eqx.Module):
    mha: eqx.nn.MultiheadAttention

    def __call__(self, x):
        return self.mha(x, x, x)


class OverTime(eqx.Module):
    """Runs a cell over a (steps, features) sequence; returns every step's hidden state."""

    cell: eqx.Module

    def __call__(self, xs):
        u = self.cell.hidden_size
        lstm = isinstance(self.cell, eqx.nn.LSTMCell)
        state = (jnp.zeros(u), jnp.zeros(u)) if lstm else jnp.zeros(u)

        def step(state, x):
            state = self.cell(x, state)
            return state, state[0] if lstm else state

        return jax.lax.scan(step, state, xs)[1]


class Lookup(eqx.Module):
    emb: eqx.nn.Embedding

    def __call__(self, ids):
        return jax.vmap(self.emb)(ids)


class TorchFirst(torch.nn.Module):
    """The first output of a torch module (an RNN's sequence, attention without its weights)."""

    def __init__(self, inner, attention=False):
        super().__init__()
        self.inner, self.attention = inner, attention

    def forward(self, x):
        return self.inner(x, x, x, need_weights=False)[0] if self.attention else self.inner(x)[0]


def keras_attention():
    inp = keras.Input((SEQ, 6))
    return keras.Model(inp, L.MultiHeadAttention(num_heads=2, key_dim=3)(inp, inp))


rng = np.random.default_rng(0)
x_dense = rng.standard_normal((B, IN)).astype("float32")
x_img = rng.standard_normal((B, C, H, W)).astype("float32")
x_seq = rng.standard_normal((B, SEQ, IN)).astype("float32")
x_gn = rng.standard_normal((B, 6, OUT)).astype("float32")
x_att = rng.standard_normal((B, SEQ, 6)).astype("float32")
x_ids = rng.integers(0, 11, (B, SEQ)).astype("int32")

# name: (rule, equinox module, torch twin, keras twin factory, input)
CASES = {
    "linear": ("dense", lambda: eqx.nn.Linear(IN, OUT, key=KEY), lambda: torch.nn.Linear(IN, OUT),
               lambda: keras_model(L.Dense(OUT), (IN,)), x_dense),
    "conv2d": ("conv", lambda: eqx.nn.Conv2d(C, CO, (3, 2), stride=(2, 1), key=KEY),
               lambda: torch.nn.Conv2d(C, CO, (3, 2), stride=(2, 1)),
               lambda: keras_model(L.Conv2D(CO, (3, 2), strides=(2, 1), data_format="channels_first"), (C, H, W)),
               x_img),
    "conv_transpose2d": ("conv_transpose", lambda: eqx.nn.ConvTranspose2d(C, OUT, (3, 2), stride=(2, 1), key=KEY),
                         lambda: torch.nn.ConvTranspose2d(C, OUT, (3, 2), stride=(2, 1)),
                         lambda: keras_model(L.Conv2DTranspose(OUT, (3, 2), strides=(2, 1),
                                                               data_format="channels_first"), (C, H, W)),
                         x_img),
    "layer_norm": ("layer_normalization", lambda: eqx.nn.LayerNorm(IN, eps=1e-5), lambda: torch.nn.LayerNorm(IN),
                   lambda: keras_model(L.LayerNormalization(epsilon=1e-5), (IN,)), x_dense),
    "group_norm": ("group_normalization", lambda: eqx.nn.GroupNorm(2, 6, eps=1e-5), lambda: torch.nn.GroupNorm(2, 6),
                   lambda: keras_model(L.GroupNormalization(2, axis=1, epsilon=1e-5), (6, OUT)), x_gn),
    "rms_norm": ("rms_normalization", lambda: eqx.nn.RMSNorm(IN, eps=1e-6, use_bias=False), lambda: torch.nn.RMSNorm(IN, eps=1e-6),
                 lambda: keras_model(L.RMSNormalization(epsilon=1e-6), (IN,)), x_dense),
    "embedding": ("embedding", lambda: Lookup(eqx.nn.Embedding(11, OUT, key=KEY)), lambda: torch.nn.Embedding(11, OUT),
                  lambda: keras_model(L.Embedding(11, OUT), (SEQ,), dtype="int32"), x_ids),
    "attention": ("multi_head_attention", lambda: SelfAttention(eqx.nn.MultiheadAttention(
                      2, 6, use_query_bias=True, use_key_bias=True, use_value_bias=True, use_output_bias=True, key=KEY)),
                  lambda: TorchFirst(torch.nn.MultiheadAttention(6, 2, batch_first=True), attention=True),
                  keras_attention, x_att),
    "lstm": ("lstm", lambda: OverTime(eqx.nn.LSTMCell(IN, OUT, key=KEY)),
             lambda: TorchFirst(torch.nn.LSTM(IN, OUT, batch_first=True)),
             lambda: keras_model(L.LSTM(OUT, return_sequences=True), (SEQ, IN)), x_seq),
    "gru": ("gru", lambda: OverTime(eqx.nn.GRUCell(IN, OUT, key=KEY)),
            lambda: TorchFirst(torch.nn.GRU(IN, OUT, batch_first=True)),
            lambda: keras_model(L.GRU(OUT, return_sequences=True), (SEQ, IN)), x_seq),
}
# rules whose Equinox links are plain copies: the negative control swaps two slots instead
COPIES = {"layer_norm", "group_norm", "embedding", "rms_norm"}


@pytest.fixture(params=sorted(CASES))
def case(request):
    return request.param, CASES[request.param]


# -- every rule ------------------------------------------------------------------------------------------


def test_torch_to_equinox_forward_and_input_unchanged(case):
    _, (rule, make_eqx, make_torch, _, x) = case
    module, twin = make_eqx(), make_torch()
    randomize_torch(twin, seed=1)
    before = leaves(module)
    report = wp.port(twin, module)
    assert report.target is not module and type(report.target) is type(module)
    assert_same_bits(before, leaves(module))  # the input module is untouched
    assert_forward_equal(twin, report.target, x)
    # every array kept its dtype, and stayed a jax array
    arrays = [jax.tree_util.tree_leaves(m, is_leaf=eqx.is_array) for m in (module, report.target)]
    for old, new in zip(*arrays):
        if not eqx.is_array(old):
            continue
        assert isinstance(new, jax.Array) and new.dtype == old.dtype and new.shape == old.shape


def test_keras_to_equinox_forward(case):
    _, (rule, make_eqx, _, make_keras, x) = case
    module, twin = make_eqx(), make_keras()
    randomize_keras(twin, seed=2)
    assert_forward_equal(twin, wp.port(twin, module).target, x)


def test_equinox_keras_equinox_bitwise(case):
    _, (rule, make_eqx, _, make_keras, _) = case
    assert_eqx_roundtrip(make_eqx(), make_keras())


def test_negative_control(monkeypatch, case):
    name, (rule, make_eqx, make_torch, _, x) = case
    module, twin = make_eqx(), make_torch()
    randomize_torch(twin, seed=3)
    if name in COPIES:  # plain copies: weight and bias swapped, or a lone slot's rows reversed
        original = registry.get(rule).links_equinox
        if name in ("embedding", "rms_norm"):
            wrong = lambda hp: [Link(lk.canonical, lk.native, _Reversed()) for lk in original(hp)]  # noqa: E731
        else:
            wrong = lambda hp: [Link(a.canonical, b.native) for a, b in zip(original(hp), original(hp)[::-1])]  # noqa: E731
        monkeypatch.setattr(registry.get(rule), "links_equinox", wrong)
    else:
        skip_transforms(monkeypatch, rule, layout="equinox")
    assert_forward_differs(twin, wp.port(twin, module).target, x)


class _Reversed:
    """Rows reversed: a stand-in for a port that moves rows into the wrong places."""

    n_in = n_out = 1
    exact = True

    def forward(self, arrays):
        return (np.ascontiguousarray(arrays[0][::-1]),)

    inverse = forward

    def forward_shapes(self, shapes):
        return (tuple(shapes[0]),)

    inverse_shapes = forward_shapes

    def describe(self):
        return "reversed"


# -- particulars --------------------------------------------------------------------------------------


def test_conv_transpose_kernel_is_flipped(monkeypatch):
    """Equinox runs its ConvTranspose weight as a plain conv over the stretched input: without the flip, outputs differ."""
    rule = registry.get("conv_transpose")
    original = rule.links_equinox

    def no_flip(hp):
        rank = len(hp["kernel_size"])
        from weightport.mappings.transforms import Transpose

        return [link("kernel", "weight", Transpose(rank, rank + 1, *range(rank)))] + original(hp)[1:]

    monkeypatch.setattr(rule, "links_equinox", no_flip)
    _, make_eqx, make_torch, _, x = CASES["conv_transpose2d"]
    twin = make_torch()
    randomize_torch(twin, seed=4)
    assert_forward_differs(twin, wp.port(twin, make_eqx()).target, x)


def test_grouped_conv1d_against_torch():
    module = eqx.nn.Conv1d(6, 4, 3, groups=2, padding=1, key=KEY)
    twin = torch.nn.Conv1d(6, 4, 3, groups=2, padding=1)
    randomize_torch(twin, seed=5)
    x = rng.standard_normal((B, 6, 11)).astype("float32")
    assert_forward_equal(twin, wp.port(twin, module).target, x)


def test_whole_cnn_torch_to_equinox_and_back():
    eqx_model = eqx.nn.Sequential([
        eqx.nn.Conv2d(C, 4, (3, 2), key=KEY), eqx.nn.Lambda(jax.nn.relu), eqx.nn.LayerNorm((4, H - 2, W - 1)),
        eqx.nn.Lambda(jnp.ravel), eqx.nn.Linear(4 * (H - 2) * (W - 1), OUT, key=KEY)])
    torch_model = torch.nn.Sequential(
        torch.nn.Conv2d(C, 4, (3, 2)), torch.nn.ReLU(), torch.nn.LayerNorm((4, H - 2, W - 1)), torch.nn.Flatten(),
        torch.nn.Linear(4 * (H - 2) * (W - 1), OUT))
    randomize_torch(torch_model, seed=6)
    before = leaves(eqx_model)
    ported = wp.port(torch_model, eqx_model).target
    assert_same_bits(before, leaves(eqx_model))
    assert_forward_equal(torch_model, ported, x_img)
    state = {k: v.clone() for k, v in torch_model.state_dict().items()}
    fresh = torch.nn.Sequential(
        torch.nn.Conv2d(C, 4, (3, 2)), torch.nn.ReLU(), torch.nn.LayerNorm((4, H - 2, W - 1)), torch.nn.Flatten(),
        torch.nn.Linear(4 * (H - 2) * (W - 1), OUT))
    wp.port(ported, fresh)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_batch_norm_is_refused_clearly():
    model = eqx.nn.Sequential([eqx.nn.Linear(IN, OUT, key=KEY), eqx.nn.BatchNorm(OUT, axis_name="batch", mode="batch")])
    with pytest.raises(UnsupportedLayerError, match="eqx.nn.State"):
        wp.port(torch.nn.Sequential(torch.nn.Linear(IN, OUT), torch.nn.BatchNorm1d(OUT)), model)


def test_rms_norm_bias_is_written_as_zeros_and_refused_unless_zero():
    twin = torch.nn.RMSNorm(IN, eps=1e-6)
    randomize_torch(twin, seed=9)
    ported = wp.port(twin, randomize_eqx(eqx.nn.RMSNorm(IN, eps=1e-6, use_bias=True))).target
    assert not np.any(np.asarray(ported.bias))
    assert_forward_equal(twin, ported, x_dense)
    wp.port(ported, torch.nn.RMSNorm(IN, eps=1e-6))  # an all-zero bias is accepted
    with pytest.raises(ConfigMismatchError, match="RMSNorm's bias is non-zero"):
        wp.port(randomize_eqx(ported), torch.nn.RMSNorm(IN, eps=1e-6))


def test_bfloat16_module_keeps_its_dtype():
    module = eqx.nn.Linear(IN, OUT, key=KEY, dtype=jnp.bfloat16)
    twin = torch.nn.Linear(IN, OUT)
    randomize_torch(twin, seed=8)
    ported = wp.port(twin, module).target
    assert ported.weight.dtype == jnp.bfloat16
    expected = twin.weight.detach().to(torch.bfloat16).float().numpy()
    assert np.array_equal(np.asarray(ported.weight, dtype=np.float32), expected)


def test_get_and_set_weights_speak_keras_layout_and_return_a_new_module():
    module = randomize_eqx(eqx.nn.Conv2d(C, CO, (3, 2), key=KEY))
    kernel, bias = wp.get_weights(module)
    assert kernel.shape == (3, 2, C, CO) and bias.shape == (CO,)
    new = wp.set_weights(module, [kernel[::-1].copy(), bias + 1])
    assert new is not module and np.array_equal(np.asarray(module.bias)[:, 0, 0], bias)
    assert np.array_equal(wp.get_weights(new)[0], kernel[::-1]) and np.array_equal(wp.get_weights(new)[1], bias + 1)


def test_torch_layout_file_round_trip(tmp_path):
    module = randomize_eqx(eqx.nn.ConvTranspose2d(C, OUT, (3, 2), stride=(2, 1), key=KEY))
    wp.save(module, tmp_path / "m.safetensors", layout="torch")
    assert wp.load(tmp_path / "m.safetensors")["weight"].shape == (C, OUT, 3, 2)  # torch's (in, out, *k)
    back = wp.port(tmp_path / "m.safetensors", zeroed(module)).target
    assert_same_bits(leaves(module), leaves(back))
