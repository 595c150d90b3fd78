"""A zero pad written as an operation of its own before a conv counts as that conv's padding.

transformers pads in ``forward`` (MobileNet's TF-style "same" with ``nn.functional.pad``), keras-hub in a
ZeroPadding layer inside a layer of its own (MiT), keras.applications in a ZeroPadding layer of the graph: the
convs' own settings differ while the models compute the same thing. A warning stays where the zeros really differ.
"""
import warnings

import numpy as np
import pytest

import weightport as wp
from util import assert_forward_differs, assert_forward_equal, randomize_torch

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
nn, L = torch.nn, keras.layers


class PadThenConv(nn.Module):
    """``F.pad(x, pads, value=value)`` then a conv that pads nothing (kernel 5x3, 7 -> 6 channels)."""

    def __init__(self, pads, stride=1, value=0.0):
        super().__init__()
        self.pads, self.value = pads, value
        self.conv = nn.Conv2d(7, 6, (5, 3), stride=stride)

    def forward(self, x):
        return self.conv(nn.functional.pad(x, self.pads, "constant", self.value))


class TfSame(nn.Module):
    """TF's "same" at stride 2 written by hand, as transformers' MobileNet does: the zeros depend on the size."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(7, 6, 3, stride=2)

    def forward(self, x):
        pads = []
        for size in reversed(x.shape[2:]):
            total = max(3 - (2 if size % 2 == 0 else 1), 0)
            pads += [total // 2, total - total // 2]
        return self.conv(nn.functional.pad(x, pads))


@keras.saving.register_keras_serializable("weightport_tests")
class PaddedProjection(keras.layers.Layer):
    """keras-hub's MiT patch embedding in small: a ZeroPadding2D inside a layer, where no graph shows it."""

    def __init__(self, pads, **kwargs):
        super().__init__(**kwargs)
        self.pad = L.ZeroPadding2D(pads)
        self.proj = L.Conv2D(6, (5, 3), padding="valid")

    def call(self, x):
        return self.proj(self.pad(x))


def keras_model(layer, size=(11, 9)):
    return keras.Sequential([keras.Input(size + (7,)), layer])


def padding_warnings(source, target, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wp.port(source, target, **kw)
    return [str(w.message) for w in caught
            if issubclass(w.category, wp.WeightportWarning) and "padding" in str(w.message)]


X = np.random.default_rng(3).standard_normal((2, 7, 11, 9)).astype("float32")
XK = X.transpose(0, 2, 3, 1)


# (torch module, Keras layer, warned): torch's pads are (w_left, w_right, h_top, h_bottom); Keras 'same' for a
# 5x3 kernel adds (2, 2) rows and (1, 1) columns
CASES = {
    "torch-pad-equals-same": (lambda: PadThenConv((1, 1, 2, 2)), lambda: L.Conv2D(6, (5, 3), padding="same"), False),
    "torch-pad-differs-from-same": (lambda: PadThenConv((0, 2, 1, 3)), lambda: L.Conv2D(6, (5, 3), padding="same"),
                                    True),
    "torch-pad-of-ones-is-no-zero-pad": (lambda: PadThenConv((1, 1, 2, 2), value=1.0),
                                         lambda: L.Conv2D(6, (5, 3), padding="same"), True),
    "keras-inner-pad-equals-torch": (lambda: nn.Conv2d(7, 6, (5, 3), padding=(2, 1)),
                                     lambda: PaddedProjection(((2, 2), (1, 1))), False),
    "keras-inner-pad-differs": (lambda: nn.Conv2d(7, 6, (5, 3), padding=(2, 1)),
                                lambda: PaddedProjection(((1, 3), (1, 1))), True),
    "both-pad-apart-equal": (lambda: PadThenConv((1, 1, 2, 2)), lambda: PaddedProjection(((2, 2), (1, 1))), False),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("direction", ["torch->keras", "keras->torch"])
def test_a_separate_zero_pad_counts_as_the_convs_own(case, direction):
    make_torch, make_keras, warned = CASES[case]
    t, k = make_torch(), keras_model(make_keras())
    randomize_torch(t)
    if direction == "keras->torch":
        wp.port(t, k, strict=False)  # gives the Keras model weights to port back
        t = make_torch()
        found = padding_warnings(k, t)
    else:
        found = padding_warnings(t, k)
    assert bool(found) == warned, found
    if warned:
        if "inner" not in case and "ones" not in case:
            assert "after a separate zero pad" in found[0], found  # the pad seen is named in the warning
        assert_forward_differs(t, k, X, XK)  # the warning is true
    else:
        assert_forward_equal(t, k, X, XK)


def test_hand_written_same_is_compared_at_the_size_a_run_saw():
    """TF's "same" written by hand against Keras' own, at stride 2: equal at the size traced (even), and the
    warning names that size where Keras would pad otherwise."""
    t = TfSame()
    randomize_torch(t)
    k = keras.Sequential([keras.Input((None, None, 7)), L.Conv2D(6, 3, strides=2, padding="same")])
    assert padding_warnings(t, k) == []
    even = np.random.default_rng(4).standard_normal((1, 7, 10, 12)).astype("float32")
    assert_forward_equal(t, k, even, even.transpose(0, 2, 3, 1))
    k = keras.Sequential([keras.Input((None, None, 7)), L.ZeroPadding2D(1), L.Conv2D(6, 3, strides=2)])
    found = padding_warnings(t, k)  # (1, 1) against the (0, 1) the run saw at an even size
    assert found and "after a separate zero pad ((0, 1), (0, 1))" in found[0], found
    assert_forward_differs(t, k, even, even.transpose(0, 2, 3, 1))


def test_without_the_traced_pad_the_warnings_come_back(monkeypatch):
    """Negative control: with the pad a run sees ignored, the equal case warns as before."""
    from weightport.mappings.conv_family import ConvFamily
    monkeypatch.setattr(ConvFamily, "with_input_pad", lambda self, layout, hp, widths, shape: hp)
    t, k = PadThenConv((1, 1, 2, 2)), keras_model(L.Conv2D(6, (5, 3), padding="same"))
    assert padding_warnings(t, k)
