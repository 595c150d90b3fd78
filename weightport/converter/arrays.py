"""numpy in and out of every framework, without importing any of them.

numpy is the lingua franca inside weightport. These helpers convert at the
edges, zero-copy where the framework allows it, and keep 16-bit floats 16-bit:
bfloat16 travels as ``ml_dtypes.bfloat16`` (bit-reinterpreted, never through
float32).
"""
from __future__ import annotations

import sys

import numpy as np


def bfloat16():
    """The numpy bfloat16 dtype (ml_dtypes is imported only when needed)."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def dtype_of(name) -> np.dtype:
    """numpy dtype for a name ('float32', 'bf16', 'BF16', 'bfloat16', 'float8_e4m3fn'...) or dtype object.

    ml_dtypes' names (bfloat16, the float8 variants) count, as do torch's
    (``torch.bfloat16``) and safetensors' (``F8_E4M3``).
    """
    if not isinstance(name, str) and type(name).__module__ != "torch":
        try:
            return np.dtype(name)  # np.float16, ml_dtypes.bfloat16, jnp.bfloat16, a dtype
        except TypeError:
            pass
    key = str(name).lower().replace("torch.", "")
    aliases = {"bf16": "bfloat16", "f32": "float32", "f16": "float16", "half": "float16", "fp16": "float16",
               "fp32": "float32", "float": "float32", "double": "float64", "f64": "float64",
               "f8_e4m3": "float8_e4m3fn", "f8_e5m2": "float8_e5m2"}
    key = aliases.get(key, key)
    import ml_dtypes

    extra = getattr(ml_dtypes, key, None)
    if isinstance(extra, type) and issubclass(extra, np.generic):
        return np.dtype(extra)
    try:
        return np.dtype(key)
    except TypeError as exc:
        from ..errors import UsageError

        raise UsageError(f"unknown dtype {name!r}; use e.g. 'float32', 'float16', 'bfloat16', "
                         "'float8_e4m3fn' or 'float8_e5m2'") from exc


def cast_dtype(name) -> np.dtype:
    """The floating dtype a conversion casts to (``dtype=``); an integer one would destroy the weights."""
    dtype = dtype_of(name)
    if not is_floating(dtype):
        from ..errors import UsageError

        raise UsageError(f"dtype={name!r} is not a floating dtype; casting weights to it would destroy them. "
                         "Use e.g. 'float32', 'float16', 'bfloat16', 'float8_e4m3fn' or 'float8_e5m2'")
    return dtype


def is_torch_tensor(x) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_jax_array(x) -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(x, jax.Array)


# floats numpy has no name for: torch and ml_dtypes both have them, and they travel as same-width integers
BIT_VIEWS = {"bfloat16": "int16", "float8_e4m3fn": "uint8", "float8_e5m2": "uint8"}


def torch_to_numpy(t) -> np.ndarray:
    """A numpy view (or device copy) of a torch tensor, any device, grad or not, bf16 and float8 kept."""
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    name = str(t.dtype).removeprefix("torch.")
    if name in BIT_VIEWS:
        import ml_dtypes

        return t.view(getattr(torch, BIT_VIEWS[name])).numpy().view(np.dtype(getattr(ml_dtypes, name)))
    return t.numpy()


def _contiguous(a: np.ndarray) -> np.ndarray:
    """C-contiguous ``a``, 0-d arrays kept 0-d (``np.ascontiguousarray`` makes them 1-d)."""
    return np.ascontiguousarray(a).reshape(a.shape)


def numpy_to_torch(a: np.ndarray, like=None):
    """A torch tensor sharing memory with ``a`` where possible; bf16 kept bit for bit.

    With ``like`` (a tensor), the result has its dtype and device.
    """
    import torch

    a = np.asarray(a)
    if not a.flags.writeable:  # torch cannot share read-only memory (jax arrays, memory maps)
        a = a.copy()
    if a.dtype.name in BIT_VIEWS and hasattr(torch, a.dtype.name):
        bits = BIT_VIEWS[a.dtype.name]
        t = torch.from_numpy(_contiguous(a).view(np.dtype(bits))).view(getattr(torch, a.dtype.name))
    else:
        t = torch.from_numpy(_contiguous(a))
    if like is not None:
        t = t.to(device=like.device, dtype=like.dtype)
    return t


def to_numpy(x) -> np.ndarray:
    """numpy for a numpy array, torch tensor, jax array, Keras variable or backend tensor."""
    if isinstance(x, np.ndarray):
        return x
    if is_torch_tensor(x):
        return torch_to_numpy(x)
    if hasattr(x, "value") and type(x).__module__.startswith("keras"):
        return to_numpy(x.value)  # keras.Variable on any backend
    if is_jax_array(x):
        return np.asarray(x)  # bf16 arrives as ml_dtypes.bfloat16, no float32 detour
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(x, (tf.Tensor, tf.Variable)):
        return x.numpy()
    return np.asarray(x)


def is_floating(dtype) -> bool:
    """True for numpy floats and ml_dtypes' (bfloat16, float8...), which numpy files under kind 'V'."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or (dtype.kind == "V" and "float" in dtype.name)


def cast(a: np.ndarray, dtype) -> np.ndarray:
    """``a`` in ``dtype``; the same object when it already is."""
    dtype = np.dtype(dtype)
    return a if a.dtype == dtype else a.astype(dtype)


# -- casts that must not damage numbers --------------------------------------------------------------------

_CHUNK = 1 << 22  # elements per pass: scans and checks never hold more than a few MB of temporaries


def _row_chunks(*arrays):
    """Matching slices of equally shaped arrays, a few million elements at a time (along axis 0)."""
    a = arrays[0]
    if a.ndim == 0 or a.size <= _CHUNK:
        yield arrays
        return
    rows = max(1, _CHUNK // max(1, a.size // a.shape[0]))
    for i in range(0, a.shape[0], rows):
        yield tuple(x[i:i + rows] for x in arrays)


def _finfo(dtype):
    import ml_dtypes

    return ml_dtypes.finfo(dtype)


def widens(src, dst) -> bool:
    """Whether every value of floating dtype ``src`` is exactly representable in floating dtype ``dst``."""
    a, b = _finfo(src), _finfo(dst)
    return b.nmant >= a.nmant and b.minexp <= a.minexp and float(b.max) >= float(a.max)


def nonfinite(a) -> tuple:
    """(NaN count, infinite count) of a floating array, scanned in chunks (a memory map is read, never copied)."""
    a = np.asarray(a)
    if not is_floating(a.dtype) or a.size == 0:
        return 0, 0
    nans = infs = 0
    for (chunk,) in _row_chunks(a):
        chunk = np.asarray(chunk)
        if sums_finite(chunk):
            continue
        if not np.isfinite(chunk).all():
            nans += int(np.isnan(chunk).sum())
            infs += int(np.isinf(chunk).sum())
    return nans, infs


def sums_finite(chunk) -> bool:
    """True when a sum over ``chunk`` is finite, which proves every value finite (a NaN or an inf makes it NaN
    or inf); one vectorised pass, several times cheaper than ``isfinite``. False may be a sum that overflowed.

    A contiguous float32/float64 chunk is summed squared by BLAS (``dot``: the square of a NaN is NaN, of
    either inf is inf), 2.5x cheaper than numpy's own sum here; it overflows from |x| ~ 1e19 in float32.
    """
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            if chunk.dtype in _BLAS_FLOATS and chunk.flags.c_contiguous:
                flat = chunk.reshape(-1)
                return bool(np.isfinite(np.dot(flat, flat)))
            wide = np.float32 if chunk.dtype.itemsize < 4 else None  # 16- and 8-bit floats summed in float32
            return bool(np.isfinite(np.add.reduce(chunk, axis=None, dtype=wide)))
    except TypeError:  # a float type numpy cannot sum
        return False


_BLAS_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _extreme(values) -> float:
    """The value of largest magnitude, sign kept."""
    values = np.asarray(values, np.float64)
    return float(values[np.argmax(np.abs(values))])


def cast_checked(a, dtype, name: str, *, allow_overflow: bool = False) -> tuple:
    """(``a`` in ``dtype``, what the cast did to the values: ``""`` nothing, ``"rounds"`` or ``"overflows"``).

    A cast that turns finite values into inf or NaN (float32 1e6 into float16)
    damages the model: it is refused with ``CastOverflowError`` naming
    ``name`` and the value of largest magnitude, unless ``allow_overflow=True``,
    which lets it through ("overflows"). A cast that only rounds (float32 into
    bfloat16) is allowed: "rounds" is how the caller says "function-preserving,
    not bitwise". Each check costs a pass or two over the tensor, in chunks;
    widening casts cost none.
    """
    a = np.asarray(a)
    dtype = np.dtype(dtype)
    if a.dtype == dtype or a.size == 0:
        return cast(a, dtype), ""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected below, and named
        out = a.astype(dtype)
    floats = is_floating(a.dtype) and is_floating(dtype)
    if floats and widens(a.dtype, dtype):
        return out, ""
    if not floats and not (a.dtype.kind in "biu" and dtype.kind in "biu"):
        return out, ""  # float <-> integer: not a weight cast weightport makes
    rounds, overflow, largest = False, 0, 0.0
    for src, dst in _row_chunks(a, out):
        src = np.asarray(src)
        if floats:
            top = abs(float(src.max())), abs(float(src.min()))  # two cheap passes rule out overflow, mostly
            if not max(top) <= float(_finfo(dtype).max) and not np.isfinite(dst).all():
                broken = np.isfinite(src) & ~np.isfinite(dst)
                if broken.any():
                    overflow += int(broken.sum())
                    largest = max(largest, _extreme(src[broken]), key=abs)
            if not rounds:  # once one value is seen to round, the rest need no look
                with np.errstate(over="ignore", invalid="ignore"):
                    rounds = not np.array_equal(dst.astype(a.dtype), src, equal_nan=True)
        elif not np.array_equal(dst.astype(a.dtype), src):
            wrong = dst.astype(a.dtype) != src
            overflow += int(wrong.sum())
            largest = max(largest, _extreme(src[wrong]), key=abs)
    if overflow:
        if not allow_overflow:
            from ..errors import CastOverflowError

            top = float(_finfo(dtype).max) if floats else float(np.iinfo(dtype).max)
            raise CastOverflowError(
                f"{name}: casting {a.dtype} to {dtype} would turn {overflow} value(s) into "
                f"{'inf/NaN' if floats else 'wrapped-around integers'}: the largest is {largest:.7g}, and {dtype} "
                f"holds at most {top:.7g}. Nothing was written or changed. Keep a wider dtype, or pass "
                "allow_overflow=True to let those values become inf")
        return out, "overflows"
    return out, "rounds" if rounds else ""


def is_array(x) -> bool:
    """A numpy or jax array (the leaves of Flax and Equinox trees)."""
    return isinstance(x, np.ndarray) or is_jax_array(x)


def placed_like(array, old):
    """``array`` with ``old``'s dtype, on ``old``'s device(s) when ``old`` is a jax array; never sharing
    ``array``'s memory. On a CPU the values are copied once, into a buffer jax then takes without a copy."""
    from . import direct

    value = cast(np.asarray(array), np.dtype(old.dtype))
    if is_jax_array(old):
        import jax

        fresh = direct.empty_aligned(value.shape, value.dtype)
        direct.copy_into(fresh, value)
        adopted = direct.adopted_by_jax(fresh, old)
        return adopted if adopted is not None else jax.device_put(fresh, old.sharding)
    return np.array(value, copy=True)
