"""Real models that pad apart from their convs port with no padding warning, and warn where the zeros differ.

transformers' MobileNet V1/V2 pad TF-style ("same") with ``nn.functional.pad`` in ``forward`` before convs that
pad nothing; keras.applications uses 'same' or a ZeroPadding2D before a 'valid' conv. transformers' SegFormer
pads in its patch convs; keras-hub's MiT in a ZeroPadding2D inside its patch-embedding layer. MobileNet's other
settings are made to agree (BatchNorm momentum), so any WeightportWarning fails its ports.
"""
import warnings

import numpy as np
import pytest

import weightport as wp
from util import randomize_keras, randomize_torch

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")

IMAGES = np.random.default_rng(7).standard_normal((2, 64, 96, 3)).astype("float32")  # NHWC, non-square


def agreeing(hf, momentum):
    """``hf`` in eval mode, its BatchNorms set to the Keras side's training momentum (weights cannot say)."""
    for m in hf.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = momentum
    return hf.eval()


def mobilenet(version, tf_padding=True):
    if version == 1:
        hf = transformers.MobileNetV1Model(transformers.MobileNetV1Config(depth_multiplier=0.25,
                                                                          tf_padding=tf_padding))
        k = keras.applications.MobileNet(weights=None, include_top=False, input_shape=IMAGES.shape[1:], alpha=0.25)
    else:
        hf = transformers.MobileNetV2Model(transformers.MobileNetV2Config(depth_multiplier=0.35,
                                                                          tf_padding=tf_padding))
        k = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=IMAGES.shape[1:],
                                           alpha=0.35)
    randomize_torch(hf, 1)
    randomize_keras(k, 2)
    return agreeing(hf, momentum=1 - k.get_layer(index=2).momentum), k


def hf_out(hf, images):
    with torch.no_grad():
        out = hf(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).last_hidden_state
    return out.permute(0, 2, 3, 1).numpy()


def strict_port(source, target, only="", **kw):
    """The port with every WeightportWarning (whose message matches ``only``) raised as an error."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=wp.WeightportWarning)
        warnings.filterwarnings("error", message=only, category=wp.WeightportWarning)
        return wp.port(source, target, **kw)


def gap(hf, k, images=IMAGES):
    a, b = hf_out(hf, images), keras.ops.convert_to_numpy(k(images))
    return float(np.abs(a - b).max()), float(np.abs(a).max())


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("direction", ["hf->keras", "keras->hf"])
def test_mobilenet_ports_without_a_padding_warning(version, direction):
    hf, k = mobilenet(version)
    report = strict_port(hf, k) if direction == "hf->keras" else strict_port(k, hf)
    assert not report.warnings
    diff, size = gap(hf, k)
    assert size > 0.1 and diff < 1e-3 * size, (diff, size)  # ReLU6 and 17 blocks: float32 rounding grows


def test_mobilenet_file_with_its_model_ports_without_a_padding_warning(tmp_path):
    hf, k = mobilenet(1)
    hf.save_pretrained(tmp_path)
    own = agreeing(transformers.MobileNetV1Model(transformers.MobileNetV1Config(depth_multiplier=0.25)),
                   momentum=hf.conv_stem.normalization.momentum)
    strict_port(tmp_path / "model.safetensors", k, model=own)
    diff, size = gap(hf, k)
    assert size > 0.1 and diff < 1e-4 * size, (diff, size)


@pytest.mark.parametrize("version", [1, 2])
def test_mobilenet_padding_symmetrically_is_still_warned(version):
    """Negative control: transformers' ``tf_padding=False`` pads (1, 1) in every conv, keras.applications
    (0, 1) at stride 2 (ZeroPadding2D, or 'same' at even sizes): warned, and the outputs do differ."""
    hf, k = mobilenet(version, tf_padding=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wp.port(hf, k)
    found = [str(w.message) for w in caught if "padding" in str(w.message)]
    assert found and all("stride" not in m.split("padding")[0] for m in found), found
    assert any("(1, 1)" in m and "(0, 1)" in m for m in found), found
    diff, size = gap(hf, k)
    assert diff > 1e-2 * size, (diff, size)


def segformer():
    return transformers.SegformerModel(transformers.SegformerConfig(
        num_encoder_blocks=2, depths=[2, 1], sr_ratios=[2, 1], hidden_sizes=[16, 40], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[4, 4], hidden_act="gelu_pytorch_tanh")).eval()


def mit():
    keras_hub = pytest.importorskip("keras_hub")
    return keras_hub.models.MiTBackbone(
        layerwise_depths=[2, 1], num_layers=2, layerwise_num_heads=[1, 2], layerwise_sr_ratios=[2, 1],
        max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3], layerwise_strides=[4, 2], image_shape=(32, 32, 3),
        hidden_dims=[16, 40])


PIXELS = np.random.default_rng(8).standard_normal((2, 32, 32, 3)).astype("float32")


@pytest.mark.parametrize("direction", ["hf->keras", "keras->hf"])
def test_segformer_and_mit_port_without_a_padding_warning(direction):
    hf, k = segformer(), mit()
    randomize_torch(hf, 3)
    randomize_keras(k, 4)
    kw = {"only": ".*padding"}  # MiT's LayerNorm epsilons differ from transformers' (1e-6 against 1e-5): warned
    report = strict_port(hf, k, **kw) if direction == "hf->keras" else strict_port(k, hf, **kw)
    assert report.warnings and all("epsilon" in w and "padding" not in w for w in report.warnings)
    diff, size = gap(hf, k, PIXELS)
    assert size > 0.1 and diff < 1e-4 * size, (diff, size)


def test_segformer_with_other_padding_is_still_warned():
    """Negative control: the first patch conv made to pad 2, not 3 (same output size): warned, and outputs differ."""
    hf, k = segformer(), mit()
    randomize_torch(hf, 3)
    hf.stages[0].patch_embeddings.proj.padding = (2, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wp.port(hf, k)
    found = [str(w.message) for w in caught if "padding" in str(w.message)]
    assert len(found) == 1 and "patch_embeddings" in found[0] and "((3, 3), (3, 3))" in found[0], found
    diff, size = gap(hf, k, PIXELS)
    assert diff > 1e-2 * size, (diff, size)
