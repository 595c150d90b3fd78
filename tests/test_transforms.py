"""Every transform class inverts: forward then inverse gives back every bit, or the class says it cannot.

The classes are enumerated from the package, so a new transform without a case here fails
``test_every_transform_class_has_a_case``. Sizes are distinct and non-square: a transposition or a wrong
block order cannot hide in them.
"""
import importlib
import pkgutil

import numpy as np
import pytest

import weightport.mappings
from weightport.errors import ConfigMismatchError, UnsupportedLayerError
from weightport.mappings import transforms as T

pytestmark = pytest.mark.keras_free  # never imports Keras: runs under one backend (conftest.py)

REFUSAL = "non-zero bias: nowhere to put it"


def transform_classes() -> set:
    """Every Transform subclass defined in weightport.mappings (its modules imported first)."""
    for info in pkgutil.iter_modules(weightport.mappings.__path__):
        importlib.import_module(f"weightport.mappings.{info.name}")
    found, todo = set(), [T.Transform]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("weightport.mappings"):
                found.add(sub)
    return found


ABSTRACT = {T.Unary}  # bases with no forward of their own


def zero_candidate(arrays):
    """A GRU (2, 3u) bias whose recurrent candidate part is zero: the only kind NNX's GRUCell can hold."""
    b = arrays[0].copy()
    b[1, 2 * b.shape[1] // 3:] = 0
    return (b,)


def zero_bias(arrays):
    return (arrays[0], np.zeros_like(arrays[1]))


# (transform, canonical shapes, canonical domain (or None), layout domain (or None))
def case_id(x) -> str:
    """A case's id: a function by its name (its repr holds an address, which differs between processes)."""
    return x.__name__ if callable(x) and hasattr(x, "__name__") else repr(x)[:40]


CASES = [
    (T.Identity(), [(3, 5)], None, None),
    (T.Transpose(2, 0, 1), [(3, 5, 7)], None, None),
    (T.Reshape((3, 5, 7), (15, 7)), [(3, 5, 7)], None, None),
    (T.Reshape((-1, 3), (-1,)), [(5, 3)], None, None),
    (T.ReorderBlocks(1, (2, 0, 1)), [(5, 21)], None, None),
    (T.PermuteWithin((0, 3, 1, 4, 2, 5, 6)), [(5, 21)], None, None),
    (T.WeightNormSplit(1), [(5, 3, 7)], None, None),
    (T.WeightNormSplit(None), [(5, 3, 7)], None, None),
    (T.Flip(0, 2), [(3, 5, 7)], None, None),
    (T.ReservedRows(2), [(5, 3)], None, None),
    (T.Split(1, (2, 5)), [(3, 7)], None, None),
    (T.Concat(0, (2, 5)), [(2, 3), (5, 3)], None, None),
    (T.Unstack(3), [(3, 5, 7)], None, None),
    (T.SumSplit(2), [(7,)], None, None),
    (T.Stack(2), [(3, 5), (3, 5)], None, None),
    (T.Scale(0.25), [(3, 5)], None, None),
    (T.Scale(0.3), [(3, 5)], None, None),
    (T.Constant(0, "int64"), [], None, None),
    (T.ZeroBias(REFUSAL, axes=1), [(5, 1, 3)], None, zero_bias),
    (T.ZeroBias(REFUSAL), [(7,)], None, zero_bias),
    (T.FoldRecurrentBias(5, keep_candidate=True), [(2, 15)], None, None),
    (T.FoldRecurrentBias(5, keep_candidate=False), [(2, 15)], zero_candidate, None),
    (T.PackGates((1, 0, 2)), [(5,), (5,), (5,), (3,)], None, None),
    (T.Each(2, T.Transpose(1, 0)), [(3, 5), (7, 2)], None, None),
    (T.Each(3, T.PermuteWithin((1, 0)), only=(0, 2)), [(3, 4), (7, 2), (5, 6)], None, None),
    (T.Chain(T.Reshape((3, 35), (3, 5, 7)), T.Transpose(2, 0, 1)), [(3, 35)], None, None),
    (T.Chain(T.Split(0, (3, 4)), T.Each(2, T.Transpose(1, 0))), [(7, 5)], None, None),
]


def draw(rng, shapes, domain=None):
    arrays = tuple(rng.standard_normal(s).astype(np.float32) for s in shapes)
    return domain(arrays) if domain else arrays


def same(a, b) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and x.shape == y.shape
                                    and np.array_equal(x.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8)) for x, y in zip(a, b))


def test_every_transform_class_has_a_case():
    covered = {type(t) for t, *_ in CASES}
    missing = sorted(c.__qualname__ for c in transform_classes() - covered - ABSTRACT)
    assert not missing, f"transform classes without a case in tests/test_transforms.py: {missing}"


@pytest.mark.parametrize("t, shapes, canonical_domain, layout_domain", CASES, ids=case_id)
def test_transform_inverts(t, shapes, canonical_domain, layout_domain):
    rng = np.random.default_rng(len(repr(t)))
    x = draw(rng, shapes, canonical_domain)
    y = t.forward(x)
    assert len(x) == t.n_in and len(y) == t.n_out
    assert [a.shape for a in y] == [tuple(s) for s in t.forward_shapes(tuple(shapes))]
    assert [tuple(s) for s in t.inverse_shapes(tuple(a.shape for a in y))] == [tuple(s) for s in shapes]
    back = t.inverse(y)
    if t.keeps_canonical:
        assert same(back, x), "canonical -> layout -> canonical changed a bit"
    else:  # declared lossy that way: the canonical form it gives back is one the layout holds exactly
        assert not same(back, x), "declared keeps_canonical=False, but gave back every bit"
        assert same(t.forward(back), y)
    # layout -> canonical -> layout, from layout arrays drawn on their own
    z = draw(rng, [a.shape for a in y], layout_domain)
    again = t.forward(t.inverse(z))
    if t.keeps_layout:
        assert same(again, z), "layout -> canonical -> layout changed a bit"
    else:
        assert not same(again, z), "declared keeps_layout=False, but gave back every bit"
    assert t.exact == (t.keeps_canonical and t.keeps_layout)


@pytest.mark.parametrize("t, shapes, canonical_domain, layout_domain", [c for c in CASES if not isinstance(
    c[0], (T.Identity, T.Constant))], ids=case_id)
def test_transform_moves_something(t, shapes, canonical_domain, layout_domain):
    """Negative control: each case's forward is not a plain copy of its inputs (else it tests nothing)."""
    rng = np.random.default_rng(1)
    x = draw(rng, shapes, canonical_domain)
    assert not same(t.forward(x), x)


def test_zero_bias_refuses_a_non_zero_bias_with_its_own_message():
    t = T.ZeroBias(REFUSAL, axes=1)
    w = np.ones((5, 1, 3), np.float32)
    with pytest.raises(ConfigMismatchError, match=REFUSAL):
        t.inverse((w, np.full((5,), 0.5, np.float32)))


def test_fold_without_candidate_refuses_a_non_zero_candidate_bias():
    b = np.zeros((2, 15), np.float32)
    b[1, 12] = 1.0
    with pytest.raises(UnsupportedLayerError, match="candidate"):
        T.FoldRecurrentBias(5, keep_candidate=False).forward((b,))
