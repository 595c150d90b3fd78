"""Copy a source tensor straight into a target's own memory, where its move is a plain transpose/reshape/copy.

A Dense kernel going from torch to Keras is only ``weight.T``: rather than
building the canonical array, then the target's array, then copying that into
the target, the source is viewed in the target's shape (strides only, no
bytes moved) and copied once into the target tensor by torch's own
transposing copy, which runs on every core. Anything else (gate reorders,
splits, sums, casts, a target torch does not hold) takes the general path.
"""
from __future__ import annotations

import sys
import warnings

import numpy as np

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
    """Copy ``src`` (any strides) into ``dst``, a torch tensor or a writable numpy array, in one pass: torch's
    transposing copy (every core) once torch is loaded, numpy's otherwise."""
    if src.size == 0:
        return
    if isinstance(dst, np.ndarray) and "torch" not in sys.modules:
        np.copyto(dst, src)
        return
    import torch

    with torch.no_grad():
        (as_torch(dst) if isinstance(dst, np.ndarray) else dst).copy_(as_torch(src))


def nonfinite_in(dst) -> tuple:
    """(NaN count, Inf count) of ``dst`` (a torch tensor or numpy array just written), read right after the copy
    instead of reading the source beforehand. numpy's chunked summing scan: measured here at 3x torch's
    ``sum`` (whose float reduction is slower, threads or not); counting runs only where a sum is not finite."""
    return nonfinite(to_numpy(dst))


def empty_aligned(shape, dtype, align: int = 64) -> np.ndarray:
    """A fresh C-contiguous array whose data starts on an ``align``-byte boundary (jax adopts such a buffer
    on a CPU without copying it)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes == 0:
        return np.empty(shape, dtype)
    raw = np.empty(nbytes + align, np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


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
