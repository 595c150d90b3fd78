"""Fast C-contiguous transposes: the one copy most conversions spend their time in."""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import threading
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


def fill_transposed(a: np.ndarray, first: int, block: np.ndarray, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Fill ``block`` (columns ``lo:hi``, all by default) with rows ``first...`` of ``a.T``, 16 source rows at a time.

    Every write then lands in one cache line per output row and every read is
    a contiguous run: several times numpy's plain strided copy on large
    matrices.
    """
    last = first + len(block)
    hi = a.shape[0] if hi is None else hi
    for i in range(lo, hi, 16):
        end = min(i + 16, hi)
        block[:, i:end] = a[i:end, first:last].T
    return block


BLOCK_BYTES = 32 << 20  # at most one output block: a few in flight stay small; large blocks amortise Python


def block_rows(n_in: int, itemsize: int) -> int:
    """Rows of ``a.T`` per block for a source of ``n_in`` rows: about ``BLOCK_BYTES``, 16 to 512, a multiple of 16."""
    rows = BLOCK_BYTES // max(1, n_in * itemsize)
    return int(min(512, max(16, rows - rows % 16)))


class Scratch:
    """Block buffers kept for the next tensor: fresh memory costs a zeroed page per 4 KiB (measured: an eighth
    of a large conversion's time). One generator holds them at a time; another allocates its own."""

    def __init__(self):
        self._lock, self._held = threading.Lock(), []

    def take(self, shape, dtype, count: int) -> list | None:
        """``count`` arrays of ``shape``/``dtype`` over the kept memory (grown as needed), or None while busy."""
        if not self._lock.acquire(blocking=False):
            return None
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if len(self._held) < count or self._held[0].size < nbytes:
            self._held = [np.empty(max(nbytes, self._held[0].size if self._held else 0), np.uint8)
                          for _ in range(max(count, len(self._held)))]
        return [h[:nbytes].view(dtype).reshape(shape) for h in self._held[:count]]

    def give_back(self) -> None:
        self._lock.release()


_SCRATCH: contextvars.ContextVar = contextvars.ContextVar("weightport_scratch", default=None)


@contextlib.contextmanager
def reusing_buffers():
    """Within this block (in this thread), ``threaded_blocks`` reuses one set of buffers for every tensor."""
    token = _SCRATCH.set(Scratch())
    try:
        yield
    finally:
        _SCRATCH.reset(token)


def _buffers(shape, dtype, count):
    """(buffers, scratch to give them back to, or None)."""
    scratch = _SCRATCH.get()
    held = scratch.take(shape, dtype, count) if scratch is not None else None
    if held is None:
        return [np.empty(shape, dtype=dtype) for _ in range(count)], None
    return held, scratch


def threaded_blocks(a: np.ndarray, rows: int | None = None, workers: int | None = None, depth: int = 2):
    """``a.T`` (2-D) as consecutive C-contiguous row blocks, filled by threads ahead of the consumer.

    The transposing copy is most of a file conversion's CPU time and numpy
    releases the GIL while it copies, so ``workers`` threads (the cores, at
    most 4) split each block by source rows, and up to ``depth`` blocks are
    filled while the consumer writes the last one out. ``depth + 1``
    buffers take turns: a block is valid until the next one is asked for.
    """
    from concurrent.futures import ThreadPoolExecutor

    a = np.asarray(a)  # a plain view: slicing a memmap subclass costs more than the copy on small strips
    n_in, n_out = a.shape
    rows = rows or block_rows(n_in, a.dtype.itemsize)
    starts = list(range(0, n_out, rows))
    if not starts:
        return
    workers = max(1, min(workers or os.cpu_count() or 1, 4, -(-n_in // 16)))
    step = max(16, -(-n_in // (16 * workers)) * 16)
    cuts = [(lo, min(lo + step, n_in)) for lo in range(0, n_in, step)] or [(0, 0)]
    buffers, scratch = _buffers((min(rows, n_out), n_in), a.dtype, min(depth + 1, len(starts)))

    def block_of(k):
        return buffers[k % len(buffers)][:min(rows, n_out - starts[k])]

    pool = ThreadPoolExecutor(max_workers=len(cuts))
    try:
        pending, submitted = {}, 0
        for k in range(len(starts)):
            while submitted < min(len(starts), k + depth + 1):  # block k-1 is free again: the consumer moved on
                pending[submitted] = [pool.submit(fill_transposed, a, starts[submitted], block_of(submitted), lo, hi)
                                      for lo, hi in cuts]
                submitted += 1
            for part in pending.pop(k):
                part.result()
            yield block_of(k)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if scratch is not None:
            scratch.give_back()
