"""One packed projection against separate ones in custom layers, checked against transformers and keras-hub.

Phi-3 packs q, k, v one after another with grouped-query attention (``qkv_proj``: 48 + 24 + 24 rows) and its MLP's
gate and up (``gate_up_proj``, gate first); Bloom packs q, k, v head by head (``query_key_value``). keras-hub keeps a
layer each. Which layout a packed tensor has is read from how a traced run of the packed side cuts its output, or
given as an option; from a file with no model, it is refused. keras-hub ships no converter for either family, so
equal last hidden states are the proof.
"""
import numpy as np
import pytest

import weightport as wp

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")

from weightport.converter import splits  # noqa: E402

V, H, L, HEADS, KV, MLP, SEQ = 101, 48, 2, 4, 2, 64, 32
IDS = np.random.default_rng(6).integers(2, 90, (2, 9))


def randomized(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def phi3_config():
    return transformers.Phi3Config(
        vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS, num_key_value_heads=KV,
        intermediate_size=MLP, rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=SEQ,
        original_max_position_embeddings=SEQ, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def phi3_hf(seed=1):
    return randomized(transformers.Phi3ForCausalLM(phi3_config()), seed)


def phi3_kh():
    return keras_hub.models.Phi3Backbone(
        vocabulary_size=V, num_layers=L, hidden_dim=H, intermediate_dim=MLP, num_query_heads=HEADS,
        num_key_value_heads=KV, layer_norm_epsilon=1e-6, max_sequence_length=SEQ, pretraining_sequence_length=SEQ)


def bloom_hf(seed=1):
    config = transformers.BloomConfig(vocab_size=V, hidden_size=H, n_layer=L, n_head=HEADS, layer_norm_epsilon=1e-5,
                                      hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=1, eos_token_id=2,
                                      pad_token_id=3)
    return randomized(transformers.BloomModel(config), seed)


def bloom_kh():
    return keras_hub.models.BloomBackbone(vocabulary_size=V, num_layers=L, num_heads=HEADS, hidden_dim=H,
                                          intermediate_dim=4 * H)


def hf_out(model):
    body = getattr(model, "model", model)
    ids = torch.from_numpy(IDS)
    with torch.no_grad():
        return body(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.numpy()


def kh_out(backbone):
    return keras.ops.convert_to_numpy(backbone({"token_ids": IDS, "padding_mask": np.ones_like(IDS)}))


def weights_of(backbone):
    return [keras.ops.convert_to_numpy(v.value).copy() for v in backbone.weights]


def test_phi3_packed_qkv_and_gate_up_both_ways_live():
    hf, kh = phi3_hf(), phi3_kh()
    report = wp.port(hf, kh)
    np.testing.assert_allclose(kh_out(kh), hf_out(hf), atol=1e-4, rtol=1e-4)
    split = {s.target.rsplit("/", 1)[-1]: s.source for s in report.steps if s.evidence == "split"}
    assert split["query_dense"].endswith("qkv_proj[query]") and split["value_dense"].endswith("qkv_proj[value]")
    assert split["feedforward_gate_dense"].endswith("gate_up_proj[gate]")
    assert split["feedforward_intermediate_dense"].endswith("gate_up_proj[up]")
    back = phi3_hf(seed=2)
    wp.port(kh, back)  # the separate layers merged into the packed ones, part by part
    np.testing.assert_allclose(hf_out(back), kh_out(kh), atol=1e-4, rtol=1e-4)
    assert torch.equal(back.model.layers[0].self_attn.qkv_proj.weight, hf.model.layers[0].self_attn.qkv_proj.weight)


def test_bloom_query_key_value_packed_head_by_head_both_ways_live():
    hf, kh = bloom_hf(), bloom_kh()
    wp.port(hf, kh)
    np.testing.assert_allclose(kh_out(kh), hf_out(hf), atol=1e-4, rtol=1e-4)
    back = bloom_hf(seed=2)
    wp.port(kh, back)
    np.testing.assert_allclose(hf_out(back), kh_out(kh), atol=1e-4, rtol=1e-4)
    for a, b in zip(back.state_dict().values(), hf.state_dict().values()):
        assert torch.equal(a, b)


def test_phi3_from_the_file_refused_without_its_model_then_ported_with_it_or_the_options(tmp_path):
    hf = phi3_hf()
    hf.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    kh = phi3_kh()
    before = weights_of(kh)
    with pytest.raises(wp.AmbiguityError) as refused:
        wp.port(path, kh)
    message = str(refused.value)
    assert "'packed_qkv'" in message and "'gate_up'" in message and "qkv_proj" in message
    assert "model=transformers.Phi3ForCausalLM(" in message  # the line that builds its own model, ready to paste
    assert all(np.array_equal(a, b) for a, b in zip(before, weights_of(kh)))
    wp.port(path, kh, model=transformers.Phi3ForCausalLM(phi3_config()))
    np.testing.assert_allclose(kh_out(kh), hf_out(hf), atol=1e-4, rtol=1e-4)
    other = phi3_kh()
    wp.port(path, other, options={"packed_qkv": "blocks", "gate_up": "gate_first"})
    np.testing.assert_allclose(kh_out(other), hf_out(hf), atol=1e-4, rtol=1e-4)


def test_phi3_saved_as_a_torch_file_like_the_hf_model_loads_with_load_state_dict(tmp_path):
    from safetensors.torch import load_file

    kh = phi3_kh()
    wp.port(phi3_hf(), kh)
    out = tmp_path / "model.safetensors"
    wp.save(kh, out, layout="torch", like=phi3_hf(seed=3))
    loaded = phi3_hf(seed=4)
    loaded.load_state_dict(load_file(out))  # strict: every packed tensor written whole, under its own name
    np.testing.assert_allclose(hf_out(loaded), kh_out(kh), atol=1e-4, rtol=1e-4)


def test_negative_control_wrong_layouts_given_as_options_differ_from_a_file_and_are_refused_live(tmp_path):
    hf = bloom_hf()
    hf.save_pretrained(tmp_path)
    kh = bloom_kh()
    wp.port(tmp_path / "model.safetensors", kh, options={"packed_qkv": "blocks"})  # Bloom packs head by head
    assert np.abs(kh_out(kh) - hf_out(hf)).max() > 0.1
    kh = bloom_kh()
    before = weights_of(kh)
    with pytest.raises(wp.UsageError, match="per_head"):  # the live model's run says otherwise
        wp.port(hf, kh, options={"packed_qkv": "blocks"})
    assert all(np.array_equal(a, b) for a, b in zip(before, weights_of(kh)))
    hf, kh = phi3_hf(), phi3_kh()
    with pytest.raises(wp.UsageError, match="gate_first"):
        wp.port(hf, kh, options={"gate_up": "up_first"})  # Phi-3's gate block comes first
    with pytest.raises(wp.UsageError, match="per_head"):  # grouped-query parts differ in size: no head-by-head
        wp.port(hf, kh, options={"packed_qkv": "per_head"})


def test_negative_control_the_gate_and_up_blocks_swapped_differ(tmp_path):
    hf = phi3_hf()
    hf.save_pretrained(tmp_path)
    kh = phi3_kh()
    wp.port(tmp_path / "model.safetensors", kh, options={"packed_qkv": "blocks", "gate_up": "up_first"})
    assert np.abs(kh_out(kh) - hf_out(hf)).max() > 0.1


def test_negative_control_with_no_traced_cut_the_layout_is_refused(monkeypatch):
    monkeypatch.setattr(splits, "traced_packing", lambda s, flow: None)
    monkeypatch.setattr(splits, "traced_gate", lambda s, flow: None)
    kh = bloom_kh()
    before = weights_of(kh)
    with pytest.raises(wp.AmbiguityError, match="packed_qkv"):
        wp.port(bloom_hf(), kh)
    assert all(np.array_equal(a, b) for a, b in zip(before, weights_of(kh)))


def test_negative_control_without_the_split_the_port_is_refused(monkeypatch):
    monkeypatch.setattr(splits, "find", lambda src, tgt: [])
    kh = phi3_kh()
    before = weights_of(kh)
    with pytest.raises(wp.MatchError):
        wp.port(phi3_hf(), kh)
    assert all(np.array_equal(a, b) for a, b in zip(before, weights_of(kh)))


def test_packed_names_spell_their_roles_in_order():
    assert splits.roles_of("layers.0.self_attn.qkv_proj") == ("query", "key", "value")
    assert splits.roles_of("h.3.self_attention.query_key_value") == ("query", "key", "value")
    assert splits.roles_of("layers.0.mlp.gate_up_proj") == ("gate", "up")
    assert splits.roles_of("attn.kv") == ("key", "value")
    assert splits.roles_of("attn.c_attn") is None and splits.roles_of("mlp.up_proj") is None


def test_negative_control_a_gate_partner_no_activation_reads_is_refused(monkeypatch):
    real = splits._partners

    def swapped(roles, view, members, packed):  # as if the up projection were the one named gate
        found = real(roles, view, members, packed)
        return found[::-1] if found and roles == ("gate", "up") else found
    monkeypatch.setattr(splits, "_partners", swapped)
    kh = phi3_kh()
    before = weights_of(kh)
    with pytest.raises(wp.MatchError, match="activation"):
        wp.port(phi3_hf(), kh)
    assert all(np.array_equal(a, b) for a, b in zip(before, weights_of(kh)))
