"""The rope option: query/key rows reordered within each head between rotary embeddings' interleaved pairs (Meta's
Llama, GPT-J's rotate_every_two) and rotate-half (Hugging Face's Llama, keras-hub), proven against real code."""
import sys
import warnings

import numpy as np
import pytest

import weightport as wp
from util import quiet_port
from weightport.mappings.link_options import rotary_transform

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
from transformers.models.gptj import modeling_gptj  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402

HIDDEN, HEADS, KV_HEADS, MLP, VOCAB, LAYERS = 48, 4, 2, 40, 53, 2
HEAD = HIDDEN // HEADS  # 12
IDS = np.array([[3, 14, 15, 9, 26, 5, 35, 8, 40]])
ROPE = {"rope": "interleaved->half"}


def interleaved_rows(w, heads, head_dim, rotary=None):
    """Rotate-half rows (out, in) -> interleaved rows, written here on its own: within each head the first
    ``rotary`` rows are two halves (x, y) that the interleaved order alternates: x0 y0 x1 y1 ..."""
    rotary = rotary or head_dim
    w = np.asarray(w).reshape(heads, head_dim, -1)
    turned = w[:, :rotary].reshape(heads, 2, rotary // 2, -1).transpose(0, 2, 1, 3).reshape(heads, rotary, -1)
    return np.concatenate([turned, w[:, rotary:]], axis=1).reshape(heads * head_dim, -1)


def llama_config(**kw):
    return transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                    num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, intermediate_size=MLP,
                                    max_position_embeddings=32, rms_norm_eps=1e-6, **kw)


def hf_llama(seed=0):
    model = transformers.LlamaModel(llama_config()).eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
    return model


def meta_state_dict(hf):
    """Meta's original Llama checkpoint names and interleaved q/k rows, built from an HF model."""
    g = lambda m: m.weight.detach().numpy().copy()  # noqa: E731
    sd = {"tok_embeddings.weight": g(hf.embed_tokens), "norm.weight": g(hf.norm),
          "output.weight": np.random.default_rng(5).standard_normal((VOCAB, HIDDEN)).astype("float32")}
    for i, layer in enumerate(hf.layers):
        a, m, pre = layer.self_attn, layer.mlp, f"layers.{i}."
        sd.update({pre + "attention.wq.weight": interleaved_rows(g(a.q_proj), HEADS, HEAD),
                   pre + "attention.wk.weight": interleaved_rows(g(a.k_proj), KV_HEADS, HEAD),
                   pre + "attention.wv.weight": g(a.v_proj), pre + "attention.wo.weight": g(a.o_proj),
                   pre + "feed_forward.w1.weight": g(m.gate_proj), pre + "feed_forward.w2.weight": g(m.down_proj),
                   pre + "feed_forward.w3.weight": g(m.up_proj),
                   pre + "attention_norm.weight": g(layer.input_layernorm),
                   pre + "ffn_norm.weight": g(layer.post_attention_layernorm)})
    return sd


def hf_out(model):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(IDS)).last_hidden_state.numpy()



# -- the permutation against real rotary code ------------------------------------------------------------------


def rotated_both_ways(rotary, seq=7):
    """(Llama's rotate-half rotation of q, GPT-J's interleaved rotation of q with its rows reordered by the
    transform, then put back), for q of 3 heads of HEAD features whose first ``rotary`` rotate."""
    rng = np.random.default_rng(rotary)
    q = rng.standard_normal((1, 3, seq, HEAD)).astype("float32")  # (batch, heads, seq, head_dim), rotate-half
    config = transformers.LlamaConfig(hidden_size=HEAD * 3, num_attention_heads=3, head_dim=rotary,
                                      max_position_embeddings=32)
    positions = torch.arange(seq)[None]
    cos, sin = modeling_llama.LlamaRotaryEmbedding(config)(torch.from_numpy(q), positions)
    qt = torch.from_numpy(q)
    turned, _ = modeling_llama.apply_rotary_pos_emb(qt[..., :rotary], qt[..., :rotary], cos, sin)
    half = torch.cat([turned, qt[..., rotary:]], dim=-1).numpy()
    move = rotary_transform(HEAD, rotary)
    q_inter = torch.from_numpy(move.fwd(q)).permute(0, 2, 1, 3)  # GPT-J rotates (batch, seq, heads, head_dim)
    sincos = modeling_gptj.create_sinusoidal_positions(32, rotary)[positions]
    sin_j, cos_j = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)
    rot = modeling_gptj.apply_rotary_pos_emb(q_inter[..., :rotary], sin_j, cos_j)
    inter = torch.cat([rot, q_inter[..., rotary:]], dim=-1).permute(0, 2, 1, 3).numpy()
    return half, move.inv(inter), move


@pytest.mark.parametrize("rotary", [HEAD, 8], ids=["full", "partial"])
def test_reordered_rows_rotate_under_gptj_as_under_llama(rotary):
    half, back, move = rotated_both_ways(rotary)
    np.testing.assert_allclose(back, half, rtol=1e-5, atol=1e-5)
    scores_half = half @ half.swapaxes(-1, -2)  # q.k of every position pair: a permutation of features keeps it
    again = move.fwd(back)
    np.testing.assert_allclose(again @ again.swapaxes(-1, -2), scores_half, rtol=1e-4, atol=1e-4)


def test_negative_control_unordered_rows_rotate_differently():
    """GPT-J's rotation of the rows as they are (no reordering) is not Llama's."""
    half, back, move = rotated_both_ways(HEAD)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(move.fwd(back), half, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("rotary", [HEAD, 8])
def test_the_transform_is_the_independent_reordering(rotary):
    w = np.random.default_rng(1).standard_normal((HEADS * HEAD, 7)).astype("float32")  # torch rows (out, in)
    layout = rotary_transform(HEAD, rotary).fwd(w.T).T  # canonical kernel (in, out): the features are columns
    np.testing.assert_array_equal(layout, interleaved_rows(w, HEADS, HEAD, rotary))
    assert not np.array_equal(layout, w)


# -- end to end: Meta's layout into transformers' and keras-hub's Llama -------------------------------------------


def test_meta_checkpoint_into_transformers_llama_with_grouped_query_attention():
    hf = hf_llama()
    sd = meta_state_dict(hf)
    fresh = hf_llama(seed=1)
    report = quiet_port(sd, fresh, options=ROPE)
    np.testing.assert_allclose(hf_out(fresh), hf_out(hf), rtol=1e-5, atol=1e-5)
    reordered = [s.source for s in report.steps if "rotate-half rotary order" in s.transform]
    assert reordered == ["layers.0.attention", "layers.1.attention"]  # q and k of each, not v or o
    step = next(s for s in report.steps if s.source == "layers.0.attention")
    assert step.source_hp["rope"]["slots"] == ["query/kernel", "key/kernel"]
    assert step.source_hp["rope"]["head_dim"] == HEAD


@pytest.mark.parametrize("options", [None, {"rope": "half->interleaved"}], ids=["no option", "wrong direction"])
def test_negative_control_without_the_option_the_llama_computes_something_else(options):
    hf = hf_llama()
    fresh = hf_llama(seed=1)
    quiet_port(meta_state_dict(hf), fresh, options=options)
    assert np.abs(hf_out(fresh) - hf_out(hf)).max() > 1e-3


def keras_llama(tied=False):
    keras_hub = pytest.importorskip("keras_hub")
    return keras_hub.models.LlamaBackbone(vocabulary_size=VOCAB, num_layers=LAYERS, num_query_heads=HEADS,
                                          num_key_value_heads=KV_HEADS, hidden_dim=HIDDEN, intermediate_dim=MLP,
                                          layer_norm_epsilon=1e-6, tie_word_embeddings=tied)


def kh_out(kh):
    return keras.ops.convert_to_numpy(kh({"token_ids": IDS, "padding_mask": np.ones_like(IDS)}))


@pytest.mark.parametrize("options", [ROPE, None, {"rope": "half->interleaved"}],
                         ids=["interleaved->half", "no option", "wrong direction"])
def test_meta_checkpoint_into_keras_hub_llama(options):
    hf = hf_llama()
    kh = keras_llama()
    report = quiet_port(meta_state_dict(hf), kh, options=options)
    diff = np.abs(kh_out(kh) - hf_out(hf)).max()
    if options == ROPE:
        assert diff < 1e-4, diff
        reordered = {s.source for s in report.steps if "rotary" in s.transform}
        assert reordered == {f"layers.{i}.attention.{w}" for i in range(LAYERS) for w in ("wq", "wk")}
    else:  # negative controls
        assert diff > 1e-3


def test_keras_hub_llama_written_in_meta_order_and_back(tmp_path):
    """keras-hub (rotate-half) -> a torch file in interleaved order, like a Meta-named model's structure read
    from the file; the rows are the independent reordering of HF's, and the way back restores the function."""
    hf = hf_llama()
    kh = keras_llama(tied=True)
    quiet_port(hf, kh)
    meta = meta_state_dict(hf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.convert(kh, tmp_path / "meta.safetensors", to="torch", options={"rope": "half->interleaved"})
    out = wp.load(tmp_path / "meta.safetensors")
    q = [n for n in out if n.endswith("0/self_attention/query.weight")]
    k = [n for n in out if n.endswith("1/self_attention/key.weight")]
    assert len(q) == len(k) == 1, sorted(out)[:10]
    np.testing.assert_array_equal(out[q[0]], meta["layers.0.attention.wq.weight"])
    np.testing.assert_array_equal(out[k[0]], meta["layers.1.attention.wk.weight"])
    back = keras_llama(tied=True)
    quiet_port(tmp_path / "meta.safetensors", back)  # the file's metadata records the order it was written in
    np.testing.assert_allclose(kh_out(back), kh_out(kh), rtol=1e-5, atol=1e-5)
    quiet_port(tmp_path / "meta.safetensors", back, options={"rope": "half->interleaved"})  # negative control
    assert np.abs(kh_out(back) - kh_out(kh)).max() > 1e-3


def test_a_saved_plan_replays_the_reordering(tmp_path):
    from safetensors.numpy import save_file

    hf = hf_llama()
    save_file(meta_state_dict(hf), tmp_path / "meta.safetensors")
    like = hf_llama(seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        dry = wp.convert(tmp_path / "meta.safetensors", tmp_path / "hf.safetensors", like=like, options=ROPE,
                         dry_run=True)
        (tmp_path / "plan.json").write_text(dry.to_json())
        assert '"rope"' in dry.to_json()
        wp.convert(tmp_path / "meta.safetensors", tmp_path / "hf.safetensors", plan=tmp_path / "plan.json")
    from safetensors.torch import load_file

    fresh = hf_llama(seed=3)
    fresh.load_state_dict(load_file(tmp_path / "hf.safetensors"))
    np.testing.assert_allclose(hf_out(fresh), hf_out(hf), rtol=1e-5, atol=1e-5)
    with pytest.raises(wp.UsageError, match="plan"):
        wp.convert(tmp_path / "meta.safetensors", tmp_path / "again.safetensors", plan=tmp_path / "plan.json",
                   options=ROPE)


def test_the_command_takes_the_option(tmp_path):
    from safetensors.numpy import save_file
    from safetensors.torch import load_file

    from weightport.cli import main

    hf = hf_llama()
    save_file(meta_state_dict(hf), tmp_path / "meta.safetensors")
    (tmp_path / "build.py").write_text(
        "import transformers\n"
        f"def model():\n    return transformers.LlamaModel(transformers.LlamaConfig(vocab_size={VOCAB}, "
        f"hidden_size={HIDDEN}, num_hidden_layers={LAYERS}, num_attention_heads={HEADS}, "
        f"num_key_value_heads={KV_HEADS}, intermediate_size={MLP}, max_position_embeddings=32))\n")
    args = [tmp_path / "meta.safetensors", tmp_path / "hf.safetensors", "--like", f"{tmp_path / 'build.py'}:model",
            "--quiet"]
    assert main(["convert", *args, "--option", "rope=interleaved->half", "--option", f"head_dim={HEAD}"]) == 0
    fresh = hf_llama(seed=3)
    fresh.load_state_dict(load_file(tmp_path / "hf.safetensors"))
    np.testing.assert_allclose(hf_out(fresh), hf_out(hf), rtol=1e-5, atol=1e-5)
    assert main(["convert", *args, "--overwrite", "--option", "rope=sideways"]) != 0


# -- refusals ---------------------------------------------------------------------------------------------------


def test_no_query_or_key_layer_is_refused():
    a = torch.nn.Sequential(torch.nn.Linear(7, 12), torch.nn.ReLU(), torch.nn.Linear(12, 5))
    b = torch.nn.Sequential(torch.nn.Linear(7, 12), torch.nn.ReLU(), torch.nn.Linear(12, 5))
    before = b[0].weight.detach().clone()
    with pytest.raises(wp.UsageError, match="no query or key"):
        wp.port(a, b, options=ROPE)
    assert torch.equal(b[0].weight, before)


def test_a_packed_query_key_value_projection_is_refused():
    config = transformers.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1,
                                        num_attention_heads=HEADS, intermediate_size=MLP, rotary_pct=0.5)
    a, b = transformers.GPTNeoXModel(config), transformers.GPTNeoXModel(config)
    with pytest.raises(wp.UsageError, match="query_key_value"):
        quiet_port(a, b, options=ROPE)


def test_an_unknown_head_size_is_refused_naming_the_option(tmp_path):
    sd = meta_state_dict(hf_llama())
    with pytest.raises(wp.UsageError, match="head_dim"):
        wp.convert(sd, tmp_path / "out.safetensors", to="torch", options=ROPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        report = wp.convert(sd, tmp_path / "out.safetensors", to="torch", options={**ROPE, "head_dim": HEAD})
    out = wp.load(tmp_path / "out.safetensors")  # back in rotate-half order: HF's rows
    hf = hf_llama()
    np.testing.assert_array_equal(out["layers.1.attention.wk.weight"], hf.layers[1].self_attn.k_proj.weight.detach())
    assert sum("rotary" in s.transform for s in report.steps) == 2 * LAYERS


@pytest.mark.parametrize("options, words", [
    ({"rope": "sideways"}, "interleaved->half"),
    ({"rope": "interleaved->half", "head_dim": 0}, "positive"),
    ({"head_dim": 12}, "rope"),
    ({"colour": 1}, "unknown option"),
    ({"rope": "interleaved->half", "head_dim": 12, "rotary_dim": 13}, "rotary_dim"),
    ({"rope": "interleaved->half", "head_dim": 10}, "head size"),
])
def test_bad_options_are_refused(options, words):
    with pytest.raises(wp.UsageError, match=words):
        quiet_port(meta_state_dict(hf_llama()), hf_llama(seed=1), options=options)


def test_partial_rotary_reorders_only_the_first_features(tmp_path):
    """Phi keeps separate q/k/v projections and rotates half of each head (rotate-half): written in interleaved
    order with rotary_dim, its rows are the independent reordering, and ported back it computes the same."""
    config = transformers.PhiConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1,
                                    num_attention_heads=HEADS, intermediate_size=MLP, partial_rotary_factor=0.5,
                                    max_position_embeddings=32)
    phi = transformers.PhiModel(config).eval()
    opts = {"head_dim": HEAD, "rotary_dim": HEAD // 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.convert(phi, tmp_path / "inter.safetensors", to="torch", options={"rope": "half->interleaved", **opts})
    inter = wp.load(tmp_path / "inter.safetensors")
    q = phi.layers[0].self_attn.q_proj
    np.testing.assert_array_equal(inter["layers.0.self_attn.q_proj.weight"],
                                  interleaved_rows(q.weight.detach(), HEADS, HEAD, HEAD // 2))
    np.testing.assert_array_equal(inter["layers.0.self_attn.q_proj.bias"],
                                  interleaved_rows(q.bias.detach()[:, None], HEADS, HEAD, HEAD // 2)[:, 0])
    fresh = transformers.PhiModel(config).eval()
    quiet_port(tmp_path / "inter.safetensors", fresh, options={"rope": "interleaved->half", **opts})

    def out(m):
        with torch.no_grad():
            return m(input_ids=torch.from_numpy(IDS)).last_hidden_state.numpy()
    np.testing.assert_allclose(out(fresh), out(phi), rtol=1e-5, atol=1e-5)
    quiet_port(tmp_path / "inter.safetensors", fresh)  # negative control: the interleaved rows as they are
    assert np.abs(out(fresh) - out(phi)).max() > 1e-4


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
