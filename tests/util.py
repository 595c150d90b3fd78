"""Helpers for mapping tests: random weights, forward equivalence, bitwise round trips, negative controls.

Every mapping test should use all three checks:

- ``assert_forward_equal(torch_model, keras_model, x_torch, x_keras)`` after porting torch -> Keras
  (random weights everywhere, so a wrong mapping cannot pass by accident);
- ``assert_keras_roundtrip(keras_model, torch_model)``: Keras -> torch -> Keras is bitwise identical;
- ``skip_transforms(monkeypatch, rule_name)`` as a negative control: with the rule's transforms
  replaced by plain reshapes, the same port must give different outputs.
"""
from __future__ import annotations

import numpy as np

import weightport as wp
from weightport.mappings import transforms as T
from weightport.mappings.rule import Link, registry


def _positive(name: str) -> bool:
    name = name.lower()
    return "variance" in name or "running_var" in name or name.endswith(".var")


def randomize_torch(module, seed: int = 0) -> None:
    """Fill every floating parameter and buffer with random values (variances positive)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            r = torch.randn(t.shape, generator=g, dtype=torch.float32) * 0.5
            if _positive(name):
                r = r.abs() + 0.5
            t.copy_(r.to(t.dtype))


def randomize_keras(model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for v in model.weights:
        r = rng.standard_normal(tuple(v.shape)).astype("float32") * 0.5
        if _positive(v.path):
            r = np.abs(r) + 0.5
        v.assign(r.astype(v.dtype))


def keras_weights(model) -> list:
    # order="C": a copy laid out row-major even where the variable is not (an orthogonal init is a transpose)
    return [np.array(wp.converter.arrays.to_numpy(v.value), order="C") for v in model.weights]


def assert_forward_equal(a, b, inputs_a, inputs_b=None, atol=1e-5, rtol=1e-4):
    result = wp.verify(a, b, (inputs_a, inputs_a if inputs_b is None else inputs_b), atol=atol, rtol=rtol)
    assert result.ok, str(result)
    return result


def assert_forward_differs(a, b, inputs_a, inputs_b=None, atol=1e-5, rtol=1e-4):
    result = wp.verify(a, b, (inputs_a, inputs_a if inputs_b is None else inputs_b), atol=atol, rtol=rtol)
    assert not result.ok, f"negative control passed when it should fail: {result}"
    return result


def assert_keras_roundtrip(keras_model, other_model, **port_kwargs) -> None:
    """Keras -> other -> Keras gives back every weight bit for bit (dtype included)."""
    randomize_keras(keras_model, seed=7)
    before = keras_weights(keras_model)
    wp.port(keras_model, other_model, **port_kwargs)
    for v in keras_model.weights:  # scramble, so a port that copies nothing is caught
        v.assign(np.zeros(tuple(v.shape), dtype=v.dtype))
    wp.port(other_model, keras_model, **port_kwargs)
    after = keras_weights(keras_model)
    assert len(before) == len(after)
    for x, y in zip(before, after):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), "round trip changed a weight"


class _Naive(T.Unary):
    """A stand-in transform that only reshapes: what a converter that forgets the transform does."""

    def __init__(self, t):
        self.t = t

    def fwd(self, a):
        return np.ascontiguousarray(a).reshape(self.t.fwd_shape(a.shape))

    def inv(self, a):
        return np.ascontiguousarray(a).reshape(self.t.inv_shape(a.shape))

    def fwd_shape(self, s):
        return self.t.fwd_shape(s)

    def inv_shape(self, s):
        return self.t.inv_shape(s)


def skip_transforms(monkeypatch, rule_name: str, layout: str = "torch") -> None:
    """Negative control: make ``rule_name`` move bytes without its transforms (reshape only)."""
    rule = registry.get(rule_name)
    original = getattr(rule, f"links_{layout}")

    def naive_links(hp):
        out = []
        for lk in original(hp):
            t = lk.transform
            if isinstance(t, T.Chain) and all(isinstance(p, T.Unary) for p in t.parts):
                t = _Naive(t)
            elif isinstance(t, T.Unary):
                t = _Naive(t)
            out.append(Link(lk.canonical, lk.native, t))
        return out

    monkeypatch.setattr(rule, f"links_{layout}", naive_links)


def ort_run(path, x):
    """onnxruntime's output of the graph at ``path`` on input ``x`` (its one input is named ``x``)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def run_keras(model, x):
    """The model's output; ``predict`` compiles one function per model (under jax an eager call recompiles
    every recurrent scan), which later calls with new weights reuse."""
    return np.asarray(model.predict(x, verbose=0))


def close(a, b):
    return a.shape == b.shape and np.allclose(a, b, atol=1e-4, rtol=1e-4)


def quiet_port(*args, **kwargs):
    """``wp.port`` with its own warnings (epsilons, heads left unported) silenced: for tests that check outputs."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        return wp.port(*args, **kwargs)
