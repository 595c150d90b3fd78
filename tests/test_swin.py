"""Swin (transformers) against keras-hub's: transformers keeps separate query, key and value projections,
keras-hub one packed ``qkv`` Dense, which its attention views as (parts, heads, head_dim): one part after
another, which the traced run shows. transformers 5 also saves the projections under older names
(``attention.self.query``) than its live model has (``attention.q_proj``)."""
import numpy as np
import pytest

import weightport as wp
from test_real_models import randomized
from util import quiet_port

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")

EVIDENCE_SPLIT = "split"
IMAGES = np.random.default_rng(4).standard_normal((2, 3, 28, 28)).astype("float32")


def config():
    return transformers.SwinConfig(image_size=28, patch_size=2, embed_dim=16, depths=[2], num_heads=[2],
                                   window_size=7, mlp_ratio=2.0, qkv_bias=True, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0, drop_path_rate=0.0)


def outputs(hf, kh):
    with torch.no_grad():
        a = hf(pixel_values=torch.from_numpy(IMAGES)).last_hidden_state.numpy()
    b = keras.ops.convert_to_numpy(kh(IMAGES.transpose(0, 2, 3, 1)))
    return a, b.reshape(b.shape[0], -1, b.shape[-1])  # keras-hub keeps the (height, width) grid



@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("swin")
    hf = randomized(transformers.SwinModel(config(), add_pooling_layer=False), 7)
    hf.save_pretrained(folder)
    return hf, folder


def fresh(folder):
    return keras_hub.models.Backbone.from_preset(str(folder), load_weights=False)


def test_both_ways_live_and_from_the_file(saved):
    hf, folder = saved
    reference = keras_hub.models.Backbone.from_preset(str(folder))  # keras-hub's own converter
    for source in (hf, folder / "model.safetensors"):
        kh = fresh(folder)
        report = quiet_port(source, kh)
        assert any(s.evidence == EVIDENCE_SPLIT for s in report.plan.steps)
        np.testing.assert_allclose(*outputs(hf, kh), atol=2e-4, rtol=1e-4)
        for a, b in zip(kh.get_weights(), reference.get_weights()):
            np.testing.assert_array_equal(a, b)
    back = randomized(transformers.SwinModel(config(), add_pooling_layer=False), 8)
    quiet_port(reference, back)
    np.testing.assert_allclose(*outputs(back, reference), atol=2e-4, rtol=1e-4)


def test_negative_controls_the_other_order_is_refused_and_without_the_trace_nothing_settles_it(saved, monkeypatch):
    """(Wrong orders that no trace contradicts give other outputs: tests/test_packed_split.py.)"""
    from weightport.converter import splits
    hf, folder = saved
    with pytest.raises(wp.WeightportError, match="packed_qkv='per_head'"):
        wp.port(hf, fresh(folder), options={"packed_qkv": "per_head"})
    monkeypatch.setattr(splits, "traced_packing", lambda s, flow: None)
    with pytest.raises(wp.AmbiguityError, match="packed_qkv"):
        wp.port(hf, fresh(folder))
