"""Look-alike layers in repeated blocks pair by dataflow, never by declaration order; check= guards a port.

The torch network declares each residual block's shortcut BatchNorm last (as
timm does); its Keras twin builds the shortcut first (as keras-hub does), so
the BatchNorms of one width pair wrongly by order. Sizes are distinct
(3 -> 5 -> 7 channels, odd spatial sizes).
"""
import ast

import numpy as np
import pytest

import weightport as wp
from util import randomize_keras, randomize_torch

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

WIDTHS = (5, 7)


class Block(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                  torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        shortcut = x
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        if self.downsample is not None:  # runs last, as in timm
            shortcut = self.downsample(shortcut)
        return torch.relu(x + shortcut)


class ResNet(torch.nn.Module):
    """Two stages of two blocks; the first block of each stage has a shortcut projection."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        cin, stages = 4, []
        for i, width in enumerate(WIDTHS):
            stages.append(torch.nn.Sequential(Block(cin, width, 1 if i == 0 else 2), Block(width, width, 1)))
            cin = width
        self.layer1, self.layer2 = stages

    def forward(self, x):
        return self.layer2(self.layer1(torch.relu(self.bn(self.stem(x)))))


def keras_resnet():
    """The twin, keras-hub style: flat names, the shortcut built (and numbered 0) before the main path."""
    L = keras.layers
    x = inputs = keras.Input((11, 13, 3))
    x = L.ZeroPadding2D(1)(x)  # the stem pads in a layer of its own, conv "valid"
    x = L.Conv2D(4, 3, use_bias=False, name="conv1_conv")(x)
    x = L.Activation("relu")(L.BatchNormalization(epsilon=1e-5, momentum=0.9, name="conv1_bn")(x))
    cin = 4
    for s, width in enumerate(WIDTHS):
        for b in range(2):
            stride = 2 if (s > 0 and b == 0) else 1
            name = f"stack{s}_block{b}"
            if b == 0 and (stride != 1 or cin != width):
                shortcut = L.Conv2D(width, 1, strides=stride, use_bias=False, name=f"{name}_0_conv")(x)
                shortcut = L.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}_0_bn")(shortcut)
            else:
                shortcut = x
            y = L.ZeroPadding2D(1)(x)
            y = L.Conv2D(width, 3, strides=stride, use_bias=False, name=f"{name}_1_conv")(y)
            y = L.Activation("relu")(L.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}_1_bn")(y))
            y = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
            y = L.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{name}_2_bn")(y)
            x = L.Activation("relu")(L.Add()([y, shortcut]))
            cin = width
    return keras.Model(inputs, x)


X = np.random.default_rng(3).standard_normal((2, 3, 11, 13)).astype("float32")
X_NHWC = np.ascontiguousarray(X.transpose(0, 2, 3, 1))


def models():
    t, k = ResNet(), keras_resnet()
    randomize_torch(t, seed=5)
    randomize_keras(k, seed=6)
    return t, k


def test_shortcut_batchnorms_pair_by_dataflow_both_ways():
    t, k = models()
    report = wp.port(t, k)
    assert wp.verify(t, k, (X, X_NHWC), atol=1e-4).ok
    pairs = {(s.source, s.target): s.evidence for s in report.steps}
    assert pairs[("layer2.0.bn2", "stack1_block0_2_bn")] == "structure"
    assert pairs[("layer2.0.downsample.1", "stack1_block0_0_bn")] == "structure"
    assert "dataflow" in str(report)
    # the ZeroPadding2D before a "valid" conv is that conv's padding: no false alarm
    assert not [w for w in report.warnings if "padding" in w]

    randomize_torch(t, seed=9)
    wp.port(k, t)
    assert wp.verify(t, k, (X, X_NHWC), atol=1e-4).ok


def test_declaration_order_would_mispair_them():
    """Negative control: pairing each width's BatchNorms in declaration order (what the matcher refuses to do)
    gives a port that computes something else."""
    t, k = models()
    good = {s.source: s.target for s in wp.port(t, k).steps}
    by_order = dict(good)
    for width in (4,) + WIDTHS:
        torch_bns = [n for n, m in t.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and m.num_features == width]
        keras_bns = sorted(layer.name for layer in k.layers  # sorted: the order keras_resnet() creates them
                           if isinstance(layer, keras.layers.BatchNormalization) and layer.gamma.shape[0] == width)
        by_order.update(zip(torch_bns, keras_bns))
    assert by_order != good
    wp.port(t, k, hints=by_order)
    assert not wp.verify(t, k, (X, X_NHWC), atol=1e-4).ok


def test_without_dataflow_look_alikes_are_refused_not_guessed(monkeypatch):
    t, k = models()
    from weightport.converter import tracing

    monkeypatch.setattr(tracing, "trace", lambda *a, **kw: None)  # neither model can be run
    before = [w.copy() for w in k.get_weights()]
    with pytest.raises(wp.MatchError) as err:
        wp.port(t, k)
    message = str(err.value)
    assert "layer2.0.downsample.1" in message and "stack1_block0_0_bn" in message and "hints={" in message
    for a, b in zip(before, k.get_weights()):
        np.testing.assert_array_equal(a, b)
    # timm counts stages from 1 (layer1), keras-hub from 0 (stack0): the guess counts both from 0 where a class
    # shows it, pairing each block's convs by their ordinals; the BatchNorms, whose last number counts a shortcut
    # unlike (downsample.1 against _0_bn), are not guessed, and the message says so rather than pairing in the
    # order listed
    guess = ast.literal_eval(message.rpartition("hints=")[2].strip())
    assert guess["layer1.0.conv2"] == "stack0_block0_2_conv" and guess["layer1.1.conv1"] == "stack0_block1_1_conv"
    assert not any("bn" in p or "downsample" in p for p in guess) and "names do not even guess the rest" in message


def test_from_the_checkpoint_file_refuses_or_ports_exactly(tmp_path):
    t, k = models()
    torch.save(t.state_dict(), tmp_path / "resnet.pt")
    try:
        wp.port(tmp_path / "resnet.pt", k)
    except wp.MatchError as err:
        assert "downsample" in str(err) and "hints=" in str(err)
    else:
        assert wp.verify(t, k, (X, X_NHWC), atol=1e-4).ok
    # the file with its own model (model=) has dataflow again
    wp.port(tmp_path / "resnet.pt", k, model=ResNet())
    assert wp.verify(t, k, (X, X_NHWC), atol=1e-4).ok


def test_check_refuses_a_wrong_port_names_the_layer_and_restores_the_target():
    t, k = models()
    report = wp.port(t, k, check=(X, X_NHWC), atol=1e-4)
    assert report.steps  # a right port passes its check
    good = [w.copy() for w in k.get_weights()]
    swapped = {s.source: s.target for s in report.steps}
    swapped["layer2.0.bn2"], swapped["layer2.0.downsample.1"] = "stack1_block0_0_bn", "stack1_block0_2_bn"
    randomize_torch(t, seed=11)
    with pytest.raises(wp.VerificationError) as err:
        wp.port(t, k, hints=swapped, check=(X, X_NHWC), atol=1e-4)
    assert "stack1_block0_2_bn" in str(err.value) or "stack1_block0_0_bn" in str(err.value)
    for a, b in zip(good, k.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_look_alikes_paired_by_unlike_numbers_are_warned_about(tmp_path):
    """A file has no dataflow: its 0, 2 against Keras' dense_1, dense_2 is the order each was made in, said so."""
    t = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 5), torch.nn.Tanh(),
                            torch.nn.Linear(5, 5))
    randomize_torch(t)
    torch.save(t.state_dict(), tmp_path / "mlp.pt")
    k = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5, activation="tanh"),
                          keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(5)])
    with pytest.warns(wp.WeightportWarning, match="numeric order"):
        report = wp.port(tmp_path / "mlp.pt", k)
    assert [s.evidence for s in report.steps] == ["shape", "position", "position"]
    assert wp.verify(t, k, np.ones((2, 7), "float32")).ok
    report = wp.port(t, k)  # live, both run: the dataflow says it, no warning needed
    assert [s.evidence for s in report.steps][1:] == ["structure", "structure"]
    assert not [w for w in report.warnings if "numeric order" in w]


class GatedMLP(torch.nn.Module):
    """down(gelu(gate(x)) * up(x)): gate and up read and feed the same layers."""

    def __init__(self):
        super().__init__()
        self.gate, self.up, self.down = torch.nn.Linear(5, 7), torch.nn.Linear(5, 7), torch.nn.Linear(7, 5)
        self.act = torch.nn.GELU()

    def forward(self, x):
        return self.down(self.act(self.gate(x)) * self.up(x))


def test_a_torch_trace_marks_the_edges_that_pass_an_activation():
    from weightport.converter.frameworks import adapter_for, walk

    m = GatedMLP()
    fw = adapter_for(m)
    refs, _ = walk(fw, m)
    flow = fw.trace(m, refs, np.ones((2, 5), "float32"))
    assert flow.sees_activations and flow.feeds["down"] == {"gate", "up"}
    assert flow.activated_readers["gate"] == {"down"} and flow.activated_readers["up"] == set()


def test_gated_branches_pair_by_their_activation_both_ways():
    """Named alike (one side numbers them, the other calls them a and b), declared in opposite orders."""
    class Keras(keras.layers.Layer):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.proj_2, self.proj = keras.layers.Dense(7), keras.layers.Dense(7)  # declared: up first
            self.out = keras.layers.Dense(5)

        def call(self, x):
            return self.out(self.proj_2(x) * keras.ops.gelu(self.proj(x), approximate=False))

    t = GatedMLP()
    randomize_torch(t, 3)
    k = keras.Sequential([keras.Input((5,)), Keras()])
    x = np.random.default_rng(2).standard_normal((3, 5)).astype("float32")
    report = wp.port(t, k)
    assert {s.source: s.evidence for s in report.steps}["gate"] in ("activation", "structure")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(k(x)), t(torch.from_numpy(x)).detach().numpy(),
                               atol=1e-5, rtol=1e-4)
    randomize_keras(k, 4)
    wp.port(k, t)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(k(x)), t(torch.from_numpy(x)).detach().numpy(),
                               atol=1e-5, rtol=1e-4)
