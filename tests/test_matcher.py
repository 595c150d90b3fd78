"""Pairing look-alike layers (same kind and shapes) when order cannot be trusted: names settle it, or a refusal."""
import numpy as np
import pytest

import weightport as wp
from util import randomize_torch

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

D, FF, T = 6, 11, 5


class Block(torch.nn.Module):
    """q, k, v and out are look-alikes: (D, D) Linear layers told apart only by their names."""

    def __init__(self):
        super().__init__()
        self.query, self.key, self.value, self.out = (torch.nn.Linear(D, D) for _ in range(4))
        self.ff = torch.nn.Linear(D, FF)

    def forward(self, x):
        q, k, v = self.query(x), self.key(x), self.value(x)
        a = torch.softmax(q @ k.transpose(1, 2) / D ** 0.5, dim=-1) @ v
        return self.ff(self.out(a) + x)


def keras_block(names=True):
    L = keras.layers
    x = keras.Input((T, D))
    named = (lambda n: {"name": n}) if names else (lambda n: {})
    k = L.Dense(D, **named("b_key"))(x)  # created before the query: graph order is not module order
    q = L.Dense(D, **named("b_query"))(x)
    v = L.Dense(D, **named("b_value"))(x)
    scores = keras.ops.softmax(keras.ops.matmul(q, keras.ops.transpose(k, (0, 2, 1))) / D ** 0.5, axis=-1)
    o = L.Dense(D, **named("b_out"))(keras.ops.matmul(scores, v))
    return keras.Model(x, L.Dense(FF, **named("b_ff"))(o + x))


X = np.random.default_rng(8).standard_normal((2, T, D)).astype("float32")


@pytest.mark.parametrize("stored", ["alphabetical", "module order", "live"])
def test_look_alikes_pair_by_name(tmp_path, stored):
    t = Block()
    randomize_torch(t)
    if stored == "alphabetical":  # as safetensors' own save_file writes every file
        save_file({n: p.contiguous() for n, p in t.state_dict().items()}, tmp_path / "b.safetensors")
        source = tmp_path / "b.safetensors"
    elif stored == "module order":
        torch.save(t.state_dict(), tmp_path / "b.pt")
        source = tmp_path / "b.pt"
    else:
        source = t
    k = keras_block()
    report = wp.port(source, k)
    assert {(s.source, s.target) for s in report.steps} >= {("query", "b_query"), ("key", "b_key"), ("out", "b_out")}
    assert wp.verify(t, k, X).ok


def test_alphabetical_look_alikes_without_telling_names_are_refused(tmp_path):
    t = Block()
    save_file({n: p.contiguous() for n, p in t.state_dict().items()}, tmp_path / "b.safetensors")
    k = keras_block(names=False)  # dense, dense_1...: nothing says which is the query
    before = [w.copy() for w in k.get_weights()]
    with pytest.raises(wp.MatchError, match="alphabetical"):
        wp.port(tmp_path / "b.safetensors", k)
    for a, b in zip(before, k.get_weights()):
        np.testing.assert_array_equal(a, b)
    # hints settle it
    names = {layer.name: layer for layer in k.layers}
    order = [n for n in names if n.startswith("dense")]  # key, query, value, out, ff: the order they were made
    wp.port(tmp_path / "b.safetensors", k, hints=dict(zip(["key", "query", "value", "out", "ff"], order)))
    assert wp.verify(t, k, X).ok


class TwoBranches(torch.nn.Module):
    """Two look-alike branches summed: nothing but a hint says which Keras branch is which."""

    def __init__(self):
        super().__init__()
        self.left = torch.nn.Sequential(torch.nn.Linear(D, FF), torch.nn.Tanh(), torch.nn.Linear(FF, D))
        self.right = torch.nn.Sequential(torch.nn.Linear(D, FF), torch.nn.Tanh(), torch.nn.Linear(FF, D))

    def forward(self, x):
        return self.left(x) + 2 * self.right(x)


def keras_branches():
    x = keras.Input((D,))
    branch = {}
    for name in ("east", "west"):
        branch[name] = keras.Sequential([keras.Input((D,)), keras.layers.Dense(FF, activation="tanh"),
                                         keras.layers.Dense(D)], name=name)
    return keras.Model(x, branch["west"](x) + 2 * branch["east"](x))


def test_a_prefix_hint_pairs_whole_blocks():
    t, k = TwoBranches(), keras_branches()
    randomize_torch(t)
    x = np.random.default_rng(9).standard_normal((3, D)).astype("float32")
    with pytest.raises(wp.AmbiguityError):  # parallel branches: the dataflow cannot tell them apart either
        wp.port(t, k)
    report = wp.port(t, k, hints={"left": "west", "right": "east"})  # prefixes: whole branches
    assert {s.source: s.target.split("/")[0] for s in report.steps} == {
        "left.0": "west", "left.2": "west", "right.0": "east", "right.2": "east"}
    assert wp.verify(t, k, x).ok
    with pytest.raises(wp.UsageError, match="nor a prefix"):
        wp.port(t, k, hints={"middle": "west"})


def test_a_keras_layer_is_named_by_its_variables_path_with_or_without_the_models_name():
    t = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.Linear(D, D))
    randomize_torch(t)
    k = keras.Sequential([keras.Input((D,)), keras.layers.Dense(D, name="fc1"), keras.layers.Dense(D, name="fc2")],
                         name="seq")
    assert k.layers[0].weights[0].path == "seq/fc1/kernel"
    report = wp.port(t, k, hints={"0": "seq/fc2", "1": "fc1"})  # deliberately crossed: hints win
    assert {s.source: s.target for s in report.steps} == {"0": "fc2", "1": "fc1"}
    np.testing.assert_array_equal(k.layers[1].get_weights()[0], t[0].weight.detach().numpy().T)


def test_models_are_traced_only_when_a_pair_rests_on_names_or_order(monkeypatch):
    """The README's MLP pairs by its distinct shapes alone: neither model runs (the dataflow check is for pairs
    made by name or position). Negative control: look-alike (D, D) layers paired by name are still traced."""
    from weightport.converter import tracing

    runs = []
    original = tracing.trace
    monkeypatch.setattr(tracing, "trace", lambda *a, **k: runs.append(a[0]) or original(*a, **k))
    mlp = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    randomize_torch(mlp)
    dense = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(3)])
    wp.port(mlp, dense)
    assert runs == []
    np.testing.assert_array_equal(dense.layers[1].kernel.numpy(), mlp[2].weight.detach().numpy().T)
    block = Block()
    randomize_torch(block)
    wp.port(block, keras_block())
    assert runs  # the look-alikes' pairs by name were checked against the traced dataflow
