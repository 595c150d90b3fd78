"""PyTorch files (.pt/.pth/.bin): read with ``torch.load(weights_only=True, mmap=True)``, never unpickled fully.

A file whose pickle needs more than plain tensors and containers is refused
(UnsafePickleError) unless the caller opts in with ``trust_pickle=True``.
Training checkpoints that wrap the weights ({"state_dict": ...}, {"model": ...},
{"module": ...}) are unwrapped; entries that are not tensors are skipped.
Writing is ``torch.save`` of a dict: torch's format needs every tensor at save
time, so there peak memory is the whole model.
"""
from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np

from ...errors import FormatError, UnsafePickleError
from ..checkpoint import Checkpoint, TensorSource
from . import limits
from .fileio import ZIP_MAGIC, load_checked, zip_names
from .guard import LIBRARY_ERRORS, describe

NAME = "torch"
SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SNIFF_ORDER = 40
WRITABLE = True
WRAPPERS = ("state_dict", "model_state_dict", "model", "module")


def sniff(path: str, head: bytes) -> bool:
    if head[:2] == b"\x80\x02" and head[2:3] == b"\x8a":  # legacy torch.save: pickled magic number first
        return True
    names = zip_names(path, head)
    return names is not None and any(n.endswith("/data.pkl") or n == "data.pkl" for n in names)


def _why_unsafe(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines()]
    for ln in lines:
        if "Unsupported global" in ln or "Unsupported operand" in ln or "WeightsUnpickler error" in ln:
            return ln.replace("WeightsUnpickler error:", "").split(". Please")[0].strip()
    return lines[-1] if lines else type(exc).__name__


def _load(path: str, trust_pickle: bool):
    import torch

    try:
        return torch.load(path, weights_only=not trust_pickle, mmap=True, map_location="cpu")
    except RuntimeError as exc:
        if "mmap can only be used" not in str(exc):
            raise
    return torch.load(path, weights_only=not trust_pickle, map_location="cpu")  # legacy (non-zip) file


def _unwrap(obj):
    """The tensor dict inside a training checkpoint or module."""
    import torch

    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    while isinstance(obj, dict):
        inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), (dict, torch.nn.Module))), None)
        if inner is None or any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        obj = inner.state_dict() if isinstance(inner, torch.nn.Module) else inner
    return obj


def read(path: str, trust_pickle: bool = False, **opts) -> Checkpoint:
    import torch

    from ..arrays import torch_to_numpy

    if os.path.getsize(path) == 0:
        raise FormatError(f"{path}: is empty (0 bytes), not a torch file; it was cut off while being written or "
                          "copied")
    _check_members(path)
    try:
        obj = _load(path, trust_pickle)
    except pickle.UnpicklingError as exc:
        if trust_pickle:
            raise FormatError(f"{path}: cannot be unpickled ({exc})") from exc
        raise UnsafePickleError(
            f"{path}: refused to load: its pickle needs more than tensors and containers "
            f"({_why_unsafe(exc)}), and unpickling it could run arbitrary code. If you trust where this "
            "file came from, pass trust_pickle=True (CLI: --trust-pickle); better, re-save it as a plain "
            "state dict or as safetensors") from None
    except LIBRARY_ERRORS as exc:
        raise FormatError(f"{path}: not a readable torch file ({describe(exc)}); "
                          "it may be truncated or damaged") from exc
    state = _unwrap(obj)
    if not isinstance(state, dict):
        raise FormatError(f"{path}: holds a {type(state).__name__}, not a dict of tensors (a state dict)")
    limits.check(path, "entries in the state dict", len(state), "MAX_TENSORS")
    sources = []
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.layout == torch.strided:
            try:
                dtype = _numpy_dtype(value.dtype)
            except TypeError:
                raise FormatError(f"{path}: tensor {name!r} has dtype {value.dtype}, which has no numpy "
                                  "equivalent; convert it (e.g. to float32) before saving") from None
            sources.append(TensorSource(name, tuple(value.shape), dtype, lambda t=value: _readonly(torch_to_numpy(t))))
    return Checkpoint(path, NAME, sources)


def _check_members(path: str) -> None:
    """A zip torch file's members must lie inside the file (torch memory-maps them; past the end is a crash)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80" and head != ZIP_MAGIC:
        return  # legacy pickle format (protocol 2 and up, as torch.save wrote it): read by torch, not mapped
    if head != ZIP_MAGIC:
        raise FormatError(f"{path}: not a torch file: it starts with {head!r}, neither a zip archive (what "
                          "torch.save writes) nor a pickle (its legacy format); it may be another kind of file "
                          "with a torch suffix")
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise FormatError(f"{path}: not a readable torch file ({describe(exc)}); it may be truncated or "
                          "damaged") from exc
    limits.check(path, "members in the archive", len(infos), "MAX_TENSORS")
    size = os.path.getsize(path)
    for info in infos:
        if info.header_offset + 30 + len(info.filename) + info.compress_size > size:
            raise FormatError(f"{path}: member {info.filename!r} claims {info.compress_size:,} bytes at offset "
                              f"{info.header_offset:,}, past the end of the file ({size:,} bytes); the file is "
                              "truncated or damaged")


def _readonly(array):
    array = array.view()
    array.flags.writeable = False
    return array


def _numpy_dtype(dtype):
    import torch

    from ..arrays import bfloat16

    if dtype == torch.bfloat16:
        return bfloat16()
    name = str(dtype).removeprefix("torch.")
    if name.startswith("float8"):
        import ml_dtypes

        if hasattr(ml_dtypes, name):
            return np.dtype(getattr(ml_dtypes, name))
    return torch.empty((), dtype=dtype).numpy().dtype


def write(path: str, sources, metadata, *, staging, progress=None, **opts) -> None:
    import torch

    from ..arrays import numpy_to_torch

    temp = staging.file(path)
    state = {}
    for s in sources:
        array = load_checked(s, path)
        state[s.name] = numpy_to_torch(array if array.flags.writeable else array.copy())
        if progress is not None:
            progress(s.nbytes)
    with open(temp, "wb") as f:
        torch.save(state, f)
    del state
