"""State a model computes itself (a torch buffer, a Keras non-trainable variable) that no source tensor fills is
left as it is and reported; a trainable weight in its place is still refused."""
import numpy as np
import pytest

import weightport as wp

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")


class Frequencies(torch.nn.Module):
    def __init__(self, trainable=False):
        super().__init__()
        table = 1.0 / 10000 ** (torch.arange(0, 6, 2) / 6)
        if trainable:
            self.inv_freq = torch.nn.Parameter(table)
        else:
            self.register_buffer("inv_freq", table)


class Net(torch.nn.Module):
    def __init__(self, trainable=False):
        super().__init__()
        self.fc = torch.nn.Linear(7, 5)
        self.rotary = Frequencies(trainable)

    def forward(self, x):
        return self.fc(x)


def keras_net():
    return keras.Sequential([keras.Input((7,)), keras.layers.Dense(5)])


def test_a_buffer_no_source_tensor_fills_is_left_as_computed_and_reported():
    net, kn = Net(), keras_net()
    before = net.rotary.inv_freq.clone()
    with pytest.warns(wp.WeightportWarning, match="inv_freq.*not trainable"):
        wp.port(kn, net)
    assert torch.equal(net.rotary.inv_freq, before)
    x = np.random.default_rng(0).standard_normal((4, 7)).astype("float32")
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(), keras.ops.convert_to_numpy(kn(x)),
                               atol=1e-5)


def test_negative_control_a_trainable_weight_in_its_place_is_refused():
    with pytest.raises(wp.UnsupportedLayerError, match="inv_freq"):
        wp.port(keras_net(), Net(trainable=True))

