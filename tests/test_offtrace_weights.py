"""A layer whose kernel another layer's code reads without calling it leaves no trace of its own: keras-hub's
Gemma 4 decoder block computes ``gelu(x @ gating_ffw.kernel) * (x @ gating_ffw_2.kernel) @ ffw_linear.kernel``.
A traced run then shows ``post_ffw_norm`` reading ``pre_ffw_norm``; taken as evidence, that contradicted the
(right) pairing by block position and refused the port as a dataflow disagreement. What such a read makes now
has an unknown origin, so the run gives no evidence there, and what only it could settle is refused as
ambiguous, with the candidates named."""
import numpy as np
import pytest

import weightport as wp
from test_real_models import randomized
from weightport.converter import flow

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma4")
    config = transformers.Gemma4TextConfig(
        vocab_size=101, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, head_dim=16, global_head_dim=16, sliding_window=4096, hidden_size_per_layer_input=0,
        layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=False)
    transformers.Gemma4ForCausalLM(config).save_pretrained(folder)
    return randomized(transformers.Gemma4ForCausalLM(config), 1), keras_hub.models.Gemma4Backbone.from_preset(str(folder))


def test_kernels_read_off_the_trace_give_no_evidence(gemma4):
    hf, kh = gemma4
    with pytest.raises(wp.AmbiguityError) as caught:
        wp.port(hf, kh)
    message = str(caught.value)
    assert "model.layers.0.mlp.gate_proj, model.layers.0.mlp.up_proj" in message
    assert "transformer_layers/0/gating_ffw, transformer_layers/0/gating_ffw_2" in message
    assert "post_ffw_norm" not in message  # paired by block position, which nothing contradicts now


@pytest.mark.backend_neutral
def test_negative_control_such_reads_taken_as_dataflow_refuse_the_right_pairing(gemma4, monkeypatch):
    hf, kh = gemma4
    monkeypatch.setattr(flow.Provenance, "hold", lambda self, weights_of: None)
    with pytest.raises(wp.MatchError, match="post_ffw_norm were paired by their block position, but the dataflow"):
        wp.port(hf, kh)


HINTS = {f"model.layers.{i}.mlp.{a}": f"transformer_layers/{i}/{b}" for i in range(2)
         for a, b in (("gate_proj", "gating_ffw"), ("up_proj", "gating_ffw_2"))}  # gelu(x @ gating) * (x @ gating_2)


def test_with_the_gate_hints_the_port_computes_what_hf_does(gemma4):
    """The remaining loose weight, HF's ``layer_scalar`` (1,) beside keras-hub's scalar (), pairs once size-1 axes
    are dropped (tests/test_squeezed_weights.py)."""
    hf, kh = gemma4
    wp.port(hf, kh, hints=HINTS)
    scalars = [keras.ops.convert_to_numpy(v) for v in kh.weights if v.path.endswith("layer_scalar")]
    assert [s.shape for s in scalars] == [(), ()]
    np.testing.assert_array_equal(scalars, [float(layer.layer_scalar) for layer in hf.model.layers])
    ids = np.random.default_rng(6).integers(0, 101, (2, 9))
    with torch.no_grad():
        ours = hf.model(input_ids=torch.from_numpy(ids), use_cache=False).last_hidden_state.numpy()
    theirs = keras.ops.convert_to_numpy(kh({"token_ids": ids, "padding_mask": np.ones_like(ids),
                                            "position_ids": np.broadcast_to(np.arange(9), ids.shape)}))
    assert np.abs(ours - theirs).max() < 1e-4 * max(1.0, np.abs(ours).max())


def test_negative_control_a_scalar_kept_apart_from_a_one_value_tensor_is_refused(gemma4, monkeypatch):
    from weightport.mappings import parameter

    hf, kh = gemma4
    monkeypatch.setattr(parameter, "canonical_shape", lambda shape: tuple(int(d) for d in shape))
    with pytest.raises(wp.UnsupportedLayerError, match="layer_scalar") as caught:
        wp.port(hf, kh, hints=HINTS)
    message = str(caught.value)
    assert "The source's model.layers.0.layer_scalar (parameter, 1) has its name, but not its shape" in message
    assert "has no layer holding it" not in message  # the source holds it: the shape is the cause
