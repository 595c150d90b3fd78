"""A refusal that a file's own model would settle names that model, where save_pretrained left config.json."""
import warnings

import numpy as np
import pytest

import weightport as wp
from test_real_models import gemma_config, keras_gemma, randomized

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")


def refusal(path, target):
    with pytest.raises(wp.AmbiguityError) as refused:
        wp.port(path, target)
    return str(refused.value)


def test_the_printed_model_line_builds_the_files_own_model_and_the_port_then_goes_through(tmp_path):
    causal = randomized(transformers.GemmaForCausalLM(gemma_config()), 21)
    causal.save_pretrained(tmp_path)
    message = refusal(tmp_path / "model.safetensors", keras_gemma())
    line = message.rsplit("model=", 1)[1].strip()
    assert line.startswith("transformers.GemmaForCausalLM(")
    model = eval(line, {"transformers": transformers})  # the line as a user would paste it
    fresh = keras_gemma()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.port(tmp_path / "model.safetensors", fresh, model=model)
    reference = keras_hub.models.GemmaBackbone.from_preset(str(tmp_path))
    for a, b in zip(fresh.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_without_a_config_beside_the_file_no_model_line_is_made_up(tmp_path):
    causal = randomized(transformers.GemmaForCausalLM(gemma_config()), 21)
    causal.save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    message = refusal(tmp_path / "model.safetensors", keras_gemma())
    assert "transformers." not in message and "model=" in message
