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

from .transforms_core import Unary


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
