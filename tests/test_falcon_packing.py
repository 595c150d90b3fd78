"""Falcon's grouped ``query_key_value`` (``new_decoder_architecture``: for each key/value head, its query heads,
then the key head, then the value head) against separate q, k and v projections, checked against transformers'
own ``FalconAttention._split_heads`` on the ported weights. A multi-query Falcon (one key/value head) is one group:
one after another, which needs no trace."""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import weightport as wp  # noqa: E402

pytestmark = pytest.mark.keras_free

HIDDEN, HEADS, KV, VOCAB = 48, 6, 2, 96
HEAD_DIM = HIDDEN // HEADS


def falcon(kv=KV, new=True):
    cfg = transformers.FalconConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2,
                                    num_attention_heads=HEADS, num_kv_heads=kv, new_decoder_architecture=new,
                                    multi_query=not new, parallel_attn=True, bias=False, alibi=False)
    torch.manual_seed(0)
    model = transformers.FalconModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


class Twin(torch.nn.Module):
    """Falcon's parameters with q, k and v as separate projections (how one's own implementation may hold them)."""

    def __init__(self, kv=KV):
        super().__init__()
        self.word_embeddings = torch.nn.Embedding(VOCAB, HIDDEN)
        self.h = torch.nn.ModuleList(self._block(kv, new=kv > 1) for _ in range(2))
        self.ln_f = torch.nn.LayerNorm(HIDDEN)

    @staticmethod
    def _block(kv, new):
        block, attn, mlp = torch.nn.Module(), torch.nn.Module(), torch.nn.Module()
        attn.q_proj = torch.nn.Linear(HIDDEN, HIDDEN, bias=False)
        attn.k_proj = torch.nn.Linear(HIDDEN, kv * HEAD_DIM, bias=False)
        attn.v_proj = torch.nn.Linear(HIDDEN, kv * HEAD_DIM, bias=False)
        attn.dense = torch.nn.Linear(HIDDEN, HIDDEN, bias=False)
        mlp.dense_h_to_4h = torch.nn.Linear(HIDDEN, 4 * HIDDEN, bias=False)
        mlp.dense_4h_to_h = torch.nn.Linear(4 * HIDDEN, HIDDEN, bias=False)
        block.self_attention, block.mlp = attn, mlp
        if new:  # the new decoder architecture's two norms; a multi-query Falcon has one
            block.ln_attn, block.ln_mlp = torch.nn.LayerNorm(HIDDEN), torch.nn.LayerNorm(HIDDEN)
        else:
            block.input_layernorm = torch.nn.LayerNorm(HIDDEN)
        return block


def quiet_port(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        return wp.port(*args, **kwargs)


def assert_same_heads(hf, twin, kv=KV):
    """transformers' own split of the packed output equals the twin's q, k, v (key/value heads repeated for the
    query heads they serve, as Falcon broadcasts them), in every layer; the other weights are equal too. The
    input is the identity, so each output is a weight itself, compared bit for bit."""
    x = torch.eye(HIDDEN)[None]
    with torch.no_grad():
        for packed, separate in zip(hf.h, twin.h):
            attn, t = packed.self_attention, separate.self_attention
            q, k, v = attn._split_heads(attn.query_key_value(x))
            mine = [t.q_proj(x).view(1, HIDDEN, HEADS, HEAD_DIM)] + [
                p(x).view(1, HIDDEN, kv, HEAD_DIM).repeat_interleave(HEADS // kv, dim=2) for p in (t.k_proj, t.v_proj)]
            for theirs, ours in zip((q, k, v), mine):
                np.testing.assert_array_equal(theirs.expand_as(ours).numpy(), ours.numpy())
            np.testing.assert_array_equal(attn.dense.weight.numpy(), t.dense.weight.numpy())
            norm = "ln_mlp" if kv > 1 else "input_layernorm"
            np.testing.assert_array_equal(getattr(packed, norm).bias.numpy(), getattr(separate, norm).bias.numpy())


def test_grouped_qkv_splits_into_separate_projections_both_ways_live():
    hf, twin = falcon(), Twin()
    report = quiet_port(hf, twin)
    assert any("per_head" in str(s.transform) or s.evidence == "split" for s in report.plan.steps)
    assert_same_heads(hf, twin)
    back = falcon()
    with torch.no_grad():
        for p in back.parameters():
            p.zero_()
    quiet_port(twin, back)  # the packed side is the target: assembled from the three, as its traced run cuts it
    assert_same_heads(back, twin)
    for a, b in zip(hf.state_dict().values(), back.state_dict().values()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_from_the_file_the_layout_is_an_option_and_the_wrong_one_differs(tmp_path):
    hf = falcon()
    hf.save_pretrained(tmp_path)
    src = tmp_path / "model.safetensors"
    with pytest.raises(wp.AmbiguityError, match=r"packed_qkv.*'per_head' \(interleaved by heads"):
        quiet_port(src, Twin())
    with pytest.raises(wp.UsageError, match="'head_dim'"):  # plain Linear layers do not say their heads
        quiet_port(src, Twin(), options={"packed_qkv": "per_head"})
    twin = Twin()
    quiet_port(src, twin, options={"packed_qkv": "per_head", "head_dim": HEAD_DIM})
    assert_same_heads(hf, twin)
    wrong = Twin()
    quiet_port(src, wrong, options={"packed_qkv": "blocks"})  # negative control: one after another
    with pytest.raises(AssertionError):
        assert_same_heads(hf, wrong)


def test_negative_control_a_layout_the_trace_contradicts_is_refused_and_an_unread_view_settles_nothing(
        monkeypatch):
    with pytest.raises(wp.UsageError, match="cuts its output as 'per_head'"):
        quiet_port(falcon(), Twin(), options={"packed_qkv": "blocks"})
    from weightport.converter import splits

    monkeypatch.setattr(splits, "_heads_of_view", lambda *a: None)  # the view to (groups, heads, dim) not read
    with pytest.raises(wp.AmbiguityError, match="packed_qkv"):
        quiet_port(falcon(), Twin())


def test_multi_query_falcon_is_one_group(tmp_path):
    """One key/value head: one after another and head by head are the same columns. A run's view to (heads,
    head_dim) shows the head size; from a file, either option gives the same port."""
    hf = falcon(kv=1, new=False)
    twin = Twin(kv=1)
    quiet_port(hf, twin)
    assert_same_heads(hf, twin, kv=1)
    hf.save_pretrained(tmp_path)
    for option in ({"packed_qkv": "blocks"}, {"packed_qkv": "per_head", "head_dim": HEAD_DIM}):
        twin = Twin(kv=1)
        quiet_port(tmp_path / "model.safetensors", twin, options=option)
        assert_same_heads(hf, twin, kv=1)
