"""Files a keras-hub backbone was written to (``wp.save(kh, path)``, no ``like=``), ported into the transformers
model: keras-hub's ReversibleEmbedding (a token table, and untied, its own output projection) against HF's
``embed_tokens`` + ``lm_head``, tied or not, and a packed ``qkv`` (Swin) against separate q/k/v.

The file is all the port has (no keras-hub model) unless ``model=`` gives it; equal outputs are the proof, and a tie
on one side only, or a packed layout no trace can settle, is refused with the option or model= line that settles it.
"""
import warnings

import numpy as np
import pytest

import weightport as wp
from test_packed_split import hf_out, kh_out, phi3_config, phi3_kh
from test_real_models import gpt2_config, keras_gpt2, keras_llama, llama_config, randomized
from test_swin import config as swin_config
from test_swin import outputs as swin_outputs
from util import randomize_keras

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")

IDS = np.random.default_rng(6).integers(2, 90, (2, 9))
TOL = dict(atol=1e-5, rtol=1e-5)


def saved(kh, folder, seed=3):
    """``kh`` with random weights, written by ``wp.save`` as a Keras-layout safetensors file in ``folder``."""
    randomize_keras(kh, seed)
    path = folder / "kh.safetensors"
    wp.save(kh, path)
    return kh, path


def quiet(source, target, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        return wp.port(source, target, **kw)


def logits(hf, kh):
    """HF's lm_head logits, and keras-hub's: its ReversibleEmbedding run in reverse on the last hidden states."""
    ids = torch.from_numpy(IDS)
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()
    hidden = kh({"token_ids": IDS, "padding_mask": np.ones_like(IDS)})
    return a, keras.ops.convert_to_numpy(kh.token_embedding(hidden, reverse=True))


def close(a, b):
    """Equal up to the float32 rounding of two implementations: ~1e-5 of the outputs' own size."""
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a / scale, b / scale, **TOL)


def unchanged(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("with_model", [False, pytest.param(True, marks=pytest.mark.backend_neutral)],
                         ids=["file_alone", "model="])
def test_phi3_untied_reversible_embedding_into_embed_tokens_and_lm_head(tmp_path, with_model):
    """Phi-3's keras-hub table and output projection (one layer, two tensors) fill HF's embed_tokens and lm_head;
    the separate q/k/v and gate/up are merged into qkv_proj and gate_up_proj as the HF model's run cuts them."""
    kh, path = saved(phi3_kh(), tmp_path)
    kw = {"model": phi3_kh()} if with_model else {}
    hf = randomized(transformers.Phi3ForCausalLM(phi3_config()), 5)
    report = quiet(path, hf, **kw)
    pairs = {s.target: s.source for s in report.steps}
    assert pairs["lm_head"] == "token_embedding/reverse_embeddings"
    assert pairs["model.embed_tokens"] == "token_embedding/embeddings"
    close(*logits(hf, kh))
    close(hf_out(hf), kh_out(kh))
    body = randomized(transformers.Phi3Model(phi3_config()), 6)  # no head: the output projection is reported
    report = quiet(path, body, **kw)
    assert any("reverse_embeddings" in note for note in report.unmatched_source)
    close(hf_out(body), kh_out(kh))


@pytest.mark.parametrize("tied", [True, pytest.param(False, marks=pytest.mark.backend_neutral)],
                         ids=["tied", "untied"])
def test_llama_table_tied_or_not_into_the_causal_lm(tmp_path, tied):
    config = llama_config()
    config.tie_word_embeddings = tied
    kh, path = saved(keras_llama(tied=tied), tmp_path)
    for kw in ({}, {"model": keras_llama(tied=tied)}):
        hf = randomized(transformers.LlamaForCausalLM(config), 7)
        quiet(path, hf, **kw)
        assert (hf.lm_head.weight is hf.model.embed_tokens.weight) == tied
        close(*logits(hf, kh))


def test_gpt2_tied_table_with_its_own_model(tmp_path):
    """GPT-2's two block norms share no word with HF's ln_1/ln_2: the file alone is refused (pointing at
    model=), and its own keras-hub model's run pairs them; the tied head is filled through wte."""
    kh, path = saved(keras_gpt2(), tmp_path)
    hf = randomized(transformers.GPT2LMHeadModel(gpt2_config()), 8)
    before = unchanged(hf)
    with pytest.raises(wp.AmbiguityError, match="model="):
        quiet(path, hf)
    assert same_state(hf, before)
    quiet(path, hf, model=keras_gpt2())
    assert hf.lm_head.weight is hf.transformer.wte.weight
    close(*logits(hf, kh))


@pytest.mark.parametrize("tied", [True, False], ids=["tied_file", "untied_file"])
def test_negative_control_a_tie_on_one_side_only_is_refused(tmp_path, tied):
    """A tied keras-hub table has nothing for an untied lm_head; an untied one's output projection has no place
    in a tied HF head (it would be dropped, and the head compute with the table): both refused, target unchanged."""
    config = llama_config()
    config.tie_word_embeddings = not tied
    _, path = saved(keras_llama(tied=tied), tmp_path)
    for kw in ({}, {"model": keras_llama(tied=tied)}):
        hf = randomized(transformers.LlamaForCausalLM(config), 9)
        before = unchanged(hf)
        with pytest.raises(wp.MatchError, match="lm_head") as refused:
            quiet(path, hf, **kw)
        said = str(refused.value)  # the fix each refusal names: the target built the source's way
        assert ("tie_word_embeddings=True" if tied else "tie_word_embeddings=False") in said and "strict=False" in said
        assert "model_from_json" not in said  # the file's own model would not settle this: no line offered
        assert same_state(hf, before)
    if not tied:  # strict=False ports the rest and says what it left out
        report = quiet(path, hf, strict=False)
        assert any("reverse_embeddings" in issue for issue in report.plan.issues)


@pytest.mark.backend_neutral
def test_a_file_written_like_the_keras_model_names_its_tensors_as_wp_save_does(tmp_path):
    """Converting into a keras-hub model's layout names each tensor as its variable (a declared part's tensors
    under their owner's name), the same file wp.save writes, which model= then reads."""
    hf = randomized(transformers.Phi3ForCausalLM(phi3_config()), 10)
    hf.save_pretrained(tmp_path / "hf")
    options = {"packed_qkv": "blocks", "gate_up": "gate_first"}
    wp.convert(tmp_path / "hf" / "model.safetensors", tmp_path / "like.safetensors", like=phi3_kh(), options=options)
    kh = phi3_kh()
    quiet(tmp_path / "hf" / "model.safetensors", kh, options=options)
    wp.save(kh, tmp_path / "saved.safetensors")
    like, own = wp.load(tmp_path / "like.safetensors"), wp.load(tmp_path / "saved.safetensors")
    assert sorted(like) == sorted(own) and "token_embedding/reverse_embeddings" in like
    for name in own:
        np.testing.assert_array_equal(like[name], own[name])
    back = randomized(transformers.Phi3ForCausalLM(phi3_config()), 11)
    quiet(tmp_path / "like.safetensors", back, model=phi3_kh())
    for name, tensor in hf.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


# -- Swin: keras-hub's packed qkv against HF's separate query, key and value ---------------------------------------


@pytest.fixture(scope="module")
def swin_files(tmp_path_factory):
    """An HF Swin folder, a keras-hub twin of random weights, and the files it was written to: by wp.save, and by
    converting the HF file into its layout (like=)."""
    folder = tmp_path_factory.mktemp("swin")
    randomized(transformers.SwinModel(swin_config(), add_pooling_layer=False), 7).save_pretrained(folder)
    kh = keras_hub.models.Backbone.from_preset(str(folder), load_weights=False)
    randomize_keras(kh, 4)
    out = tmp_path_factory.mktemp("kh")
    wp.save(kh, out / "saved.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.convert(kh, out / "like.safetensors", like=kh)
        wp.save(kh, folder / "beside.safetensors")  # beside the HF folder's config.json
    return folder, kh, out


def swin_hf(seed):
    return randomized(transformers.SwinModel(swin_config(), add_pooling_layer=False), seed)


@pytest.mark.parametrize("name", ["saved", pytest.param("like", marks=pytest.mark.backend_neutral)])
def test_swin_packed_qkv_from_a_keras_file_splits_by_option_or_by_its_models_run(swin_files, name):
    folder, kh, out = swin_files
    path = out / f"{name}.safetensors"
    hf = swin_hf(8)
    before = unchanged(hf)
    with pytest.raises(wp.AmbiguityError, match="packed_qkv") as refused:
        wp.port(path, hf)
    assert "options={'packed_qkv': ...}" in str(refused.value) and "model=" in str(refused.value)
    assert same_state(hf, before)
    report = quiet(path, hf, options={"packed_qkv": "blocks"})
    assert sum(s.evidence == "split" for s in report.steps) == 6  # q, k, v of each of the two blocks
    close(*swin_outputs(hf, kh))
    other = swin_hf(9)
    quiet(path, other, model=keras_hub.models.Backbone.from_preset(str(folder), load_weights=False))
    close(*swin_outputs(other, kh))


def test_swin_negative_controls_a_wrong_packing_is_refused_or_differs(swin_files, monkeypatch):
    """Head by head needs a head count of each part, which Swin's separate projections do not declare: refused,
    from the file alone and with its model. Blocks read in another order (key first) give other outputs."""
    from weightport.converter import splits

    folder, kh, out = swin_files
    own = keras_hub.models.Backbone.from_preset(str(folder), load_weights=False)
    for kw in ({}, {"model": own}):
        hf = swin_hf(10)
        before = unchanged(hf)
        with pytest.raises(wp.UsageError, match="per_head"):
            wp.port(out / "saved.safetensors", hf, options={"packed_qkv": "per_head"}, **kw)
        assert same_state(hf, before)
    monkeypatch.setattr(splits, "settle", lambda s, options, flow: ("blocks", [1, 0, 2]))
    hf = swin_hf(11)
    quiet(out / "saved.safetensors", hf, options={"packed_qkv": "blocks"})
    a, b = swin_outputs(hf, kh)
    assert np.abs(a - b).max() > 1e-2


@pytest.mark.backend_neutral
def test_a_keras_file_beside_a_transformers_config_is_not_offered_that_model(swin_files):
    """The config.json beside it describes the HF model, not the Keras-layout file's: no transformers line."""
    folder, _, _ = swin_files
    with pytest.raises(wp.AmbiguityError) as refused:
        wp.port(folder / "beside.safetensors", swin_hf(12))
    assert "transformers.SwinModel" not in str(refused.value) and "packed_qkv" in str(refused.value)
