"""One array in, one array out, only its axes moved: transpose, reshape, reorder blocks, flip."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .fast_transpose import transpose_copy
from .transforms_core import Unary

Shape = tuple


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


class PermuteWithin(Unary):
    """Cut the last axis into blocks of ``len(order)``; entry k of every block is its entry ``order[k]``.

    One permutation repeated per block: the output rows of each attention head reordered alike (rotary
    embeddings' interleaved vs rotate-half pairs). ``texts`` says it in a report's words, both ways round.
    """

    def __init__(self, order: Sequence[int], texts: tuple = ()):
        self.order = tuple(int(i) for i in order)
        self.back = tuple(int(i) for i in np.argsort(self.order))
        if sorted(self.order) != list(range(len(self.order))):
            raise ValueError(f"{self.order} is not a permutation of 0..{len(self.order) - 1}")
        self.texts = tuple(texts) or (f"permute{self.order} per block", f"permute{self.back} per block")

    def _apply(self, a, order):
        a = np.asarray(a)
        self.fwd_shape(a.shape)
        blocks = a.reshape(a.shape[:-1] + (a.shape[-1] // len(order), len(order)))
        return np.ascontiguousarray(blocks[..., list(order)]).reshape(a.shape)

    def fwd(self, a):
        return self._apply(a, self.order)

    def inv(self, a):
        return self._apply(a, self.back)

    def fwd_shape(self, s):
        if not s or s[-1] % len(self.order):
            raise ValueError(f"a last axis of {s[-1] if s else 'none'} is not a whole number of blocks of "
                             f"{len(self.order)}")
        return tuple(s)

    inv_shape = fwd_shape

    def describe(self):
        return self.texts[0]

    def describe_inverse(self):
        return self.texts[1]


class Flip(Unary):
    """Reverse the given axes (its own inverse): a kernel applied as a correlation vs as a transposed conv."""

    def __init__(self, *axes: int):
        self.axes = tuple(axes)

    def fwd(self, a):
        return np.ascontiguousarray(np.flip(a, self.axes))

    inv = fwd

    def fwd_shape(self, s):
        return s

    inv_shape = fwd_shape

    def describe(self):
        return "flip" + str(self.axes).replace(" ", "")

    describe_inverse = describe


class ReservedRows(Unary):
    """Rows before the first one used, on the layout's side: HF's BART and OPT look position ``i`` up at row
    ``i + offset``. Written as zeros; read, they are dropped (so a layout's own values there are lost)."""

    keeps_layout = False

    def __init__(self, count: int):
        self.count = int(count)

    def fwd(self, a):
        return np.concatenate([np.zeros((self.count,) + a.shape[1:], a.dtype), a])

    def inv(self, a):
        return np.ascontiguousarray(a[self.count:])

    def fwd_shape(self, s):
        return (s[0] + self.count,) + tuple(s[1:])

    def inv_shape(self, s):
        if s[0] < self.count:
            raise ValueError(f"{s[0]} rows, fewer than the {self.count} reserved")
        return (s[0] - self.count,) + tuple(s[1:])

    def describe(self):
        return f"{self.count} reserved rows first"

    def describe_inverse(self):
        return f"drop the {self.count} reserved rows"

