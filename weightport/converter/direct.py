"""Copy a source tensor straight into a target's own memory, where its move is a plain transpose/reshape/copy.

A Dense kernel going from torch to Keras is only ``weight.T``: rather than
building the canonical array, then the target's array, then copying that into
the target, the source is viewed in the target's shape (strides only, no
bytes moved) and copied once into the target tensor by torch's own
transposing copy, which runs on every core. Anything else (gate reorders,
splits, sums, casts, a target torch does not hold) takes the general path.
"""
from __future__ import annotations

import os
import sys
import warnings

import numpy as np

from ..mappings.fast_transpose import fill_transposed
from ..mappings.transforms import Chain, Identity, Reshape, Transpose
from .arrays import nonfinite, to_numpy


def plain_steps(transform, inverse: bool = False):
    """The view operations ``transform`` (or its inverse) amounts to, as ("transpose", axes) / ("reshape", shape)
    steps; None when it is anything else. Exact classes only: a subclass may compute something else."""
    kind = type(transform)
    if kind is Identity:
        return []
    if kind is Transpose:
        return [("transpose", transform.back if inverse else transform.axes)]
    if kind is Reshape:
        return [("reshape", transform.src if inverse else transform.dst)]
    if kind is Chain:
        steps = []
        for part in (reversed(transform.parts) if inverse else transform.parts):
            found = plain_steps(part, inverse)
            if found is None:
                return None
            steps += found
        return steps
    return None


def viewed(a: np.ndarray, steps) -> np.ndarray:
    """``a`` after ``steps``: a strided view where numpy can make one (a reshape that cannot be a view copies)."""
    for op, arg in steps:
        a = a.transpose(arg) if op == "transpose" else a.reshape(arg)
    return a


def routes(p, destinations: dict, source_dtypes: dict, target_dtypes: dict):
    """target slot -> (source slot, view steps) for every slot of pair ``p``, when each is a plain move into a
    destination of the same dtype; else None (the pair takes the general path)."""
    rule = p.rule
    if getattr(p.target, "framework", None) is None:
        return None
    by_canonical = {lk.canonical: lk for lk in rule.links(p.source.layout, p.source_hp)}
    found = {}
    for lk in rule.links(p.target.layout, p.target_hp):
        src = by_canonical.get(lk.canonical)
        if (src is None or len(lk.canonical) != 1 or len(lk.native) != 1 or len(src.native) != 1
                or lk.native[0] not in destinations):
            return None
        back, forth = plain_steps(src.transform, inverse=True), plain_steps(lk.transform)
        dtype = source_dtypes.get(src.native[0])
        if back is None or forth is None or dtype is None or np.dtype(dtype) != target_dtypes.get(lk.native[0]):
            return None
        found[lk.native[0]] = (src.native[0], back + forth)
    return found or None


def as_torch(a: np.ndarray):
    """A torch tensor on ``a``'s very memory, strides kept (bf16 and float8 by their bits)."""
    import torch

    from .arrays import BIT_VIEWS

    name = a.dtype.name
    with warnings.catch_warnings():  # a read-only memory map: torch only reads it here
        warnings.simplefilter("ignore", UserWarning)
        if name in BIT_VIEWS and hasattr(torch, name):
            return torch.from_numpy(a.view(np.dtype(BIT_VIEWS[name]))).view(getattr(torch, name))
        return torch.from_numpy(a)


def copy_into(dst, src: np.ndarray) -> None:
    """Copy ``src`` (any strides) into ``dst``, a torch tensor or a writable numpy array, in one pass over the
    fewest axes the copy allows (``merged``): torch's transposing copy (every core) once torch is loaded,
    numpy's otherwise, split across cores (``split_copy``)."""
    if src.size == 0:
        return
    if isinstance(dst, np.ndarray) and "torch" not in sys.modules:
        shape, (to, frm) = merged(src.shape, dst.strides, src.strides)
        split_copy(as_strided(dst, shape, to, writeable=True), as_strided(src, shape, frm, writeable=False))
        return
    import torch

    with torch.no_grad():
        target, source = (as_torch(dst) if isinstance(dst, np.ndarray) else dst), as_torch(src)
        shape, (to, frm) = merged(tuple(src.shape), target.stride(), source.stride())  # each in its elements
        target.as_strided(shape, to, target.storage_offset()).copy_(
            source.as_strided(shape, frm, source.storage_offset()))


def merged(shape, *strides) -> tuple:
    """(shape, (strides of each array)): the axes of an element-by-element copy between arrays of ``shape`` and
    these ``strides`` (each array's in its own unit: bytes or elements), size-1 axes dropped and each run of axes that every array steps through as one
    merged into one. The same elements in the same order: a (768, 12, 64) kernel filled from a transposed
    (768, 768) weight becomes a 2-D transposing copy, several times faster than the 3-D one in torch and
    numpy. Arrays with negative strides are left as they are."""
    if any(n < 0 for st in strides for n in st):
        return tuple(shape), tuple(tuple(st) for st in strides)
    keep = [i for i, n in enumerate(shape) if n != 1]
    out_shape, out = [], [[] for _ in strides]
    for i in keep:
        if out_shape and all(o[-1] == st[i] * shape[i] for o, st in zip(out, strides)):
            out_shape[-1] *= shape[i]
            for o, st in zip(out, strides):
                o[-1] = st[i]
        else:
            out_shape.append(shape[i])
            for o, st in zip(out, strides):
                o.append(st[i])
    return tuple(out_shape), tuple(tuple(o) for o in out)


def as_strided(a: np.ndarray, shape, strides, writeable: bool) -> np.ndarray:
    """``a``'s memory viewed with ``shape`` and byte ``strides`` (from ``merged``: the same elements)."""
    return np.lib.stride_tricks.as_strided(np.asarray(a), shape, strides, writeable=writeable)


SPLIT_BYTES = 4 << 20  # below this a copy is not worth handing to threads


def split_copy(dst: np.ndarray, src: np.ndarray) -> None:
    """``np.copyto(dst, src)``, cut along the first axis into one piece per core (at most 4), copied by threads
    (numpy lets go of the GIL while it copies): torch's copy runs on every core, and without torch a large
    transposing copy on one core is most of a port's time."""
    workers = min(4, os.cpu_count() or 1, dst.shape[0] if dst.ndim else 1)
    matrix = transposed_matrix(dst, src)
    if matrix is not None:  # a 2-D transpose: fast_transpose's, by bands of rows
        step = -(-dst.shape[0] // (workers if dst.nbytes >= SPLIT_BYTES else 1) // 16) * 16
        bands = [(lo, dst[lo:lo + step]) for lo in range(0, dst.shape[0], step)]
        list(map_maybe_threaded(lambda band: fill_transposed(matrix, band[0], band[1]), bands))
        return
    if workers < 2 or dst.nbytes < SPLIT_BYTES:
        np.copyto(dst, src)
        return
    cuts = [dst.shape[0] * k // workers for k in range(workers + 1)]
    pieces = [(dst[lo:hi], src[lo:hi]) for lo, hi in zip(cuts, cuts[1:])]
    list(map_maybe_threaded(lambda piece: np.copyto(*piece), pieces))


def transposed_matrix(dst: np.ndarray, src: np.ndarray):
    """The row-major matrix ``a`` with ``src`` its transpose, where ``dst`` (2-D, rows contiguous) takes
    ``src`` as it is, else None."""
    if dst.ndim != 2 or src.ndim != 2 or dst.dtype != src.dtype or dst.strides[1] != dst.itemsize:
        return None
    a = src.T
    return a if a.strides[1] == a.itemsize and a.shape[1] > 1 and a.shape[0] > 1 else None


def map_maybe_threaded(fn, items: list):
    """``map(fn, items)``, on ``copy_pool``'s threads where there are several items."""
    return copy_pool().map(fn, items) if len(items) > 1 else map(fn, items)


def copy_pool():
    """The threads ``split_copy`` hands pieces to, made on first use."""
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="weightport-copy")
    return _POOL


def forget_pool() -> None:
    """In a forked child: the parent's threads are gone, so a pool made before the fork would never run."""
    global _POOL
    _POOL = None


_POOL = None
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=forget_pool)


def nonfinite_in(dst) -> tuple:
    """(NaN count, Inf count) of ``dst`` (a torch tensor or numpy array just written), read right after the copy
    instead of reading the source beforehand. numpy's chunked summing scan: measured here at 3x torch's
    ``sum`` (whose float reduction is slower, threads or not); counting runs only where a sum is not finite."""
    return nonfinite(to_numpy(dst))


def empty_aligned(shape, dtype, align: int = 64) -> np.ndarray:
    """A fresh C-contiguous array whose data starts on an ``align``-byte boundary (jax adopts such a buffer
    on a CPU without copying it). Large ones are mapped pages faulted in by one call (``mapped``)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes == 0:
        return np.empty(shape, dtype)
    if nbytes >= MAPPED_BYTES:
        found = mapped(nbytes)
        if found is not None:
            return np.frombuffer(found, dtype, count=nbytes // dtype.itemsize).reshape(shape)
    raw = np.empty(nbytes + align, np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


MAPPED_BYTES = 1 << 20  # smaller buffers come from the heap, whose freed memory is reused without faults


def mapped(nbytes: int):
    """``nbytes`` of fresh anonymous memory, page-aligned, its pages made present by the one ``mmap`` call
    (``MAP_POPULATE``, Linux) instead of one fault per 4 KiB on first write: in a virtual machine those faults
    cost more than the copy itself (measured here: 418 MiB written 0.61 s into numpy's fresh buffers, 0.37 s into
    these). Released to the system as soon as nothing uses it. None where such a mapping cannot be made."""
    import mmap

    populate = getattr(mmap, "MAP_POPULATE", 0) if sys.platform.startswith("linux") else 0
    try:
        return mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    except (OSError, AttributeError, ValueError):  # no anonymous mmap, or too many mappings: the heap's
        return None


def give_back_freed(nbytes: int) -> None:
    """Return freed heap memory to the system (glibc's ``malloc_trim``; nothing elsewhere) once ``nbytes``
    freed add up to 64 MiB (a trim walks every arena). A jax variable's old value was allocated on jax's own
    threads, whose malloc arenas the main thread never reuses: without this, every replaced value would stay
    in the process's memory until it exits."""
    global _TRIM, _FREED
    _FREED += nbytes
    if _FREED < (64 << 20):
        return
    _FREED = 0
    if _TRIM is None:
        import ctypes
        import ctypes.util

        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM, _FREED = None, 0


def adopted_by_jax(buffer: np.ndarray, like):
    """A jax array on ``buffer``'s own memory (no copy), when ``like`` (the jax array it replaces) lives on one
    CPU device and ``buffer`` is aligned; else None. ``buffer`` must be fresh: nothing else may write it."""
    import jax

    devices = like.sharding.device_set
    if len(devices) != 1 or next(iter(devices)).platform != "cpu" or buffer.ctypes.data % 64:
        return None
    try:
        return jax.numpy.from_dlpack(buffer, copy=False)
    except (TypeError, ValueError, RuntimeError, BufferError):  # a dtype or jax version that cannot: copy
        return None


def byte_span(a) -> tuple:
    """(first, last + 1) address of the bytes ``a`` (numpy, or anything ``to_numpy`` takes) covers."""
    from .arrays import to_numpy

    a = np.asarray(to_numpy(a))
    if a.size == 0:
        return (0, 0)
    low = high = a.__array_interface__["data"][0]
    for n, stride in zip(a.shape, a.strides):
        (low, high) = (low + (n - 1) * stride, high) if stride < 0 else (low, high + (n - 1) * stride)
    return low, high + a.itemsize
