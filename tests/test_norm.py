"""BatchNorm, LayerNorm, GroupNorm, RMSNorm: forward equivalence both ways, bitwise round trips,
configuration checks (epsilon, momentum, center/scale/affine, groups, axes) and negative controls."""
import contextlib
import warnings

import numpy as np
import pytest

import weightport as wp
from util import (assert_forward_differs, assert_forward_equal, assert_keras_roundtrip, randomize_keras,
                  randomize_torch)
from weightport.mappings.rule import Link, registry

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

C, H, W, D = 7, 5, 3, 2  # channels, spatial 5x3 (x2 in 3-D)


@contextlib.contextmanager
def no_weightport_warnings():
    """A context in which any WeightportWarning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", wp.WeightportWarning)
        yield


def channels_last(x):
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


# -- BatchNormalization <-> BatchNorm1d/2d/3d ---------------------------------------------------------------

BN_SHAPES = {1: (C,), 2: (C, H, W), 3: (C, D, H, W)}


def bn_pair(dims=2, eps=1e-3, momentum=0.01, affine=True, **keras_kwargs):
    """torch BatchNorm{dims}d and the Keras twin (channels-last); Keras momentum = 1 - torch momentum."""
    t = getattr(torch.nn, f"BatchNorm{dims}d")(C, eps=eps, momentum=momentum, affine=affine)
    shape = BN_SHAPES[dims]
    kw = {"epsilon": eps, "momentum": 1 - momentum, "center": affine, "scale": affine, **keras_kwargs}
    k = keras.Sequential([keras.Input(shape[1:] + shape[:1]), keras.layers.BatchNormalization(**kw)])
    return t, k, np.random.randn(4, *shape).astype("float32")


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("affine", [True, False])
def test_bn_torch_to_keras_forward(dims, affine):
    t, k, x = bn_pair(dims, affine=affine)
    randomize_torch(t)  # weights and running statistics, variances positive
    with no_weightport_warnings():
        report = wp.port(t, k)
    assert [s.rule for s in report.steps] == ["batch_normalization"]
    assert not report.exact  # num_batches_tracked is dropped on import
    assert_forward_equal(t, k, x, channels_last(x))


def test_bn_keras_to_torch_forward_and_counter_written_as_zero():
    t, k, x = bn_pair()
    randomize_keras(k)
    t.num_batches_tracked.fill_(17)
    wp.port(k, t)
    assert int(t.num_batches_tracked) == 0
    assert_forward_equal(t, k, x, channels_last(x))


@pytest.mark.parametrize("center, scale", [(True, True), (False, False)])
def test_bn_keras_torch_keras_bitwise(center, scale):
    t, k, _ = bn_pair(affine=center)
    assert_keras_roundtrip(k, t)


def test_bn_default_epsilon_warns_and_changes_outputs():
    # Keras' default epsilon 1e-3 against torch's 1e-5: ported, warned, and the function differs
    # where the running variances are small
    t, _, x = bn_pair(eps=1e-5, momentum=0.01)
    k = keras.Sequential([keras.Input((H, W, C)), keras.layers.BatchNormalization(momentum=0.99)])
    randomize_torch(t)
    with torch.no_grad():
        t.running_var.uniform_(1e-4, 1e-3)
    with pytest.warns(wp.WeightportWarning, match="epsilon"):
        report = wp.port(t, k)
    assert any("epsilon" in w and "outputs will differ" in w for w in report.warnings)
    assert_forward_differs(t, k, x, channels_last(x))
    # the same statistics with matching epsilon: equivalent
    k.layers[0].epsilon = 1e-5
    with no_weightport_warnings():
        wp.port(t, k)
    assert_forward_equal(t, k, x, channels_last(x))


def test_bn_momentum_is_compared_in_keras_terms():
    t, k, _ = bn_pair(momentum=0.1)  # Keras twin has momentum 0.9
    with no_weightport_warnings():
        wp.port(t, k)
    k.layers[0].momentum = 0.1  # the same number, but it means the opposite
    with pytest.warns(wp.WeightportWarning, match="momentum: source has 0.9, target has 0.1"):
        wp.port(t, k)
    t.momentum = None  # cumulative average: no Keras equivalent, reported
    with pytest.warns(wp.WeightportWarning, match="cumulative average"):
        wp.port(t, k)


def test_bn_center_scale_mismatch_is_refused_and_named():
    t, _, _ = bn_pair(affine=True)
    _, k, _ = bn_pair(affine=True, center=False)
    before = [w.copy() for w in k.get_weights()]
    with pytest.raises(wp.ShapeMismatchError, match="center: source has True, target has False"):
        wp.port(t, k)
    for a, b in zip(before, k.get_weights()):
        np.testing.assert_array_equal(a, b)
    # same shapes (gamma+beta vs the two statistics), still refused on configuration
    _, k2, _ = bn_pair(affine=False)
    t2 = torch.nn.BatchNorm2d(C, eps=1e-3, momentum=0.01, track_running_stats=False)
    with pytest.raises(wp.ConfigMismatchError, match="track_running_stats"):
        wp.port(t2, k2)


def test_bn_without_running_stats_is_refused():
    t = torch.nn.BatchNorm2d(C, eps=1e-3, momentum=0.01, track_running_stats=False)
    _, k, _ = bn_pair()
    with pytest.raises(wp.WeightportError, match="track_running_stats=True"):
        wp.port(t, k)
    with pytest.raises(wp.WeightportError, match="track_running_stats"):
        wp.port(k, t)


def test_bn_negative_control_swapped_statistics(monkeypatch):
    # identity links, so the control is a slot mix-up: mean and variance exchanged must show in outputs
    t, k, x = bn_pair()
    randomize_torch(t)
    rule = registry.get("batch_normalization")
    original = rule.links_torch

    def swapped(hp):
        swap = {"running_mean": "running_var", "running_var": "running_mean"}
        return [Link(lk.canonical, tuple(swap.get(n, n) for n in lk.native), lk.transform) for lk in original(hp)]

    monkeypatch.setattr(rule, "links_torch", swapped)
    wp.port(t, k)
    assert_forward_differs(t, k, x, channels_last(x))


def test_bn_infer_bare_groups():
    rule = registry.get("batch_normalization")
    full = {"weight": (C,), "bias": (C,), "running_mean": (C,), "running_var": (C,), "num_batches_tracked": ()}
    assert rule.infer("torch", full) == {"center": True, "scale": True, "track_running_stats": True, "channels": C}
    assert rule.infer("torch", {"running_mean": (C,), "running_var": (C,)})["center"] is False
    assert rule.infer("torch", {"weight": (C,), "bias": (C,)}) is None
    assert rule.infer("torch", {**full, "bias": (C + 1,)}) is None
    assert rule.infer("keras", {"gamma": (C,), "moving_mean": (C,), "moving_variance": (C,)}) == {
        "center": False, "scale": True, "track_running_stats": True}
    assert rule.infer("keras", {"gamma": (C,), "beta": (C,)}) is None


# -- LayerNormalization <-> LayerNorm ---------------------------------------------------------------------

T_, F_ = 3, 7  # sequence length, features


@pytest.mark.parametrize("affine, bias", [(True, True), (True, False), (False, False)])
def test_ln_torch_to_keras_forward(affine, bias):
    t = torch.nn.LayerNorm(F_, eps=1e-5, elementwise_affine=affine, bias=bias)
    k = keras.Sequential([keras.Input((T_, F_)),
                          keras.layers.LayerNormalization(epsilon=1e-5, center=bias, scale=affine)])
    randomize_torch(t)
    with no_weightport_warnings():
        wp.port(t, k)
    x = np.random.randn(4, T_, F_).astype("float32")
    assert_forward_equal(t, k, x)


def ln_multi_axis():
    t = torch.nn.LayerNorm((T_, F_), eps=1e-5)
    k = keras.Sequential([keras.Input((T_, F_)), keras.layers.LayerNormalization(axis=(-2, -1), epsilon=1e-5)])
    return t, k, np.random.randn(4, T_, F_).astype("float32")


def test_ln_multi_axis_gamma_has_the_normalised_shape():
    t, k, x = ln_multi_axis()
    assert [tuple(w.shape) for w in k.weights] == [(T_, F_), (T_, F_)]
    randomize_torch(t)
    wp.port(t, k)
    assert_forward_equal(t, k, x)
    randomize_keras(k, seed=3)
    wp.port(k, t)
    assert_forward_equal(t, k, x)


def test_ln_keras_torch_keras_bitwise():
    t, k, _ = ln_multi_axis()
    assert_keras_roundtrip(k, t)


def test_ln_default_epsilon_warns_and_changes_outputs():
    t = torch.nn.LayerNorm(F_)
    k = keras.Sequential([keras.Input((T_, F_)), keras.layers.LayerNormalization()])
    randomize_torch(t)
    x = (np.random.randn(4, T_, F_) * 0.03).astype("float32")  # small variance: epsilon matters
    with pytest.warns(wp.WeightportWarning, match="epsilon"):
        wp.port(t, k)
    assert_forward_differs(t, k, x)


def test_ln_non_trailing_axis_is_refused():
    # Keras normalises axis 1 of (batch, 7, 7); torch LayerNorm(7) the last axis: same shapes, other function
    t = torch.nn.LayerNorm(F_, eps=1e-3)
    k = keras.Sequential([keras.Input((F_, F_)), keras.layers.LayerNormalization(axis=1)])
    with pytest.raises(wp.ConfigMismatchError, match=r"axis: source has \(-1,\), target has \(-2,\)"):
        wp.port(t, k)


@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`:UserWarning")
def test_ln_rms_scaling_is_refused():
    t = torch.nn.LayerNorm(F_, eps=1e-3, bias=False)
    k = keras.Sequential([keras.Input((T_, F_)), keras.layers.LayerNormalization(rms_scaling=True)])
    with pytest.raises(wp.ConfigMismatchError, match="rms_scaling.*RMSNormalization"):
        wp.port(k, t)


def test_ln_negative_control_swapped_gamma_beta(monkeypatch):
    t, k, x = ln_multi_axis()
    randomize_torch(t)
    rule = registry.get("layer_normalization")
    monkeypatch.setattr(rule, "links_torch", lambda hp: [wp.link("gamma", "bias"), wp.link("beta", "weight")])
    wp.port(t, k)
    assert_forward_differs(t, k, x)


def test_ln_infer_bare_groups():
    rule = registry.get("layer_normalization")
    assert rule.infer("torch", {"weight": (T_, F_), "bias": (T_, F_)})["axis"] == (-2, -1)
    assert rule.infer("torch", {"weight": (F_,)})["center"] is False
    assert rule.infer("torch", {"weight": (F_,), "bias": (F_ + 1,)}) is None
    assert rule.infer("keras", {"gamma": (F_,), "beta": (F_,)}) == {"center": True, "scale": True}
    assert rule.infer("keras", {"gamma": (F_,), "moving_mean": (F_,)}) is None


# -- GroupNormalization <-> GroupNorm ---------------------------------------------------------------------

G, GC = 3, 9  # 3 groups of 3 channels


def gn_pair(groups=G, keras_groups=G, affine=True):
    t = torch.nn.GroupNorm(groups, GC, eps=1e-3, affine=affine)
    k = keras.Sequential([keras.Input((H, W, GC)),
                          keras.layers.GroupNormalization(keras_groups, center=affine, scale=affine)])
    return t, k, np.random.randn(4, GC, H, W).astype("float32")


@pytest.mark.parametrize("affine", [True, False])
def test_gn_torch_to_keras_forward(affine):
    t, k, x = gn_pair(affine=affine)
    randomize_torch(t)
    with no_weightport_warnings():
        wp.port(t, k)
    assert_forward_equal(t, k, x, channels_last(x))


def test_gn_keras_to_torch_forward_and_bitwise():
    t, k, x = gn_pair()
    randomize_keras(k)
    wp.port(k, t)
    assert_forward_equal(t, k, x, channels_last(x))
    assert_keras_roundtrip(k, t)


def test_gn_groups_mismatch_is_refused_and_would_change_outputs(monkeypatch):
    t, k, x = gn_pair(groups=G, keras_groups=GC)
    randomize_torch(t)
    with pytest.raises(wp.ConfigMismatchError, match="groups: source has 3, target has 9"):
        wp.port(t, k)
    # the control: without the check the shapes fit, the copy goes through, and the function differs
    monkeypatch.setattr(registry.get("group_normalization"), "checks", {"epsilon": "warning"})
    wp.port(t, k)
    assert_forward_differs(t, k, x, channels_last(x))


def test_gn_default_epsilon_warns():
    t = torch.nn.GroupNorm(G, GC)
    _, k, _ = gn_pair()
    with pytest.warns(wp.WeightportWarning, match="epsilon: source has 1e-05, target has 0.001"):
        wp.port(t, k)


# -- RMSNormalization <-> RMSNorm -------------------------------------------------------------------------

def rms_pair(axes=1, eps=1e-6):
    shape = (T_, F_)[-axes:]
    t = torch.nn.RMSNorm(shape, eps=eps)
    k = keras.Sequential([keras.Input((T_, F_)),
                          keras.layers.RMSNormalization(axis=-1 if axes == 1 else (-2, -1), epsilon=eps)])
    return t, k, np.random.randn(4, T_, F_).astype("float32")


@pytest.mark.parametrize("axes", [1, 2])
def test_rms_torch_to_keras_forward(axes):
    t, k, x = rms_pair(axes)
    randomize_torch(t)
    with no_weightport_warnings():
        wp.port(t, k)
    assert [tuple(w.shape) for w in k.weights] == [(T_, F_)[-axes:]]
    assert_forward_equal(t, k, x)


def test_rms_keras_to_torch_forward_and_bitwise():
    t, k, x = rms_pair(2)
    randomize_keras(k)
    wp.port(k, t)
    assert_forward_equal(t, k, x)
    assert_keras_roundtrip(k, t)


def test_rms_torch_eps_none_is_the_machine_epsilon():
    t = torch.nn.RMSNorm(F_)  # eps=None
    k = keras.Sequential([keras.Input((T_, F_)), keras.layers.RMSNormalization()])  # 1e-6
    randomize_torch(t)
    with pytest.warns(wp.WeightportWarning, match=r"epsilon: source has 1\.19\d*e-07, target has 1e-06"):
        wp.port(t, k)
    x = (np.random.randn(4, T_, F_) * 3e-4).astype("float32")  # mean square ~1e-7: epsilon matters
    assert_forward_differs(t, k, x)
    k.layers[0].epsilon = float(np.finfo(np.float32).eps)
    with no_weightport_warnings():
        wp.port(t, k)
    assert_forward_equal(t, k, x)


def test_rms_without_scale_is_refused():
    t = torch.nn.RMSNorm(F_, eps=1e-6, elementwise_affine=False)
    _, k, _ = rms_pair()
    with pytest.raises(wp.WeightportError, match="scale: source has False, target has True"):
        wp.port(t, k)


def test_rms_negative_control_reversed_scale(monkeypatch):
    from weightport.mappings.transforms import ReorderBlocks

    t, k, x = rms_pair()
    randomize_torch(t)
    rule = registry.get("rms_normalization")
    monkeypatch.setattr(rule, "links_torch",
                        lambda hp: [wp.link("scale", "weight", ReorderBlocks(0, range(F_ - 1, -1, -1)))])
    wp.port(t, k)
    assert_forward_differs(t, k, x)


def test_rms_infer_bare_groups():
    rule = registry.get("rms_normalization")
    assert rule.infer("torch", {"weight": (T_, F_)}) == {"scale": True, "axis": (-2, -1)}
    assert rule.infer("torch", {"weight": (F_,), "bias": (F_,)}) is None
    assert rule.infer("keras", {"scale": (F_,)}) == {"scale": True}
    assert rule.infer("keras", {"gamma": (F_,)}) is None


# -- a small conv-free model mixing them ------------------------------------------------------------------

def mixed_pair():
    t = torch.nn.Sequential(torch.nn.Linear(11, C), torch.nn.BatchNorm1d(C, eps=1e-3, momentum=0.01),
                            torch.nn.PReLU(C), torch.nn.Linear(C, 5), torch.nn.LayerNorm(5),
                            torch.nn.Linear(5, GC), torch.nn.RMSNorm(GC, eps=1e-6))
    k = keras.Sequential([keras.Input((11,)), keras.layers.Dense(C), keras.layers.BatchNormalization(),
                          keras.layers.PReLU(), keras.layers.Dense(5), keras.layers.LayerNormalization(epsilon=1e-5),
                          keras.layers.Dense(GC), keras.layers.RMSNormalization()])
    return t, k, np.random.randn(6, 11).astype("float32")


def test_mixed_model_both_ways_and_bitwise():
    t, k, x = mixed_pair()
    randomize_torch(t)
    with no_weightport_warnings():
        report = wp.port(t, k)
    assert [s.rule for s in report.steps] == ["dense", "batch_normalization", "prelu", "dense",
                                              "layer_normalization", "dense", "rms_normalization"]
    assert_forward_equal(t, k, x)
    randomize_keras(k, seed=5)
    wp.port(k, t)
    assert_forward_equal(t, k, x)
    assert_keras_roundtrip(k, t)


class LayerNorm(torch.nn.Module):
    """Many repositories' own LayerNorm (ConvNeXt style): the built-in's name, none of its attributes."""

    def __init__(self, n):
        super().__init__()
        self.weight, self.bias, self.eps = torch.nn.Parameter(torch.randn(n)), torch.nn.Parameter(torch.randn(n)), 1e-6

    def forward(self, x):
        return torch.nn.functional.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


def test_a_class_that_only_shares_the_builtins_name_is_read_by_its_weights():
    t = torch.nn.Sequential(torch.nn.Linear(7, 5), LayerNorm(5))
    k = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5), keras.layers.LayerNormalization(epsilon=1e-6)])
    report = wp.port(t, k)
    assert report.steps[1].rule == "layer_normalization"
    x = np.random.default_rng(4).standard_normal((3, 7)).astype("float32")
    assert wp.verify(t, k, x).ok
    with torch.no_grad():
        t[1].weight.copy_(t[1].weight.flip(0))  # negative control: the scale in another order
    assert not wp.verify(t, k, x).ok
