"""RoBERTa and XLM-R (transformers) against keras-hub's twins: position tables counted from ``padding_idx + 1``
with the rows before reserved, a one-row token-type table keras-hub does not have, and an MLM head whose
decoder ties the token table (saved once). keras-hub's own converter is the reference for the file."""
import warnings

import numpy as np
import pytest

import weightport as wp
from test_real_models import assert_bitwise_equal, randomized

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


def quiet_port(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        return wp.port(*args, **kw)


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


def test_a_token_type_table_that_is_not_zero_is_refused_not_dropped():
    """Dropping it would change every output: a table that feeds the model is no head."""
    hf, kh = hf_model(23, types_zero=False), keras_model()
    before = [np.array(keras.ops.convert_to_numpy(w)) for w in kh.weights]
    with pytest.raises(wp.MatchError, match="token_type_embeddings.*feeds the model"):
        wp.port(hf, kh)
    assert all(np.array_equal(a, keras.ops.convert_to_numpy(w)) for a, w in zip(before, kh.weights))
    quiet_port(hf, kh, strict=False)  # the user's choice: everything else ported
    assert np.abs(np.subtract(*outputs(hf, kh))).max() > 1e-2  # and the outputs say why it was refused


def test_a_target_table_the_source_lacks_is_refused_unless_it_holds_zeros():
    kh = keras_model()
    quiet_port(hf_model(24), kh)
    target = hf_model(25, types_zero=False)
    with pytest.raises(wp.MatchError, match="token_type_embeddings.*zero it"):
        wp.port(kh, target)


def test_the_mlm_file_loads_what_keras_hubs_own_converter_loads(tmp_path):
    """The decoder of the MLM head is the token table, saved once: model= finds it under its other name."""
    hf_model(26, cls="ForMaskedLM").save_pretrained(tmp_path)
    kh = keras_model()
    with pytest.raises(wp.MatchError, match="model="):  # the file cannot say its rows are reserved
        wp.port(tmp_path / "model.safetensors", kh)
    report = quiet_port(tmp_path / "model.safetensors", kh, model=transformers.RobertaForMaskedLM(config()))
    assert any(n.startswith("lm_head.decoder") for n in report.unmatched_source)
    assert_bitwise_equal(kh, keras_hub.models.RobertaBackbone.from_preset(str(tmp_path)))
