"""Flatten -> Dense after a convolution: the Dense rows follow (H, W, C) in Keras, (C, H, W) in torch."""
import numpy as np
import pytest

import weightport as wp
from util import (assert_forward_differs, assert_forward_equal, assert_keras_roundtrip, randomize_keras,
                  randomize_torch)
from weightport.mappings.rule import registry

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

IN_C, C, OUT, BATCH = 3, 8, 5, 2
# input spatial size, kernel -> a non-square feature map (5x3 in 2-D)
SPATIAL = {1: ((9,), (3,)), 2: ((7, 4), (3, 2)), 3: ((4, 5, 3), (2, 3, 2))}


def feature_map(dims):
    size, kernel = SPATIAL[dims]
    return tuple(s - k + 1 for s, k in zip(size, kernel))


def cnn_pair(dims=2, keras_format="channels_last", flatten_format="channels_last", sequential=False):
    size, kernel = SPATIAL[dims]
    n_features = C * int(np.prod(feature_map(dims)))
    conv_t = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[dims]
    t = torch.nn.Sequential(conv_t(IN_C, C, kernel), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Dropout(0.5),
                            torch.nn.Linear(n_features, OUT))
    conv_k = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}[dims]
    shape = (IN_C, *size) if keras_format == "channels_first" else (*size, IN_C)
    layers = [conv_k(C, kernel, activation="relu", data_format=keras_format),
              keras.layers.Flatten(data_format=flatten_format), keras.layers.Dropout(0.5), keras.layers.Dense(OUT)]
    if sequential:
        k = keras.Sequential([keras.Input(shape)] + layers)
    else:
        x = y = keras.Input(shape)
        for layer in layers:
            y = layer(y)
        k = keras.Model(x, y)
    return t, k


def inputs(dims=2, keras_format="channels_last"):
    x = np.random.default_rng(2).standard_normal((BATCH, IN_C, *SPATIAL[dims][0])).astype("float32")
    return x, (x if keras_format == "channels_first" else np.moveaxis(x, 1, -1))


def dense_hp(k):
    rule = registry.get("dense")
    return rule.config("keras", k.layers[-1])


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_torch_to_keras_forward(dims):
    t, k = cnn_pair(dims)
    assert dense_hp(k)["flatten_from"] == feature_map(dims) + (C,)
    randomize_torch(t)
    report = wp.port(t, k)
    assert report.steps[-1].source_hp["flatten_from"] == feature_map(dims) + (C,)  # shared with the torch side
    assert_forward_equal(t, k, *inputs(dims))


@pytest.mark.parametrize("sequential", [False, True])
def test_keras_to_torch_forward_and_bitwise(sequential):
    t, k = cnn_pair(sequential=sequential)
    randomize_keras(k)
    wp.port(k, t)
    assert_forward_equal(t, k, *inputs())
    assert_keras_roundtrip(k, t)


def test_bare_torch_checkpoint_into_keras():
    # the state dict knows no Flatten: the permutation comes from the Keras model it is paired with
    t, k = cnn_pair()
    randomize_torch(t)
    wp.port({n: p.detach().numpy() for n, p in t.state_dict().items()}, k)
    assert_forward_equal(t, k, *inputs())


def test_negative_control_without_row_permutation(monkeypatch):
    t, k = cnn_pair()
    randomize_torch(t)
    monkeypatch.setattr(registry.get("dense"), "shared", ())  # the torch side never learns flatten_from
    wp.port(t, k)
    assert_forward_differs(t, k, *inputs())


def test_linear_alone_is_a_plain_transpose():
    t, _ = cnn_pair()
    w = wp.get_weights(t[-1])
    np.testing.assert_array_equal(w[0], t[-1].weight.detach().numpy().T)


@pytest.mark.parametrize("keras_format, flatten_format, expected", [
    ("channels_first", "channels_last", None),  # the map already is (C, H, W): flattened as torch does
    ("channels_first", "channels_first", (5, 3, C)),  # Keras moves the channels last before flattening
])
def test_channels_first_keras(keras_format, flatten_format, expected):
    t, k = cnn_pair(keras_format=keras_format, flatten_format=flatten_format)
    assert dense_hp(k).get("flatten_from") == expected
    randomize_torch(t)
    wp.port(t, k)
    assert_forward_equal(t, k, *inputs(keras_format=keras_format))


def test_no_permutation_without_a_spatial_map():
    # a sequence flattened straight from the input is (T, F) in both frameworks
    x = keras.Input((7, 3))
    k = keras.Model(x, keras.layers.Dense(OUT)(keras.layers.Flatten()(x)))
    assert "flatten_from" not in dense_hp(k)
    eager = keras.layers.Dense(OUT)  # called outside a graph: nothing to read
    eager(np.zeros((1, 4), "float32"))
    assert "flatten_from" not in registry.get("dense").config("keras", eager)


def test_wrong_feature_map_size_is_a_mismatch():
    t, k = cnn_pair()
    t[-1] = torch.nn.Linear(C * 4 * 3, OUT)  # a torch head for a 4x3 map
    with pytest.raises(wp.ShapeMismatchError):
        wp.port(t, k)


@pytest.mark.parametrize("nesting", ["backbone", "head"])
def test_flatten_across_a_nested_model_boundary(nesting):
    """The conv or the Flatten+Dense head sits inside a nested Sequential: the rows still move."""
    L = keras.layers
    t = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 3, 6))
    randomize_torch(t)
    inp = keras.Input((7, 5, 3))
    if nesting == "backbone":
        backbone = keras.Sequential([keras.Input((7, 5, 3)), L.Conv2D(4, 3)])
        k = keras.Model(inp, L.Dense(6)(L.Flatten()(backbone(inp))))
    else:
        k = keras.Model(inp, keras.Sequential([L.Flatten(), L.Dense(6)])(L.Conv2D(4, 3)(inp)))
    wp.port(t, k)
    x = np.random.default_rng(2).standard_normal((2, 3, 7, 5)).astype("float32")
    assert_forward_equal(t, k, x, x.transpose(0, 2, 3, 1))


def test_flatten_of_an_untraceable_sequence_is_warned_about():
    """(steps, features) entering a nested model could be a Conv1D map or an embedded sequence."""
    L = keras.layers
    inp = keras.Input((6, 5))
    k = keras.Model(inp, keras.Sequential([L.Flatten(), L.Dense(4)])(L.Conv1D(5, 1)(inp)))
    t = torch.nn.Sequential(torch.nn.Conv1d(5, 5, 1), torch.nn.Flatten(), torch.nn.Linear(30, 4))
    with pytest.warns(wp.WeightportWarning, match="Flatten"):
        wp.port(t, k)


def test_a_subclassed_model_without_a_graph_is_warned_about():
    L = keras.layers

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv, self.flat, self.fc = L.Conv2D(4, 3), L.Flatten(), L.Dense(6)

        def call(self, x):
            return self.fc(self.flat(self.conv(x)))

    k = Sub()
    k(np.zeros((1, 7, 5, 3), "float32"))
    t = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(60, 6))
    with pytest.warns(wp.WeightportWarning, match="records no graph"):
        wp.port(t, k)
    plain = keras.Sequential([keras.Input((7,)), L.Dense(6)])  # no Flatten anywhere: nothing to say
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", wp.WeightportWarning)
        wp.port(torch.nn.Linear(7, 6), plain)
