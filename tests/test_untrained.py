"""State a model computes rather than learns (torch buffers, Keras non-trainable variables: rotary frequencies,
position ids) is filled from what the source model holds under that name, never assumed: a target that already
holds those values is left alone, one that does not (keras-hub's CLIP starts its position ids at zeros) is set,
and where the source holds no such tensor the port is refused."""
import numpy as np
import pytest

import weightport as wp

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

X = np.random.default_rng(0).standard_normal((4, 7)).astype("float32")


class Frequencies(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, 6, 2) / 6), persistent=False)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(7, 5)
        self.rotary = Frequencies()

    def forward(self, x):
        return self.fc(x)


class KerasFrequencies(keras.layers.Layer):
    """Holds the frequencies as a non-trainable weight, initialised as a user might forget to: zeros."""

    def __init__(self, start=None, **kw):
        super().__init__(**kw)
        self.start = start

    def build(self, shape):
        self.inv_freq = self.add_weight(shape=(3,), initializer="zeros", trainable=False, name="inv_freq")
        if self.start is not None:
            self.inv_freq.assign(self.start)

    def call(self, x):
        return x


def keras_net(start=None):
    x = keras.Input((7,))
    return keras.Model(x, KerasFrequencies(start)(keras.layers.Dense(5)(x)))


def frequencies(model):
    return keras.ops.convert_to_numpy(model.layers[-1].inv_freq.value)


def test_a_target_weight_the_source_computes_is_set_to_the_sources_values():
    net, kn = Net(), keras_net()
    report = wp.port(net, kn)
    np.testing.assert_array_equal(frequencies(kn), net.rotary.inv_freq.numpy())
    assert any(s.evidence == "constant" for s in report.steps)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kn(X)), net(torch.from_numpy(X)).detach().numpy(),
                               atol=1e-5)


def test_one_that_already_holds_them_is_left_as_it_is():
    net = Net()
    kn = keras_net(net.rotary.inv_freq.numpy())
    with pytest.warns(wp.WeightportWarning, match="already holds"):
        report = wp.port(net, kn)
    assert not any(s.evidence == "constant" for s in report.steps)


def test_negative_control_a_source_holding_no_such_tensor_is_refused_not_assumed(tmp_path):
    net = Net()
    torch.save(net.state_dict(), tmp_path / "net.pt")  # the buffer is not persistent: the file lacks it
    kn = keras_net()
    with pytest.raises(wp.UnsupportedLayerError, match="inv_freq.*not trained"):
        wp.port(tmp_path / "net.pt", kn)
    wp.port(tmp_path / "net.pt", kn, model=Net())  # its own model holds them
    np.testing.assert_array_equal(frequencies(kn), net.rotary.inv_freq.numpy())
