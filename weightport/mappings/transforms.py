"""Invertible tensor transforms, the vocabulary every rule is written in: one import for all of them.

A transform maps a tuple of arrays in the canonical (Keras) form to a tuple of
arrays in some framework's layout (``forward``), and back (``inverse``). Each
primitive knows its inverse and how it changes shapes, so a rule declares one
direction and gets the other for free, and shapes can be checked before any
byte is read. A transform that drops information says which round trip it
breaks (``keeps_canonical``, ``keeps_layout``); ``exact`` is both.

Each class lives in the sibling module of its kind (``transforms_core``: the
base class and composition; ``transforms_axes``: one array, axes moved;
``transforms_slots``: arrays split, joined, summed or added;
``transforms_recurrent``: recurrent biases; ``transforms_values``: factors
folded into weights); this module gathers them.
"""
from .fast_transpose import fill_transposed, transpose_copy, transposed_rows
from .transforms_axes import Flip, PermuteWithin, ReorderBlocks, ReservedRows, Reshape, Shape, Transpose
from .transforms_core import IDENTITY, Chain, Each, Identity, Transform, Unary
from .transforms_recurrent import FoldRecurrentBias, PackGates
from .transforms_slots import Concat, Constant, Split, Stack, SumSplit, Unstack, ZeroBias
from .transforms_values import Scale, WeightNormSplit, weight_norm_fold

__all__ = [
    "IDENTITY", "Chain", "Concat", "Constant", "Each", "Flip", "FoldRecurrentBias", "Identity", "PackGates",
    "PermuteWithin", "ReorderBlocks", "ReservedRows", "Reshape", "Scale", "Shape", "Split", "Stack", "SumSplit",
    "Transform", "Transpose", "Unary", "Unstack", "WeightNormSplit", "ZeroBias", "fill_transposed", "transpose_copy",
    "transposed_rows", "weight_norm_fold",
]
