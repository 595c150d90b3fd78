"""RoBERTa and XLM-R (transformers) against keras-hub's twins: position tables counted from ``padding_idx + 1``
with the rows before reserved, a one-row token-type table keras-hub does not have, and an MLM head whose
decoder ties the token table (saved once). keras-hub's own converter is the reference for the file."""
import warnings

import numpy as np
import pytest

import weightport as wp
from test_real_models import assert_bitwise_equal, randomized
from util import quiet_port

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")

VOCAB, HIDDEN, LAYERS, HEADS, MLP, SEQ = 101, 48, 2, 4, 64, 29
IDS = np.random.default_rng(8).integers(3, VOCAB, (2, 9))


def config(kind="Roberta"):
    return getattr(transformers, f"{kind}Config")(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=MLP, max_position_embeddings=SEQ + 2, pad_token_id=1, type_vocab_size=1,
        layer_norm_eps=1e-5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def hf_model(seed, kind="Roberta", types_zero=True, cls="Model"):
    model = getattr(transformers, f"{kind}{cls}")(config(kind), **({"add_pooling_layer": False} if cls == "Model" else {}))
    model = randomized(model, seed)
    if types_zero:  # as in converted RoBERTa checkpoints: the model has no segments
        base = getattr(model, "roberta", model)
        with torch.no_grad():
            base.embeddings.token_type_embeddings.weight.zero_()
    return model


def keras_model(kind="Roberta"):
    return getattr(keras_hub.models, f"{kind}Backbone")(vocabulary_size=VOCAB, num_layers=LAYERS, num_heads=HEADS,
                                                        hidden_dim=HIDDEN, intermediate_dim=MLP,
                                                        max_sequence_length=SEQ, dropout=0.0)


def outputs(hf, kh):
    with torch.no_grad():
        a = hf(input_ids=torch.from_numpy(IDS)).last_hidden_state.numpy()
    return a, keras.ops.convert_to_numpy(kh({"token_ids": IDS, "padding_mask": np.ones_like(IDS)}))



@pytest.mark.parametrize("kind", ["Roberta", "XLMRoberta"])
def test_both_ways_live_the_reserved_position_rows_dropped_and_written_back(kind):
    hf, kh = hf_model(21, kind), keras_model(kind)
    report = quiet_port(hf, kh)
    np.testing.assert_allclose(*outputs(hf, kh), atol=2e-4, rtol=1e-4)
    assert any("2 reserved rows" in s.transform for s in report.steps)
    back = hf_model(22, kind)
    quiet_port(kh, back)  # its token-type table holds zeros: left as it is
    np.testing.assert_allclose(*outputs(back, kh), atol=2e-4, rtol=1e-4)


def test_negative_control_rows_read_from_the_top_differ(monkeypatch):
    from weightport.mappings import embedding
    from weightport.mappings.transforms import ReservedRows

    class TopRows(ReservedRows):
        def inv(self, a):
            return np.ascontiguousarray(a[:len(a) - self.count])

    monkeypatch.setattr(embedding, "ReservedRows", TopRows)
    hf, kh = hf_model(21), keras_model()
    quiet_port(hf, kh)
    a, b = outputs(hf, kh)
    assert np.abs(a - b).max() > 1e-2


@pytest.mark.parametrize("kind", ["Roberta", "XLMRoberta"])
def test_a_token_type_table_that_is_not_zero_is_folded_into_the_position_table_and_zeroed_on_the_way_back(kind):
    """Every token reads the one-row table's row, in the same sum as its position row: added to every position
    row, it keeps the function (as keras-hub's XLM-R converter does); a target's own such table is then zeroed."""
    hf, kh = hf_model(23, kind, types_zero=False), keras_model(kind)
    report = quiet_port(hf, kh)
    step = next(s for s in report.steps if s.source == "embeddings.position_embeddings")
    assert not step.exact and any("token_type_embeddings" in i and "added" in i for i in report.plan.issues)
    np.testing.assert_allclose(*outputs(hf, kh), atol=2e-4, rtol=1e-4)
    back = hf_model(24, kind, types_zero=False)
    report = quiet_port(kh, back)
    assert any(s.evidence == "zeros" for s in report.steps)
    np.testing.assert_allclose(*outputs(back, kh), atol=2e-4, rtol=1e-4)


def test_negative_control_a_table_dropped_unfolded_is_refused_and_its_outputs_differ(monkeypatch):
    """Without the fold, the table would be lost: a table that feeds the model is no head."""
    from weightport.converter import folding
    monkeypatch.setattr(folding, "summed_with", lambda *a: [])
    hf, kh = hf_model(23, types_zero=False), keras_model()
    before = [np.array(keras.ops.convert_to_numpy(w)) for w in kh.weights]
    with pytest.raises(wp.MatchError, match="token_type_embeddings.*feeds the model"):
        wp.port(hf, kh)
    assert all(np.array_equal(a, keras.ops.convert_to_numpy(w)) for a, w in zip(before, kh.weights))
    quiet_port(hf, kh, strict=False)  # the user's choice: everything else ported
    assert np.abs(np.subtract(*outputs(hf, kh))).max() > 1e-2  # and the outputs say why it was refused
    with pytest.raises(wp.MatchError, match="token_type_embeddings.*zero it"):
        wp.port(kh, hf_model(25, types_zero=False))


def test_a_folded_xlmr_file_loads_what_keras_hubs_own_converter_loads_and_its_plan_replays(tmp_path):
    hf_model(27, "XLMRoberta", types_zero=False, cls="ForMaskedLM").save_pretrained(tmp_path)
    with pytest.raises(wp.MatchError, match="XLMRobertaForMaskedLM"):  # no run, no fold: the model is named
        wp.port(tmp_path / "model.safetensors", keras_model("XLMRoberta"))
    own = transformers.XLMRobertaForMaskedLM(config("XLMRoberta"))
    kh = keras_model("XLMRoberta")
    quiet_port(tmp_path / "model.safetensors", kh, model=own)
    assert_bitwise_equal(kh, keras_hub.models.XLMRobertaBackbone.from_preset(str(tmp_path)))
    plan = tmp_path / "plan.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.convert(tmp_path / "model.safetensors", tmp_path / "a.safetensors", model=own, like=kh)
        report = wp.convert(tmp_path / "model.safetensors", tmp_path / "dry.safetensors", model=own, like=kh,
                            dry_run=True)
        plan.write_text(report.plan.to_json())
        wp.convert(tmp_path / "model.safetensors", tmp_path / "b.safetensors", plan=str(plan))
    a, b = wp.load(tmp_path / "a.safetensors"), wp.load(tmp_path / "b.safetensors")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[n], b[n]) for n in a)
    folded = next(n for n in a if "position" in n)
    table = hf_model(27, "XLMRoberta", types_zero=False).embeddings
    assert not np.array_equal(a[folded], table.position_embeddings.weight.detach().numpy()[2:])


def test_the_mlm_file_loads_what_keras_hubs_own_converter_loads(tmp_path):
    """The decoder of the MLM head is the token table, saved once: model= finds it under its other name."""
    hf_model(26, cls="ForMaskedLM").save_pretrained(tmp_path)
    kh = keras_model()
    with pytest.raises(wp.MatchError, match="model="):  # the file cannot say its rows are reserved
        wp.port(tmp_path / "model.safetensors", kh)
    report = quiet_port(tmp_path / "model.safetensors", kh, model=transformers.RobertaForMaskedLM(config()))
    assert any(n.startswith("lm_head.decoder") for n in report.unmatched_source)
    assert_bitwise_equal(kh, keras_hub.models.RobertaBackbone.from_preset(str(tmp_path)))
