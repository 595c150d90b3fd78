"""Gemma 2 (transformers) against keras-hub's, from the file alone: four look-alike norms in each block, two of
them named ``post_attention``. Llama's family uses that name for the norm feeding the MLP, Gemma 2 for one on
the attention's output; the literal name stays a word, so the two implementations' very names pair them."""
import warnings

import numpy as np
import pytest

import weightport as wp
from test_real_models import randomized

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")

IDS = np.random.default_rng(8).integers(3, 83, (2, 7))
NORMS = ("post_attention_layernorm", "post_feedforward_layernorm", "pre_feedforward_layernorm", "input_layernorm")


def config():
    return transformers.Gemma2Config(vocab_size=83, hidden_size=40, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, head_dim=12, intermediate_size=56,
                                     query_pre_attn_scalar=12, sliding_window=4)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma2")
    hf = randomized(transformers.Gemma2ForCausalLM(config()), 3)
    with torch.no_grad():  # norms distinct from each other, so a swap shows in the outputs
        for i, layer in enumerate(hf.model.layers):
            for j, name in enumerate(NORMS):
                getattr(layer, name).weight.add_(1.0 + 0.5 * j + 0.25 * i)
    hf.save_pretrained(folder)
    return hf, folder


def fresh(folder):
    return keras_hub.models.GemmaBackbone.from_preset(str(folder), load_weights=False)


def outputs(hf, kh):
    with torch.no_grad():
        a = hf.model(input_ids=torch.from_numpy(IDS)).last_hidden_state.numpy()
    return a, keras.ops.convert_to_numpy(kh({"token_ids": IDS, "padding_mask": np.ones_like(IDS)}))


def refusal(folder):
    with pytest.raises(wp.AmbiguityError) as refused:
        wp.port(folder / "model.safetensors", fresh(folder))
    return str(refused.value).split("The target was not changed")[0]


def test_the_file_pairs_all_four_norms_by_name_only_gate_and_up_are_left(saved):
    hf, folder = saved
    listed = refusal(folder)
    assert "gate_proj" in listed and "gating_ffw" in listed
    assert not any(name in listed for name in NORMS) and "model.norm" not in listed
    kh = fresh(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wp.port(folder / "model.safetensors", kh, hints={f"model.layers.{i}.mlp.{a}": f"transformer_layers/{i}/{b}"
                                                      for i in range(2) for a, b in (("gate_proj", "gating_ffw"),
                                                                                     ("up_proj", "gating_ffw_2"))})
    np.testing.assert_allclose(*outputs(hf, kh), atol=2e-4, rtol=1e-4)
    reference = keras_hub.models.GemmaBackbone.from_preset(str(folder))  # keras-hub's own converter
    for a, b in zip(kh.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_negative_control_read_as_the_llama_familys_mlp_norm_the_names_tie(saved, monkeypatch):
    from weightport.converter import naming
    phrases = tuple((p, "mlp_norm" if w == "mlp_norm_postattention" else w) for p, w in naming.PHRASES)
    monkeypatch.setattr(naming, "PHRASES", phrases)
    naming.path_words.cache_clear()  # words are kept per path
    try:
        assert "post_attention_layernorm" in refusal(saved[1])
    finally:
        monkeypatch.undo()
        naming.path_words.cache_clear()
