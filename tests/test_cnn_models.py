"""Real CNNs nobody here wrote: transformers' ConvNeXt against keras.applications' (the Keras code behind
``ConvNeXtTiny``, at a small size), random weights everywhere.

Keras names each ConvNeXt block ``<model>_stage_1_block_1_layer_scale`` and its bare weight ``variable_4``
(counted over the model), so a path's numbers read by rules meant for name suffixes come out uneven
(``block_1`` after ``stage_1`` looks like a repeated suffix): the layer scales of one stage were paired
block 0 -> 0, 1 -> 2, 2 -> 1, reported as a success with a warning (outputs off by a third of their size),
and the reverse port was refused. Every number of the paths' shared template numbers them alike.
"""
import numpy as np
import pytest

import weightport as wp
from util import quiet_port, randomize_keras, randomize_torch
from weightport.converter import naming

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
convnext = pytest.importorskip("keras.src.applications.convnext")

IMAGES = np.random.default_rng(5).standard_normal((2, 64, 96, 3)).astype("float32")  # NHWC, non-square


def hf_model(seed):
    cfg = transformers.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 3, 1, 1], layer_norm_eps=1e-6)
    model = transformers.ConvNextModel(cfg)
    randomize_torch(model, seed)
    return model.eval()


def keras_model(seed):
    """keras.applications' ConvNeXt builder at a small size; include_top=False applies its final LayerNorm
    after the pooling, as transformers' pooler output does."""
    model = convnext.ConvNeXt(depths=[1, 3, 1, 1], projection_dims=[8, 16, 24, 32], include_top=False, weights=None,
                              include_preprocessing=False, pooling="avg", input_shape=IMAGES.shape[1:])
    randomize_keras(model, seed)
    return model


def gap(hf, k):
    with torch.no_grad():
        a = hf(pixel_values=torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy())).pooler_output.numpy()
    b = keras.ops.convert_to_numpy(k(IMAGES))
    return float(np.abs(a - b).max()), float(np.abs(a).max())


def test_layer_scale_paths_number_alike():
    src = [f"encoder.stages.1.layers.{i}.layer_scale_parameter" for i in range(3)]
    tgt = [f"convnext_stage_1_block_{i}_layer_scale/variable_{i + 3}" for i in range(3)]
    number = naming.common_numbering(src, tgt)
    assert [number(p) for p in src] == [number(p) for p in tgt] == [(1, 0), (1, 1), (1, 2)]
    assert not naming.numbered_evenly(naming.numbers, tgt)  # the reading that paired them wrongly


@pytest.mark.parametrize("direction", ["hf_to_keras", "keras_to_hf"])
def test_convnext_live_both_ways(direction):
    hf, k = hf_model(1), keras_model(2)
    quiet_port(hf, k) if direction == "hf_to_keras" else quiet_port(k, hf)
    diff, size = gap(hf, k)
    assert size > 0.1 and diff < 1e-4 * size, (diff, size)


def test_convnext_from_file(tmp_path):
    hf = hf_model(3)
    hf.save_pretrained(tmp_path)
    k = keras_model(4)
    quiet_port(tmp_path / "model.safetensors", k, model=hf_model(9))  # its structure only
    diff, size = gap(hf, k)
    assert diff < 1e-4 * size, (diff, size)


@pytest.mark.backend_neutral
def test_negative_control_uneven_numbers_refused_not_guessed(monkeypatch):
    """Without the template's numbering, the uneven reading is refused; without that guard too, the port
    'succeeds' with blocks swapped: what this file guards against."""
    monkeypatch.setattr(naming, "slot_numbers", naming.numbers)  # common_numbering falls back to numbers
    hf, k = hf_model(1), keras_model(2)
    before = [np.array(keras.ops.convert_to_numpy(v.value)) for v in k.weights]
    with pytest.raises(wp.WeightportError):
        quiet_port(hf, k)
    assert all(np.array_equal(a, keras.ops.convert_to_numpy(v.value)) for a, v in zip(before, k.weights))
    monkeypatch.setattr(naming, "numbered_evenly", lambda number, paths: True)
    quiet_port(hf, k)
    diff, size = gap(hf, k)
    assert diff > 1e-2 * size, (diff, size)


def normalized_keras():
    """keras.applications' EfficientNet starts with Normalization (mean, variance, count: state, not trained)."""
    inp = keras.Input((12, 10, 3))
    x = keras.layers.Normalization(axis=-1)(inp)
    model = keras.Model(inp, keras.layers.Conv2D(5, 3)(x))
    randomize_keras(model, 6)  # the statistics too: distinct values, variance positive
    return model


@pytest.mark.backend_neutral
def test_preprocessing_state_refusal_advises_strict_false_for_live_source():
    conv = torch.nn.Conv2d(3, 5, 3)
    randomize_torch(conv, 8)
    k = normalized_keras()
    with pytest.raises(wp.UnsupportedLayerError) as info:
        wp.port(conv, k)
    assert "strict=False" in str(info.value) and "source's live model" not in str(info.value)  # it is live
    quiet_port(conv, k, strict=False)  # the documented way past it: the target keeps its statistics
    norm = k.layers[1]
    mean, var = (keras.ops.convert_to_numpy(norm.mean), keras.ops.convert_to_numpy(norm.variance))
    x = np.random.default_rng(2).standard_normal((2, 12, 10, 3)).astype("float32")
    with torch.no_grad():
        want = conv(torch.from_numpy(((x - mean) / np.sqrt(var)).transpose(0, 3, 1, 2).copy())).numpy()
    got = keras.ops.convert_to_numpy(k(x)).transpose(0, 3, 1, 2)
    assert np.abs(want - got).max() < 1e-4 * np.abs(want).max()


@pytest.mark.backend_neutral
def test_conv_without_bias_into_conv_with_bias_gets_zero_bias():
    """keras.applications' ResNets give every conv a bias, transformers' none (a BatchNorm follows): the target's
    bias is written as zeros, and the report says so (test_conv_bias.py: whole ResNets). A target conv no source
    conv fits is still refused, naming its shapes (the refusal above must not swallow it)."""
    t = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4))
    k = keras.Sequential([keras.Input((8, 6, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization()])
    randomize_keras(k, 3)
    report = quiet_port(t, k)
    assert not np.any(keras.ops.convert_to_numpy(k.layers[0].bias))
    assert any("target biases were set to zeros" in i for i in report.plan.issues)
    other = keras.Sequential([keras.Input((8, 6, 3)), keras.layers.Conv2D(4, 2), keras.layers.BatchNormalization()])
    with pytest.raises(wp.ShapeMismatchError, match="found 3x3x3x4"):
        wp.port(t, other)
