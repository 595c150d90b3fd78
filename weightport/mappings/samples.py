"""Sample hyperparameters and weights, for the test that round-trips every registered rule in every layout.

Sizes are drawn distinct and above 1, so a transposition or a wrong reshape
changes a shape or a value instead of hiding in a square or size-1 axis.
"""
from __future__ import annotations

import numpy as np

POOL = (2, 3, 5, 7, 11, 13)


def sizes(rng, n: int) -> list:
    """``n`` distinct sizes drawn at random from ``POOL``."""
    return [int(x) for x in rng.choice(POOL, size=n, replace=False)]


def weights(rng, *shapes) -> list:
    """Random float32 arrays of ``shapes``, in order."""
    return [rng.standard_normal(tuple(s)).astype(np.float32) for s in shapes]
