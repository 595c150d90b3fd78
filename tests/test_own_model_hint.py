"""A refusal that a file's own model would settle names that model: where save_pretrained left config.json, or
where the Keras-layout file records the Keras model it was written from (``wp.save`` writes its ``to_json()``)."""
import warnings

import numpy as np
import pytest

import weightport as wp
from test_real_models import gemma_config, gpt2_config, gpt2_outputs, keras_gemma, keras_gpt2, randomized
from util import randomize_keras
from weightport.converter.checkpoint import MODEL_KEY

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")
keras = pytest.importorskip("keras")
save_file = pytest.importorskip("safetensors.numpy").save_file


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


# -- Keras-layout files: the model.to_json() that wp.save records rebuilds the Keras model that wrote them ----------

def pasted(message):
    """The model= line of a refusal, evaluated as a user would paste it after ``import keras, weightport as wp``."""
    line = message.rsplit("model=", 1)[1].strip()
    assert line.startswith("keras.models.model_from_json(wp.load("), message
    return eval(line, {"keras": keras, "wp": wp})


def test_a_keras_hub_file_records_its_backbone_and_the_printed_line_rebuilds_it(tmp_path):
    """GPT-2's two block norms share no word with HF's ln_1/ln_2: the file alone is refused; the line the refusal
    prints rebuilds the GPT2Backbone that wrote it, whose run pairs them, and the outputs agree."""
    kh = keras_gpt2()
    randomize_keras(kh, 3)
    wp.save(kh, tmp_path / "kh.safetensors")
    hf = randomized(transformers.GPT2Model(gpt2_config()), 8)
    with pytest.raises(wp.AmbiguityError) as refused:
        wp.port(tmp_path / "kh.safetensors", hf)
    rebuilt = pasted(str(refused.value))
    assert isinstance(rebuilt, keras_hub.models.GPT2Backbone) and rebuilt is not kh
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.port(tmp_path / "kh.safetensors", hf, model=rebuilt)
    np.testing.assert_allclose(*gpt2_outputs(hf, kh), atol=1e-5, rtol=1e-5)
    with pytest.raises(wp.AmbiguityError, match="model_from_json"):  # converting into its layout: the same line
        wp.convert(tmp_path / "kh.safetensors", tmp_path / "hf.safetensors", like=hf)
    assert not (tmp_path / "hf.safetensors").exists()
    # negative control: the same file without the record gets the refusal alone, with no line to paste
    ckpt = wp.load(tmp_path / "kh.safetensors")
    metadata = {k: v for k, v in ckpt.metadata.items() if k != MODEL_KEY}
    save_file({name: np.array(ckpt[name]) for name in ckpt}, str(tmp_path / "bare.safetensors"), metadata=metadata)
    with pytest.raises(wp.AmbiguityError) as refused:
        wp.port(tmp_path / "bare.safetensors", randomized(transformers.GPT2Model(gpt2_config()), 9))
    said = str(refused.value)
    assert "model_from_json" not in said and "does not record which Keras model wrote it" in said


def small_keras(kind):
    """A functional or Sequential model 7 -> 5 (tanh) -> 3, random weights, and its torch twin."""
    layers = [keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(3)]
    if kind == "sequential":
        model = keras.Sequential([keras.Input((7,))] + layers)
    else:
        inputs = keras.Input((7,))
        model = keras.Model(inputs, layers[1](layers[0](inputs)))
    randomize_keras(model, 4)
    return model, torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


@pytest.mark.backend_neutral
@pytest.mark.parametrize("kind", ["functional", "sequential"])
def test_a_weights_h5_written_by_wp_save_rebuilds_a_plain_keras_model(tmp_path, kind):
    """A .weights.h5 stores variables by index only: refused alone, with the line that rebuilds the model."""
    model, twin = small_keras(kind)
    wp.save(model, tmp_path / "m.weights.h5")
    with pytest.raises(wp.UsageError, match="by index only") as refused:
        wp.port(tmp_path / "m.weights.h5", twin)
    wp.port(tmp_path / "m.weights.h5", twin, model=pasted(str(refused.value)))
    x = np.random.default_rng(5).standard_normal((4, 7)).astype("float32")
    with torch.no_grad():
        ours = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, keras.ops.convert_to_numpy(model(x)), atol=1e-6, rtol=1e-6)


@pytest.mark.backend_neutral
def test_the_record_follows_the_model_the_names_are_from_and_is_never_made_up(tmp_path):
    """like= records the Keras model the output is named after, a Keras-layout copy keeps its source's record,
    a file converted with no Keras model records none, and Keras' own .weights.h5 is said to record none."""
    model, twin = small_keras("functional")
    wp.convert(twin, tmp_path / "like.safetensors", like=model)
    assert wp.load(tmp_path / "like.safetensors").metadata[MODEL_KEY] == model.to_json()
    wp.convert(tmp_path / "like.safetensors", tmp_path / "copy.npz")
    assert wp.load(tmp_path / "copy.npz").metadata[MODEL_KEY] == model.to_json()
    wp.save(twin, tmp_path / "t.safetensors")
    wp.convert(tmp_path / "t.safetensors", tmp_path / "k.safetensors", to="keras")
    assert MODEL_KEY not in wp.load(tmp_path / "k.safetensors").metadata
    model.save_weights(tmp_path / "own.weights.h5")
    with pytest.raises(wp.UsageError, match="by index only") as refused:
        wp.port(tmp_path / "own.weights.h5", twin)
    said = str(refused.value)
    assert "model_from_json" not in said and "does not record which Keras model wrote it" in said


def xlnet_pair():
    config = transformers.XLNetConfig(vocab_size=101, d_model=48, n_layer=2, n_head=4, d_inner=64,
                                      ff_activation="gelu", dropout=0.0, attn_type="bi", pad_token_id=1)
    backbone = keras_hub.models.XLNetBackbone(vocabulary_size=101, num_layers=2, num_heads=4, hidden_dim=48,
                                              intermediate_dim=64, dropout=0.0, activation="gelu")
    return randomized(transformers.XLNetModel(config), 23), backbone


def test_a_file_whose_names_cannot_tell_its_layout_gets_the_model_line_too(tmp_path):
    """XLNet's file holds bare ``r_w_bias``/``mask_emb`` tensors no name tells the layout of: refused before any
    pairing, that refusal asks for model= and now prints the line; pasted, the port is traced as the live one
    is, and refused for the same honest reason (XLNet's per-block biases look alike and nothing tells them
    apart), with no line asking for a model= already given."""
    hf, backbone = xlnet_pair()
    hf.save_pretrained(tmp_path)
    with pytest.raises(wp.UsageError, match="cannot tell whether") as refused:
        wp.port(tmp_path / "model.safetensors", backbone)
    line = str(refused.value).rsplit("model=", 1)[1].strip()
    assert line.startswith("transformers.XLNetModel(")
    model = eval(line, {"transformers": transformers})
    with pytest.raises(wp.AmbiguityError) as again:
        wp.port(tmp_path / "model.safetensors", backbone, model=model)
    with pytest.raises(wp.AmbiguityError) as live:
        wp.port(hf, backbone)
    for message in (str(again.value), str(live.value)):  # the file with its model is refused as the live model is
        assert "dataflow of a traced run" in message and "source: layer.0.rel_attn.r_r_bias" in message
    assert "AutoConfig" not in str(again.value) and "pass its own model" not in str(again.value)
    (tmp_path / "config.json").unlink()  # negative control: no config, no line made up
    with pytest.raises(wp.UsageError) as bare:
        wp.port(tmp_path / "model.safetensors", backbone)
    assert "transformers." not in str(bare.value)
