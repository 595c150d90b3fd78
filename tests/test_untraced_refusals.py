"""A refusal of look-alikes says why no run settled them, and asks for what would: it does not ask for a model=
already given, and says when a run never reached the layers (a vision tower when made-up inputs hold no image).

Real classes: transformers' PaliGemma and Moonshine against keras-hub's, tiny configs.
"""
import warnings

import numpy as np
import pytest

import weightport as wp
from test_real_models import randomized
from util import randomize_keras

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")
keras = pytest.importorskip("keras")

IDS = np.random.default_rng(6).integers(2, 90, (2, 7))
PIX = np.random.default_rng(4).uniform(-1, 1, (2, 3, 32, 32)).astype("float32")


def pali_pair():
    """PaliGemma (vision 32 wide, 2 layers; Gemma text 48 wide, 16 image tokens = head_dim) on both sides."""
    text = dict(model_type="gemma", vocab_size=101, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, hidden_activation="gelu_pytorch_tanh")
    vision = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8, vision_use_head=False)
    config = transformers.PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=101,
                                          projection_dim=48)
    hf = randomized(transformers.PaliGemmaModel(config), 1)  # parameters: the rotary buffer is computed
    kh = keras_hub.models.PaliGemmaBackbone(
        vocabulary_size=101, image_size=32, num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=48,
        intermediate_dim=128, head_dim=16, vit_patch_size=8, vit_num_heads=2, vit_hidden_dim=32, vit_num_layers=2,
        vit_intermediate_dim=40)
    randomize_keras(kh, 2)
    ids = np.concatenate([np.full((2, 16), 101), IDS], 1)
    hf_in = {"input_ids": torch.from_numpy(ids), "pixel_values": torch.from_numpy(PIX), "use_cache": False,
             "token_type_ids": torch.zeros(ids.shape, dtype=torch.long)}
    kh_in = {"images": PIX.transpose(0, 2, 3, 1), "token_ids": IDS, "padding_mask": np.ones_like(ids),
             "response_mask": np.zeros_like(ids)}
    return hf, kh, hf_in, kh_in


def test_a_run_that_never_reached_the_vision_tower_says_so_and_check_inputs_settle_it():
    hf, kh, hf_in, kh_in = pali_pair()
    before = [np.array(w) for w in kh.get_weights()]
    with pytest.raises(wp.AmbiguityError) as refused:
        wp.port(hf, kh)
    said = str(refused.value)
    assert "source's run on made-up inputs never reached vision_tower.encoder.layers." in said
    assert "pass check=(inputs_a, inputs_b)" in said
    assert all(np.array_equal(a, b) for a, b in zip(before, kh.get_weights()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.port(hf, kh, check=(hf_in, kh_in), output=("last_hidden_state", 0))  # what the refusal asks for
    with torch.no_grad():
        expected = hf(**hf_in).last_hidden_state.numpy()
    got = keras.ops.convert_to_numpy(kh(kh_in))
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())
    # negative control: the check compares what it says (a vision weight damaged after the port is caught)
    layer = kh.vit_encoder.get_layer("image_encoder").resblocks[0].mlp_dense_1
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, bias + 0.5])
    assert not wp.verify(hf, kh, (hf_in, kh_in), output=("last_hidden_state", 0)).ok


def moonshine_pair():
    config = transformers.MoonshineConfig(
        vocab_size=101, hidden_size=48, intermediate_size=192, encoder_num_hidden_layers=2,
        decoder_num_hidden_layers=3, encoder_num_attention_heads=4, decoder_num_attention_heads=4,
        max_position_embeddings=64, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.67})
    kh = keras_hub.models.MoonshineBackbone(
        vocabulary_size=101, filter_dim=48, encoder_num_layers=2, decoder_num_layers=3, hidden_dim=48,
        intermediate_dim=48, encoder_num_heads=4, decoder_num_heads=4, feedforward_expansion_factor=4,
        max_position_embeddings=64, partial_rotary_factor=0.67)
    return config, kh


def test_a_files_own_model_that_cannot_run_is_not_asked_for_again(tmp_path):
    """Moonshine reads raw audio (kernel 127, stride 64): no made-up input runs it. The file alone is refused
    asking for model=; given it, the refusal says that model could not run and how to go on, not model= again."""
    config, kh = moonshine_pair()
    hf = randomized(transformers.MoonshineModel(config), 3)
    hf.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    with pytest.raises(wp.AmbiguityError, match="a checkpoint cannot be run: pass its own model as model="):
        wp.port(path, kh)
    with pytest.raises(wp.AmbiguityError) as refused:
        wp.port(path, kh, model=transformers.MoonshineModel(config))
    said = str(refused.value)
    assert "pass its own model as model=" not in said
    assert "the source's own model (model=) could not be run on made-up inputs" in said
    assert "port the file into that model first" in said
    # the way it names: the file into its own model, then that model with check=
    own = transformers.MoonshineModel(config).eval()
    wp.port(path, own, quiet=True)
    audio = np.random.default_rng(3).standard_normal((2, 4000)).astype("float32")
    dec = np.random.default_rng(5).integers(2, 90, (2, 7))
    hf_in = {"input_values": torch.from_numpy(audio), "decoder_input_ids": torch.from_numpy(dec), "use_cache": False}
    kh_in = {"encoder_input_values": audio[..., None], "encoder_padding_mask": np.ones(audio.shape, bool),
             "decoder_token_ids": dec, "decoder_padding_mask": np.ones(dec.shape, bool)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.port(own, kh, check=(hf_in, kh_in), output=("last_hidden_state", "decoder_sequence_output"))
    with torch.no_grad():
        expected = hf.eval()(**hf_in).last_hidden_state.numpy()
    got = keras.ops.convert_to_numpy(kh(kh_in)["decoder_sequence_output"])
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())
