"""Under the jax backend the dataflow is read from a jaxpr: operations written inside a layer's call are seen."""
import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="the jaxpr trace is the jax backend's")

from weightport.converter.flow import UNKNOWN  # noqa: E402
from weightport.converter.frameworks import adapter_for, walk  # noqa: E402


class GatedBlock(keras.layers.Layer):
    """gelu(gate(x)) * up(x) + x: the two projections meet in operations no layer wraps."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.gate, self.up = keras.layers.Dense(7, name="gate"), keras.layers.Dense(7, name="up")
        self.down = keras.layers.Dense(5, name="down")

    def call(self, x):
        return self.down(keras.ops.gelu(self.gate(x)) * self.up(x)) + x


def model():
    x = keras.Input((5,))
    norm = keras.layers.LayerNormalization(name="norm")
    return keras.Model(x, keras.layers.Dense(3, name="head")(GatedBlock(name="block")(norm(x))))


def flows():
    m = model()
    fw = adapter_for(m)
    refs, _ = walk(fw, m)
    x = np.random.default_rng(0).standard_normal((2, 5)).astype("float32")
    return fw.trace(m, refs, x), {r.obj.name: r.path for r in refs}


def test_the_jaxpr_flow_follows_operations_inside_a_layers_call():
    flow, path = flows()
    assert flow.complete
    assert flow.feeds[path["gate"]] == flow.feeds[path["up"]] == {path["norm"]}
    assert flow.feeds[path["down"]] == {path["gate"], path["up"]}
    assert flow.feeds[path["head"]] == {path["down"], path["norm"]}  # the residual add reads the norm too
    assert flow.order.index(path["norm"]) < flow.order.index(path["gate"]) < flow.order.index(path["head"])


def test_negative_control_the_eager_run_alone_loses_those_operations():
    from weightport.converter.frameworks.keras import _eager_flow

    m = model()
    refs, _ = walk(adapter_for(m), m)
    flow = _eager_flow(keras, m, refs, keras.ops.ones((2, 5)), capture=True)  # kept for each layer's output
    down = next(r.path for r in refs if r.obj.name == "down")
    assert UNKNOWN in flow.feeds[down] and not flow.complete


def test_the_jaxpr_flow_marks_the_edges_that_pass_an_activation():
    flow, path = flows()
    assert flow.sees_activations
    assert flow.activated_readers[path["gate"]] == {path["down"]}  # gelu(gate(x)) * up(x)
    assert flow.activated_readers[path["up"]] == set() == flow.activated_readers[path["norm"]]


class BranchesOnValues(keras.layers.Layer):
    """Python control flow on a tensor's value: jax cannot trace it into a jaxpr."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.a = keras.layers.Dense(5, name="a")

    def call(self, x):
        y = self.a(x)
        return y if float(keras.ops.sum(y)) > -1e9 else -y


class Branching(keras.Model):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.blk, self.head = BranchesOnValues(name="blk"), keras.layers.Dense(3, name="head")

    def call(self, x):
        return self.head(self.blk(x))


def test_a_model_jax_cannot_trace_falls_back_to_the_eager_run():
    m = Branching()
    m(np.ones((2, 5), "float32"))  # built eagerly: jax could not trace it symbolically either
    fw = adapter_for(m)
    refs, _ = walk(fw, m)
    flow = fw.trace(m, refs, np.ones((2, 5), "float32"))
    assert flow is not None and flow.order  # the eager flow: incomplete, never wrong
