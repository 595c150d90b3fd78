"""Checkpoint containers: one module per format, picked by magic bytes (reading) or suffix (writing).

Each format module declares its name, suffixes, sniff order and whether it
writes, and has ``sniff``, ``read`` and ``write``; the table of them is
discovered (see ``table``), so adding a format is adding one file. No module
imports a framework at import time. Shared file I/O is in ``fileio``. Writers receive a ``Staging``
(``opts["staging"]``): every output file is written under a temporary name in
its destination folder and renamed into place only when the whole output is
complete, so a failure leaves nothing behind (see ``staging``).

Reading is guarded at this boundary (see ``guard``): whatever a format's
library raises on a damaged or hostile file, on opening or on a later lazy
tensor load, reaches the caller as a FormatError naming the file; what a file
may claim is bounded (see ``limits``).
"""
from __future__ import annotations

import os

from ...errors import FormatError, UsageError
from ..checkpoint import LAYOUT_KEY, Checkpoint, as_sources
from .guard import LIBRARY_ERRORS, guard_checkpoint, reading
from .staging import Staging, check_space
from .table import by_name, modules, names, register, suffixes, unregister

__all__ = ["Staging", "by_name", "format_for", "modules", "names", "open_checkpoint", "register", "sniff",
           "suffixes", "unregister", "write_checkpoint"]

_HEAD_BYTES = 64


def __getattr__(name):
    if name == "MODULES":  # the format names in sniff order, as this tuple was before the table was discovered
        return names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _suffix_match(path):
    lower = os.path.basename(str(path)).lower()
    best, best_len = None, 0
    for mod in modules():
        for suffix in mod.SUFFIXES:
            if lower.endswith(suffix) and len(suffix) > best_len:
                best, best_len = mod, len(suffix)
    return best


def _known_suffixes() -> str:
    return ", ".join(suffixes())


def format_for(path):
    """The format module that writes ``path``, chosen by its suffix (the longest that matches)."""
    mod = _suffix_match(path)
    if mod is None or not mod.WRITABLE:
        raise UsageError(f"cannot tell which format to write for {str(path)!r}: name it with one of "
                         f"{', '.join(suffixes(writable=True))}, or pass format=")
    return mod


def sniff(path):
    """The format module whose magic bytes match ``path``, else the one its suffix names, else None."""
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    for mod in modules():
        if not getattr(mod, "FOLDER", False) and _sniffs(mod, path, head):
            return mod
    return _suffix_match(path)


def _folder_format(path, format):
    """The format that reads the folder ``path`` (one whose module says ``FOLDER = True`` and sniffs it)."""
    folders = [m for m in modules() if getattr(m, "FOLDER", False)]
    if format:
        mod = by_name(format)
        found = mod if mod in folders else None
    else:
        found = next((m for m in folders if _sniffs(m, path, b"")), None)
    if found is None:
        kinds = " or ".join(m.NAME for m in folders)
        raise FormatError(f"{path} is a folder; give the checkpoint file itself (for sharded safetensors, the "
                          f"*.safetensors.index.json)" + (f", or a checkpoint folder ({kinds})" if kinds else ""))
    return found


def _sniffs(mod, path, head) -> bool:
    try:
        return bool(mod.sniff(str(path), head))
    except LIBRARY_ERRORS:
        return False  # too damaged to recognise: its name may still say, and its reader explain


def open_checkpoint(path, *, format=None, trust_pickle=False) -> Checkpoint:
    """Open a checkpoint lazily; its format is found from magic bytes, then the suffix.

    ``trust_pickle=True`` lets torch files run arbitrary pickled code; only for files you trust.
    """
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".index.json"):
        path += ".index.json"  # written with shard_size=: the shards and their index stand for the name
    if not os.path.exists(path):
        raise FormatError(f"{path}: no such file; check the path")
    try:
        if os.path.isdir(path):
            mod = _folder_format(path, format)
        else:
            mod = by_name(format) if format else sniff(path)
    except OSError as exc:
        raise FormatError(f"{path}: cannot be read ({exc})") from exc
    if mod is None:
        raise FormatError(f"{path}: not a checkpoint format weightport knows (by its first bytes or its "
                          f"name); supported: {_known_suffixes()}")
    with reading(path, f"cannot be read as {mod.NAME}"):
        ckpt = mod.read(path, trust_pickle=trust_pickle)
    guard_checkpoint(ckpt)
    return ckpt


def write_checkpoint(path, sources, *, format=None, metadata=None, overwrite=False, shard_size=None,
                     progress=None, replace_input=False, like=None) -> list:
    """Write tensors to ``path`` one at a time; returns the paths written (shards, then any index).

    ``sources`` is a Checkpoint, a name -> array mapping, (name, array) pairs or
    TensorSources. ``metadata`` (str -> str; ``weightport_layout`` records the
    layout) is stored where the format has room for it; a Checkpoint passes on
    its own layout when no metadata is given. ``shard_size`` (bytes) splits
    safetensors output. ``progress(nbytes)`` is called after each tensor.
    Nothing is left behind on failure, and an existing output is refused
    unless ``overwrite=True``; an output that is the file a tensor is read
    from is refused unless ``replace_input=True``. ``like`` is the live target model, for formats that
    store more than the tensors (a ``.keras`` archive's config, an Orbax checkpoint's tree structure).
    """
    path = os.fspath(path)
    mod = by_name(format) if format else format_for(path)
    if not mod.WRITABLE:
        raise UsageError(f"{path}: weightport reads {mod.NAME} files but does not write them; write another format")
    if metadata is None and isinstance(sources, Checkpoint) and sources.layout:
        metadata = {LAYOUT_KEY: sources.layout}
    metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    sources = as_sources(sources)
    opts = {"progress": progress}
    if like is not None:
        opts["like"] = like
    if shard_size is not None:
        if mod.NAME != "safetensors":
            raise UsageError(f"shard_size works for safetensors output only, not {mod.NAME} ({path})")
        if int(shard_size) <= 0:
            raise UsageError(f"shard_size must be a positive number of bytes, got {shard_size!r}")
        opts["shard_size"] = int(shard_size)
    inputs = {origin for s in sources for origin in s.origin}
    with Staging(overwrite=overwrite, inputs=sorted(inputs), replace_input=replace_input) as staging:
        check_space(os.path.dirname(os.path.abspath(path)), sum(s.nbytes for s in sources))
        mod.write(path, sources, metadata, staging=staging, **opts)
        return staging.commit()
