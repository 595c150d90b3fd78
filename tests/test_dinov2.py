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
