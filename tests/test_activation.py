"""PReLU <-> PReLU: Keras alpha (shared axes collapsed to 1) <-> torch weight (num_parameters,)."""
import numpy as np
import pytest

import weightport as wp
from util import (assert_forward_differs, assert_forward_equal, assert_keras_roundtrip, randomize_keras,
                  randomize_torch)
from weightport.mappings import transforms as T
from weightport.mappings.rule import registry

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

C, H, W = 7, 5, 3


def image_pair(per_channel=True):
    """torch PReLU on NCHW; Keras PReLU on NHWC with the spatial axes (or all axes) shared."""
    t = torch.nn.PReLU(C if per_channel else 1)
    shared = [1, 2] if per_channel else [1, 2, 3]
    k = keras.Sequential([keras.Input((H, W, C)), keras.layers.PReLU(shared_axes=shared)])
    x = np.random.randn(4, C, H, W).astype("float32")
    return t, k, x, np.ascontiguousarray(np.moveaxis(x, 1, -1))


@pytest.mark.parametrize("per_channel, alpha_shape", [(True, (1, 1, C)), (False, (1, 1, 1))])
def test_torch_to_keras_forward(per_channel, alpha_shape):
    t, k, x, xk = image_pair(per_channel)
    randomize_torch(t)
    report = wp.port(t, k)
    assert report.steps[0].rule == "prelu" and report.steps[0].target_hp["alpha_shape"] == alpha_shape
    assert tuple(k.layers[0].alpha.shape) == alpha_shape
    assert_forward_equal(t, k, x, xk)


def test_keras_to_torch_forward_and_bitwise():
    t, k, x, xk = image_pair()
    randomize_keras(k)
    wp.port(k, t)
    np.testing.assert_array_equal(t.weight.detach().numpy(), k.layers[0].get_weights()[0].reshape(C))
    assert_forward_equal(t, k, x, xk)
    assert_keras_roundtrip(k, t)


def test_channels_first_keras_alpha():
    # Keras on NCHW with shared_axes=[2, 3] keeps alpha (C, 1, 1): the same torch weight
    t = torch.nn.PReLU(C)
    k = keras.Sequential([keras.Input((C, H, W)), keras.layers.PReLU(shared_axes=[2, 3])])
    randomize_torch(t)
    wp.port(t, k)
    assert tuple(k.layers[0].alpha.shape) == (C, 1, 1)
    assert_forward_equal(t, k, np.random.randn(4, C, H, W).astype("float32"))
    assert_keras_roundtrip(k, t)


def test_dense_features_and_get_weights():
    t = torch.nn.Sequential(torch.nn.Linear(H, C), torch.nn.PReLU(C))
    k = keras.Sequential([keras.Input((H,)), keras.layers.Dense(C), keras.layers.PReLU()])
    randomize_torch(t)
    wp.port(t, k)
    assert_forward_equal(t, k, np.random.randn(4, H).astype("float32"))
    assert [w.shape for w in wp.get_weights(t[1])] == [(C,)]  # alone, a torch PReLU reads as a (batch, C) one


def test_slope_count_mismatch_is_refused():
    t = torch.nn.PReLU(1)
    _, k, _, _ = image_pair(per_channel=True)
    with pytest.raises(wp.ShapeMismatchError, match="expected 1x1x7, found 1x1x1"):
        wp.port(t, k)
    t, _, _, _ = image_pair(per_channel=True)
    _, k, _, _ = image_pair(per_channel=False)
    with pytest.raises(wp.ShapeMismatchError, match="expected 1x1x1, found 1x1x7"):
        wp.port(t, k)


@pytest.mark.parametrize("shared", [None, [1, 3]])
def test_per_position_alpha_is_refused(shared):
    # no shared axes: one slope per (h, w, c); shared_axes=[1, 3]: one per row. torch has neither.
    t = torch.nn.PReLU(C)
    k = keras.Sequential([keras.Input((H, W, C)), keras.layers.PReLU(shared_axes=shared)])
    with pytest.raises(wp.UnsupportedLayerError, match="shared_axes"):
        wp.port(k, t)


def test_negative_control_wrong_channel_order(monkeypatch):
    t, k, x, xk = image_pair()
    randomize_torch(t)
    rule = registry.get("prelu")
    original = rule.links_torch

    def reversed_channels(hp):
        (lk,) = original(hp)
        return [wp.link("alpha", "weight", T.Chain(lk.transform, T.ReorderBlocks(0, range(C - 1, -1, -1))))]

    monkeypatch.setattr(rule, "links_torch", reversed_channels)
    wp.port(t, k)
    assert_forward_differs(t, k, x, xk)


def test_infer_bare_groups():
    rule = registry.get("prelu")
    assert rule.infer("torch", {"weight": (C,)}) == {"num_parameters": C}
    assert rule.infer("torch", {"weight": (C, H)}) is None
    assert rule.infer("keras", {"alpha": (1, 1, C)}) == {"alpha_shape": (1, 1, C)}
    assert rule.infer("keras", {"alpha": (C,), "beta": (C,)}) is None


@pytest.mark.parametrize("shared_axes, alpha_shape", [([1, 2], (1, 1, 5)), (None, (5,))])
def test_set_weights_takes_every_keras_alpha_form(shared_axes, alpha_shape):
    """A Keras PReLU's alpha has the input's shape with the shared axes set to 1; torch keeps (C,)."""
    k = keras.layers.PReLU(shared_axes=shared_axes)
    k.build((None, 9, 11, 5) if shared_axes else (None, 5))
    alpha = np.random.default_rng(0).standard_normal(alpha_shape).astype("float32")
    k.set_weights([alpha])
    t = torch.nn.PReLU(5)
    wp.set_weights(t, k.get_weights())
    np.testing.assert_array_equal(t.weight.detach().numpy(), alpha.reshape(-1))
    with pytest.raises(wp.WeightportError):  # a slope per position along two axes: torch has no such PReLU
        wp.set_weights(t, [np.ones((1, 3, 5), "float32")])


def test_a_prelu_from_a_bare_file_pairs_with_a_shared_axes_prelu(tmp_path):
    t = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.PReLU(5))
    randomize_torch(t)
    torch.save(t.state_dict(), tmp_path / "p.pt")
    k = keras.Sequential([keras.Input((9, 11, 3)), keras.layers.Conv2D(5, 3), keras.layers.PReLU(shared_axes=[1, 2])])
    wp.port(tmp_path / "p.pt", k)
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 11)).astype("float32")
    assert_forward_equal(t, k, x, x.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("torch_act, keras_act, warned", [
    (lambda: torch.nn.GELU(approximate="tanh"), "gelu", "'gelu_tanh', target has 'gelu'"),
    (torch.nn.GELU, "gelu", None),
    (torch.nn.ReLU6, "relu", "'relu6', target has 'relu'"),
    (torch.nn.SiLU, "swish", None),
])
def test_an_activation_inside_the_keras_layer_is_compared_with_the_module_after_the_torch_one(
        torch_act, keras_act, warned):
    t = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Dropout(0.1), torch_act())
    k = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5, activation=keras_act)])
    randomize_torch(t)
    report = wp.port(t, k)
    found = [w for w in report.warnings if "activation" in w]
    x = np.random.default_rng(3).standard_normal((4, 7)).astype("float32") * 3
    if warned:
        assert len(found) == 1 and found[0].startswith("0 -> dense") and warned in found[0]
        assert not wp.verify(t, k, x, atol=2e-5, rtol=0).ok  # the warning is true
    else:
        assert not found
        assert wp.verify(t, k, x, atol=2e-5, rtol=0).ok


def test_strict_config_refuses_what_is_otherwise_a_warning_and_leaves_the_target():
    t = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.GELU(approximate="tanh"))
    k = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5, activation="gelu")])
    before = [w.copy() for w in k.get_weights()]
    with pytest.raises(wp.ConfigMismatchError, match="activation"):
        wp.port(t, k, strict_config=True)
    for a, b in zip(before, k.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any("activation" in w for w in wp.port(t, k).warnings)  # the default: a warning, and the port
