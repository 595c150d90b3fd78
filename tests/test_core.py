"""The package itself: no framework on import, transforms invert, the rule registry."""
import subprocess
import sys

import numpy as np
import pytest

import weightport as wp
from weightport.mappings import transforms as T


@pytest.mark.keras_free
def test_import_pulls_no_framework():
    code = ("import sys, weightport; bad = [m for m in ('torch', 'keras', 'jax', 'flax', 'tensorflow') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("t, shapes", [
    (T.Transpose(3, 2, 0, 1), [(3, 2, 7, 5)]),
    (T.Reshape((3, 2, 7, 5), (6, 35)), [(3, 2, 7, 5)]),
    (T.ReorderBlocks(1, (1, 0, 2, 3)), [(7, 20)]),
    (T.Split(0, (3, 4)), [(7, 5)]),
    (T.Concat(1, (2, 3)), [(7, 2), (7, 3)]),
    (T.Unstack(2), [(2, 9)]),
    (T.Chain(T.Reshape((6, 35), (6, 5, 7)), T.Transpose(2, 0, 1)), [(6, 35)]),
    (T.Chain(T.Split(0, (3, 4)), T.Each(2, T.Transpose(1, 0))), [(7, 5)]),
])
@pytest.mark.keras_free
def test_transforms_invert_and_predict_shapes(t, shapes):
    rng = np.random.default_rng(0)
    arrays = tuple(rng.standard_normal(s).astype("float32") for s in shapes)
    out = t.forward(arrays)
    assert [a.shape for a in out] == [tuple(s) for s in t.forward_shapes(tuple(shapes))]
    back = t.inverse(out)
    assert [tuple(s) for s in t.inverse_shapes(tuple(a.shape for a in out))] == [tuple(s) for s in shapes]
    for a, b in zip(arrays, back):
        assert np.array_equal(a, b)
    assert t.exact


@pytest.mark.keras_free
def test_transpose_kernel_matches_numpy_on_large_arrays():
    a = np.arange(1500 * 1100, dtype=np.float32).reshape(1500, 1100)
    assert np.array_equal(T.transpose_copy(a, (1, 0)), a.T)
    assert T.transpose_copy(a, (1, 0)).flags.c_contiguous


@pytest.mark.keras_free
def test_lossy_transforms_say_so():
    b = np.arange(6, dtype=np.float32)
    s = T.SumSplit(2)
    bih, bhh = s.forward((b,))
    assert np.array_equal(bih, b) and not bhh.any()
    assert np.array_equal(s.inverse((b, b))[0], 2 * b)
    assert not s.exact and not T.Chain(T.Identity(), s).exact
    assert not T.Constant(0).exact


@pytest.mark.keras_free
def test_reorder_blocks_moves_blocks():
    a = np.repeat(np.arange(4), 3)[None, :]  # blocks 0,1,2,3 of width 3
    out = T.ReorderBlocks(1, (2, 0, 3, 1)).fwd(a)
    assert list(out[0, ::3]) == [2, 0, 3, 1]


@pytest.mark.keras_free
def test_registry_lists_rules_and_accepts_plugins():
    import weightport as wp
    from weightport.mappings.rule import registry

    assert "dense" in {r.name for r in registry}

    @wp.register
    class Doubling(wp.Rule):
        name = "test-doubling"
        classes = {"keras": ("NoSuchLayer",), "torch": ("NoSuchModule",)}

        def canonical(self, hp):
            return ["w"]

        def links_torch(self, hp):
            return [wp.link("w", "weight", T.Transpose(1, 0))]

    assert registry.get("test-doubling").native_slots("torch", {}) == ["weight"]


def test_ported_weights_never_share_the_sources_memory():
    """Changing the source after a port leaves the target as ported (jax may adopt numpy buffers as they are)."""
    torch = pytest.importorskip("torch")
    keras = pytest.importorskip("keras")
    t = torch.nn.Sequential(torch.nn.LayerNorm(7), torch.nn.Linear(7, 5))  # LayerNorm: a plain copy, no transform
    k = keras.Sequential([keras.Input((7,)), keras.layers.LayerNormalization(epsilon=1e-5), keras.layers.Dense(5)])
    wp.port(t, k)
    ported = [w.copy() for w in k.get_weights()]
    with torch.no_grad():
        for p in t.parameters():
            p.add_(1.0)
    for a, b in zip(ported, k.get_weights()):
        np.testing.assert_array_equal(a, b)
