"""OPT (transformers) against keras-hub's, from the file: each block's last norm and the model's final norm look
alike and share their names (``final_layer_norm``); block numbers tell them apart. What is left is the position
table, whose reserved rows only the file's own model shows."""
import warnings

import numpy as np
import pytest

import weightport as wp
from test_real_models import randomized

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")

IDS = np.random.default_rng(2).integers(3, 71, (2, 9))


def config():
    return transformers.OPTConfig(vocab_size=71, hidden_size=40, num_hidden_layers=3, ffn_dim=56,
                                  num_attention_heads=4, max_position_embeddings=24, word_embed_proj_dim=40,
                                  do_layer_norm_before=True, dropout=0.0, pad_token_id=1, bos_token_id=2,
                                  eos_token_id=2, enable_bias=True)


def keras_opt():
    return keras_hub.models.OPTBackbone(vocabulary_size=71, num_layers=3, num_heads=4, hidden_dim=40,
                                        intermediate_dim=56, dropout=0.0, max_sequence_length=24)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("opt")
    hf = randomized(transformers.OPTModel(config()), 6)
    hf.save_pretrained(folder)
    return hf, folder


def test_the_norms_pair_by_block_number_only_the_position_rows_need_the_model(saved):
    hf, folder = saved
    with pytest.raises(wp.MatchError) as refused:
        wp.port(folder / "model.safetensors", keras_opt())
    listed = str(refused.value).split("The target was not changed")[0]
    assert "embed_positions" in listed and "final_layer_norm" not in listed
    kh = keras_opt()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wp.port(folder / "model.safetensors", kh, model=transformers.OPTModel(config()))
    with torch.no_grad():
        expected = hf(input_ids=torch.from_numpy(IDS)).last_hidden_state.numpy()
    got = keras.ops.convert_to_numpy(kh({"token_ids": IDS, "padding_mask": np.ones_like(IDS)}))
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=1e-4)


def test_negative_control_without_block_numbers_the_norms_stay_ambiguous(saved, monkeypatch):
    from weightport.converter import evidence
    monkeypatch.setattr(evidence.Pairing, "by_block", lambda self: False)
    with pytest.raises(wp.AmbiguityError, match="final_layer_norm"):
        wp.port(saved[1] / "model.safetensors", keras_opt())
