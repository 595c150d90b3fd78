"""Flax NNX layers against their Keras and torch twins: forward equivalence both ways, bitwise round trips
Flax -> Keras -> Flax and Flax -> torch -> Flax, negative controls, and whole models (a CNN, a transformer
block) ported between NNX, torch and Keras (on whichever backend the suite runs)."""
import numpy as np
import pytest

import weightport as wp
from util import assert_forward_differs, assert_forward_equal, randomize_keras, randomize_torch, skip_transforms
from weightport.mappings import transforms as T
from weightport.mappings.rule import Link, registry

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")

IN, OUT, C, CO, H, W, SEQ, B = 7, 5, 3, 8, 9, 8, 6, 2
HEADS, HEAD_DIM = 3, 5
E = HEADS * HEAD_DIM


# -- helpers -------------------------------------------------------------------------------------------


def flax_variables(model):
    """(path, nnx.Variable) of every weight, in path order."""
    from weightport.converter.frameworks.flax import _is_weight

    found = [("/".join(map(str, p)), v) for p, v in nnx.iter_graph(model) if _is_weight(v)]
    return sorted(found, key=lambda pv: pv[0])


def randomize_flax(model, seed: int = 0) -> None:
    """Every weight random (variances positive), in its own dtype."""
    rng = np.random.default_rng(seed)
    for path, var in flax_variables(model):
        value = var.get_value()
        r = rng.standard_normal(value.shape).astype("float32") * 0.5
        if path.endswith("var"):
            r = np.abs(r) + 0.5
        var.set_value(jax.numpy.asarray(r, dtype=value.dtype))


def flax_weights(model) -> dict:
    return {path: np.array(var.get_value()) for path, var in flax_variables(model)}


def assert_same_bits(before: dict, after: dict) -> None:
    assert list(before) == list(after)
    for name in before:
        x, y = before[name], after[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), f"round trip changed {name}"


def assert_flax_roundtrip(flax_model, other) -> None:
    """Flax -> other -> Flax gives back every weight bit for bit."""
    randomize_flax(flax_model, seed=7)
    before = flax_weights(flax_model)
    wp.port(flax_model, other)
    for _, var in flax_variables(flax_model):  # scramble, so a port that copies nothing is caught
        var.set_value(jax.numpy.zeros_like(var.get_value()))
    wp.port(other, flax_model)
    assert_same_bits(before, flax_weights(flax_model))


def rngs():
    return nnx.Rngs(0)


def channels_first(x):
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


class Seq(torch.nn.Module):
    """A torch recurrent layer returning its output sequence (batch first), as Keras and nnx.RNN do."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


class SelfAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = torch.nn.MultiheadAttention(E, HEADS, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


class FlaxSelfAttention(nnx.Module):
    def __init__(self, rngs):
        self.mha = nnx.MultiHeadAttention(HEADS, E, qkv_features=E, decode=False, rngs=rngs)

    def __call__(self, x):
        return self.mha(x)


def keras_model(shape, layer, dtype=None):
    x = keras.Input(shape, dtype=dtype)
    return keras.Model(x, layer(x))


def keras_self_attention():
    x = keras.Input((SEQ, E))
    return keras.Model(x, keras.layers.MultiHeadAttention(HEADS, HEAD_DIM)(x, x))


def image(*shape):
    return np.random.default_rng(5).standard_normal(shape).astype("float32")


# name -> (rule, flax model, Keras model, torch model, flax/Keras input, torch input)
def case(name):
    r = rngs()
    x_img = image(B, H, W, C)
    seq = image(B, SEQ, IN)
    if name == "dense":
        return ("dense", nnx.Linear(IN, OUT, rngs=r), keras_model((IN,), keras.layers.Dense(OUT)),
                torch.nn.Linear(IN, OUT), image(4, IN), image(4, IN))
    if name == "conv":
        return ("conv", nnx.Conv(C, CO, (3, 2), padding="VALID", rngs=r),
                keras_model((H, W, C), keras.layers.Conv2D(CO, (3, 2))), torch.nn.Conv2d(C, CO, (3, 2)),
                x_img, channels_first(x_img))
    if name == "depthwise_conv":
        return ("depthwise_conv", nnx.Conv(C, 2 * C, (3, 2), feature_group_count=C, padding="VALID", rngs=r),
                keras_model((H, W, C), keras.layers.DepthwiseConv2D((3, 2), depth_multiplier=2)),
                torch.nn.Conv2d(C, 2 * C, (3, 2), groups=C), x_img, channels_first(x_img))
    if name.startswith("conv_transpose"):
        return ("conv_transpose",
                nnx.ConvTranspose(C, OUT, (3, 2), strides=2, padding="VALID",
                                  transpose_kernel=name.endswith("transposed"), rngs=r),
                keras_model((H, W, C), keras.layers.Conv2DTranspose(OUT, (3, 2), strides=2)),
                torch.nn.ConvTranspose2d(C, OUT, (3, 2), stride=2), x_img, channels_first(x_img))
    if name == "batch_normalization":
        return ("batch_normalization", nnx.BatchNorm(C, epsilon=1e-3, rngs=r),
                keras_model((H, W, C), keras.layers.BatchNormalization()),
                torch.nn.BatchNorm2d(C, eps=1e-3, momentum=0.01), x_img, channels_first(x_img))
    if name == "layer_normalization":
        return ("layer_normalization", nnx.LayerNorm(IN, epsilon=1e-5, rngs=r),
                keras_model((SEQ, IN), keras.layers.LayerNormalization(epsilon=1e-5)),
                torch.nn.LayerNorm(IN, eps=1e-5), seq, seq)
    if name == "group_normalization":
        return ("group_normalization", nnx.GroupNorm(3 * C, num_groups=C, epsilon=1e-5, rngs=r),
                keras_model((H, W, 3 * C), keras.layers.GroupNormalization(C, epsilon=1e-5)),
                torch.nn.GroupNorm(C, 3 * C, eps=1e-5), image(B, H, W, 3 * C), channels_first(image(B, H, W, 3 * C)))
    if name == "rms_normalization":
        return ("rms_normalization", nnx.RMSNorm(IN, epsilon=1e-6, rngs=r),
                keras_model((SEQ, IN), keras.layers.RMSNormalization(epsilon=1e-6)),
                torch.nn.RMSNorm(IN, eps=1e-6), seq, seq)
    if name == "embedding":
        ids = np.random.default_rng(2).integers(0, 11, (B, SEQ)).astype("int32")
        return ("embedding", nnx.Embed(11, IN, rngs=r), keras_model((SEQ,), keras.layers.Embedding(11, IN), "int32"),
                torch.nn.Embedding(11, IN), ids, ids.astype("int64"))
    if name == "multi_head_attention":
        x = image(B, SEQ, E)
        return ("multi_head_attention", FlaxSelfAttention(r), keras_self_attention(), SelfAttention(), x, x)
    if name.startswith("lstm"):
        cell = (nnx.OptimizedLSTMCell if name.endswith("packed") else nnx.LSTMCell)(IN, OUT, rngs=r)
        return ("lstm", nnx.RNN(cell), keras_model((SEQ, IN), keras.layers.LSTM(OUT, return_sequences=True)),
                Seq(torch.nn.LSTM(IN, OUT, batch_first=True)), seq, seq)
    if name == "simple_rnn":
        return ("simple_rnn", nnx.RNN(nnx.SimpleCell(IN, OUT, rngs=r)),
                keras_model((SEQ, IN), keras.layers.SimpleRNN(OUT, return_sequences=True)),
                Seq(torch.nn.RNN(IN, OUT, batch_first=True)), seq, seq)
    raise KeyError(name)


CASES = ["dense", "conv", "depthwise_conv", "conv_transpose", "conv_transpose_transposed", "batch_normalization",
         "layer_normalization", "group_normalization", "rms_normalization", "embedding", "multi_head_attention",
         "lstm", "lstm_packed", "simple_rnn"]
# torch -> Flax -> torch loses torch's second RNN bias (summed) and BatchNorm's counter: not bitwise
TORCH_LOSSY = {"lstm", "lstm_packed", "simple_rnn"}


@pytest.mark.parametrize("name", CASES)
def test_torch_to_flax_forward(name):
    rule, f, _, t, x_f, x_t = case(name)
    randomize_torch(t)
    report = wp.port(t, f)
    assert [s.rule for s in report.steps] == [rule]
    assert_forward_equal(f, t, x_f, x_t)


@pytest.mark.parametrize("name", CASES)
def test_keras_to_flax_forward_and_back_bitwise(name):
    rule, f, k, _, x_f, _ = case(name)
    randomize_keras(k)
    report = wp.port(k, f)
    assert [s.rule for s in report.steps] == [rule]
    assert_forward_equal(f, k, x_f)
    assert_flax_roundtrip(f, k)


@pytest.mark.parametrize("name", CASES)
def test_flax_torch_flax(name):
    rule, f, _, t, x_f, x_t = case(name)
    if name in TORCH_LOSSY:  # Flax -> torch is exact (the bias lands in one of torch's two): check the function
        randomize_flax(f)
        wp.port(f, t)
        assert_forward_equal(f, t, x_f, x_t)
        before = flax_weights(f)
        wp.port(t, f)
        assert_same_bits(before, flax_weights(f))
    else:
        assert_flax_roundtrip(f, t)


@pytest.mark.parametrize("name", [c for c in CASES if c not in ("embedding", "layer_normalization",
                                                                   "group_normalization", "rms_normalization",
                                                                   "batch_normalization")])
def test_negative_control_without_torch_transforms(monkeypatch, name):
    # the Flax side is a copy; what makes torch -> Flax right is the torch layout's transform, skipped here
    rule, f, _, t, x_f, x_t = case(name)
    randomize_torch(t)
    skip_transforms(monkeypatch, rule)
    wp.port(t, f)
    assert_forward_differs(f, t, x_f, x_t)


@pytest.mark.parametrize("name, swap", [("batch_normalization", ("mean", "var")),
                                        ("layer_normalization", ("scale", "bias")),
                                        ("group_normalization", ("scale", "bias")),
                                        ("embedding", None), ("rms_normalization", None),
                                        ("lstm", ("ii/kernel", "ig/kernel")),
                                        ("conv_transpose", "flip")])
def test_negative_control_flax_links(monkeypatch, name, swap):
    """A Flax link done wrong (slots swapped, no flip, a table transposed) must change the function."""
    rule_name, f, _, t, x_f, x_t = case(name)
    rule = registry.get(rule_name)
    original = rule.links_flax

    def wrong(hp):
        out = []
        for lk in original(hp):
            native = lk.native
            if swap == "flip":
                t_ = lk.transform.parts[1] if isinstance(lk.transform, T.Chain) else lk.transform
                out.append(Link(lk.canonical, native, t_))
                continue
            if swap is None:  # a square-free table or vector read in reverse order
                out.append(Link(lk.canonical, native, T.ReorderBlocks(0, tuple(range(
                    {"embedding": 11, "rms_normalization": IN}[name]))[::-1])))
                continue
            native = tuple({swap[0]: swap[1], swap[1]: swap[0]}.get(n, n) for n in native)
            out.append(Link(lk.canonical, native, lk.transform))
        return out

    monkeypatch.setattr(rule, "links_flax", wrong)
    randomize_torch(t)
    wp.port(t, f)
    assert_forward_differs(f, t, x_f, x_t)


# -- GRU: NNX's GRUCell has no recurrent candidate bias ------------------------------------------------


def gru_case():
    f = nnx.RNN(nnx.GRUCell(IN, OUT, rngs=rngs()))
    k = keras_model((SEQ, IN), keras.layers.GRU(OUT, return_sequences=True))
    return f, k, Seq(torch.nn.GRU(IN, OUT, batch_first=True)), image(B, SEQ, IN)


def test_gru_nnx_to_keras_and_torch_forward_and_back_bitwise():
    f, k, t, x = gru_case()
    randomize_flax(f)
    report = wp.port(f, k)
    assert report.steps[0].rule == "gru" and not report.exact
    assert_forward_equal(f, k, x)
    wp.port(f, t)
    assert_forward_equal(f, t, x)
    before = flax_weights(f)
    for _, var in flax_variables(f):
        var.set_value(jax.numpy.zeros_like(var.get_value()))
    wp.port(k, f)
    assert_same_bits(before, flax_weights(f))
    wp.port(t, f)
    assert_same_bits(before, flax_weights(f))


def test_gru_keras_with_zero_candidate_bias_folds_the_rest_into_nnx():
    f, k, _, x = gru_case()
    randomize_keras(k)
    cell = k.layers[-1].cell
    bias = np.array(keras.ops.convert_to_numpy(cell.bias))
    bias[1, 2 * OUT:] = 0  # recurrent z and r biases stay non-zero: they are folded into the input ones
    cell.bias.assign(bias)
    wp.port(k, f)
    assert_forward_equal(f, k, x)


def test_gru_with_candidate_bias_is_refused_for_nnx_and_target_untouched():
    f, _, t, x = gru_case()
    randomize_torch(t)
    before = flax_weights(f)
    with pytest.raises(wp.UnsupportedLayerError, match=r"nnx.GRUCell keeps no such bias"):
        wp.port(t, f)
    assert_same_bits(before, flax_weights(f))


def test_gru_negative_control_without_gate_reorder(monkeypatch):
    f, k, _, x = gru_case()
    randomize_flax(f)
    skip_transforms(monkeypatch, "gru", layout="flax")  # the kernels' r, z, n <-> z, r, h reorder
    wp.port(f, k)
    assert_forward_differs(f, k, x)


# -- configuration the weights cannot carry -------------------------------------------------------------


def test_flax_epsilon_default_is_compared_in_keras_terms():
    f = nnx.LayerNorm(IN, rngs=rngs())  # Flax's 1e-6 against Keras' 1e-3
    k = keras_model((SEQ, IN), keras.layers.LayerNormalization())
    with pytest.warns(wp.WeightportWarning, match="epsilon"):
        wp.port(k, f)


def test_flax_batchnorm_momentum_is_keras_convention():
    f = nnx.BatchNorm(C, momentum=0.9, epsilon=1e-3, rngs=rngs())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", wp.WeightportWarning)
        wp.port(keras_model((H, W, C), keras.layers.BatchNormalization(momentum=0.9)), f)
    with pytest.warns(wp.WeightportWarning, match="momentum"):
        wp.port(torch.nn.BatchNorm2d(C, eps=1e-3, momentum=0.9), f)  # torch 0.9 is Keras/Flax 0.1


def test_residual_simple_cell_and_bidirectional_keras_are_refused():
    f = nnx.RNN(nnx.SimpleCell(IN, OUT, residual=True, rngs=rngs()))
    with pytest.raises(wp.ConfigMismatchError, match="residual"):
        wp.port(keras_model((SEQ, IN), keras.layers.SimpleRNN(OUT, return_sequences=True)), f)
    bi = keras_model((SEQ, IN), keras.layers.Bidirectional(keras.layers.LSTM(OUT, return_sequences=True)))
    with pytest.raises(wp.WeightportError, match="bidirectional"):
        wp.port(bi, nnx.RNN(nnx.LSTMCell(IN, OUT, rngs=rngs())))


def test_conv_padding_difference_warns():
    f = nnx.Conv(C, CO, (3, 3), padding="SAME", rngs=rngs())
    with pytest.warns(wp.WeightportWarning, match="padding"):
        wp.port(torch.nn.Conv2d(C, CO, 3), f)


def test_get_set_weights_speak_keras_layout_for_nnx_layers():
    cell = nnx.LSTMCell(IN, OUT, rngs=rngs())
    randomize_flax(cell)
    kernel, recurrent, bias = wp.get_weights(cell)
    assert kernel.shape == (IN, 4 * OUT) and recurrent.shape == (OUT, 4 * OUT) and bias.shape == (4 * OUT,)
    np.testing.assert_array_equal(kernel[:, OUT:2 * OUT], np.asarray(cell.if_.kernel.get_value()))
    packed = nnx.OptimizedLSTMCell(IN, OUT, rngs=rngs())
    wp.set_weights(packed, [kernel, recurrent, bias])
    np.testing.assert_array_equal(np.asarray(packed.dense_h.bias.get_value()), bias)
    with pytest.raises(wp.ShapeMismatchError, match=r"expected shape \(7, 20\)"):
        wp.set_weights(packed, [kernel.T, recurrent, bias])


# -- whole models --------------------------------------------------------------------------------------


class FlaxCNN(nnx.Module):
    def __init__(self, rngs, dtype=jax.numpy.float32):
        self.conv = nnx.Conv(C, CO, (3, 2), padding="VALID", param_dtype=dtype, rngs=rngs)
        self.bn = nnx.BatchNorm(CO, epsilon=1e-3, param_dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(CO, OUT, param_dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.head(jax.nn.relu(self.bn(self.conv(x))).mean(axis=(1, 2)))


class TorchCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(C, CO, (3, 2))
        self.bn = torch.nn.BatchNorm2d(CO, eps=1e-3, momentum=0.01)
        self.head = torch.nn.Linear(CO, OUT)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def keras_cnn():
    return keras.Sequential([keras.Input((H, W, C)), keras.layers.Conv2D(CO, (3, 2)),
                             keras.layers.BatchNormalization(), keras.layers.ReLU(),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(OUT)])


class FlaxBlock(nnx.Module):
    """Pre-norm transformer block."""

    def __init__(self, rngs):
        self.norm1 = nnx.LayerNorm(E, epsilon=1e-5, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(HEADS, E, decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(E, epsilon=1e-5, rngs=rngs)
        self.up = nnx.Linear(E, 11, rngs=rngs)
        self.down = nnx.Linear(11, E, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x)), approximate=False))


class TorchBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(E)
        self.attn = torch.nn.MultiheadAttention(E, HEADS, batch_first=True)
        self.norm2 = torch.nn.LayerNorm(E)
        self.up = torch.nn.Linear(E, 11)
        self.down = torch.nn.Linear(11, E)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm2(x))))


@pytest.mark.parametrize("kind", ["cnn", "transformer"])
def test_whole_model_torch_to_nnx_and_back(kind):
    if kind == "cnn":
        f, t, x_f = FlaxCNN(rngs()), TorchCNN(), image(B, H, W, C)
        x_t = channels_first(x_f)
    else:
        f, t, x_f = FlaxBlock(rngs()), TorchBlock(), image(B, SEQ, E)
        x_t = x_f
    randomize_torch(t)
    report = wp.port(t, f)
    assert len(report.steps) == (3 if kind == "cnn" else 5)
    assert_forward_equal(f, t, x_f, x_t)
    fresh = TorchCNN() if kind == "cnn" else TorchBlock()
    randomize_flax(f, seed=3)
    wp.port(f, fresh)
    assert_forward_equal(f, fresh, x_f, x_t)


def test_torch_to_keras_to_nnx_and_back():
    """torch -> Keras (on the suite's backend, jax included) -> NNX -> torch: every hop computes the same."""
    t, k, f, x = TorchCNN(), keras_cnn(), FlaxCNN(rngs()), image(B, H, W, C)
    randomize_torch(t)
    wp.port(t, k)
    assert_forward_equal(t, k, channels_first(x), x)
    wp.port(k, f)
    assert_forward_equal(f, k, x)
    back = TorchCNN()
    wp.port(f, back)
    assert_forward_equal(back, t, channels_first(x))
    for a, b in zip(back.state_dict().values(), t.state_dict().values()):
        if a.is_floating_point():
            assert torch.equal(a, b)


def test_dtypes_and_devices_are_kept_and_bf16_round_trips_bitwise():
    f = FlaxCNN(rngs(), dtype=jax.numpy.bfloat16)  # BatchNorm statistics stay float32 in NNX
    kept = {path: (var.get_value().dtype, var.get_value().devices()) for path, var in flax_variables(f)}
    assert {d for d, _ in kept.values()} == {np.dtype(jax.numpy.bfloat16), np.dtype("float32")}
    t = TorchCNN().to(torch.bfloat16)
    randomize_torch(t)
    wp.port(t, f)
    assert {path: (var.get_value().dtype, var.get_value().devices()) for path, var in flax_variables(f)} == kept
    np.testing.assert_array_equal(np.asarray(f.head.kernel.get_value()).view(np.uint16),
                                  t.head.weight.detach().T.contiguous().view(torch.int16).numpy().view(np.uint16))
    assert_flax_roundtrip(nnx.Linear(IN, OUT, param_dtype=jax.numpy.bfloat16, rngs=rngs()),
                          torch.nn.Linear(IN, OUT, dtype=torch.bfloat16))


def test_nnx_children_follow_definition_order_lists_and_dicts():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.second = nnx.Linear(OUT, 3, rngs=rngs)
            self.first = nnx.Sequential(nnx.Linear(IN, OUT, rngs=rngs), nnx.relu)
            self.heads = nnx.data([nnx.Linear(3, 2, rngs=rngs)])
            self.drop = nnx.Dropout(0.5, rngs=rngs)  # holds RNG state, not weights

    from weightport.converter.frameworks import require_adapter, walk

    m = Model(rngs())
    refs, unmapped = walk(require_adapter(m), m)
    assert [r.path for r in refs] == ["second", "first/layers/0", "heads/0"] and not unmapped


def test_verify_runs_nnx_in_inference_mode_without_changing_it():
    f = FlaxCNN(rngs())
    randomize_flax(f)
    assert f.bn.use_running_average is False
    out = wp.verify(f, f, image(B, H, W, C))
    assert out.ok and f.bn.use_running_average is False
