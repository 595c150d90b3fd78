"""Transforms that change how many arrays there are: split, concatenate, unstack, sum, constants, zero biases.

``SumSplit`` and ``Constant`` drop information on the way into the canonical
form (a bias split, a counter Keras does not keep): canonical -> layout ->
canonical is still bitwise, layout -> canonical -> layout only
function-preserving.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import ConfigMismatchError
from .transforms_core import Transform

Shape = tuple


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


class Stack(Transform):
    """``n`` arrays of one shape stacked on a new leading axis (inverse: taken apart): ONNX's per-direction axis."""

    n_out = 1

    def __init__(self, n: int):
        self._unstack = Unstack(n)
        self.n_in = n

    def forward(self, arrays):
        return self._unstack.inverse(arrays)

    def inverse(self, arrays):
        return self._unstack.forward(arrays)

    def forward_shapes(self, shapes):
        if len({tuple(s) for s in shapes}) != 1:
            raise ValueError(f"stacked arrays must have one shape, got {[tuple(s) for s in shapes]}")
        return self._unstack.inverse_shapes(shapes)

    def inverse_shapes(self, shapes):
        if shapes[0][0] != self.n_in:
            raise ValueError(f"expected a leading axis of {self.n_in}, got shape {tuple(shapes[0])}")
        return self._unstack.forward_shapes(shapes)

    def describe(self):
        return self._unstack.describe_inverse()

    def describe_inverse(self):
        return self._unstack.describe()


class SumSplit(Transform):
    """One array becomes ``n`` whose sum it is: itself, then zeros. Inverse: the sum.

    Lossy: a layout that keeps two biases (torch RNNs) comes back with the sum
    in the first and zeros in the rest; the function is unchanged.
    """

    n_in = 1
    keeps_layout = False

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
    keeps_layout = False

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


class ZeroBias(Transform):
    """A layout-only bias the canonical form has no slot for (a depthwise conv's, an Equinox RMSNorm's).

    Written as zeros on export; on import it must be all zeros, else the
    conversion is refused with ``refusal`` (dropping it would change the
    function). The bias covers the weight's first ``axes`` axes (None: all).
    """

    n_in, n_out = 1, 2

    def __init__(self, refusal: str, axes: int | None = None, what: str = "bias"):
        self.refusal, self.axes, self.what = refusal, axes, what

    def _bias_shape(self, shape) -> tuple:
        return tuple(shape) if self.axes is None else tuple(shape)[:self.axes]

    def forward(self, arrays):
        (w,) = arrays
        return w, np.zeros(self._bias_shape(w.shape), dtype=w.dtype)

    def inverse(self, arrays):
        w, b = arrays
        if np.any(b != 0):
            raise ConfigMismatchError(self.refusal)
        return (w,)

    def forward_shapes(self, shapes):
        (s,) = shapes
        return tuple(s), self._bias_shape(s)

    def inverse_shapes(self, shapes):
        return (tuple(shapes[0]),)

    def describe(self):
        return f"+ zero {self.what}"
