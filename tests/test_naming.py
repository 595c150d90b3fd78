"""Words that name different members of one family never pair: an encoder's layer is not a decoder's."""
from types import SimpleNamespace

import pytest

from weightport.converter import guesses, naming


def clash(a, b):
    return naming.clash(naming.words(a), naming.words(b))


def test_an_encoder_layer_and_a_decoder_layer_clash_whatever_else_they_share():
    assert clash("decoder.block.0.layer.0.SelfAttention.k", "encoder_transformer_layers/0/self_attention/key_projector")
    assert clash("encoder.layers.1.self_attn_layer_norm", "transformer_decoder_layer_1/self_attention_layer_norm")


def test_negative_control_a_decoders_cross_attention_named_for_the_encoder_is_still_the_decoders():
    # Whisper's decoder calls its cross-attention ``encoder_attn``: it shares "decoder" with keras-hub's
    assert not clash("decoder.layers.0.encoder_attn.q_proj", "transformer_decoder_layer_0/cross_attention/query")
    assert not clash("encoder.block.1.layer.0.SelfAttention.q", "encoder_transformer_layers/1/self_attention/query")


def nodes(*paths):
    return [SimpleNamespace(path=p) for p in paths]


@pytest.mark.keras_free
def test_likeliest_pairing_counts_ordinals_from_one_base(monkeypatch):
    """transformers numbers a ResNet block's convs ``layer.0``, ``layer.1``; keras-hub ``_1_conv``, ``_2_conv``.
    The guess a refusal prints pairs first with first; a slot whose base differs between blocks guesses nothing."""
    src = nodes(*(f"encoder.stages.0.layers.{b}.layer.{i}.convolution" for b in range(2) for i in range(2)))
    tgt = nodes(*(f"stack0_block{b}_{i + 1}_conv" for b in range(2) for i in range(2)))
    assert guesses.likely_pairs(src, tgt) == {a.path: b.path for a, b in zip(src, tgt)}
    assert guesses.likely_pairs(tgt, src) == {b.path: a.path for a, b in zip(src, tgt)}
    mixed = tgt[:2] + nodes("stack0_block1_0_conv", "stack0_block1_1_conv")  # block 1 counts from 0
    assert guesses.likely_pairs(src, mixed) == {}
    monkeypatch.setattr(guesses, "rebased", lambda src, tgt, number: number)  # negative control: as before
    assert guesses.likely_pairs(src, tgt)[src[1].path] == tgt[0].path  # layer.1 (second) with _1_ (first)
