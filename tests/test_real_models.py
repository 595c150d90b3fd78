"""Real implementations nobody here wrote: Hugging Face transformers models and their keras-hub twins.

Small configs, random weights, no downloads. keras-hub's own converter
(``from_preset`` on a folder ``save_pretrained`` wrote) is the reference for
what each file weight means: weightport must load exactly the same numbers.
"""
import json
import warnings

import numpy as np
import pytest

import weightport as wp
from util import randomize_keras

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")

HIDDEN, LAYERS, HEADS, MLP, IMAGE, PATCH = 48, 2, 4, 64, 32, 8


def vit_config():
    return transformers.ViTConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                  intermediate_size=MLP, image_size=IMAGE, patch_size=PATCH, layer_norm_eps=1e-6,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def keras_vit():
    return keras_hub.models.ViTBackbone(image_shape=(IMAGE, IMAGE, 3), patch_size=PATCH, num_layers=LAYERS,
                                        num_heads=HEADS, hidden_dim=HIDDEN, mlp_dim=MLP, layer_norm_epsilon=1e-6)


def hf_vit():
    model = transformers.ViTModel(vit_config(), add_pooling_layer=False).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():  # nothing left at its initial value (LayerNorm ones, zero biases)
            p.copy_(torch.randn(p.shape) * 0.3)
    return model


X = np.random.default_rng(4).standard_normal((2, 3, IMAGE, IMAGE)).astype("float32")


def hidden_states(hf, kh):
    with torch.no_grad():
        a = hf(torch.from_numpy(X)).last_hidden_state.numpy()
    return a, keras.ops.convert_to_numpy(kh(X.transpose(0, 2, 3, 1)))


def assert_bitwise_equal(ours, reference):
    """Every variable of ``reference`` (keras-hub's own converter) has the same bytes in ``ours``."""
    by_path = {v.path: v for v in ours.weights}
    assert len(by_path) == len(reference.weights)
    for ref in reference.weights:
        a, b = (keras.ops.convert_to_numpy(v.value) for v in (by_path[ref.path], ref))
        assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b), ref.path


def assert_same_outputs(hf, kh):
    a, b = hidden_states(hf, kh)
    np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-4)


def test_vit_both_ways_live():
    hf, kh = hf_vit(), keras_vit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        report = wp.port(hf, kh)
    assert_same_outputs(hf, kh)
    steps = {s.source: s for s in report.steps}
    assert steps["embeddings.cls_token"].target == "vit_patching_and_embedding/class_token"
    assert steps["embeddings.position_embeddings"].rule == "parameter"  # (1, N, H) <-> a (N, H) Embedding table
    assert steps["layers.1.layernorm_after"].target.endswith("encoder_layers/1/layer_norm_2")

    hf2 = hf_vit()
    for p in hf2.parameters():
        torch.nn.init.normal_(p, std=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.port(kh, hf2)
    assert_same_outputs(hf2, kh)


def test_vit_swapped_layer_norms_differ():
    """Negative control: the two look-alike LayerNorms of a block, swapped, change the outputs."""
    hf, kh = hf_vit(), keras_vit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        good = {s.source: s.target for s in wp.port(hf, kh).steps}
        bad = dict(good)
        bad["layers.0.layernorm_before"], bad["layers.0.layernorm_after"] = (good["layers.0.layernorm_after"],
                                                                             good["layers.0.layernorm_before"])
        wp.port(hf, kh, hints=bad)
    a, b = hidden_states(hf, kh)
    assert np.abs(a - b).max() > 1e-2


def test_vit_file_loads_what_keras_hubs_own_converter_loads(tmp_path):
    """keras-hub reads a ViTForImageClassification folder; weightport ports its model.safetensors: bitwise equal."""
    classifier = transformers.ViTForImageClassification(vit_config()).eval()
    torch.manual_seed(5)
    with torch.no_grad():
        for p in classifier.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
    classifier.save_pretrained(tmp_path)
    reference = keras_hub.models.ViTBackbone.from_preset(str(tmp_path))
    kh = keras_vit()
    with pytest.warns(wp.WeightportWarning, match="classifier"):  # the head: reported, not ported
        report = wp.port(tmp_path / "model.safetensors", kh)
    assert any("classifier" in note for note in report.unmatched_source)
    assert_bitwise_equal(kh, reference)


VOCAB, SEQ_MAX, SEGMENTS = 101, 32, 2
IDS = np.random.default_rng(6).integers(0, VOCAB, (2, 9))


def bert_config():
    return transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                   num_attention_heads=HEADS, intermediate_size=MLP, max_position_embeddings=SEQ_MAX,
                                   type_vocab_size=SEGMENTS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def keras_bert():
    return keras_hub.models.BertBackbone(vocabulary_size=VOCAB, num_layers=LAYERS, num_heads=HEADS, hidden_dim=HIDDEN,
                                         intermediate_dim=MLP, max_sequence_length=SEQ_MAX, num_segments=SEGMENTS)


def ported(source, target, **kw):
    """Both models after ``wp.port(source, target)``, its warnings kept quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.port(source, target, **kw)
    return source, target


def randomized(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
    return model.eval()


def bert_outputs(hf, kh):
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(IDS), token_type_ids=torch.zeros_like(torch.from_numpy(IDS)))
    ours = kh({"token_ids": IDS, "segment_ids": np.zeros_like(IDS), "padding_mask": np.ones_like(IDS)})
    return ([out.last_hidden_state.numpy(), out.pooler_output.numpy()],
            [keras.ops.convert_to_numpy(ours["sequence_output"]), keras.ops.convert_to_numpy(ours["pooled_output"])])


def test_bert_both_ways_live_with_pooler():
    hf, kh = randomized(transformers.BertModel(bert_config()), 7), keras_bert()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.port(hf, kh)
        for a, b in zip(*bert_outputs(hf, kh)):  # the pooler's tanh of sums of 48 products: float32 noise ~3e-4
            np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3)
        hf2 = randomized(transformers.BertModel(bert_config()), 8)
        wp.port(kh, hf2)
    for a, b in zip(*bert_outputs(hf2, kh)):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3)


def test_port_check_compares_the_output_named_on_each_side():
    """HF returns last_hidden_state beside pooler_output, keras-hub a dict: output= picks one from each."""
    hf, kh = randomized(transformers.BertModel(bert_config()), 7), keras_bert()
    inputs = ({"input_ids": IDS, "token_type_ids": np.zeros_like(IDS)},
              {"token_ids": IDS, "segment_ids": np.zeros_like(IDS), "padding_mask": np.ones_like(IDS)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.port(hf, kh, check=inputs, output=("last_hidden_state", "sequence_output"), atol=1e-4)
        before = [keras.ops.convert_to_numpy(w) for w in kh.weights]
        other = (inputs[0], dict(inputs[1], token_ids=IDS[:, ::-1]))
        with pytest.raises(wp.VerificationError):  # negative control: the same output of other inputs
            wp.port(hf, kh, check=other, output=("last_hidden_state", "sequence_output"), atol=1e-4)
    for w, b in zip(kh.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), b)


def test_vit_saved_as_a_torch_file_loads_with_load_state_dict(tmp_path):
    """keras-hub -> HF names and layout, written once; transformers' own load_state_dict takes it, strictly."""
    hf, kh = hf_vit(), keras_vit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.port(hf, kh)  # kh now holds hf's weights
        fresh = transformers.ViTModel(vit_config(), add_pooling_layer=False).eval()
        wp.save(kh, tmp_path / "model.safetensors", layout="torch", like=fresh)
    from safetensors.torch import load_file

    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    a, b = hidden_states(fresh, kh)
    np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-4)


def test_timm_resnet_into_keras_hub():
    pytest.importorskip("torchvision", reason="timm needs torchvision, and the torchvision wheel the package index "
                                              "offers here is a CUDA build that cannot register its operators beside "
                                              "the CPU torch; the residual-network test in test_lookalikes.py stands in")
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False).eval()
    kh = keras_hub.models.ResNetBackbone(input_conv_filters=[64], input_conv_kernel_sizes=[7],
                                         stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[2, 2, 2, 2],
                                         stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
                                         use_pre_activation=False, image_shape=(None, None, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.port(model, kh)
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype("float32")
    with torch.no_grad():
        a = model.forward_features(torch.from_numpy(x)).numpy()
    b = keras.ops.convert_to_numpy(kh(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(a.transpose(0, 2, 3, 1), b, atol=1e-3, rtol=1e-3)


def test_vit_written_as_keras_weights_loads_with_load_weights(tmp_path):
    hf, kh = hf_vit(), keras_vit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.save(hf, tmp_path / "vit.weights.h5", like=kh)  # class token and position table included
    kh.load_weights(tmp_path / "vit.weights.h5")
    assert_same_outputs(hf, kh)


def llama_config():
    return transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                    num_attention_heads=HEADS, num_key_value_heads=2, intermediate_size=MLP,
                                    max_position_embeddings=SEQ_MAX, rms_norm_eps=1e-6)


def keras_llama(tied=True):
    return keras_hub.models.LlamaBackbone(vocabulary_size=VOCAB, num_layers=LAYERS, num_query_heads=HEADS,
                                          num_key_value_heads=2, hidden_dim=HIDDEN, intermediate_dim=MLP,
                                          layer_norm_epsilon=1e-6, tie_word_embeddings=tied)


def llama_outputs(hf, kh):
    with torch.no_grad():
        a = hf(input_ids=torch.from_numpy(IDS)).last_hidden_state.numpy()
    return a, keras.ops.convert_to_numpy(kh({"token_ids": IDS, "padding_mask": np.ones_like(IDS)}))


def test_llama_grouped_query_attention_both_ways_live_and_from_the_file(tmp_path):
    """RMSNorm classes recognised by their weights, q/k/v/o split to keras-hub's own projections, two KV heads."""
    hf, kh = randomized(transformers.LlamaModel(llama_config()), 10), keras_llama()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        report = wp.port(hf, kh)
        np.testing.assert_allclose(*llama_outputs(hf, kh), atol=2e-4, rtol=1e-4)
        assert {s.source: s.target for s in report.steps}["layers.1.post_attention_layernorm"] == \
            "transformer_layers/1/feedforward_layernorm"
        hf2 = randomized(transformers.LlamaModel(llama_config()), 11)
        wp.port(kh, hf2)
        np.testing.assert_allclose(*llama_outputs(hf2, kh), atol=2e-4, rtol=1e-4)
        hf.save_pretrained(tmp_path)  # names sorted alphabetically: no order to lean on
        fresh = keras_llama()
        wp.port(tmp_path / "model.safetensors", fresh)
    np.testing.assert_allclose(*llama_outputs(hf, fresh), atol=2e-4, rtol=1e-4)


def llama_logits(hf, kh):
    """Both sides' vocabulary logits: HF's lm_head, keras-hub's ReversibleEmbedding run in reverse."""
    with torch.no_grad():
        a = hf(input_ids=torch.from_numpy(IDS)).logits.numpy()
    hidden = kh({"token_ids": IDS, "padding_mask": np.ones_like(IDS)})
    return a, keras.ops.convert_to_numpy(kh.token_embedding(hidden, reverse=True))


def test_an_untied_output_projection_ports_both_ways_live_and_from_the_file(tmp_path):
    """keras-hub's untied ReversibleEmbedding holds the token table and the (dim, vocab) output projection;
    HF keeps them as embed_tokens and lm_head (vocab, dim): the two parts pair with those two layers."""
    config = llama_config()
    config.tie_word_embeddings = False
    hf, kh = randomized(transformers.LlamaForCausalLM(config), 12), keras_llama(tied=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        report = wp.port(hf, kh)
        np.testing.assert_allclose(*llama_logits(hf, kh), atol=2e-4, rtol=1e-4)
        assert {s.source: s.target for s in report.steps}["lm_head"] == "token_embedding/reverse_embeddings"
        hf2 = randomized(transformers.LlamaForCausalLM(config), 13)
        wp.port(kh, hf2)
        np.testing.assert_allclose(*llama_logits(hf2, kh), atol=2e-4, rtol=1e-4)
        hf.save_pretrained(tmp_path)
        fresh = keras_llama(tied=False)
        wp.port(tmp_path / "model.safetensors", fresh)
    reference = keras_hub.models.LlamaBackbone.from_preset(str(tmp_path))
    assert not reference.tie_word_embeddings
    assert_bitwise_equal(fresh, reference)


def test_an_untied_output_projection_with_no_source_is_refused_not_left_unset():
    """Negative control: a headless source has nothing for reverse_embeddings, and the port says so."""
    hf, kh = randomized(transformers.LlamaModel(llama_config()), 12), keras_llama(tied=False)
    before = keras.ops.convert_to_numpy(kh.token_embedding.reverse_embeddings)
    with pytest.raises(wp.WeightportError, match="reverse_embeddings"):
        wp.port(hf, kh)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(kh.token_embedding.reverse_embeddings), before)


def test_a_tied_head_is_filled_through_its_tie_and_written_once(tmp_path):
    """HF's lm_head tied to embed_tokens is one tensor: filled by porting the table, written once on export
    (as save_pretrained does), and load_state_dict restores it through the tie."""
    config = llama_config()
    config.tie_word_embeddings = True
    kh = keras_llama(tied=True)
    randomize_keras(kh, 14)
    hf = transformers.LlamaForCausalLM(config)
    assert hf.lm_head.weight is hf.model.embed_tokens.weight
    wp.port(kh, hf)
    np.testing.assert_allclose(*llama_logits(hf, kh), atol=2e-4, rtol=1e-4)
    path = tmp_path / "tied.safetensors"
    wp.save(kh, path, layout="torch", like=hf)
    stored = wp.load(path)
    assert "model.embed_tokens.weight" in stored and "lm_head.weight" not in stored
    fresh = transformers.LlamaForCausalLM(config)
    from safetensors.torch import load_file
    missing = fresh.load_state_dict(load_file(path), strict=False).missing_keys
    assert missing == ["lm_head.weight"]
    np.testing.assert_allclose(*llama_logits(fresh, kh), atol=2e-4, rtol=1e-4)


def test_a_tie_on_one_side_only_is_refused():
    """Negative control: an untied HF head beside a tied Keras table has no source of its own."""
    config = llama_config()
    config.tie_word_embeddings = False
    kh, hf = keras_llama(tied=True), transformers.LlamaForCausalLM(config)
    with pytest.raises(wp.WeightportError, match="lm_head"):
        wp.port(kh, hf)


def test_a_bare_llama_checkpoint_converts_to_keras_layout_by_its_names(tmp_path):
    """No model at hand: names say what shapes cannot (lm_head and *_proj are projections, embed_tokens an
    embedding; a lone scale is a copy under either norm reading), and nothing else is offered."""
    hf = randomized(transformers.LlamaForCausalLM(llama_config()), 13)
    hf.save_pretrained(tmp_path)
    report = wp.convert(tmp_path / "model.safetensors", tmp_path / "keras.safetensors", to="keras")
    rules = {s.source: s.rule for s in report.steps}
    assert rules["lm_head"] == "dense" and rules["model.embed_tokens"] == "embedding"
    assert rules["model.layers.0.self_attn.k_proj"] == "dense" and "norm" in rules["model.layers.1.input_layernorm"]
    out = wp.load(tmp_path / "keras.safetensors")
    state = hf.state_dict()
    np.testing.assert_array_equal(out["lm_head/kernel"], state["lm_head.weight"].numpy().T)
    np.testing.assert_array_equal(out["model.embed_tokens/embeddings"], state["model.embed_tokens.weight"].numpy())
    np.testing.assert_array_equal(out["model.layers.0.self_attn.k_proj/kernel"],
                                  state["model.layers.0.self_attn.k_proj.weight"].numpy().T)


def gpt2_config():
    return transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=SEQ_MAX,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=1)


def keras_gpt2():
    return keras_hub.models.GPT2Backbone(vocabulary_size=VOCAB, num_layers=LAYERS, num_heads=HEADS, hidden_dim=HIDDEN,
                                         intermediate_dim=4 * HIDDEN, max_sequence_length=SEQ_MAX)


def gpt2_outputs(hf, kh):
    with torch.no_grad():
        a = hf(input_ids=torch.from_numpy(IDS)).last_hidden_state.numpy()
    return a, keras.ops.convert_to_numpy(kh({"token_ids": IDS, "padding_mask": np.ones_like(IDS)}))


def test_gpt2_packed_qkv_conv1d_both_ways_live():
    """c_attn packs q, k, v in one (in, 3E) Conv1D; its MLP's Conv1Ds store (in, out): the biases say so.
    ln_1/ln_2 share no word with keras-hub's norms: their ordinals against keras-hub's run order settle them."""
    hf, kh = randomized(transformers.GPT2Model(gpt2_config()), 14), keras_gpt2()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        report = wp.port(hf, kh)
        assert {s.source: s.rule for s in report.steps}["h.0.attn"] == "packed_attention_projections"
        np.testing.assert_allclose(*gpt2_outputs(hf, kh), atol=2e-4, rtol=1e-4)
        hf2 = randomized(transformers.GPT2Model(gpt2_config()), 15)
        wp.port(kh, hf2)
    np.testing.assert_allclose(*gpt2_outputs(hf2, kh), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_a_file_loads_what_keras_hubs_own_converter_loads(tmp_path, family):
    """The HF model.safetensors keras-hub's from_preset reads, ported by weightport: the same bytes."""
    hf, backbone, build = {"bert": (lambda: transformers.BertModel(bert_config()), "BertBackbone", keras_bert),
                           "gpt2": (lambda: transformers.GPT2Model(gpt2_config()), "GPT2Backbone", keras_gpt2)}[family]
    randomized(hf(), 9).save_pretrained(tmp_path)
    reference = getattr(keras_hub.models, backbone).from_preset(str(tmp_path))
    kh = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.port(tmp_path / "model.safetensors", kh)
    assert_bitwise_equal(kh, reference)


def test_gpt2_negative_control_a_wrong_split_of_c_attn_differs(monkeypatch):
    from weightport.mappings.attention import PackedAttentionRule
    from weightport.mappings.rule import Link

    original = PackedAttentionRule.links_torch

    def key_first(self, hp):  # q and k taken from each other's third of c_attn
        links = original(self, hp)
        swap = {"query/kernel": "key/kernel", "key/kernel": "query/kernel"}
        return [Link(tuple(swap.get(c, c) for c in lk.canonical), lk.native, lk.transform) for lk in links]
    monkeypatch.setattr(PackedAttentionRule, "links_torch", key_first)
    a, b = gpt2_outputs(*ported(randomized(transformers.GPT2Model(gpt2_config()), 16), keras_gpt2()))
    assert np.abs(a - b).max() > 1e-2


def test_llama_whose_mlp_is_as_wide_as_its_attention_is_not_mispaired_from_the_file(tmp_path):
    """intermediate == hidden: o_proj and down_proj (and q, k, v, gate, up) are all 48x48, and 'output' names
    both keras-hub's attention output and its feed-forward output; 'attention' against 'mlp' must keep them
    apart (found by an end-to-end review: this port once succeeded with them swapped)."""
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                      num_attention_heads=HEADS, num_key_value_heads=HEADS, intermediate_size=HIDDEN,
                                      max_position_embeddings=SEQ_MAX, rms_norm_eps=1e-6)
    hf = randomized(transformers.LlamaModel(config), 18)
    hf.save_pretrained(tmp_path)
    kh = keras_hub.models.LlamaBackbone(vocabulary_size=VOCAB, num_layers=LAYERS, num_query_heads=HEADS,
                                        num_key_value_heads=HEADS, hidden_dim=HIDDEN, intermediate_dim=HIDDEN,
                                        layer_norm_epsilon=1e-6, tie_word_embeddings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        report = wp.port(tmp_path / "model.safetensors", kh)
    pairs = {s.source: s.target for s in report.steps}
    assert pairs["layers.0.self_attn.o_proj"].endswith("self_attention/attention_output")
    assert pairs["layers.0.mlp.down_proj"].endswith("feedforward_output_dense")
    np.testing.assert_allclose(*llama_outputs(hf, kh), atol=2e-4, rtol=1e-4)


def test_an_epsilon_held_by_a_class_no_rule_names_is_still_compared():
    hf = randomized(transformers.LlamaModel(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=2, intermediate_size=MLP, max_position_embeddings=SEQ_MAX, rms_norm_eps=0.5)), 19)
    with pytest.warns(wp.WeightportWarning, match=r"input_layernorm .*epsilon: source has 0.5, target has 1e-06"):
        wp.port(hf, keras_llama())


def gemma_config():
    return transformers.GemmaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                    num_attention_heads=HEADS, num_key_value_heads=1, head_dim=HIDDEN // HEADS - 2,
                                    intermediate_size=MLP, max_position_embeddings=SEQ_MAX, rms_norm_eps=1e-6,
                                    hidden_activation="gelu_pytorch_tanh")


def keras_gemma():
    return keras_hub.models.GemmaBackbone(vocabulary_size=VOCAB, num_layers=LAYERS, num_query_heads=HEADS,
                                          num_key_value_heads=1, hidden_dim=HIDDEN, intermediate_dim=2 * MLP,
                                          head_dim=HIDDEN // HEADS - 2, layer_norm_epsilon=1e-6, dtype="float32")


def test_gemma_einsum_projections_with_their_axes_permuted_both_ways_and_from_the_file(tmp_path):
    """keras-hub Gemma's q/k/v kernels are (heads, hidden, head_dim) ("btd,ndh->btnh"): a Linear whose kernel
    axes are permuted first. keras-hub runs gelu(gating_ffw(x)) * gating_ffw_2(x), HF gelu(gate_proj(x)) *
    up_proj(x): the two projections read and feed the same layers, and only the activation on one branch
    tells them apart."""
    hf, kh = randomized(transformers.GemmaModel(gemma_config()), 15), keras_gemma()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        report = wp.port(hf, kh)
        np.testing.assert_allclose(*llama_outputs(hf, kh), atol=2e-4, rtol=1e-4)
        steps = {s.source: (s.target, s.evidence) for s in report.steps}
        assert steps["layers.1.mlp.gate_proj"] == ("transformer_layers/1/gating_ffw", "activation")
        hf2 = randomized(transformers.GemmaModel(gemma_config()), 16)
        wp.port(kh, hf2)
        np.testing.assert_allclose(*llama_outputs(hf2, kh), atol=2e-4, rtol=1e-4)
        causal = transformers.GemmaForCausalLM(gemma_config())  # the file keras-hub reads: its lm_head is tied
        causal.model.load_state_dict(hf.state_dict())
        causal.save_pretrained(tmp_path)
        fresh = keras_gemma()
        # HF names the pre-FFW norm post_attention_layernorm: names alone refuse it, the file's own model settles
        with pytest.raises(wp.AmbiguityError, match="model="):
            wp.port(tmp_path / "model.safetensors", fresh)
        wp.port(tmp_path / "model.safetensors", fresh, model=transformers.GemmaForCausalLM(gemma_config()))
    reference = keras_hub.models.GemmaBackbone.from_preset(str(tmp_path))
    assert_bitwise_equal(fresh, reference)


def test_gemma_negative_control_without_seeing_activations_the_branches_are_refused(monkeypatch):
    from weightport.converter import flow

    monkeypatch.setattr(flow, "ACTIVATIONS", frozenset())
    monkeypatch.setattr("weightport.converter.frameworks.jaxpr_flow.ACTIVATIONS", frozenset())
    monkeypatch.setattr("weightport.converter.frameworks.keras.applies_activation", lambda layer: False)
    with pytest.raises(wp.AmbiguityError, match="gating_ffw"):
        wp.port(randomized(transformers.GemmaModel(gemma_config()), 15), keras_gemma())


def test_gemma_negative_control_the_kernel_axes_unpermuted_differ(monkeypatch):
    from weightport.mappings import einsum_dense

    real = einsum_dense.linear_form
    monkeypatch.setattr(einsum_dense, "linear_form", lambda eq, bias: (
        None if real(eq, bias) is None else (tuple(range(len(real(eq, bias)[0]))), real(eq, bias)[1])))
    hf, kh = randomized(transformers.GemmaModel(gemma_config()), 15), keras_gemma()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        try:
            wp.port(hf, kh)
        except wp.WeightportError:
            return  # refused: the shapes no longer fit, which is as good as differing
    a, b = llama_outputs(hf, kh)
    assert np.abs(a - b).max() > 1e-2


def bart_config():
    return transformers.BartConfig(vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
                                   encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
                                   encoder_ffn_dim=MLP, decoder_ffn_dim=MLP, max_position_embeddings=SEQ_MAX,
                                   dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def keras_bart():
    return keras_hub.models.BartBackbone(vocabulary_size=VOCAB, num_layers=LAYERS, num_heads=HEADS, hidden_dim=HIDDEN,
                                         intermediate_dim=MLP, max_sequence_length=SEQ_MAX, dropout=0.0)


def bart_outputs(hf, kh):
    dec = IDS[:, ::-1].copy()
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(IDS), decoder_input_ids=torch.from_numpy(dec))
    ours = kh({"encoder_token_ids": IDS, "encoder_padding_mask": np.ones_like(IDS),
               "decoder_token_ids": dec, "decoder_padding_mask": np.ones_like(dec)})
    return ([out.encoder_last_hidden_state.numpy(), out.last_hidden_state.numpy()],
            [keras.ops.convert_to_numpy(ours["encoder_sequence_output"]),
             keras.ops.convert_to_numpy(ours["decoder_sequence_output"])])


def test_bart_position_tables_with_reserved_rows_both_ways_and_from_the_file(tmp_path):
    """HF BART looks position i up at row i + 2 (its embedding declares offset=2); keras-hub keeps the rows in
    use only. Encoder and decoder, self- and cross-attention, the tied token table shared three ways."""
    hf, kh = randomized(transformers.BartModel(bart_config()), 17), keras_bart()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        report = wp.port(hf, kh)
        for a, b in zip(*bart_outputs(hf, kh)):
            np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-4)
        assert any("reserved rows" in s.transform and not s.exact for s in report.steps)
        hf2 = randomized(transformers.BartModel(bart_config()), 18)
        wp.port(kh, hf2)
        for a, b in zip(*bart_outputs(hf2, kh)):
            np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-4)
        hf.save_pretrained(tmp_path)
        fresh = keras_bart()
        wp.port(tmp_path / "model.safetensors", fresh, model=transformers.BartModel(bart_config()))
    config = json.loads((tmp_path / "config.json").read_text())  # keras-hub reads a key transformers 5 omits
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": LAYERS}))
    reference = keras_hub.models.BartBackbone.from_preset(str(tmp_path))
    assert_bitwise_equal(fresh, reference)


def test_bart_negative_control_rows_read_from_the_top_differ(monkeypatch):
    from weightport.mappings import embedding
    from weightport.mappings.transforms import ReservedRows

    class TopRows(ReservedRows):  # the first rows, as if there were no offset: shapes fit, numbers do not
        def inv(self, a):
            return np.ascontiguousarray(a[:len(a) - self.count])

    monkeypatch.setattr(embedding, "ReservedRows", TopRows)
    a, b = bart_outputs(*ported(randomized(transformers.BartModel(bart_config()), 17), keras_bart()))
    assert np.abs(a[0] - b[0]).max() > 1e-2


@pytest.mark.parametrize("direction", ["hf_to_keras", "keras_to_hf"])
def test_projections_cut_into_other_head_counts_are_refused_not_ported(direction):
    """4 query heads of 12 against 2 of 24 (and 2 key/value heads against 1): the same tensor sizes, another
    function. The head counts the HF module declares are compared with the heads axis of keras-hub's kernels."""
    hf = randomized(transformers.LlamaModel(llama_config()), 19)
    kh = keras_hub.models.LlamaBackbone(vocabulary_size=VOCAB, num_layers=LAYERS, num_query_heads=HEADS // 2,
                                        num_key_value_heads=1, hidden_dim=HIDDEN, intermediate_dim=MLP,
                                        layer_norm_epsilon=1e-6, tie_word_embeddings=True)
    source, target = (hf, kh) if direction == "hf_to_keras" else (kh, hf)
    with pytest.raises(wp.ConfigMismatchError, match="num_heads"):
        wp.port(source, target)
