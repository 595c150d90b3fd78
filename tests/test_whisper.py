"""Whisper (transformers against keras-hub): audio features into the encoder, token ids into the decoder; the
decoder's self- and cross-attention projections look alike (q, v and out all 48x48 with a bias) and are told
apart by the dataflow of both models' runs on the inputs they declare."""
import numpy as np
import pytest

from test_seq2seq import DEC, live_both_ways

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")

MELS = np.random.default_rng(9).standard_normal((2, 16, 32)).astype("float32")  # (batch, mel bins, frames)


def whisper_hf():
    cfg = transformers.WhisperConfig(vocab_size=101, num_mel_bins=16, encoder_layers=2, decoder_layers=2,
                                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                     decoder_ffn_dim=64, d_model=48, max_source_positions=16,
                                     max_target_positions=32, dropout=0.0, attention_dropout=0.0,
                                     activation_dropout=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                     decoder_start_token_id=1, begin_suppress_tokens=None)
    return transformers.WhisperModel(cfg)


def whisper_kh():
    return keras_hub.models.WhisperBackbone(vocabulary_size=101, num_layers=2, num_heads=4, hidden_dim=48,
                                            intermediate_dim=64, num_mels=16, max_encoder_sequence_length=32,
                                            max_decoder_sequence_length=32)


def whisper_outputs(hf, kh):
    with torch.no_grad():
        a = hf(input_features=torch.from_numpy(MELS), decoder_input_ids=torch.from_numpy(DEC)).last_hidden_state
    b = kh({"encoder_features": MELS.transpose(0, 2, 1), "decoder_token_ids": DEC,
            "decoder_padding_mask": np.ones_like(DEC)})["decoder_sequence_output"]
    return a.numpy(), keras.ops.convert_to_numpy(b)


def test_whisper_live_both_ways_without_hints():
    live_both_ways(whisper_hf, whisper_kh, whisper_outputs, "transformer_decoder_layer_0/self_attention/value",
                   "transformer_decoder_layer_0/cross_attention/value")
