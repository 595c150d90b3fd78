"""Dense <-> Linear: forward equivalence, bitwise round trip, negative control, bad input."""
import numpy as np
import pytest

import weightport as wp
from util import (assert_forward_differs, assert_forward_equal, assert_keras_roundtrip, randomize_torch,
                  skip_transforms)

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

IN, HID, OUT = 7, 5, 3


def pair(use_bias=True):
    t = torch.nn.Sequential(torch.nn.Linear(IN, HID, bias=use_bias), torch.nn.Tanh(), torch.nn.Linear(HID, OUT))
    k = keras.Sequential([keras.Input((IN,)), keras.layers.Dense(HID, activation="tanh", use_bias=use_bias),
                          keras.layers.Dense(OUT)])
    return t, k


@pytest.mark.parametrize("use_bias", [True, False])
def test_torch_to_keras_forward(use_bias):
    t, k = pair(use_bias)
    randomize_torch(t)
    report = wp.port(t, k)
    assert [s.rule for s in report.steps] == ["dense", "dense"]
    assert_forward_equal(t, k, np.random.randn(4, IN).astype("float32"))


def test_keras_torch_keras_bitwise():
    t, k = pair()
    assert_keras_roundtrip(k, t)


def test_keras_to_torch_forward():
    t, k = pair()
    from util import randomize_keras

    randomize_keras(k)
    wp.port(k, t)
    assert_forward_equal(t, k, np.random.randn(4, IN).astype("float32"))


def test_negative_control_without_transpose(monkeypatch):
    # IN != HID, so a plain reshape of (out, in) into (in, out) keeps the shape but scrambles the function
    t, k = pair()
    randomize_torch(t)
    skip_transforms(monkeypatch, "dense")
    wp.port(t, k)
    assert_forward_differs(t, k, np.random.randn(4, IN).astype("float32"))


def test_get_set_weights_any_framework():
    lin = torch.nn.Linear(IN, HID)
    w = wp.get_weights(lin)
    assert [a.shape for a in w] == [(IN, HID), (HID,)]
    np.testing.assert_array_equal(w[0], lin.weight.detach().numpy().T)
    dense = keras.layers.Dense(HID)
    dense.build((None, IN))
    wp.set_weights(dense, w)
    for a, b in zip(dense.get_weights(), w):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(wp.ShapeMismatchError, match=r"expected shape \(7, 5\)"):
        wp.set_weights(lin, [w[0].T, w[1]])


def test_a_surplus_source_layer_is_reported_and_strict_both_refuses_it():
    """A source's extra layer (a head) does not block a port that fills every target weight; strict="both" does."""
    t = torch.nn.Sequential(torch.nn.Linear(IN, HID), torch.nn.Linear(HID, OUT), torch.nn.Linear(OUT, 2))
    randomize_torch(t)
    _, k = pair()
    before = [w.copy() for w in k.get_weights()]
    with pytest.raises(wp.MatchError) as err:
        wp.port(t, k, strict="both")
    assert "source: 2" in str(err.value) and "3x2" in str(err.value)
    for a, b in zip(before, k.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.warns(wp.WeightportWarning, match="no counterpart in the target"):
        report = wp.port(t, k)
    assert [s.source for s in report.steps] == ["0", "1"] and "2 (dense, 3x2, 2)" in report.unmatched_source
    np.testing.assert_array_equal(k.layers[1].get_weights()[0], t[1].weight.detach().numpy().T)


def test_shape_mismatch_names_layers_and_shapes_and_leaves_target():
    t = torch.nn.Sequential(torch.nn.Linear(IN, HID), torch.nn.Tanh(), torch.nn.Linear(HID, 4))
    _, k = pair()
    before = [w.copy() for w in k.get_weights()]
    with pytest.raises(wp.ShapeMismatchError) as err:
        wp.port(t, k)
    msg = str(err.value)
    assert "2 (dense" in msg and "dense_" in msg and "5x3" in msg and "5x4" in msg
    for a, b in zip(before, k.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_non_strict_keeps_the_new_head():
    t = torch.nn.Sequential(torch.nn.Linear(IN, HID), torch.nn.Tanh(), torch.nn.Linear(HID, 4))
    _, k = pair()
    randomize_torch(t)
    head_before = [w.copy() for w in k.layers[-1].get_weights()]
    report = wp.port(t, k, strict=False)
    assert len(report.steps) == 1
    assert report.unmatched_source and report.unmatched_target
    np.testing.assert_array_equal(k.layers[0].get_weights()[0], t[0].weight.detach().numpy().T)
    for a, b in zip(head_before, k.layers[-1].get_weights()):
        np.testing.assert_array_equal(a, b)


def test_hints_override_order():
    t = torch.nn.ModuleDict({"b": torch.nn.Linear(HID, OUT), "a": torch.nn.Linear(IN, HID)})
    _, k = pair()
    randomize_torch(t)
    names = [layer.name for layer in k.layers]
    report = wp.port(t, k, hints={"a": names[0], "b": names[1]})
    assert {(s.source, s.target) for s in report.steps} == {("a", names[0]), ("b", names[1])}
    np.testing.assert_array_equal(k.layers[1].get_weights()[0], t["b"].weight.detach().numpy().T)


def test_use_bias_mismatch_is_refused():
    t, _ = pair(use_bias=False)
    _, k = pair(use_bias=True)
    with pytest.raises(wp.WeightportError, match="dense"):
        wp.port(t, k)


def test_frozen_state_travels():
    t, k = pair()
    k.layers[0].trainable = False
    wp.port(k, t)
    assert not t[0].weight.requires_grad and t[2].weight.requires_grad
    t[2].requires_grad_(False)
    wp.port(t, k)
    assert not k.layers[1].trainable and not k.layers[0].trainable


def test_the_report_reads_in_the_direction_of_the_port():
    t, k = pair()
    to_keras = str(wp.port(t, k))
    assert "torch: weight -> kernel: transpose(1,0)" in to_keras
    to_torch = str(wp.port(k, t))
    assert "torch: kernel -> weight: transpose(1,0)" in to_torch


def test_the_report_says_why_a_constant_is_written_or_dropped():
    bn = torch.nn.BatchNorm1d(5)
    k = keras.Sequential([keras.Input((5,)), keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9)])
    assert "num_batches_tracked: dropped" in str(wp.port(bn, k))
    assert "num_batches_tracked: written as 0" in str(wp.port(k, bn))
