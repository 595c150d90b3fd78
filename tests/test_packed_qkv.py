"""A torch attention module's one packed q/k/v Linear holds them one after another (timm's ``qkv``) or head by
head (GPT-NeoX's ``query_key_value``): its weights cannot show which, so the port asks (``packed_qkv``), checked
against transformers' own GPT-NeoX attention; GPT-2's Conv1D ``c_attn`` always packs them one after another."""
import numpy as np
import pytest

import weightport as wp

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")

HIDDEN, HEADS, HEAD = 24, 4, 6
X = np.random.default_rng(0).standard_normal((2, 5, HIDDEN)).astype("float32")


def neox_attention():
    config = transformers.GPTNeoXConfig(vocab_size=50, hidden_size=HIDDEN, num_hidden_layers=1,
                                        num_attention_heads=HEADS, intermediate_size=40, attn_implementation="eager")
    attention = transformers.GPTNeoXModel(config).eval().layers[0].attention
    with torch.no_grad():
        for p in attention.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return attention


def neox_output(attention):
    """transformers' own forward, its rotation turned off (cos 1, sin 0): plain multi-head attention."""
    rotation = (torch.ones(2, 5, HEAD), torch.zeros(2, 5, HEAD))
    with torch.no_grad():
        return attention(torch.from_numpy(X), attention_mask=None, position_embeddings=rotation)[0].numpy()


def keras_attention():
    layer = keras.layers.MultiHeadAttention(num_heads=HEADS, key_dim=HEAD)
    layer(X, X)
    return layer


def keras_output(layer):
    return keras.ops.convert_to_numpy(layer(X, X))


def test_without_the_option_the_packed_module_is_refused_and_nothing_changes():
    attention, layer = neox_attention(), keras_attention()
    before = [w.copy() for w in layer.get_weights()]
    with pytest.raises(wp.UsageError, match="packed_qkv"):
        wp.port(attention, layer)
    with pytest.raises(wp.UsageError, match="packed_qkv"):
        wp.get_weights(attention)
    assert all(np.array_equal(a, b) for a, b in zip(before, layer.get_weights()))


def test_per_head_ports_gpt_neox_attention_both_ways():
    attention, layer = neox_attention(), keras_attention()
    wp.port(attention, layer, options={"packed_qkv": "per_head"})
    np.testing.assert_allclose(keras_output(layer), neox_output(attention), atol=1e-4, rtol=1e-4)
    back = neox_attention()
    wp.set_weights(back, layer.get_weights(), options={"packed_qkv": "per_head"})
    np.testing.assert_allclose(neox_output(back), neox_output(attention), atol=1e-5)


def test_negative_control_blocks_on_a_per_head_module_computes_something_else():
    attention, layer = neox_attention(), keras_attention()
    wp.port(attention, layer, options={"packed_qkv": "blocks"})
    assert np.abs(keras_output(layer) - neox_output(attention)).max() > 1e-2


def test_an_unknown_packing_is_a_usage_error():
    with pytest.raises(wp.UsageError, match="packed_qkv"):
        wp.port(neox_attention(), keras_attention(), options={"packed_qkv": "interleaved"})
