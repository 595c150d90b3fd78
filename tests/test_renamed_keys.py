"""A file saved by transformers 5 names some tensors otherwise than the live model (its legacy keys): DINOv2's
``attention.attention.query`` for ``attention.q_proj``, ESM's ``LayerNorm.gamma``/``beta`` for ``.weight``/``.bias``.
Each is read under the key the model's own rename table gives (SegFormer's renamed modules), else as the one model
tensor it fits by shape, block numbers and words; where that is not unique the port is refused as before."""
import numpy as np
import pytest

import weightport as wp
from test_real_models import randomized
from weightport.converter import renames

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")
safetensors_torch = pytest.importorskip("safetensors.torch")

IDS = np.random.default_rng(6).integers(2, 90, (2, 9))
PIXELS = np.random.default_rng(4).standard_normal((2, 3, 28, 28)).astype("float32")


def dinov2():
    return transformers.Dinov2Model(transformers.Dinov2Config(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=28, patch_size=7,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def dinov2_out(model):
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(PIXELS)).last_hidden_state.numpy()


def esm_config():
    return transformers.EsmConfig(vocab_size=101, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, position_embedding_type="rotary",
                                  pad_token_id=1, mask_token_id=None, token_dropout=False,
                                  emb_layer_norm_before=False, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)


def esm_keras():
    return keras_hub.models.ESMBackbone(vocabulary_size=101, num_layers=2, num_heads=4, hidden_dim=48,
                                        intermediate_dim=64, dropout=0.0, position_embedding_type="rotary",
                                        pad_token_id=1, max_sequence_length=32, layer_norm_eps=1e-12,
                                        use_pre_layer_norm=False, activation="gelu")


def test_the_files_names_differ_from_the_live_models(tmp_path):
    """The premise: what save_pretrained writes is not the live state_dict's names (else nothing here is tested)."""
    randomized(dinov2(), 1).save_pretrained(tmp_path)
    assert "encoder.layer.0.attention.attention.query.weight" in wp.load(tmp_path / "model.safetensors")
    assert "encoder.layer.0.attention.q_proj.weight" in dinov2().state_dict()


@pytest.mark.parametrize("own_model", [False, True], ids=["into-its-class", "model="])
def test_dinov2_file_into_its_own_class(tmp_path, own_model):
    source = randomized(dinov2(), 1)
    source.save_pretrained(tmp_path)
    target = randomized(dinov2(), 2)
    report = wp.port(tmp_path / "model.safetensors", target, **({"model": dinov2()} if own_model else {}))
    assert np.array_equal(dinov2_out(target), dinov2_out(source))
    assert not report.unmatched_source and not report.unmatched_target
    # read by the model's own rename table (transformers 5's), not matched by words: nothing to warn about
    assert not any(renames.NOTE in w for w in report.warnings)


def test_esm_file_with_model_ports_as_the_live_model_does(tmp_path):
    source = randomized(transformers.EsmModel(esm_config(), add_pooling_layer=False), 1)
    source.save_pretrained(tmp_path)
    live, from_file = esm_keras(), esm_keras()
    wp.port(source, live)
    wp.port(tmp_path / "model.safetensors", from_file,
            model=transformers.EsmModel(esm_config(), add_pooling_layer=False))
    a, b = (keras.ops.convert_to_numpy(m({"token_ids": IDS})) for m in (live, from_file))
    assert np.abs(a).max() > 0.1 and np.array_equal(a, b)
    with torch.no_grad():
        reference = source(input_ids=torch.from_numpy(IDS)).last_hidden_state.numpy()
    assert np.abs(a - reference).max() < 1e-4


def test_names_that_do_not_say_which_is_which_are_refused(tmp_path):
    """Negative control: layer 0's query and key renamed to words that tell them apart from nothing."""
    randomized(dinov2(), 1).save_pretrained(tmp_path)
    tensors = safetensors_torch.load_file(tmp_path / "model.safetensors")
    for old, new in (("query", "first"), ("key", "second")):
        for slot in ("weight", "bias"):
            tensors[f"encoder.layer.0.attention.{new}.{slot}"] = tensors.pop(
                f"encoder.layer.0.attention.attention.{old}.{slot}")
    safetensors_torch.save_file(tensors, tmp_path / "odd.safetensors")
    target = randomized(dinov2(), 2)
    before = dinov2_out(target)
    with pytest.raises(wp.ShapeMismatchError, match="q_proj"):
        wp.port(tmp_path / "odd.safetensors", target, model=dinov2())
    assert np.array_equal(dinov2_out(target), before)


def test_pairing_rules():
    shape = (48, 48)
    # one fit each, TensorFlow's gamma read as weight
    assert renames.pair({"a.0.LayerNorm.weight": (5,), "a.0.attn.q_proj.weight": shape},
                        {"a.0.LayerNorm.gamma": (5,), "a.0.attention.query.weight": shape}) == {
        "a.0.LayerNorm.weight": "a.0.LayerNorm.gamma", "a.0.attn.q_proj.weight": "a.0.attention.query.weight"}
    assert renames.pair({"a.0.q_proj.weight": shape}, {"a.0.key.weight": shape}) == {}  # query is not key
    assert renames.pair({"a.0.q_proj.weight": shape}, {"a.1.query.weight": shape}) == {}  # another block
    assert renames.pair({"a.0.q_proj.weight": shape}, {"a.0.query.weight": (48, 40)}) == {}  # another shape
    assert renames.pair({"a.0.q_proj.bias": (48,)}, {"a.0.query.weight": (48,)}) == {}  # another slot
    assert renames.pair({"a.0.x.weight": shape}, {"a.0.y.weight": shape}) == {}  # x is not y, though both in a.0
    assert renames.pair({"a.0.x.weight": shape}, {"a.0.y.x.weight": shape, "a.0.z.x.weight": shape}) == {}  # a tie


def segformer():
    """transformers 5 renamed SegFormer's modules (``encoder.block.0.1.attention.self.query`` is now
    ``stages.0.blocks.1.attention.q_proj``, ``layer_norm_1`` ``layernorm_before``) and saves the old keys: too
    far apart for matching words; the model's own rename table says which is which."""
    return transformers.SegformerModel(transformers.SegformerConfig(
        num_encoder_blocks=2, depths=[2, 1], sr_ratios=[2, 1], hidden_sizes=[16, 40], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[4, 4], hidden_act="gelu_pytorch_tanh"))


def mit_keras():
    return keras_hub.models.MiTBackbone(
        layerwise_depths=[2, 1], num_layers=2, layerwise_num_heads=[1, 2], layerwise_sr_ratios=[2, 1],
        max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3], layerwise_strides=[4, 2], image_shape=(32, 32, 3),
        hidden_dims=[16, 40])


@pytest.fixture(scope="module")
def segformer_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("segformer")
    source = randomized(segformer(), 1)
    source.save_pretrained(folder)
    names = set(wp.load(folder / "model.safetensors"))
    assert "encoder.block.0.1.attention.self.query.weight" in names  # the premise: legacy keys on disk
    assert "stages.0.blocks.1.attention.q_proj.weight" in source.state_dict()
    return source, folder / "model.safetensors"


def test_segformer_file_with_its_model_reads_the_saved_keys(segformer_file):
    """The refusal's own ``model=`` line, pasted: ported into keras-hub's MiT, equal to HF's output."""
    source, path = segformer_file
    target = mit_keras()
    wp.port(path, target, model=segformer())
    pixels = np.pad(PIXELS, ((0, 0), (0, 0), (2, 2), (2, 2)))  # MiT's build needs a fixed 32x32 input
    with torch.no_grad():
        expected = source(pixel_values=torch.from_numpy(pixels)).last_hidden_state.permute(0, 2, 3, 1).numpy()
    got = keras.ops.convert_to_numpy(target(pixels.transpose(0, 2, 3, 1)))
    assert np.abs(expected).max() > 0.1 and np.abs(got - expected).max() < 1e-4


@pytest.mark.backend_neutral
def test_segformer_file_without_the_rename_table_is_refused(segformer_file, monkeypatch):
    """Negative control: with the model's rename table ignored, the legacy keys are missing, not guessed."""
    from weightport.converter.frameworks.torch import TorchFramework
    _, path = segformer_file
    monkeypatch.setattr(TorchFramework, "saved_names", lambda self, model: {})
    with pytest.raises(wp.ShapeMismatchError, match="lacks tensors the model needs: stages.0"):
        wp.port(path, mit_keras(), model=segformer())
