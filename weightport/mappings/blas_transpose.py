"""The transposing copy of the BLAS numpy ships (OpenBLAS ``?omatcopy``): about 3x numpy's fastest strided copy.

numpy's wheels bundle OpenBLAS, whose out-of-place transpose kernel is reached here through ctypes (which
releases the GIL, so worker threads run it side by side). The kernel computes ``1.0 * a``: that keeps the bits
of every number (signed zeros and denormals too, unless the thread flushes denormals: probed before each use)
but quiets a signalling NaN. So a result is kept only when it holds no NaN or inf; else the caller's exact copy
redoes it. Where the library or its symbols are missing (other numpy builds), nothing is used.
"""
from __future__ import annotations

import ctypes
import glob
import os
import threading

import numpy as np

ROW_MAJOR, TRANSPOSE = 101, 112  # CBLAS_ORDER.CblasRowMajor, CBLAS_TRANSPOSE.CblasTrans
SYMBOLS = {np.dtype(np.float32): ("scipy_cblas_somatcopy64_", ctypes.c_float),
           np.dtype(np.float64): ("scipy_cblas_domatcopy64_", ctypes.c_double)}  # numpy's ILP64 OpenBLAS names
enabled = True  # tests switch it off to compare with the exact numpy path

_LOCK = threading.Lock()
_KERNELS: dict | None = None


def transpose_into(src: np.ndarray, dst: np.ndarray, verify: bool = True) -> bool:
    """Write ``src.T`` into ``dst`` (both 2-D, rows contiguous) and return True, or return False (``dst`` may then
    hold anything) when the kernel is missing, the arrays do not fit it, or (``verify``) the result holds a NaN
    or an inf. Without ``verify`` the caller must scan the result so and copy it exactly where the scan fails."""
    kernel = _kernel(src.dtype) if enabled else None
    if kernel is None or dst.dtype != src.dtype or not (_fits(src) and _fits(dst)) or dst.shape != src.shape[::-1]:
        return False
    if src.size == 0:
        return True
    if not _keeps_bits(kernel, src.dtype):
        return False
    kernel(ROW_MAJOR, TRANSPOSE, src.shape[0], src.shape[1], 1.0, src.ctypes.data, _lead(src), dst.ctypes.data,
           _lead(dst))
    if not verify:
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.add.reduce(dst, axis=None)))


def available(dtype) -> bool:
    """Whether this numpy's BLAS has the kernel for ``dtype`` (float32 and float64 at most)."""
    return _kernel(dtype) is not None


def _fits(a: np.ndarray) -> bool:
    size = a.dtype.itemsize
    return a.ndim == 2 and a.strides[1] == size and a.strides[0] >= size * a.shape[1] and a.strides[0] % size == 0 \
        and a.dtype.isnative


def _lead(a: np.ndarray) -> int:
    return a.strides[0] // a.dtype.itemsize


def _keeps_bits(kernel, dtype) -> bool:
    """True when, in this thread, the kernel copies a denormal and a negative zero bit for bit."""
    probe = np.array([[np.finfo(dtype).smallest_subnormal, -0.0], [1.5, -np.finfo(dtype).max]], dtype)
    out = np.empty_like(probe)
    kernel(ROW_MAJOR, TRANSPOSE, 2, 2, 1.0, probe.ctypes.data, 2, out.ctypes.data, 2)
    return out.tobytes() == np.ascontiguousarray(probe.T).tobytes()


def _kernel(dtype):
    global _KERNELS
    if _KERNELS is None:
        with _LOCK:
            if _KERNELS is None:
                _KERNELS = _load()
    return _KERNELS.get(np.dtype(dtype))


def _load() -> dict:
    """dtype -> the ctypes function, for the OpenBLAS inside numpy's own wheel (none elsewhere)."""
    try:
        blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
        if blas.get("name") != "scipy-openblas" or "USE64BITINT" not in str(blas.get("openblas configuration")):
            return {}
    except (AttributeError, KeyError, TypeError):
        return {}
    here = os.path.dirname(np.__file__)
    found = sorted(glob.glob(os.path.join(here, os.pardir, "numpy.libs", "*scipy_openblas64_*"))
                   + glob.glob(os.path.join(here, ".dylibs", "*scipy_openblas64_*")))
    try:
        library = ctypes.CDLL(found[0]) if found else None
    except OSError:
        library = None
    kernels = {}
    for dtype, (name, scalar) in SYMBOLS.items():
        function = getattr(library, name, None) if library is not None else None
        if function is not None:
            function.restype = None
            function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, scalar,
                                 ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64]
            kernels[dtype] = function
    return kernels
