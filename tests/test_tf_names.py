"""Torch checkpoints converted from TensorFlow (early BERT releases) name LayerNorm's tensors gamma and beta."""
import warnings

import numpy as np
import pytest

import weightport as wp
from test_real_models import assert_bitwise_equal, bert_config, keras_bert, randomized
from util import quiet_port

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("keras_hub")
safetensors_torch = pytest.importorskip("safetensors.torch")


def bert_files(tmp_path):
    state = randomized(transformers.BertModel(bert_config()), 7).state_dict()
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in state.items()}
    assert renamed != state
    plain, tf_named = tmp_path / "plain.safetensors", tmp_path / "tf_named.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, plain)
    safetensors_torch.save_file({k: v.contiguous() for k, v in renamed.items()}, tf_named)
    return plain, tf_named



def test_gamma_and_beta_read_as_a_layer_norms_scale_and_shift(tmp_path):
    plain, tf_named = bert_files(tmp_path)
    reference, ours = keras_bert(), keras_bert()
    quiet_port(plain, reference)
    report = quiet_port(tf_named, ours)
    assert_bitwise_equal(ours, reference)
    assert any(s.source.endswith("LayerNorm") and s.rule == "layer_normalization" for s in report.steps)


def test_converted_to_the_keras_layout_with_no_model(tmp_path):
    _, tf_named = bert_files(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.convert(tf_named, tmp_path / "out.safetensors", to="keras", quiet=True)
    out = wp.load(tmp_path / "out.safetensors")
    src = wp.load(tf_named)
    name = "embeddings.LayerNorm"
    keras_names = [n for n in out if n.startswith(name)]
    assert sorted(keras_names) == [f"{name}/beta", f"{name}/gamma"] or sorted(keras_names) == [
        f"{name}.beta", f"{name}.gamma"], keras_names
    gamma = next(n for n in keras_names if n.endswith("gamma"))
    np.testing.assert_array_equal(np.asarray(out[gamma]), np.asarray(src[f"{name}.gamma"]))


def test_negative_control_without_the_tf_names_the_file_is_refused(tmp_path, monkeypatch):
    from weightport.mappings import norm

    monkeypatch.setattr(norm, "TF_NAMES", {})
    _, tf_named = bert_files(tmp_path)
    with pytest.raises(wp.WeightportError, match="gamma"):
        wp.port(tf_named, keras_bert())
