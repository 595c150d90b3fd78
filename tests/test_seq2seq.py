"""Encoder-decoder models (T5 here, Whisper in test_whisper.py: transformers against keras-hub) port live both
ways with no hints.

Neither model runs on one input: the torch side's ``forward`` also needs the
decoder's token ids, the Keras side takes a dict of encoder and decoder
inputs. Both are traced from the inputs each model declares, and the
dataflow tells apart what names cannot (a T5 block's three numbered norms;
Whisper's self- and cross-attention projections, q/v/out alike in shape).
"""
import warnings

import numpy as np
import pytest

import weightport as wp
from test_real_models import randomized

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")

ENC = np.random.default_rng(6).integers(2, 90, (2, 9))
DEC = np.random.default_rng(8).integers(2, 90, (2, 5))


def t5_hf():
    """T5 with q/k/v 48x40 and an MLP 48x64, so no projection is square or shaped like another kind."""
    cfg = transformers.T5Config(vocab_size=101, d_model=48, d_kv=10, d_ff=64, num_layers=2, num_heads=4,
                                feed_forward_proj="relu", dropout_rate=0.0, layer_norm_epsilon=1e-6,
                                tie_word_embeddings=True, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return transformers.T5Model(cfg)


def t5_kh():
    return keras_hub.models.T5Backbone(vocabulary_size=101, num_layers=2, num_heads=4, hidden_dim=48,
                                       intermediate_dim=64, key_value_dim=10, dropout=0.0, activation="relu",
                                       use_gated_activation=False, tie_embedding_weights=True)


def t5_outputs(hf, kh):
    with torch.no_grad():
        a = hf(input_ids=torch.from_numpy(ENC), decoder_input_ids=torch.from_numpy(DEC)).last_hidden_state.numpy()
    b = kh({"encoder_token_ids": ENC, "encoder_padding_mask": np.ones_like(ENC), "decoder_token_ids": DEC,
            "decoder_padding_mask": np.ones_like(DEC)})["decoder_sequence_output"]
    return a, keras.ops.convert_to_numpy(b)


def port(source, target, **kw):
    """``wp.port`` with its configuration warnings kept out of the test's output (keras-hub's T5 attention warns
    about masks; Whisper's explicit padding before keras-hub's second conv reads as a padding difference)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return wp.port(source, target, **kw)


def swap(model, first, second):
    """Exchange the weights of two look-alike Keras layers (by variable path): what a wrong pairing would do."""
    by_path = {v.path: v for v in model.weights}
    for slot in ("kernel", "bias"):
        a, b = by_path.get(f"{first}/{slot}"), by_path.get(f"{second}/{slot}")
        if a is None:
            continue
        va, vb = keras.ops.convert_to_numpy(a.value), keras.ops.convert_to_numpy(b.value)
        a.assign(vb)
        b.assign(va)


def live_both_ways(make_hf, make_kh, outputs, first, second):
    """Port torch -> Keras, check, cross two look-alikes (negative control), and port back into other weights."""
    hf, kh = randomized(make_hf(), 1), make_kh()
    report = port(hf, kh)
    assert len(report.steps) > 40 and not report.unmatched_target
    assert any(s.evidence == "structure" for s in report.steps)  # the traced runs settled some look-alikes
    a, b = outputs(hf, kh)
    assert np.abs(a).max() > 0.1 and np.abs(a - b).max() < 1e-4
    # negative control: the self- and cross-attention projections that look alike, crossed, change the output
    swap(kh, first, second)
    a, b = outputs(hf, kh)
    assert np.abs(a - b).max() > 1e-2
    swap(kh, first, second)
    back = randomized(make_hf(), 2)  # Keras -> torch, into other random weights
    port(kh, back)
    a, b = outputs(back, kh)
    assert np.abs(a - b).max() < 1e-4


def test_t5_live_both_ways_without_hints():
    live_both_ways(t5_hf, t5_kh, t5_outputs, "transformer_decoder_layer_0/self_attention/query_projector",
                   "transformer_decoder_layer_0/cross_attention/query_projector")


def test_a_bare_file_is_refused_and_ported_through_its_own_model(tmp_path):
    """T5's file alone (no model to run) leaves the look-alikes unsettled: refused, the target unchanged, with the
    line that builds its own model; given that model, the file ports as the live model does."""
    source, kh = randomized(t5_hf(), 1), t5_kh()
    source.save_pretrained(tmp_path)
    before = [keras.ops.convert_to_numpy(v.value).copy() for v in kh.weights]
    with pytest.raises(wp.AmbiguityError, match=r"cannot be paired safely(.|\n)*model=transformers\.T5Model"):
        port(tmp_path / "model.safetensors", kh)
    assert all(np.array_equal(x, keras.ops.convert_to_numpy(v.value)) for x, v in zip(before, kh.weights))
    model = transformers.T5Model(transformers.AutoConfig.from_pretrained(tmp_path))
    port(tmp_path / "model.safetensors", kh, model=model)
    a, b = t5_outputs(source, kh)
    assert np.abs(a - b).max() < 1e-4
