"""Transforms of recurrent layers' biases: a GRU's recurrent biases folded into the input ones, gates packed."""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedLayerError
from .transforms_core import Transform


class FoldRecurrentBias(Transform):
    """Keras GRU (2, 3u) bias [input z, r, h; recurrent z, r, h] <-> Flax's input-side biases.

    The recurrent z and r biases are added to the input ones (they meet in
    the same sum before the sigmoid). With ``keep_candidate`` the recurrent h
    bias is kept (Linen's ``hn`` bias): out are z, r, h input biases and it.
    Without (NNX GRUCell), one (3u,) input bias comes out, and a non-zero
    recurrent h bias is refused, since no Flax weight can hold it. Back, the
    recurrent z and r biases are zeros: lossy in the canonical -> Flax direction.
    """

    n_in = 1
    keeps_canonical = False  # the recurrent z and r biases come back folded into the input ones

    def __init__(self, units: int, keep_candidate: bool):
        self.units, self.keep_candidate = units, keep_candidate
        self.n_out = 4 if keep_candidate else 1

    def forward(self, arrays):
        b = arrays[0]
        u = b.shape[-1] // 3
        folded = b[0].astype(np.float64)
        folded[:2 * u] += b[1, :2 * u]
        folded = folded.astype(b.dtype)
        candidate = np.ascontiguousarray(b[1, 2 * u:])
        if self.keep_candidate:
            return folded[:u], folded[u:2 * u], folded[2 * u:], candidate
        if np.any(candidate != 0):
            raise UnsupportedLayerError(
                f"this GRU's recurrent bias of the candidate gate (bias[1, {2 * u}:{3 * u}] in Keras, b_hn in "
                f"torch) is not zero (largest magnitude {float(np.max(np.abs(candidate.astype(np.float64)))):g}), "
                "but flax.nnx.GRUCell keeps no such bias: it computes n = tanh(x W_in + b_in + r * (h W_hn)), "
                "so no weights reproduce this layer. Nothing was changed; port into a flax.linen.GRUCell "
                "(which keeps it as hn/bias) or a Keras/torch GRU instead")
        return (folded,)

    def inverse(self, arrays):
        if self.keep_candidate:
            z, r, h, candidate = arrays
            inputs, recurrent = np.concatenate([z, r, h]), np.concatenate([np.zeros_like(z), np.zeros_like(r),
                                                                           candidate])
        else:
            inputs = arrays[0]
            recurrent = np.zeros_like(inputs)
        return (np.stack([inputs, recurrent]),)

    def forward_shapes(self, shapes):
        (two, width), = [tuple(s) for s in shapes]
        if two != 2 or width % 3:
            raise ValueError(f"a GRU bias with reset_after=True is (2, 3*units), got {(two, width)}")
        return ((width // 3,),) * 4 if self.keep_candidate else ((width,),)

    def inverse_shapes(self, shapes):
        width = sum(s[0] for s in shapes[:3]) if self.keep_candidate else shapes[0][0]
        return ((2, width),)

    def describe(self):
        kept = " and hn" if self.keep_candidate else ""
        return f"fold recurrent z,r biases into the input ones{kept} (lossy)"


class PackGates(Transform):
    """(z, r, h, candidate) gate biases -> (one bias with the blocks in ``order``, candidate): Equinox's GRU bias."""

    n_in, n_out = 4, 2

    def __init__(self, order):
        self.order = tuple(order)

    def forward(self, arrays):
        *gates, candidate = arrays
        return np.concatenate([gates[k] for k in self.order]), candidate

    def inverse(self, arrays):
        packed, candidate = arrays
        blocks = np.split(packed, len(self.order))
        gates = [None] * len(self.order)
        for block, k in zip(blocks, self.order):
            gates[k] = np.ascontiguousarray(block)
        return (*gates, candidate)

    def forward_shapes(self, shapes):
        return (sum(s[0] for s in shapes[:-1]),), tuple(shapes[-1])

    def inverse_shapes(self, shapes):
        width = shapes[0][0] // len(self.order)
        return ((width,),) * len(self.order) + (tuple(shapes[1]),)

    def describe(self):
        return "pack gate biases " + str(self.order).replace(" ", "")
