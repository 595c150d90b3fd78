"""A file whose tensors alone cannot say a layer's heads (a torch nn.MultiheadAttention's in_proj: T5Gemma 2's
SigLIP head) is refused asking for model=; the refusal prints the line that builds that model from the
config.json beside the file, as look-alike refusals do, and the pasted line lets the port go on."""
import json
import warnings

import numpy as np
import pytest

import weightport as wp
from test_real_models import randomized

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")
keras = pytest.importorskip("keras")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

TEXT = dict(vocab_size=101, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
            layer_types=["sliding_attention", "full_attention"], max_position_embeddings=64,
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0}})
IDS = np.random.default_rng(6).integers(2, 90, (2, 9))


def t5gemma2_config():
    vision = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    encoder = transformers.T5Gemma2EncoderConfig(text_config=TEXT, vision_config=vision, mm_tokens_per_image=4,
                                                 boi_token_index=97, eoi_token_index=98, image_token_index=99)
    return transformers.T5Gemma2Config(encoder=encoder, decoder=transformers.T5Gemma2DecoderConfig(**TEXT),
                                       image_token_index=99, eoi_token_index=98)


def text_only_backbone(folder, tmp_path):
    """keras-hub's own converter builds T5Gemma2 text-only from a folder whose encoder config has no vision."""
    twin = tmp_path / "text_only"
    twin.mkdir()
    config = json.loads((folder / "config.json").read_text())
    config["encoder"].pop("vision_config")
    (twin / "config.json").write_text(json.dumps(config))
    tensors = safetensors_numpy.load_file(str(folder / "model.safetensors"))
    safetensors_numpy.save_file({k: v for k, v in tensors.items() if "vision" not in k and "multi_modal" not in k},
                                str(twin / "model.safetensors"), metadata={"format": "pt"})
    return keras_hub.models.T5Gemma2Backbone.from_preset(str(twin), load_weights=False)


def encoder_outputs(hf, kh):
    with torch.no_grad():
        expected = hf.get_encoder()(input_ids=torch.from_numpy(IDS)).last_hidden_state.numpy()
    got = kh({"encoder_token_ids": IDS, "encoder_padding_mask": np.ones_like(IDS),
              "decoder_token_ids": IDS[:, :4], "decoder_padding_mask": np.ones_like(IDS[:, :4])})
    return keras.ops.convert_to_numpy(got["encoder_sequence_output"]), expected


def test_the_printed_line_settles_the_heads_and_the_port_goes_on(tmp_path):
    folder = tmp_path / "hf"
    hf = randomized(transformers.T5Gemma2Model(t5gemma2_config()), 3)
    hf.save_pretrained(folder)
    kh = text_only_backbone(folder, tmp_path)
    with pytest.raises(wp.UsageError, match="number of attention heads is unknown") as refused:
        wp.port(folder / "model.safetensors", kh, strict=False)
    line = str(refused.value).rsplit("model=", 1)[1].strip()
    assert line.startswith("transformers.T5Gemma2Model("), str(refused.value)
    model = eval(line, {"transformers": transformers})  # as a user pastes it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        report = wp.port(folder / "model.safetensors", kh, strict=False, model=model)
    assert any("decoder_token_embedding" in t for t in report.plan.unmatched_target)  # tied in HF: said, not set
    got, expected = encoder_outputs(hf, kh)
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())


def test_without_a_config_beside_the_file_no_line_is_made_up(tmp_path):
    folder = tmp_path / "hf"
    randomized(transformers.T5Gemma2Model(t5gemma2_config()), 3).save_pretrained(folder)
    kh = text_only_backbone(folder, tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(wp.UsageError, match="number of attention heads is unknown") as refused:
        wp.port(folder / "model.safetensors", kh, strict=False)
    assert "transformers." not in str(refused.value)
