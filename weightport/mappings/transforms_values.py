"""Transforms that change values, not positions: a factor an op applies that the canonical form folds in.

ONNX's Gemm computes ``alpha * A @ B + beta * C``; a Keras Dense has no
factors, so its kernel is ``alpha * B`` and its bias ``beta * C``. ``Scale``
divides by the factor on the way into the layout and multiplies back; only a
power of two keeps every bit, any other factor rounds (reported
function-preserving, not bitwise).
"""
from __future__ import annotations

import math

import numpy as np

from .transforms_core import Transform, Unary


def _power_of_two(factor: float) -> bool:
    mantissa, _ = math.frexp(abs(factor))
    return mantissa == 0.5


class Scale(Unary):
    """Layout = canonical / ``factor``: the layout's op multiplies its tensor by ``factor`` (Gemm's alpha, beta)."""

    def __init__(self, factor: float):
        factor = float(factor)
        if factor == 0 or not math.isfinite(factor):
            raise ValueError(f"a factor of {factor} cannot be folded into weights (it is not invertible)")
        self.factor = factor
        self.keeps_canonical = self.keeps_layout = _power_of_two(factor)

    def fwd(self, a):
        a = np.asarray(a)
        return (a.astype(np.float64) / self.factor).astype(a.dtype)

    def inv(self, a):
        a = np.asarray(a)
        return (a.astype(np.float64) * self.factor).astype(a.dtype)

    def fwd_shape(self, s):
        return s

    inv_shape = fwd_shape

    def describe(self):
        return f"divide by {self.factor:g}" + ("" if self.exact else " (rounds)")

    def describe_inverse(self):
        return f"multiply by {self.factor:g}" + ("" if self.exact else " (rounds)")


def weight_norm_magnitude(v, axes):
    """``|v|`` over ``axes`` (all of them where None), kept as size-1 axes, in float32 or wider."""
    wide = np.result_type(np.asarray(v).dtype, np.float32)
    v = np.asarray(v).astype(wide)
    return np.sqrt(np.sum(v * v, axis=axes, keepdims=True))


def weight_norm_fold(g, v):
    """``v * (g / |v|)`` as torch's weight_norm computes it (the norm over every axis where ``g`` has size 1), in
    ``v``'s dtype; given ``g = |v|`` computed the same way, ``g / |v|`` is exactly 1 and ``v`` comes back bit for
    bit."""
    g, v = np.asarray(g), np.asarray(v)
    axes = tuple(i for i, size in enumerate(g.shape) if size == 1) if g.ndim else None
    norm = weight_norm_magnitude(v, axes)
    return (v.astype(norm.dtype) * (g.astype(norm.dtype) / norm)).astype(v.dtype)


class WeightNormSplit(Transform):
    """One weight -> torch weight_norm's magnitude ``g`` and direction ``v`` (``v`` = the weight, ``g`` = its norm
    over every axis but ``dim``; ``dim=None``: one norm of it all, a scalar ``g``). Back, ``g * v / |v|``.

    The weight comes back bit for bit (float32 and wider), but a ``g`` and ``v`` read in are not those written
    (any scaling of ``v`` computes the same weight), and torch computes the weight with its own rounding:
    function-preserving, not bitwise.
    """

    n_in, n_out = 1, 2
    keeps_layout = False

    def __init__(self, dim):
        self.dim = None if dim is None else int(dim)

    def _axes(self, ndim: int):
        if self.dim is not None and not 0 <= self.dim < ndim:
            raise ValueError(f"weight_norm dim {self.dim} does not fit a {ndim}-d weight")
        return None if self.dim is None else tuple(i for i in range(ndim) if i != self.dim)

    def forward(self, arrays):
        (w,) = arrays
        w = np.asarray(w)
        g = weight_norm_magnitude(w, self._axes(w.ndim)).astype(w.dtype)
        return (g.reshape(()) if self.dim is None else g), np.array(w, copy=True)

    def inverse(self, arrays):
        return (weight_norm_fold(*arrays),)

    def forward_shapes(self, shapes):
        (s,) = shapes
        axes = self._axes(len(s))
        g = () if axes is None else tuple(1 if i in axes else d for i, d in enumerate(s))
        return g, tuple(s)

    def inverse_shapes(self, shapes):
        return (tuple(shapes[1]),)

    def describe(self):
        return f"weight_norm split (g=|W| over all axes but {self.dim}, v=W)" if self.dim is not None else \
            "weight_norm split (g=|W|, v=W)"

    def describe_inverse(self):
        return "weight_norm fold g*v/|v|"
