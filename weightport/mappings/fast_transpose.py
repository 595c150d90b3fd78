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

from . import blas_transpose


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
    """Fill ``block`` (columns ``lo:hi``, all by default) with rows ``first...`` of ``a.T``.

    float32 and float64 go through the BLAS kernel numpy ships (``blas_transpose``) when it is there and
    the values are finite. Else, where rows are contiguous, 16 bytes move as one element (``_fill_wide``);
    else 16 source rows at a time, so that every write lands in one cache line
    per output row and every read is a contiguous run: several times numpy's
    plain strided copy on large matrices.
    """
    hi = a.shape[0] if hi is None else hi
    if blas_transpose.transpose_into(a[lo:hi, first:first + len(block)], block[:, lo:hi]):
        return block
    return _fill_exact(a, first, block, lo, hi)


def _fill_exact(a, first, block, lo, hi):
    """``fill_transposed`` by numpy's copies, which move every value's bits (NaN payloads too)."""
    last = first + len(block)
    if _wide_group(a, block):
        return _fill_wide(a, first, block, lo, hi)
    for i in range(lo, hi, 16):
        end = min(i + 16, hi)
        block[:, i:end] = a[i:end, first:last].T
    return block


WIDE = np.dtype(np.complex128)  # a 16-byte element numpy copies by its bits (no arithmetic): any value, NaN payloads


def _wide_group(a: np.ndarray, block: np.ndarray) -> int:
    """Values per 16-byte element when ``a`` and ``block`` can be moved so, else 0."""
    size = a.dtype.itemsize
    group = WIDE.itemsize // size if size in (1, 2, 4, 8) else 0
    ok = (group and block.dtype == a.dtype and a.ndim == 2 and len(block) % group == 0
          and a.strides[1] == size and block.strides[1] == size)
    return group if ok else 0


_LOCAL = threading.local()


def _scratch(n: int) -> np.ndarray:
    """``n`` wide elements of this thread's scratch memory (kept for its next call: no fresh pages each time)."""
    held = getattr(_LOCAL, "scratch", None)
    if held is None or held.size < n:
        held = _LOCAL.scratch = np.empty(n, WIDE)
    return held[:n]


STRIP_ELEMENTS = 4096  # wide elements per numpy call in the gathering pass, at least (fewer: call overhead rules)


def _fill_wide(a, first, block, lo, hi, chunk: int = 1024):
    """``fill_transposed`` in two cache-sized passes over ``chunk`` source rows at a time.

    Gathering one strided value at a time is what costs (~0.6 GB/s); moving
    ``group`` neighbouring values as one 16-byte element gathers a quarter as
    many (float32). A second pass then splits each element's values into
    ``group`` output rows: contiguous runs, ~2x faster in all.
    """
    group = _wide_group(a, block)
    rows, bits = len(block) // group, np.dtype(f"u{a.dtype.itemsize}")
    wide = a[:, first:first + len(block)].view(WIDE)  # (source rows, rows): group values each
    out = block.view(bits)
    strip = 16 * max(1, STRIP_ELEMENTS // (16 * rows))  # few output rows: more source rows per numpy call
    for c0 in range(lo, hi, chunk):
        c1 = min(c0 + chunk, hi)
        scratch = _scratch(rows * (c1 - c0)).reshape(rows, c1 - c0)
        for i in range(c0, c1, strip):
            end = min(i + strip, c1)
            scratch[:, i - c0:end - c0] = wide[i:end].T
        values = scratch.view(bits).reshape(rows, c1 - c0, group)
        for r in range(group):
            out[r::group, c0:c1] = values[:, :, r]
    return block


BLOCK_BYTES = 32 << 20  # at most one output block: a few in flight stay small; large blocks amortise Python


def block_rows(n_in: int, itemsize: int) -> int:
    """Rows of ``a.T`` per block for a source of ``n_in`` rows: about ``BLOCK_BYTES``, 16 to 512, a multiple of 16."""
    rows = BLOCK_BYTES // max(1, n_in * itemsize)
    return int(min(512, max(16, rows - rows % 16)))


class Scratch:
    """Block buffers kept for the next tensor: fresh memory costs a zeroed page per 4 KiB (measured: an eighth
    of a large conversion's time). One generator holds them at a time; another allocates its own. The worker
    threads are kept too (a pool started per tensor waits for its threads to start, which a busy machine delays)."""

    def __init__(self):
        self._lock, self._held, self._pool_lock = threading.Lock(), [], threading.Lock()
        self._pool, self._pool_size = None, 0

    def pool(self, workers: int):
        """The kept thread pool (``workers`` threads at least); the caller must not shut it down."""
        from concurrent.futures import ThreadPoolExecutor

        with self._pool_lock:
            if self._pool is None or self._pool_size < workers:
                if self._pool is not None:
                    self._pool.shutdown(wait=False)  # its queued work still runs
                self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="weightport-transpose")
                self._pool_size = workers
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

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
    scratch = Scratch()
    token = _SCRATCH.set(scratch)
    try:
        yield
    finally:
        _SCRATCH.reset(token)
        scratch.close()


def _buffers(shape, dtype, count):
    """(buffers, scratch to give them back to, or None)."""
    scratch = _SCRATCH.get()
    held = scratch.take(shape, dtype, count) if scratch is not None else None
    if held is None:
        return [np.empty(shape, dtype=dtype) for _ in range(count)], None
    return held, scratch


def _fill_part(a, first, block, lo, hi, finite=None):
    """Fill columns ``lo:hi`` of ``block`` and return ``finite`` of them (None without it).

    ``finite`` (True when every value is finite: the caller's NaN/Inf scan,
    run while the part is in cache) doubles as the guard of the fast kernel,
    which may change a NaN's bits: a part it fails is filled again exactly.
    """
    part = block[:, lo:hi]
    if finite is None:
        fill_transposed(a, first, block, lo, hi)
        return None
    if blas_transpose.transpose_into(a[lo:hi, first:first + len(block)], part, verify=False):
        result = finite(part)
        if result:
            return result
    _fill_exact(a, first, block, lo, hi)
    return finite(part)


def threaded_blocks(a: np.ndarray, rows: int | None = None, workers: int | None = None, depth: int = 2,
                    check=None):
    """``a.T`` (2-D) as consecutive C-contiguous row blocks, filled by threads ahead of the consumer.

    The transposing copy is most of a file conversion's CPU time and numpy
    releases the GIL while it copies, so ``workers`` threads (the cores, at
    most 4) split each block by source rows, and up to ``depth`` blocks are
    filled while the consumer writes the last one out. ``depth + 1``
    buffers take turns: a block is valid until the next one is asked for.
    With ``check`` (a NaN/Inf scan: True when every value of an array is
    finite), each worker applies it to the part it just filled, still in
    its cache, and (block, [results]) pairs are yielded instead.
    """
    from concurrent.futures import ThreadPoolExecutor, wait

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
    kept = _SCRATCH.get()
    pool = kept.pool(len(cuts)) if kept is not None else ThreadPoolExecutor(max_workers=len(cuts))

    def block_of(k):
        return buffers[k % len(buffers)][:min(rows, n_out - starts[k])]

    pending, submitted = {}, 0
    try:
        for k in range(len(starts)):
            while submitted < min(len(starts), k + depth + 1):  # block k-1 is free again: the consumer moved on
                pending[submitted] = [pool.submit(_fill_part, a, starts[submitted], block_of(submitted), lo, hi, check)
                                      for lo, hi in cuts]
                submitted += 1
            results = [part.result() for part in pending.pop(k)]
            yield block_of(k) if check is None else (block_of(k), results)
    finally:
        parts = [part for queued in pending.values() for part in queued]
        for part in parts:
            part.cancel()
        wait(parts)  # what already runs fills our buffers: done before they are given back
        if kept is None:
            pool.shutdown(wait=True)
        if scratch is not None:
            scratch.give_back()


PART_BYTES = 4 << 20  # one part of a.T: written out by its worker while still in its cache (L2 or L3)


def part_rows(n_in: int, itemsize: int) -> int:
    """Rows of ``a.T`` per part: about ``PART_BYTES``, 16 to 512 (fewer cost more per value), a multiple of 16."""
    rows = PART_BYTES // max(1, n_in * itemsize)
    return int(min(512, max(16, rows - rows % 16)))


def transposed_parts(a: np.ndarray, put, rows: int | None = None, workers: int | None = None, check=None,
                     lend=None) -> list:
    """Hand all of ``a.T`` (2-D) to ``put(byte offset, part)`` in parts of ``rows`` rows, from worker threads.

    Each worker transposes the next part into memory ``lend(nbytes)`` gives
    it (a writer's staging slot, which ``put`` then owns and writes while
    the worker goes on), else into its own small buffer, which ``put`` must
    be done with when it returns. ``put`` must be thread-safe. With
    ``check`` (a NaN/Inf scan, as ``threaded_blocks`` takes), each worker
    applies it to each part it filled and the results are returned. The first failure stops every worker and is raised.
    """
    import itertools
    from concurrent.futures import ThreadPoolExecutor, wait

    a = np.asarray(a)
    n_in, n_out = a.shape
    rows = rows or part_rows(n_in, a.dtype.itemsize)
    count = -(-n_out // rows)
    workers = max(1, min(workers or os.cpu_count() or 1, 4, count))
    kept = _SCRATCH.get()
    pool = kept.pool(workers) if kept is not None else ThreadPoolExecutor(max_workers=workers)
    parts, failed, results = itertools.count(), threading.Event(), []
    lend = lend or _part_buffer

    def work():
        for k in iter(parts.__next__, None):
            first = k * rows
            if first >= n_out or failed.is_set():
                return
            nbytes = min(rows, n_out - first) * n_in * a.dtype.itemsize
            block = lend(nbytes)[:nbytes].view(a.dtype).reshape(-1, n_in)
            try:
                result = _fill_part(a, first, block, 0, n_in, check)
                if check is not None:
                    results.append(result)
                put(first * n_in * a.dtype.itemsize, block)
            except BaseException:
                failed.set()
                raise

    futures = [pool.submit(work) for _ in range(workers)]
    try:
        wait(futures)
        for future in futures:
            future.result()
    finally:
        failed.set()
        wait(futures)
        if kept is None:
            pool.shutdown(wait=True)
    return results


def _part_buffer(nbytes: int) -> np.ndarray:
    """``nbytes`` of this thread's own part buffer (kept for its next part and tensor)."""
    held = getattr(_LOCAL, "part", None)
    if held is None or held.size < nbytes:
        held = _LOCAL.part = np.empty(nbytes, np.uint8)
    return held[:nbytes]
