"""``.keras`` archives written by weightport: a torch model ported into one with ``like=keras_model`` loads with
``keras.saving.load_model`` (a registered custom layer included) and computes what torch does; refusals write
nothing."""
import os
import zipfile

import numpy as np
import pytest

import weightport as wp
from util import assert_forward_differs, assert_forward_equal, randomize_torch, skip_transforms
from weightport.errors import MatchError, ShapeMismatchError, UsageError

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

H, W, C, CO, HIDDEN, OUT, B = 9, 8, 3, 4, 6, 5, 2


@keras.saving.register_keras_serializable(package="weightport_tests")
class Scale(keras.layers.Layer):
    """A custom layer without weights, with a config of its own."""

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(C, CO, (3, 2))
        self.fc = torch.nn.Linear(CO * (H - 2) * (W - 1), HIDDEN)
        self.out = torch.nn.Linear(HIDDEN, OUT)

    def forward(self, x):
        x = torch.relu(self.conv(x)).flatten(1)
        return self.out(torch.relu(self.fc(x)) * 1.5)


def keras_net(hidden=HIDDEN):
    return keras.Sequential([keras.Input((H, W, C)), keras.layers.Conv2D(CO, (3, 2), activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(hidden, activation="relu"), Scale(1.5),
                             keras.layers.Dense(OUT)])


def inputs():
    x = np.random.default_rng(3).standard_normal((B, H, W, C)).astype("float32")
    return x, np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def test_torch_into_a_keras_archive_loads_with_keras_and_computes_the_same(tmp_path):
    t = TorchNet()
    randomize_torch(t, seed=1)
    like = keras_net()
    report = wp.save(t, tmp_path / "m.keras", like=like)
    assert report.files == [str(tmp_path / "m.keras")] and os.listdir(tmp_path) == ["m.keras"]
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        assert z.namelist() == ["metadata.json", "config.json", "model.weights.h5"]
        assert z.getinfo("model.weights.h5").compress_type == zipfile.ZIP_STORED
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert any(isinstance(layer, Scale) and layer.factor == 1.5 for layer in loaded.layers)
    x_keras, x_torch = inputs()
    assert_forward_equal(loaded, t, x_keras, x_torch)
    assert wp.load(tmp_path / "m.keras").format == "keras"  # read back as any Keras archive


def test_convert_a_file_into_a_keras_archive(tmp_path):
    t = TorchNet()
    randomize_torch(t, seed=2)
    wp.save(t, tmp_path / "t.safetensors")
    wp.convert(tmp_path / "t.safetensors", tmp_path / "c.keras", like=keras_net(), model=TorchNet())
    x_keras, x_torch = inputs()
    assert_forward_equal(keras.saving.load_model(tmp_path / "c.keras"), t, x_keras, x_torch)


def test_negative_control_without_the_dense_transform(tmp_path, monkeypatch):
    t = TorchNet()
    randomize_torch(t, seed=3)
    skip_transforms(monkeypatch, "dense")
    wp.save(t, tmp_path / "bad.keras", like=keras_net())
    x_keras, x_torch = inputs()
    assert_forward_differs(keras.saving.load_model(tmp_path / "bad.keras"), t, x_keras, x_torch)


class NoConfig(keras.Model):
    """A subclassed model whose __init__ takes what Keras cannot serialize, and no get_config."""

    def __init__(self, activation):
        super().__init__()
        self.fc = keras.layers.Dense(OUT)
        self.activation = activation

    def call(self, x):
        return self.activation(self.fc(x))


def test_refusals_write_nothing(tmp_path):
    linear = torch.nn.Linear(HIDDEN, OUT)
    no_config = NoConfig(lambda v: v * 2)
    no_config(np.zeros((1, HIDDEN), "float32"))
    with pytest.raises(UsageError, match="cannot record the config of"):
        wp.save(linear, tmp_path / "a.keras", like=no_config)
    with pytest.raises((MatchError, ShapeMismatchError), match="does not fit"):  # a like model the weights do not fit
        wp.save(TorchNet(), tmp_path / "b.keras", like=keras_net(hidden=HIDDEN + 1))
    with pytest.raises(UsageError, match="like="):  # no model to take the config from
        wp.converter.formats.write_checkpoint(tmp_path / "c.keras", {"w": np.zeros((2, 3), "float32")})
    with pytest.raises(UsageError, match="Keras model"):
        wp.converter.formats.write_checkpoint(tmp_path / "d.keras", {"w": np.zeros((2, 3), "float32")},
                                              like=linear)
    assert os.listdir(tmp_path) == []
