"""Words that name different members of one family never pair: an encoder's layer is not a decoder's."""
from weightport.converter import naming


def clash(a, b):
    return naming.clash(naming.words(a), naming.words(b))


def test_an_encoder_layer_and_a_decoder_layer_clash_whatever_else_they_share():
    assert clash("decoder.block.0.layer.0.SelfAttention.k", "encoder_transformer_layers/0/self_attention/key_projector")
    assert clash("encoder.layers.1.self_attn_layer_norm", "transformer_decoder_layer_1/self_attention_layer_norm")


def test_negative_control_a_decoders_cross_attention_named_for_the_encoder_is_still_the_decoders():
    # Whisper's decoder calls its cross-attention ``encoder_attn``: it shares "decoder" with keras-hub's
    assert not clash("decoder.layers.0.encoder_attn.q_proj", "transformer_decoder_layer_0/cross_attention/query")
    assert not clash("encoder.block.1.layer.0.SelfAttention.q", "encoder_transformer_layers/1/self_attention/query")
