"""A conv bias one side has and the other lacks: transformers' ResNet (convs without bias, each followed by a
BatchNorm) against keras.applications' (convs with a bias, each followed by a BatchNormalization).

Into Keras the biases are written as zeros; out of Keras each is folded into the moving mean of the BatchNorm
that alone reads its conv's output (``mean - bias``), which a traced run must prove. Before, both ways were
refused, naming the BatchNorms around the convs rather than use_bias.
"""
import numpy as np
import pytest

import weightport as wp
from util import quiet_port, randomize_keras, randomize_torch
from weightport.converter import biases

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
resnet = pytest.importorskip("keras.src.applications.resnet")

IMAGES = np.random.default_rng(3).standard_normal((2, 32, 48, 3)).astype("float32")  # NHWC, non-square


def keras_resnet(seed):
    """keras.applications' ResNet builder (v1 blocks, as ResNet50's), 2 stages of 2 and 1 bottleneck blocks."""
    def stacks(x):
        x = resnet.stack_residual_blocks_v1(x, 4, 2, stride1=1, name="conv2")
        return resnet.stack_residual_blocks_v1(x, 6, 1, name="conv3")
    model = resnet.ResNet(stacks, False, True, name="resnet_small", include_top=False, weights=None,
                          input_shape=IMAGES.shape[1:])
    randomize_keras(model, seed)
    return model


def hf_resnet(seed):
    """transformers' ResNet of the same shape; downsample_in_bottleneck strides the first 1x1 conv, as Keras v1."""
    cfg = transformers.ResNetConfig(embedding_size=64, hidden_sizes=[16, 24], depths=[2, 1],
                                    downsample_in_bottleneck=True)
    model = transformers.ResNetModel(cfg)
    randomize_torch(model, seed)
    return model.eval()


def gap(hf, k):
    with torch.no_grad():
        a = hf(pixel_values=torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy())).last_hidden_state.numpy()
    b = keras.ops.convert_to_numpy(k(IMAGES)).transpose(0, 3, 1, 2)
    return float(np.abs(a - b).max()), float(np.abs(a).max())


def conv_biases(k):
    return [keras.ops.convert_to_numpy(layer.bias) for layer in k.layers if isinstance(layer, keras.layers.Conv2D)]


def test_resnet_into_keras_writes_zero_biases():
    hf, k = hf_resnet(1), keras_resnet(2)
    assert all(np.any(b) for b in conv_biases(k))
    report = quiet_port(hf, k)
    diff, size = gap(hf, k)
    assert size > 0.1 and diff < 1e-4 * size, (diff, size)
    assert not any(np.any(b) for b in conv_biases(k))
    assert any("target biases were set to zeros" in i for i in report.plan.issues)


def test_resnet_out_of_keras_folds_biases_into_batchnorm_means():
    k, hf = keras_resnet(2), hf_resnet(1)
    report = quiet_port(k, hf)
    diff, size = gap(hf, k)
    assert size > 0.1 and diff < 1e-4 * size, (diff, size)
    conv, bn = k.get_layer("conv2_block1_2_conv"), k.get_layer("conv2_block1_2_bn")
    want = keras.ops.convert_to_numpy(bn.moving_mean) - keras.ops.convert_to_numpy(conv.bias)
    got = hf.encoder.stages[0].layers[0].layer[1].normalization.running_mean.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    step = next(s for s in report.plan.steps if s.source == "conv2_block1_2_conv")
    assert not step.exact and step.source_hp["bias_folded_into"] == "conv2_block1_2_bn"  # values changed: said
    assert any("folded into the moving mean" in i for i in report.plan.issues)


def test_negative_control_bias_not_folded_outputs_differ(monkeypatch):
    """With the fold skipped (the BatchNorm read as it is), the same port computes something else."""
    monkeypatch.setattr(biases.MeanShifted, "read", lambda self, rule, hp: self.base.read(rule, hp))
    k, hf = keras_resnet(2), hf_resnet(1)
    quiet_port(k, hf)
    diff, size = gap(hf, k)
    assert diff > 1e-2 * size, (diff, size)


def keras_conv_bn(between):
    """A conv with a bias, then a BatchNorm; ``between``: what else reads the conv's output on the way."""
    x = keras.Input((9, 7, 3))
    y = keras.layers.Conv2D(5, 3, name="conv")(x)
    if between == "relu":
        y = keras.layers.ReLU(name="relu")(y)
    z = keras.layers.BatchNormalization(epsilon=1e-5, name="bn")(y)  # torch's
    if between == "residual":
        z = keras.layers.Add()([z, y])
    model = keras.Model(x, z)
    randomize_keras(model, 4)
    return model


class TorchConvBN(torch.nn.Module):
    def __init__(self, between):
        super().__init__()
        self.between = between
        self.conv, self.bn = torch.nn.Conv2d(3, 5, 3, bias=False), torch.nn.BatchNorm2d(5)

    def forward(self, x):
        y = self.conv(x)
        y = torch.relu(y) if self.between == "relu" else y
        z = self.bn(y)
        return z + y if self.between == "residual" else z


@pytest.mark.parametrize("between", ["relu", "residual"])
def test_bias_not_read_by_batchnorm_alone_refused(between):
    """A conv whose output is not the BatchNorm's alone (an activation between; a residual reads it too) cannot
    lose its bias to that BatchNorm: refused, naming use_bias and the conv, the target unchanged."""
    k, t = keras_conv_bn(between), TorchConvBN(between)
    randomize_torch(t, 5)
    before = {n: v.clone() for n, v in t.state_dict().items()}
    with pytest.raises(wp.ConfigMismatchError, match=r"source layer conv \(conv\) adds a bias \(use_bias=True\)"):
        quiet_port(k, t)
    assert all(torch.equal(before[n], v) for n, v in t.state_dict().items())


@pytest.mark.backend_neutral
def test_bias_read_by_batchnorm_alone_folds_and_zero_bias_drops():
    k, t = keras_conv_bn("none"), TorchConvBN("none").eval()
    x = np.random.default_rng(6).standard_normal((2, 9, 7, 3)).astype("float32")

    def outputs_agree():
        with torch.no_grad():
            a = t(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
        b = keras.ops.convert_to_numpy(k(x))
        return np.abs(a - b).max() < 1e-5 * np.abs(b).max()

    report = quiet_port(k, t)
    assert outputs_agree() and any("conv -> bn" in i for i in report.plan.issues)
    k.get_layer("conv").bias.assign(np.zeros(5, "float32"))
    report = quiet_port(k, t)  # a bias of zeros needs no fold
    assert outputs_agree() and any("bias of zeros" in i for i in report.plan.issues)
    assert all(s.exact for s in report.plan.steps if s.source == "conv")


@pytest.mark.backend_neutral
def test_torch_bias_folds_into_keras_batchnorm_mean():
    """The other way round: a torch conv with a bias, read by its BatchNorm alone (torch's traced run proves it),
    into a Keras conv without one; a conv whose output the model also returns is refused."""
    t = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.BatchNorm2d(5)).eval()
    randomize_torch(t, 7)
    x = keras.Input((9, 7, 3))
    k = keras.Model(x, keras.layers.BatchNormalization(epsilon=1e-5)(keras.layers.Conv2D(5, 3, use_bias=False)(x)))
    quiet_port(t, k)
    images = np.random.default_rng(8).standard_normal((2, 9, 7, 3)).astype("float32")
    with torch.no_grad():
        want = t(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    got = keras.ops.convert_to_numpy(k(images))
    assert np.abs(want - got).max() < 1e-5 * np.abs(want).max()
    with pytest.raises(wp.ConfigMismatchError, match=r"source layer 0 \(conv\) adds a bias"):
        quiet_port(torch.nn.Sequential(t[0]), keras.Sequential([keras.Input((9, 7, 3)),
                                                                keras.layers.Conv2D(5, 3, use_bias=False)]))


@pytest.mark.backend_neutral
def test_kind_mixing_biased_and_unbiased_convs_refused_naming_use_bias():
    """Where one side's convs of a kernel shape have a bias and others of that shape do not, nothing is zeroed or
    folded (which would pair with which is not settled by shapes): refused, naming use_bias, target unchanged."""
    t = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, bias=False), torch.nn.Conv2d(4, 4, 3))
    k = keras.Sequential([keras.Input((11, 9, 4)), keras.layers.Conv2D(4, 3), keras.layers.Conv2D(4, 3)])
    randomize_keras(k, 9)
    before = [keras.ops.convert_to_numpy(v.value).copy() for v in k.weights]
    with pytest.raises(wp.WeightportError, match="use_bias"):
        wp.port(t, k)
    assert all(np.array_equal(a, keras.ops.convert_to_numpy(v.value)) for a, v in zip(before, k.weights))


@pytest.mark.backend_neutral
def test_saved_plan_replays_the_zero_bias(tmp_path):
    """A dry run's plan records the zeros (``zero_bias`` in its hp) and writes them again without the model."""
    t = TorchConvBN("none").eval()
    randomize_torch(t, 10)
    wp.save(t, tmp_path / "t.safetensors")
    like = keras_conv_bn("none")
    plan = wp.convert(tmp_path / "t.safetensors", tmp_path / "k.weights.h5", like=like, dry_run=True).plan
    assert next(s for s in plan.steps if s.target == "conv").source_hp["zero_bias"]
    (tmp_path / "plan.json").write_text(plan.to_json())
    wp.convert(tmp_path / "t.safetensors", tmp_path / "k.weights.h5", plan=str(tmp_path / "plan.json"))
    fresh = keras_conv_bn("none")
    fresh.load_weights(tmp_path / "k.weights.h5")
    assert not np.any(keras.ops.convert_to_numpy(fresh.get_layer("conv").bias))
    x = np.random.default_rng(11).standard_normal((2, 9, 7, 3)).astype("float32")
    with torch.no_grad():
        want = t(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    assert np.abs(want - keras.ops.convert_to_numpy(fresh(x))).max() < 1e-5 * np.abs(want).max()
