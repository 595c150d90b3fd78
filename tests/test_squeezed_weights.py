"""A loose weight pairs with a tensor whose shape is the same once size-1 axes are dropped: keras-hub's Qwen3.5
linear attention holds a bare ``conv1d_kernel`` (C, K) where transformers has a depthwise torch Conv1d weight
(C, 1, K). A squeeze moves no value, so the tensor is copied in memory order; never transposed on a guess."""
import json
import os

import numpy as np
import pytest

import weightport as wp
from test_real_models import IDS, randomized
from weightport.converter import pairs
from weightport.mappings.rule import registry

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")
safetensors_numpy = pytest.importorskip("safetensors.numpy")


def config():
    return transformers.Qwen3_5TextConfig(
        vocab_size=101, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
        linear_value_head_dim=12, linear_conv_kernel_dim=3, tie_word_embeddings=False,
        layer_types=["linear_attention", "full_attention"])


def multimodal_twin(folder, out):
    """keras-hub's converter reads only the released layout: text config nested, tensors under
    model.language_model.*; the twin of a text-only save."""
    os.makedirs(out)
    text = json.loads((folder / "config.json").read_text())
    top = {"model_type": "qwen3_5", "tie_word_embeddings": False, "language_model_only": True, "text_config": text}
    (out / "config.json").write_text(json.dumps(top))
    tensors = safetensors_numpy.load_file(str(folder / "model.safetensors"))
    safetensors_numpy.save_file({"model.language_model." + k[6:] if k.startswith("model.") else k: v
                                 for k, v in tensors.items()}, str(out / "model.safetensors"),
                                metadata={"format": "pt"})


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3_5")
    transformers.Qwen3_5ForCausalLM(config()).save_pretrained(folder)
    multimodal_twin(folder, folder / "kh")
    return randomized(transformers.Qwen3_5ForCausalLM(config()), 3), \
        lambda: keras_hub.models.Qwen3_5Backbone.from_preset(str(folder / "kh"))


def hidden(hf, kh):
    with torch.no_grad():
        ours = hf.model(input_ids=torch.from_numpy(IDS), use_cache=False).last_hidden_state.numpy()
    theirs = keras.ops.convert_to_numpy(kh({"token_ids": IDS, "padding_mask": np.ones_like(IDS)}))
    return np.abs(ours - theirs).max(), np.abs(ours).max()


@pytest.mark.backend_neutral  # the pairing and the squeeze are the same under jax (run by the sweep: 1.2e-5), where
# keras-hub's Qwen3.5 forward alone takes over two minutes
def test_depthwise_conv_weight_pairs_with_a_bare_kernel_both_ways(qwen):
    hf, make_kh = qwen
    kh = make_kh()
    assert hidden(hf, kh)[0] > 0.1  # a fresh twin computes something else
    wp.port(hf, kh)
    conv = hf.model.layers[0].linear_attn.conv1d.weight.detach().numpy()
    bare = next(keras.ops.convert_to_numpy(v) for v in kh.weights if v.path.endswith("conv1d_kernel"))
    assert conv.shape == (80, 1, 3) and bare.shape == (80, 3)
    np.testing.assert_array_equal(bare, conv[:, 0, :])
    error, scale = hidden(hf, kh)
    assert error < 1e-4 * max(1.0, scale)
    back = transformers.Qwen3_5ForCausalLM(config()).eval()
    wp.port(kh, back)
    assert hidden(back, kh)[0] < 1e-4 * max(1.0, scale)


def test_negative_control_without_the_stored_reading_the_conv_is_refused(qwen, monkeypatch):
    hf, make_kh = qwen
    monkeypatch.setattr(pairs, "stored_shape", lambda lk, shapes: None)
    with pytest.raises(wp.UnsupportedLayerError, match="conv1d_kernel"):
        wp.port(hf, make_kh())


@pytest.mark.backend_neutral
@pytest.mark.parametrize("channels, kernel, expected", [(80, 3, (80, 1, 3)), (3, 3, None)])
def test_a_stored_reading_is_offered_only_where_it_cannot_be_the_canonical_one(channels, kernel, expected):
    """(C, 1, K) stored vs (K, C, 1) canonical: squeezed, (C, K) and (K, C) tell them apart unless C == K, where a
    bare square kernel could be either and is refused rather than copied on a guess."""
    rule = registry.get("depthwise_conv")
    hp = {"kernel_size": (kernel,), "depth_multiplier": 1, "use_bias": False}
    lk = next(lk for lk in rule.links("torch", hp) if list(lk.canonical) == ["kernel"])
    assert pairs.stored_shape(lk, [(kernel, channels, 1)]) == expected
