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
