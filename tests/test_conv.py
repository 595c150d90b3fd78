"""Convolutions (conv, depthwise, separable, transposed) Keras <-> torch: forward, round trip, controls, bad input."""
import warnings

import numpy as np
import pytest

import weightport as wp
from util import (assert_forward_differs, assert_forward_equal, assert_keras_roundtrip, keras_weights,
                  randomize_keras, randomize_torch, skip_transforms)
from weightport.mappings.rule import registry

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
nn, L = torch.nn, keras.layers
# torch's note that an even kernel with padding='same' copies the input: expected here, not a problem
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")


class SepConv(nn.Module):
    """A separable conv as people write it: any class, any child names."""

    def __init__(self, c_in, c_out, kernel, multiplier, stride=1, dw_bias=False):
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in * multiplier, kernel, stride=stride, groups=c_in, bias=dw_bias)
        self.pw = nn.Conv2d(c_in * multiplier, c_out, 1)

    def forward(self, x):
        return self.pw(self.dw(x))


def keras_model(input_shape, layer):
    return keras.Sequential([keras.Input(input_shape), layer])


# name -> (rule, torch module, Keras layer, input shape NCHW...); sizes distinct so no transposition hides
CASES = {
    "conv1d": ("conv", lambda: nn.Conv1d(3, 8, 5, stride=2),
               lambda: L.Conv1D(8, 5, strides=2), (3, 11)),
    "conv2d": ("conv", lambda: nn.Conv2d(3, 8, (5, 2), stride=(2, 1)),
               lambda: L.Conv2D(8, (5, 2), strides=(2, 1)), (3, 9, 7)),
    "conv2d-same-nobias": ("conv", lambda: nn.Conv2d(3, 8, (5, 2), padding="same", bias=False),
                           lambda: L.Conv2D(8, (5, 2), padding="same", use_bias=False), (3, 9, 7)),
    "conv2d-groups": ("conv", lambda: nn.Conv2d(4, 6, (5, 3), groups=2),
                      lambda: L.Conv2D(6, (5, 3), groups=2), (4, 9, 7)),
    "conv3d": ("conv", lambda: nn.Conv3d(3, 8, (5, 2, 4), stride=(2, 1, 1)),
               lambda: L.Conv3D(8, (5, 2, 4), strides=(2, 1, 1)), (3, 7, 4, 6)),
    "depthwise1d": ("depthwise_conv", lambda: nn.Conv1d(5, 10, 3, stride=2, groups=5),
                    lambda: L.DepthwiseConv1D(3, strides=2, depth_multiplier=2), (5, 11)),
    "depthwise2d": ("depthwise_conv", lambda: nn.Conv2d(5, 10, (3, 4), stride=(2, 1), groups=5),
                    lambda: L.DepthwiseConv2D((3, 4), strides=(2, 1), depth_multiplier=2), (5, 9, 7)),
    "separable1d": ("separable_conv",
                    lambda: nn.Sequential(nn.Conv1d(5, 10, 3, stride=2, groups=5, bias=False), nn.Conv1d(10, 7, 1)),
                    lambda: L.SeparableConv1D(7, 3, strides=2, depth_multiplier=2), (5, 11)),
    "separable2d": ("separable_conv", lambda: SepConv(5, 7, (3, 4), 2, stride=(2, 1)),
                    lambda: L.SeparableConv2D(7, (3, 4), strides=(2, 1), depth_multiplier=2), (5, 9, 7)),
    "transpose1d": ("conv_transpose", lambda: nn.ConvTranspose1d(3, 8, 5, stride=2),
                    lambda: L.Conv1DTranspose(8, 5, strides=2), (3, 6)),
    # stride 3 > kernel 2: Keras 'valid' then adds one row, which torch spells output_padding=1
    "transpose2d": ("conv_transpose", lambda: nn.ConvTranspose2d(3, 8, (5, 2), stride=(2, 3), output_padding=(0, 1)),
                    lambda: L.Conv2DTranspose(8, (5, 2), strides=(2, 3)), (3, 5, 4)),
    "transpose3d": ("conv_transpose", lambda: nn.ConvTranspose3d(3, 8, (5, 2, 4), stride=(2, 1, 1)),
                    lambda: L.Conv3DTranspose(8, (5, 2, 4), strides=(2, 1, 1)), (3, 4, 3, 2)),
}


def build(case):
    rule, make_torch, make_keras, shape = CASES[case]
    return rule, make_torch(), keras_model(shape[1:] + shape[:1], make_keras()), shape


def inputs(shape, batch=2):
    x = np.random.randn(batch, *shape).astype("float32")
    return x, np.moveaxis(x, 1, -1)


@pytest.mark.parametrize("case", CASES)
def test_torch_to_keras_forward(case):
    rule, t, k, shape = build(case)
    randomize_torch(t)
    with warnings.catch_warnings():
        warnings.simplefilter("error", wp.WeightportWarning)  # these pairs agree in padding and strides
        report = wp.port(t, k)
    assert [s.rule for s in report.steps] == [rule]
    assert_forward_equal(t, k, *inputs(shape))


@pytest.mark.parametrize("case", CASES)
def test_keras_to_torch_forward(case):
    rule, t, k, shape = build(case)
    randomize_keras(k)
    report = wp.port(k, t)
    assert [s.rule for s in report.steps] == [rule]
    assert_forward_equal(t, k, *inputs(shape))


@pytest.mark.parametrize("case", CASES)
def test_keras_torch_keras_bitwise(case):
    _, t, k, _ = build(case)
    assert_keras_roundtrip(k, t)


@pytest.mark.parametrize("case", CASES)
def test_negative_control_without_transforms(monkeypatch, case):
    rule, t, k, shape = build(case)
    randomize_torch(t)
    skip_transforms(monkeypatch, rule)
    wp.port(t, k)
    assert_forward_differs(t, k, *inputs(shape))


def test_transposed_kernel_needs_no_spatial_flip():
    """Forward equality with random kernels already proves it; here the check is shown to see a flip."""
    _, t, k, shape = build("transpose2d")
    randomize_torch(t)
    wp.port(t, k)
    x = inputs(shape)
    assert_forward_equal(t, k, *x)
    kernel, bias = k.layers[0].get_weights()
    k.layers[0].set_weights([kernel[::-1, ::-1].copy(), bias])
    assert_forward_differs(t, k, *x)


def test_keras_channels_first():
    # kernels do not depend on data_format: same transforms, outputs already NCHW
    t = nn.Sequential(nn.Conv2d(3, 10, (5, 2), stride=(2, 1)), nn.ReLU(), nn.Conv2d(10, 20, (3, 4), groups=10),
                      nn.ConvTranspose2d(20, 7, (3, 2), stride=2))
    k = keras.Sequential([keras.Input((3, 9, 7)),
                          L.Conv2D(10, (5, 2), strides=(2, 1), data_format="channels_first", activation="relu"),
                          L.DepthwiseConv2D((3, 4), depth_multiplier=2, data_format="channels_first"),
                          L.Conv2DTranspose(7, (3, 2), strides=2, data_format="channels_first")])
    randomize_torch(t)
    report = wp.port(t, k)
    assert [s.rule for s in report.steps] == ["conv", "depthwise_conv", "conv_transpose"]
    x = np.random.randn(2, 3, 9, 7).astype("float32")
    result = assert_forward_equal(t, k, x, x)
    assert not result.notes
    randomize_keras(k, seed=3)
    wp.port(k, t)
    assert_forward_equal(t, k, x, x)


def test_keras_grouped_conv_pairs_with_torch_depthwise_through_conv():
    t = nn.Conv2d(5, 10, (3, 4), groups=5)
    k = keras_model((9, 7, 5), L.Conv2D(10, (3, 4), groups=5))
    assert [r.name for r in registry.candidates("torch", t)] == ["depthwise_conv", "conv"]
    randomize_torch(t)
    assert [s.rule for s in wp.port(t, k).steps] == ["conv"]
    assert_forward_equal(t, k, *inputs((5, 9, 7)))
    assert_keras_roundtrip(k, t)


def test_small_cnn_both_ways():
    t = nn.Sequential(nn.Conv2d(3, 8, (3, 2), stride=(2, 1)), nn.ReLU(),
                      nn.Conv2d(8, 16, 3, groups=8), nn.ReLU(),
                      nn.Sequential(nn.Conv2d(16, 16, 3, groups=16, bias=False), nn.Conv2d(16, 12, 1)), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))
    k = keras.Sequential([keras.Input((13, 9, 3)),
                          L.Conv2D(8, (3, 2), strides=(2, 1), activation="relu"),
                          L.DepthwiseConv2D(3, depth_multiplier=2, activation="relu"),
                          L.SeparableConv2D(12, 3, activation="relu"),
                          L.GlobalAveragePooling2D(), L.Dense(5)])
    x = inputs((3, 13, 9))
    randomize_torch(t)
    report = wp.port(t, k)
    assert [s.rule for s in report.steps] == ["conv", "depthwise_conv", "separable_conv", "dense"]
    assert_forward_equal(t, k, *x)
    randomize_keras(k, seed=5)
    wp.port(k, t)
    assert_forward_equal(t, k, *x)
    assert_keras_roundtrip(k, t)


def test_groups_mismatch_is_refused_naming_both_layers():
    # torch groups=2 on 4 channels and Keras groups=1 on 2 channels: equal kernel shapes, different functions
    t = nn.Sequential(nn.Conv2d(4, 6, (5, 3), groups=2))
    k = keras_model((9, 7, 2), L.Conv2D(6, (5, 3), name="plain_conv"))
    before = keras_weights(k)
    with pytest.raises(wp.ConfigMismatchError) as err:
        wp.port(t, k)
    msg = str(err.value)
    assert "0 -> plain_conv" in msg and "groups" in msg and "2" in msg and "1" in msg
    for a, b in zip(before, keras_weights(k)):
        np.testing.assert_array_equal(a, b)


# (torch module, Keras layer, input NCHW shape, warned): a padding warning exactly when the zeros added differ
PADDING = {
    "torch-same-even-kernel": (lambda: nn.Conv2d(3, 8, (5, 2), padding="same"),
                               lambda: L.Conv2D(8, (5, 2), padding="same"), (3, 9, 7), False),
    "ints-equal-same": (lambda: nn.Conv2d(3, 8, (5, 3), padding=(2, 1)),
                        lambda: L.Conv2D(8, (5, 3), padding="same"), (3, 9, 7), False),
    "dilated-ints-equal-same": (lambda: nn.Conv2d(3, 8, (3, 3), padding=(2, 1), dilation=(2, 1)),
                                lambda: L.Conv2D(8, 3, padding="same", dilation_rate=(2, 1)), (3, 9, 7), False),
    "transpose-ints-equal-same": (lambda: nn.ConvTranspose2d(3, 8, (4, 2), stride=2, padding=(1, 0)),
                                  lambda: L.Conv2DTranspose(8, (4, 2), strides=2, padding="same"), (3, 5, 4), False),
    "ints-vs-valid": (lambda: nn.Conv2d(3, 8, (5, 3), padding=1),
                      lambda: L.Conv2D(8, (5, 3)), (3, 9, 7), True),
    "reflect-vs-same": (lambda: nn.Conv2d(3, 8, (5, 3), padding=(2, 1), padding_mode="reflect"),
                        lambda: L.Conv2D(8, (5, 3), padding="same"), (3, 9, 7), True),
    "zero-vs-causal": (lambda: nn.Conv1d(3, 8, 5), lambda: L.Conv1D(8, 5, padding="causal"), (3, 11), True),
    "transpose-no-output-padding": (lambda: nn.ConvTranspose2d(3, 8, (5, 2), stride=(2, 3)),
                                    lambda: L.Conv2DTranspose(8, (5, 2), strides=(2, 3)), (3, 5, 4), True),
}


@pytest.mark.parametrize("case", PADDING)
def test_padding_is_compared_as_the_zeros_added(case):
    make_torch, make_keras, shape, warned = PADDING[case]
    t, k = make_torch(), keras_model(shape[1:] + shape[:1], make_keras())
    randomize_torch(t)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = wp.port(t, k)
    ours = [str(w.message) for w in caught if issubclass(w.category, wp.WeightportWarning)]
    assert any("padding" in m for m in ours) == warned, ours
    assert any("padding" in i for i in report.warnings) == warned
    x = inputs(shape)
    if warned:
        try:
            assert_forward_differs(t, k, *x)
        except wp.UsageError:
            pass  # output shapes differ: all the more different
    else:
        assert_forward_equal(t, k, *x)


def test_same_with_stride_is_judged_at_the_size_the_model_takes_and_stride_mismatch_warns():
    # Keras 'same' with stride 2 pads by an amount that depends on the input size: at 9x7 it is torch's (2, 1)
    t, k = nn.Conv2d(3, 8, (5, 3), stride=2, padding=(2, 1)), keras_model((9, 7, 3), L.Conv2D(8, (5, 3), 2, "same"))
    report = wp.port(t, k)
    assert not report.warnings
    k = keras_model((10, 7, 3), L.Conv2D(8, (5, 3), 2, "same"))  # at 10 rows it pads (1, 2)
    with pytest.warns(wp.WeightportWarning, match=r"axis 0: sizes \[10\]"):
        wp.port(t, k)
    t = nn.Conv2d(3, 8, (5, 3), stride=(2, 1))
    k = keras_model((9, 7, 3), L.Conv2D(8, (5, 3)))
    with pytest.warns(wp.WeightportWarning, match="strides"):
        wp.port(t, k)


def test_use_bias_mismatch_refused_where_the_bias_would_be_lost():
    """A target bias the source lacks is written as zeros (exact, and said); a source bias the target lacks, with
    no BatchNorm reading the conv's output alone to fold it into, is refused (test_conv_bias.py: the fold)."""
    t = nn.Sequential(nn.Conv2d(3, 8, (5, 2), bias=False))
    k = keras_model((9, 7, 3), L.Conv2D(8, (5, 2)))
    randomize_keras(k, seed=3)
    with pytest.warns(wp.WeightportWarning, match="use_bias.*set to zeros"):
        wp.port(t, k)
    assert not np.any(keras.ops.convert_to_numpy(k.layers[-1].bias))
    randomize_keras(k, seed=4)
    with pytest.raises(wp.ConfigMismatchError, match=r"adds a bias \(use_bias=True\).*its output is read by"):
        wp.port(k, t)


def test_get_set_weights_on_torch_depthwise_speak_keras_layout():
    conv = nn.Conv2d(5, 10, (3, 4), groups=5)
    randomize_torch(conv)
    kernel, bias = wp.get_weights(conv)
    assert kernel.shape == (3, 4, 5, 2) and bias.shape == (10,)
    weight = conv.weight.detach().numpy()
    for i in range(5):
        for j in range(2):
            np.testing.assert_array_equal(kernel[:, :, i, j], weight[i * 2 + j, 0])
    layer = L.DepthwiseConv2D((3, 4), depth_multiplier=2)
    layer.build((None, 9, 7, 5))
    randomize_keras(layer, seed=11)
    wp.set_weights(conv, layer.get_weights())
    new_kernel = layer.get_weights()[0]
    for i in range(5):
        for j in range(2):
            np.testing.assert_array_equal(conv.weight.detach().numpy()[i * 2 + j, 0], new_kernel[:, :, i, j])
    x = inputs((5, 9, 7))
    assert_forward_equal(conv, keras_model((9, 7, 5), layer), *x)
    with pytest.raises(wp.ShapeMismatchError, match=r"expected shape \(3, 4, 5, 2\)"):
        wp.set_weights(conv, [new_kernel.reshape(3, 4, 1, 10), layer.get_weights()[1]])


def test_separable_depthwise_bias_zero_is_accepted_and_written():
    t = SepConv(5, 7, (3, 4), 2, dw_bias=True)
    k = keras_model((9, 7, 5), L.SeparableConv2D(7, (3, 4), depth_multiplier=2))
    randomize_torch(t)
    with torch.no_grad():
        t.dw.bias.zero_()
    wp.port(t, k)
    x = inputs((5, 9, 7))
    assert_forward_equal(t, k, *x)
    randomize_keras(k, seed=2)
    with torch.no_grad():
        t.dw.bias.fill_(1.0)
    wp.port(k, t)
    assert not t.dw.bias.detach().any()
    assert_forward_equal(t, k, *x)


def test_separable_depthwise_bias_non_zero_is_refused():
    t = SepConv(5, 7, (3, 4), 2, dw_bias=True)
    k = keras_model((9, 7, 5), L.SeparableConv2D(7, (3, 4), depth_multiplier=2, name="sep"))
    randomize_torch(t)
    before = keras_weights(k)
    with pytest.raises(wp.ConfigMismatchError, match="SepConv -> sep.*depthwise_bias.*fold it"):
        wp.port(t, k)
    for a, b in zip(before, keras_weights(k)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(wp.ConfigMismatchError, match=r"'dw.bias'\) is non-zero"):
        wp.get_weights(t)


@pytest.mark.parametrize("module, claimed", [
    (lambda: nn.Sequential(nn.Conv2d(5, 10, 3, groups=5), nn.Conv2d(10, 7, 1)), True),
    (lambda: nn.Sequential(nn.Conv2d(5, 10, 3, groups=5), nn.ReLU(), nn.Conv2d(10, 7, 1)), False),
    (lambda: nn.Sequential(nn.Conv2d(5, 10, 3, groups=5), nn.Conv2d(10, 7, 3)), False),  # not pointwise
    (lambda: nn.Sequential(nn.Conv2d(5, 10, 3), nn.Conv2d(10, 7, 1)), False),  # not depthwise
    (lambda: nn.Sequential(nn.Conv2d(5, 10, 3, groups=5), nn.Conv2d(10, 7, 1, padding=1)), False),
    (lambda: nn.Sequential(nn.Conv1d(5, 10, 3, groups=5), nn.Conv2d(10, 7, 1)), False),  # mixed dims
])
def test_separable_structure_is_recognised_exactly(module, claimed):
    names = [r.name for r in registry.candidates("torch", module())]
    assert ("separable_conv" in names) == claimed


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][0] in ("conv", "conv_transpose")]
                         + ["depthwise2d", "separable1d", "separable2d"])
def test_infer_bare_groups(case):
    """Each family member's bare tensors are claimed by its rule alone and predict the Keras shapes."""
    rule_name, t, k, _ = build(case)
    layer = k.layers[0]
    keras_shapes = {v.name: tuple(v.shape) for v in layer.weights}
    family = [registry.get(n) for n in ("conv", "depthwise_conv", "separable_conv", "conv_transpose")]
    claims = [(r, r.infer("keras", keras_shapes)) for r in family]
    claims = [(r, hp) for r, hp in claims if hp is not None]
    has_bias = "bias" in keras_shapes
    if not has_bias and rule_name == "conv_transpose":  # looks like a conv: documented limit
        assert [r.name for r, _ in claims] == ["conv"]
        return
    assert [r.name for r, _ in claims] == [rule_name]
    rule, hp = claims[0]
    assert rule.canonical_shapes("keras", hp, dict(zip(rule.canonical(hp), keras_shapes.values()))) == \
        [tuple(v.shape) for v in layer.weights]
    torch_shapes = {n: tuple(p.shape) for n, p in t.state_dict().items()}
    torch_claims = [r.name for r in family if r.infer("torch", torch_shapes) is not None]
    if rule_name in ("conv", "conv_transpose"):
        assert torch_claims == [rule_name]
        thp = registry.get(rule_name).infer("torch", torch_shapes)
        assert rule.canonical_shapes("torch", thp, torch_shapes) == [tuple(v.shape) for v in layer.weights]
    elif rule_name == "separable_conv":  # the two convs' group, its multiplier left to the paired layer
        assert torch_claims == ["separable_conv"]
    else:  # depthwise weights are also a one-channel conv's: left to conv, as documented
        assert "depthwise_conv" not in torch_claims and "separable_conv" not in torch_claims


def test_infer_refuses_what_does_not_fit():
    conv, tconv = registry.get("conv"), registry.get("conv_transpose")
    assert conv.infer("torch", {"weight": (8, 3)}) is None  # a Linear's
    assert conv.infer("torch", {"weight": (8, 3, 5, 2), "bias": (3,)}) is None
    assert conv.infer("torch", {"weight": (8, 3, 5, 2), "running_mean": (8,)}) is None
    assert conv.infer("keras", {"kernel": (5, 2, 3, 8), "bias": (3,)}) is None
    assert tconv.infer("torch", {"weight": (3, 8, 5, 2)}) is None  # no bias: cannot be told from a conv
    assert registry.get("separable_conv").infer("keras", {"depthwise_kernel": (3, 4, 5, 2),
                                                          "pointwise_kernel": (1, 1, 9, 7)}) is None


def test_bare_grouped_kernels_take_groups_from_the_live_model():
    # shapes cannot tell groups, so inference leaves them out and the grouped torch conv is not refused
    k = keras_model((9, 7, 4), L.Conv2D(6, (5, 3), groups=2, name="c"))
    randomize_keras(k)
    kernel, bias = k.layers[0].get_weights()
    assert "groups" not in registry.get("conv").infer("keras", {"kernel": kernel.shape, "bias": bias.shape})
    t = nn.Conv2d(4, 6, (5, 3), groups=2)
    wp.port({"c/kernel": kernel, "c/bias": bias}, t)
    assert_forward_equal(t, k, *inputs((4, 9, 7)))


def test_same_padding_at_stride_two_is_warned_with_the_sizes_where_it_differs():
    """torch pads (1, 1); Keras 'same' at stride 2 pads (0, 1) for even sizes: said, with the way out."""
    t = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
    randomize_torch(t)
    k = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3, strides=2, padding="same")])
    with pytest.warns(wp.WeightportWarning, match=r"differ for input axis 0: sizes \[8, 10, 12, 14\]"):
        wp.port(t, k)
    even = np.random.default_rng(1).standard_normal((1, 3, 10, 10)).astype("float32")
    odd = np.random.default_rng(1).standard_normal((1, 3, 11, 11)).astype("float32")
    assert not wp.verify(t, k, (even, even.transpose(0, 2, 3, 1)), atol=1e-4).ok  # the warning is true
    assert wp.verify(t, k, (odd, odd.transpose(0, 2, 3, 1)), atol=1e-4).ok
    padded = keras.Sequential([keras.Input((None, None, 3)), keras.layers.ZeroPadding2D(1),
                               keras.layers.Conv2D(4, 3, strides=2)])
    report = wp.port(t, padded)  # the twin keras-hub would build: nothing to say
    assert not [w for w in report.warnings if "padding" in w]
    assert wp.verify(t, padded, (even, even.transpose(0, 2, 3, 1)), atol=1e-4).ok


class SiblingSeparable(nn.Module):
    def __init__(self):
        super().__init__()
        self.depthwise = nn.Conv2d(3, 6, (3, 2), groups=3, bias=False)  # depth multiplier 2
        self.pointwise = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


@pytest.mark.parametrize("target", ["separable", "depthwise then pointwise"])
def test_sibling_depthwise_and_pointwise_from_a_bare_file(tmp_path, target):
    """A flat checkpoint's two convs pair with one Keras SeparableConv2D, or with a DepthwiseConv2D and a 1x1 Conv."""
    t = nn.Sequential(SiblingSeparable())
    randomize_torch(t)
    torch.save(t.state_dict(), tmp_path / "s.pt")
    if target == "separable":
        k = keras_model((9, 7, 3), L.SeparableConv2D(4, (3, 2), depth_multiplier=2))
    else:
        k = keras.Sequential([keras.Input((9, 7, 3)), L.DepthwiseConv2D((3, 2), depth_multiplier=2, use_bias=False),
                              L.Conv2D(4, 1)])
    wp.port(tmp_path / "s.pt", k)
    x = np.random.default_rng(2).standard_normal((2, 3, 9, 7)).astype("float32")
    assert_forward_equal(t, k, x, x.transpose(0, 2, 3, 1))
