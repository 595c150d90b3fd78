"""Fast C-contiguous transposes: the one copy most conversions spend their time in."""
from __future__ import annotations

import sys
import warnings
from typing import Sequence

import numpy as np


def transpose_copy(a: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """A C-contiguous transpose of ``a``.

    Large ones go through torch's copy kernel (every core) when the caller has
    torch loaded, else (2-D) through ``transposed_rows``: numpy's own strided
    copy of ``a.T`` thrashes the cache on large matrices (~0.5 GB/s here).
    """
    axes = tuple(axes)
    if axes == tuple(range(a.ndim)):
        return a
    if a.ndim >= 2 and a.size >= (1 << 18) and a.dtype.itemsize in (1, 2, 4, 8) \
            and min(a.strides) >= 0 and "torch" in sys.modules:
        return _torch_transpose(a, axes)
    if a.ndim == 2 and a.size >= (1 << 18):
        out = np.empty((a.shape[1], a.shape[0]), dtype=a.dtype)
        for _ in transposed_rows(a, out=out):
            pass
        return out
    return np.ascontiguousarray(a.transpose(axes))


def _torch_transpose(a: np.ndarray, axes) -> np.ndarray:
    """The transpose by torch's copy kernel, which runs on every core, on the raw bits (any dtype: exact).

    Used only when the caller has already imported torch; weightport never imports it for this.
    """
    import torch

    bits = np.dtype(f"u{a.dtype.itemsize}") if a.dtype.itemsize > 1 else np.dtype("u1")
    out = np.empty(tuple(a.shape[i] for i in axes), dtype=a.dtype)
    with warnings.catch_warnings():  # a read-only memory map: torch only reads it
        warnings.simplefilter("ignore", UserWarning)
        source = torch.from_numpy(a.view(bits) if a.dtype.kind != "u" else a)
    torch.from_numpy(out.view(bits)).copy_(source.permute(*axes))
    return out


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
