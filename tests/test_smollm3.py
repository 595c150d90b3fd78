"""SmolLM3 (transformers) against keras-hub's: keras-hub keeps each block's rotary frequencies as a non-trainable
variable the HF model computes and never saves. Such state is checked against what the source model holds (or set
to it); a bare file holds nothing to check it by, and needs its own model."""
import numpy as np
import pytest

import weightport as wp
from test_real_models import randomized
from util import quiet_port

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")

IDS = np.random.default_rng(4).integers(3, 89, (2, 7))


def config():
    return transformers.SmolLM3Config(vocab_size=89, hidden_size=48, num_hidden_layers=4, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=40, no_rope_layer_interval=4,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2)


def outputs(hf, kh):
    with torch.no_grad():
        a = hf.model(input_ids=torch.from_numpy(IDS)).last_hidden_state.numpy()
    return a, keras.ops.convert_to_numpy(kh({"token_ids": IDS, "padding_mask": np.ones_like(IDS)}))


def assert_bitwise_equal(ours, reference):
    """In weight order: keras-hub's SmolLM3 repeats variable paths across blocks."""
    assert len(ours.weights) == len(reference.weights)
    for a, b in zip(ours.weights, reference.weights):
        a, b = keras.ops.convert_to_numpy(a.value), keras.ops.convert_to_numpy(b.value)
        assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)



@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smollm3")
    hf = randomized(transformers.SmolLM3ForCausalLM(config()), 5)
    hf.save_pretrained(folder)
    return hf, folder


def test_both_ways_live_and_from_the_file_the_rotary_state_left_as_computed(saved):
    hf, folder = saved
    kh = keras_hub.models.SmolLM3Backbone.from_preset(str(folder))  # keras-hub's own converter: the reference
    fresh = keras_hub.models.SmolLM3Backbone.from_preset(str(folder), load_weights=False)
    report = quiet_port(hf, fresh)
    assert any("inv_freq" in i and "already holds what the source computes" in i for i in report.plan.issues)
    np.testing.assert_allclose(*outputs(hf, fresh), atol=2e-4, rtol=1e-4)
    assert_bitwise_equal(fresh, kh)
    from_file = keras_hub.models.SmolLM3Backbone.from_preset(str(folder), load_weights=False)
    with pytest.raises(wp.UnsupportedLayerError, match="inv_freq.*not trained"):
        wp.port(folder / "model.safetensors", from_file)
    quiet_port(folder / "model.safetensors", from_file, model=transformers.SmolLM3ForCausalLM(config()))
    assert_bitwise_equal(from_file, kh)
    back = transformers.SmolLM3ForCausalLM(config()).eval()
    quiet_port(kh, back)
    np.testing.assert_allclose(*outputs(back, kh), atol=2e-4, rtol=1e-4)


def test_negative_control_without_the_sources_own_frequencies_the_port_is_refused(saved, monkeypatch):
    from weightport.converter import constants
    monkeypatch.setattr(constants, "held", lambda model: {})
    hf, folder = saved
    fresh = keras_hub.models.SmolLM3Backbone.from_preset(str(folder), load_weights=False)
    with pytest.raises(wp.UnsupportedLayerError, match="inv_freq"):
        wp.port(hf, fresh)
