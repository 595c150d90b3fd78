"""Invertible tensor transforms, the vocabulary every rule is written in.

A transform maps a tuple of arrays in the canonical (Keras) form to a tuple of
arrays in some framework's layout (``forward``), and back (``inverse``). Each
primitive knows its inverse and how it changes shapes, so a rule declares one
direction and gets the other for free, and shapes can be checked before any
byte is read. A transform that drops information (a bias sum, a counter that
Keras does not keep) sets ``exact = False``: canonical -> layout -> canonical
is still bitwise, but layout -> canonical -> layout is only function-preserving.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

Shape = tuple


def transpose_copy(a: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """A C-contiguous transpose of ``a``.

    Large 2-D transposes go through ``transposed_rows``; numpy's own strided
    copy of ``a.T`` thrashes the cache on large matrices (~0.5 GB/s here).
    """
    axes = tuple(axes)
    if axes == tuple(range(a.ndim)):
        return a
    if a.ndim == 2 and a.size >= (1 << 18):
        out = np.empty((a.shape[1], a.shape[0]), dtype=a.dtype)
        for _ in transposed_rows(a, out=out):
            pass
        return out
    return np.ascontiguousarray(a.transpose(axes))


def transposed_rows(a: np.ndarray, rows: int = 256, out: np.ndarray | None = None):
    """``a.T`` in consecutive blocks of ``rows`` rows, each C-contiguous (filled into ``out`` if given).

    Without ``out``, one buffer is reused for every block (fresh memory for
    each would cost a page fault per 4 KiB): a block is valid until the next
    one is asked for.
    """
    a = np.asarray(a)  # a plain view: slicing a memmap subclass costs more than the copy on small strips
    n_in, n_out = a.shape
    buffer = np.empty((min(rows, n_out), n_in), dtype=a.dtype) if out is None else None
    for j in range(0, n_out, rows):
        block = out[j:j + rows] if out is not None else buffer[:min(rows, n_out - j)]
        yield fill_transposed(a, j, block)


def fill_transposed(a: np.ndarray, first: int, block: np.ndarray) -> np.ndarray:
    """Fill ``block`` with rows ``first...`` of ``a.T``, 16 source rows at a time.

    Every write then lands in one cache line per output row and every read is
    a contiguous run: several times numpy's plain strided copy on large
    matrices.
    """
    last = first + len(block)
    for i in range(0, a.shape[0], 16):
        block[:, i:i + 16] = a[i:i + 16, first:last].T
    return block


class Transform:
    """Base class: ``n_in`` canonical arrays <-> ``n_out`` layout arrays."""

    n_in = 1
    n_out = 1
    exact = True

    def forward(self, arrays: tuple) -> tuple:
        raise NotImplementedError

    def inverse(self, arrays: tuple) -> tuple:
        raise NotImplementedError

    def forward_shapes(self, shapes: tuple) -> tuple:
        raise NotImplementedError

    def inverse_shapes(self, shapes: tuple) -> tuple:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__.lower()

    def describe_inverse(self) -> str:
        """How ``inverse`` moves the arrays, for reports of ports into the canonical side."""
        return f"undo {self.describe()}"

    def __rshift__(self, other: "Transform") -> "Chain":
        return Chain(self, other)

    def __repr__(self) -> str:
        return self.describe()


class Unary(Transform):
    """A one-array transform: subclasses define the four single-array methods."""

    def forward(self, arrays):
        return (self.fwd(arrays[0]),)

    def inverse(self, arrays):
        return (self.inv(arrays[0]),)

    def forward_shapes(self, shapes):
        return (self.fwd_shape(tuple(shapes[0])),)

    def inverse_shapes(self, shapes):
        return (self.inv_shape(tuple(shapes[0])),)


class Identity(Unary):
    def fwd(self, a):
        return a

    inv = fwd

    def fwd_shape(self, s):
        return s

    inv_shape = fwd_shape

    def describe(self):
        return "copy"

    describe_inverse = describe


class Transpose(Unary):
    """Permute axes; output axis i is input axis ``axes[i]``."""

    def __init__(self, *axes: int):
        self.axes = tuple(axes[0]) if len(axes) == 1 and not isinstance(axes[0], int) else tuple(axes)
        self.back = tuple(int(i) for i in np.argsort(self.axes))

    def fwd(self, a):
        self._check(a.ndim)
        return transpose_copy(a, self.axes)

    def inv(self, a):
        self._check(a.ndim)
        return transpose_copy(a, self.back)

    def fwd_shape(self, s):
        self._check(len(s))
        return tuple(s[i] for i in self.axes)

    def inv_shape(self, s):
        self._check(len(s))
        return tuple(s[i] for i in self.back)

    def _check(self, ndim):
        if ndim != len(self.axes):
            raise ValueError(f"transpose{self.axes} needs a {len(self.axes)}-d array, got {ndim}-d")

    def describe(self):
        return "transpose" + str(self.axes).replace(" ", "")

    def describe_inverse(self):
        return "transpose" + str(self.back).replace(" ", "")


class Reshape(Unary):
    """Reshape between two fixed shapes (each may hold one -1)."""

    def __init__(self, src: Shape, dst: Shape):
        self.src, self.dst = tuple(src), tuple(dst)

    def fwd(self, a):
        return np.ascontiguousarray(a).reshape(self.dst)

    def inv(self, a):
        return np.ascontiguousarray(a).reshape(self.src)

    @staticmethod
    def _resolve(shape, like):
        size = int(np.prod(like))
        known = int(np.prod([d for d in shape if d != -1]))
        fits = size % known == 0 if -1 in shape else size == known
        if not fits:  # caught early, so a shape that cannot be reshaped is a mismatch, not a crash later
            raise ValueError(f"cannot reshape {tuple(like)} ({size} values) to {tuple(shape)}")
        return tuple(size // known if d == -1 else d for d in shape)

    def fwd_shape(self, s):
        self._expect(self.src, s)
        return self._resolve(self.dst, s)

    def inv_shape(self, s):
        self._expect(self.dst, s)
        return self._resolve(self.src, s)

    def _expect(self, shape, s):
        """An array must have the shape this side declares: (out, in) where (in, out) was due is an error,
        though the sizes would let it through."""
        if len(shape) != len(s) or any(d != -1 and d != int(x) for d, x in zip(shape, s)):
            raise ValueError(f"reshape expects {tuple(shape)}, got {tuple(s)}")

    def describe(self):
        return f"reshape{self.dst}".replace(" ", "")

    def describe_inverse(self):
        return f"reshape{self.src}".replace(" ", "")


class ReorderBlocks(Unary):
    """Cut ``axis`` into ``len(order)`` equal blocks; output block k is input block ``order[k]``.

    This is how gate orders are translated (LSTM i,f,c,o; GRU z,r,h vs r,z,n).
    """

    def __init__(self, axis: int, order: Sequence[int]):
        self.axis, self.order = axis, tuple(order)
        self.back = tuple(int(i) for i in np.argsort(self.order))

    def _apply(self, a, order):
        blocks = np.split(a, len(order), axis=self.axis)
        return np.concatenate([blocks[i] for i in order], axis=self.axis)

    def fwd(self, a):
        return self._apply(a, self.order)

    def inv(self, a):
        return self._apply(a, self.back)

    def fwd_shape(self, s):
        return s

    inv_shape = fwd_shape

    def describe(self):
        return f"reorder{self.order}@{self.axis}".replace(" ", "")

    def describe_inverse(self):
        return f"reorder{self.back}@{self.axis}".replace(" ", "")


class Split(Transform):
    """One array cut along ``axis`` into pieces of ``sizes`` (inverse: concatenate)."""

    n_in = 1

    def __init__(self, axis: int, sizes: Sequence[int]):
        self.axis, self.sizes = axis, tuple(sizes)
        self.n_out = len(self.sizes)

    def forward(self, arrays):
        return tuple(np.split(arrays[0], np.cumsum(self.sizes)[:-1], axis=self.axis))

    def inverse(self, arrays):
        return (np.concatenate(arrays, axis=self.axis),)

    def forward_shapes(self, shapes):
        s = list(shapes[0])
        return tuple(tuple(s[:self.axis % len(s)] + [n] + s[self.axis % len(s) + 1:]) for n in self.sizes)

    def inverse_shapes(self, shapes):
        s = list(shapes[0])
        ax = self.axis % len(s)
        s[ax] = sum(sh[ax] for sh in shapes)
        return (tuple(s),)

    def describe(self):
        return f"split{self.sizes}@{self.axis}".replace(" ", "")

    def describe_inverse(self):
        return f"concat@{self.axis}"


class Concat(Transform):
    """Several arrays joined along ``axis`` (inverse: split at their sizes)."""

    n_out = 1

    def __init__(self, axis: int, sizes: Sequence[int]):
        self._split = Split(axis, sizes)
        self.n_in = len(sizes)

    def forward(self, arrays):
        return self._split.inverse(arrays)

    def inverse(self, arrays):
        return self._split.forward(arrays)

    def forward_shapes(self, shapes):
        return self._split.inverse_shapes(shapes)

    def inverse_shapes(self, shapes):
        return self._split.forward_shapes(shapes)

    def describe(self):
        return f"concat@{self._split.axis}"

    def describe_inverse(self):
        return self._split.describe()


class Unstack(Transform):
    """One array's leading axis taken apart into ``n`` arrays (inverse: stack)."""

    n_in = 1

    def __init__(self, n: int):
        self.n_out = n

    def forward(self, arrays):
        a = arrays[0]
        if a.shape[0] != self.n_out:
            raise ValueError(f"unstack needs a leading axis of {self.n_out}, got shape {a.shape}")
        return tuple(np.ascontiguousarray(a[i]) for i in range(self.n_out))

    def inverse(self, arrays):
        return (np.stack(arrays, axis=0),)

    def forward_shapes(self, shapes):
        return tuple(tuple(shapes[0][1:]) for _ in range(self.n_out))

    def inverse_shapes(self, shapes):
        return ((len(shapes),) + tuple(shapes[0]),)

    def describe(self):
        return f"unstack{self.n_out}"

    def describe_inverse(self):
        return f"stack{self.n_out}"


class SumSplit(Transform):
    """One array becomes ``n`` whose sum it is: itself, then zeros. Inverse: the sum.

    Lossy: a layout that keeps two biases (torch RNNs) comes back with the sum
    in the first and zeros in the rest; the function is unchanged.
    """

    n_in = 1
    exact = False

    def __init__(self, n: int = 2):
        self.n_out = n

    def forward(self, arrays):
        a = arrays[0]
        return (a,) + tuple(np.zeros_like(a) for _ in range(self.n_out - 1))

    def inverse(self, arrays):
        total = arrays[0].astype(np.float64) if arrays[0].dtype.kind == "f" else arrays[0]
        for a in arrays[1:]:
            total = total + a
        return (total.astype(arrays[0].dtype),)

    def forward_shapes(self, shapes):
        return tuple(tuple(shapes[0]) for _ in range(self.n_out))

    def inverse_shapes(self, shapes):
        return (tuple(shapes[0]),)

    def describe(self):
        return f"sum-split{self.n_out} (lossy)"

    def describe_inverse(self):
        return f"sum of {self.n_out} (the split is not kept)"


class Constant(Transform):
    """A layout-only tensor Keras does not keep (e.g. ``num_batches_tracked``).

    Written as ``value`` on export, dropped on import; lossy for that reason.
    """

    n_in = 0
    n_out = 1
    exact = False

    def __init__(self, value, dtype="int64", shape: Shape = ()):
        self.value, self.dtype, self.shape = value, dtype, tuple(shape)

    def forward(self, arrays):
        return (np.full(self.shape, self.value, dtype=self.dtype),)

    def inverse(self, arrays):
        return ()

    def forward_shapes(self, shapes):
        return (self.shape,)

    def inverse_shapes(self, shapes):
        return ()

    def describe(self):
        return f"written as {self.value} (the canonical form keeps no such tensor)"

    def describe_inverse(self):
        return "dropped (the canonical form keeps no such tensor)"


class Each(Transform):
    """Apply one unary transform to each of ``n`` arrays."""

    def __init__(self, n: int, t: Unary):
        self.n_in = self.n_out = n
        self.t = t
        self.exact = t.exact

    def forward(self, arrays):
        return tuple(self.t.forward((a,))[0] for a in arrays)

    def inverse(self, arrays):
        return tuple(self.t.inverse((a,))[0] for a in arrays)

    def forward_shapes(self, shapes):
        return tuple(self.t.forward_shapes((s,))[0] for s in shapes)

    def inverse_shapes(self, shapes):
        return tuple(self.t.inverse_shapes((s,))[0] for s in shapes)

    def describe(self):
        return f"each({self.t.describe()})"

    def describe_inverse(self):
        return f"each({self.t.describe_inverse()})"


class Chain(Transform):
    """Transforms applied in order (forward); inverted in reverse order."""

    def __init__(self, *parts: Transform):
        flat = []
        for p in parts:
            flat.extend(p.parts if isinstance(p, Chain) else [p])
        for a, b in zip(flat, flat[1:]):
            if a.n_out != b.n_in:
                raise ValueError(f"cannot chain {a.describe()} ({a.n_out} out) into {b.describe()} ({b.n_in} in)")
        self.parts = tuple(flat)
        self.n_in, self.n_out = flat[0].n_in, flat[-1].n_out
        self.exact = all(p.exact for p in flat)

    def forward(self, arrays):
        for p in self.parts:
            arrays = p.forward(arrays)
        return arrays

    def inverse(self, arrays):
        for p in reversed(self.parts):
            arrays = p.inverse(arrays)
        return arrays

    def forward_shapes(self, shapes):
        for p in self.parts:
            shapes = p.forward_shapes(shapes)
        return shapes

    def inverse_shapes(self, shapes):
        for p in reversed(self.parts):
            shapes = p.inverse_shapes(shapes)
        return shapes

    def fwd_shape(self, s):
        return self.forward_shapes((s,))[0]

    def inv_shape(self, s):
        return self.inverse_shapes((s,))[0]

    def describe(self):
        return " > ".join(p.describe() for p in self.parts)

    def describe_inverse(self):
        return " > ".join(p.describe_inverse() for p in reversed(self.parts))


IDENTITY = Identity()
