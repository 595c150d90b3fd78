"""DINOv2 (transformers) against keras-hub's: keras-hub computes with a trainable position table and keeps a
non-trainable twin it loads and saves, where transformers holds one table. Trained pairs with trained; the
twin is set from the source's weight at its very path, from the live model and from the file alike."""
import numpy as np
import pytest

import weightport as wp
from test_real_models import randomized
from util import quiet_port

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")

IMAGES = np.random.default_rng(4).standard_normal((2, 3, 28, 28)).astype("float32")


def config():
    return transformers.Dinov2Config(hidden_size=40, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                                     image_size=28, patch_size=7, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)


def outputs(hf, kh):
    with torch.no_grad():
        a = hf(pixel_values=torch.from_numpy(IMAGES)).last_hidden_state.numpy()
    return a, keras.ops.convert_to_numpy(kh(IMAGES.transpose(0, 2, 3, 1)))


def table(kh, name):
    return keras.ops.convert_to_numpy(getattr(kh.get_layer("embeddings"), name))



@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dinov2")
    hf = randomized(transformers.Dinov2Model(config()), 5)
    hf.save_pretrained(folder)
    return hf, folder


def fresh(folder):
    return keras_hub.models.DINOV2Backbone.from_preset(str(folder), load_weights=False)


def test_both_ways_live_and_from_the_file_both_tables_set(saved):
    hf, folder = saved
    reference = keras_hub.models.DINOV2Backbone.from_preset(str(folder))  # keras-hub's own converter
    source_table = hf.embeddings.position_embeddings.detach().numpy()
    for source in (hf, folder / "model.safetensors"):
        kh = fresh(folder)
        report = quiet_port(source, kh)
        assert any("position_embeddings" in i and "same path" in i for i in report.plan.issues)
        np.testing.assert_array_equal(table(kh, "position_embeddings"), source_table)
        np.testing.assert_array_equal(table(kh, "interpolated_position_embeddings"), source_table)
        np.testing.assert_allclose(*outputs(hf, kh), atol=2e-4, rtol=1e-4)
        for a, b in zip(kh.weights, reference.weights):
            assert a.path == b.path
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a.value), keras.ops.convert_to_numpy(b.value))
    back = transformers.Dinov2Model(config()).eval()
    report = quiet_port(reference, back)
    assert any("embeddings/position_embeddings" in s for s in report.plan.unmatched_source)
    np.testing.assert_allclose(*outputs(back, reference), atol=2e-4, rtol=1e-4)


def test_the_trained_table_ports_back_not_its_stale_twin(saved):
    """After fine-tuning in keras-hub only the trainable table moved: that one is what transformers gets."""
    hf, folder = saved
    kh = fresh(folder)
    quiet_port(hf, kh)
    tuned = table(kh, "interpolated_position_embeddings") + 0.5
    kh.get_layer("embeddings").interpolated_position_embeddings.assign(tuned)
    back = transformers.Dinov2Model(config()).eval()
    quiet_port(kh, back)
    np.testing.assert_array_equal(back.embeddings.position_embeddings.detach().numpy(), tuned)


def test_negative_controls(saved, monkeypatch):
    from weightport.converter import constants, evidence
    hf, folder = saved
    monkeypatch.setattr(evidence.Pairing, "by_training", lambda self: False)
    with pytest.raises(wp.AmbiguityError, match="interpolated_position_embeddings"):
        wp.port(hf, fresh(folder))
    monkeypatch.undo()
    monkeypatch.setattr(constants, "_same_path", lambda b, nodes: None)
    with pytest.raises(wp.UnsupportedLayerError, match="position_embeddings"):
        wp.port(folder / "model.safetensors", fresh(folder))


def depth_anything_pair():
    """transformers' Depth Anything (DINOv2 under ``backbone.``) and keras-hub's (under ``feature_extractor/``)."""
    backbone = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=4,
                                         image_size=112, patch_size=14, apply_layernorm=True,
                                         out_features=["stage1", "stage2", "stage3", "stage4"],
                                         reshape_hidden_states=False)
    config = transformers.DepthAnythingConfig(backbone_config=backbone, patch_size=14, reassemble_hidden_size=32,
                                              neck_hidden_sizes=[16, 24, 40, 48], fusion_hidden_size=28,
                                              head_hidden_size=12)
    hf = randomized(transformers.DepthAnythingForDepthEstimation(config), 7)
    encoder = keras_hub.models.DINOV2Backbone(patch_size=14, num_layers=4, hidden_dim=32, num_heads=2,
                                              intermediate_dim=128, image_shape=(112, 112, 3),
                                              position_embedding_shape=(112, 112, 3), apply_layernorm=True)
    kh = keras_hub.models.DepthAnythingBackbone(
        image_encoder=encoder, reassemble_factors=[4, 2, 1, 0.5], neck_hidden_dims=[16, 24, 40, 48],
        fusion_hidden_dim=28, head_hidden_dim=12, head_in_index=-1,
        feature_keys=["stage1", "stage2", "stage3", "stage4"])
    return hf, kh


def test_the_twin_table_is_found_under_another_model_prefix(monkeypatch):
    """Depth Anything: the twin sits at feature_extractor/embeddings/position_embeddings, transformers' table at
    backbone.embeddings.position_embeddings; the paths end alike, so the twin is set and the strict port goes
    through (it was refused: no source at the very same path)."""
    from weightport.converter import constants
    hf, kh = depth_anything_pair()
    images = np.random.default_rng(8).standard_normal((2, 3, 112, 112)).astype("float32")
    report = quiet_port(hf, kh)
    source_table = hf.backbone.embeddings.position_embeddings.detach().numpy()
    # the encoder's auto-made name ("functional_N") counts the models built before it in this process
    inner = next(layer for layer in kh.layers if isinstance(layer, keras.Model))
    embeddings = inner.get_layer("embeddings")
    for name in ("position_embeddings", "interpolated_position_embeddings"):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(getattr(embeddings, name)), source_table)
    assert any("feature_extractor/embeddings/position_embeddings" in i and "same path" in i
               for i in report.plan.issues)
    with torch.no_grad():
        expected = hf(pixel_values=torch.from_numpy(images)).predicted_depth.numpy()
    got = np.maximum(keras.ops.convert_to_numpy(kh({"images": images.transpose(0, 2, 3, 1)}))[..., 0], 0)
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())  # keras-hub's head stops before
    # its last ReLU (the DepthEstimator task applies it)
    monkeypatch.setattr(constants, "_tail_length", lambda a, b: 3 if a[-3:] == b[-3:] else 0)  # the old rule
    with pytest.raises(wp.UnsupportedLayerError, match="position_embeddings"):
        wp.port(hf, depth_anything_pair()[1])
