"""Adding a layout is a row in the layouts table and links in the rules that support it: nothing else.

A toy layout stores a Dense kernel transposed, under ``<layer>:w`` and ``<layer>:b``; a Keras model is
written in it through the public API with no other change anywhere.
"""
import numpy as np
import pytest

import weightport as wp
from weightport import layouts
from weightport.mappings.rule import link, registry
from weightport.mappings.transforms import Transpose

keras = pytest.importorskip("keras")


@pytest.fixture
def toy_layout(monkeypatch):
    monkeypatch.setitem(layouts.LAYOUTS, "toy", layouts.Layout("toy", ":", None))
    dense = registry.get("dense")
    monkeypatch.setattr(dense, "classes", {**type(dense).classes, "toy": ()})
    monkeypatch.setattr(dense, "links_toy", lambda hp: [link("kernel", "w", Transpose(1, 0)), link("bias", "b")],
                        raising=False)


def model():
    m = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5, name="first"), keras.layers.Dense(3, name="second")])
    rng = np.random.default_rng(1)
    for v in m.weights:
        v.assign(rng.standard_normal(tuple(v.shape)).astype("float32"))
    return m


def test_a_new_layout_is_one_row_and_the_links_of_its_rules(toy_layout, tmp_path):
    m = model()
    assert "toy" in layouts.writable()
    wp.save(m, tmp_path / "toy.safetensors", layout="toy")
    out = wp.load(tmp_path / "toy.safetensors")
    assert out.layout == "toy" and sorted(out) == ["first:b", "first:w", "second:b", "second:w"]
    kernel, bias = m.layers[0].get_weights()
    np.testing.assert_array_equal(out["first:w"], kernel.T)  # the toy layout's own axis order
    np.testing.assert_array_equal(out["first:b"], bias)


def test_without_its_links_a_rule_refuses_the_layout(tmp_path, monkeypatch):
    """Negative control: the table row alone does not make a layout writable for a rule with no links."""
    monkeypatch.setitem(layouts.LAYOUTS, "toy", layouts.Layout("toy", ":", None))
    with pytest.raises(wp.WeightportError, match="toy"):
        wp.save(model(), tmp_path / "toy.safetensors", layout="toy")


def test_a_layout_name_is_registered_once(monkeypatch):
    monkeypatch.setitem(layouts.LAYOUTS, "toy", layouts.Layout("toy", ":", None))
    with pytest.raises(wp.WeightportError, match="already registered"):
        layouts.register(layouts.Layout("toy", "/", None))
