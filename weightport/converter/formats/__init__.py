"""Checkpoint containers: one module per format, picked by magic bytes (reading) or suffix (writing).

Each module has ``NAME``, ``SUFFIXES``, ``sniff(path, head) -> bool``,
``read(path, **opts) -> Checkpoint`` and ``write(path, sources, metadata, **opts)``.
No module imports a framework at import time. Writers receive a ``Staging``
(``opts["staging"]``): every output file is written under a temporary name in
its destination folder and renamed into place only when the whole output is
complete, so a failure leaves nothing behind.
"""
from __future__ import annotations

import importlib
import os
import uuid

from ...errors import FormatError, OutputExistsError, UsageError
from ..checkpoint import LAYOUT_KEY, Checkpoint, as_sources

MODULES = ("safetensors", "keras", "npz", "torch", "msgpack")  # sniffed in this order; msgpack's weak magic last
_HEAD_BYTES = 64


def modules() -> list:
    return [importlib.import_module(f"{__name__}.{name}") for name in MODULES]


def by_name(name: str):
    if name not in MODULES:
        raise UsageError(f"unknown format {name!r}; known formats: {', '.join(MODULES)}")
    return importlib.import_module(f"{__name__}.{name}")


def _suffix_match(path: str):
    lower = os.path.basename(str(path)).lower()
    best, best_len = None, 0
    for mod in modules():
        for suffix in mod.SUFFIXES:
            if lower.endswith(suffix) and len(suffix) > best_len:
                best, best_len = mod, len(suffix)
    return best


def _known_suffixes() -> str:
    return ", ".join(s for mod in modules() for s in mod.SUFFIXES)


def format_for(path):
    """The format module that writes ``path``, chosen by its suffix (the longest that matches)."""
    mod = _suffix_match(path)
    if mod is None:
        raise UsageError(f"cannot tell which format to write for {str(path)!r}: name it with one of "
                         f"{_known_suffixes()}, or pass format=")
    return mod


def sniff(path):
    """The format module whose magic bytes match ``path``, else the one its suffix names, else None."""
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    for mod in modules():
        if mod.sniff(str(path), head):
            return mod
    return _suffix_match(path)


def open_checkpoint(path, *, format=None, trust_pickle=False) -> Checkpoint:
    """Open a checkpoint lazily; its format is found from magic bytes, then the suffix.

    ``trust_pickle=True`` lets torch files run arbitrary pickled code; only for files you trust.
    """
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".index.json"):
        path += ".index.json"  # written with shard_size=: the shards and their index stand for the name
    if not os.path.exists(path):
        raise FormatError(f"{path}: no such file; check the path")
    if os.path.isdir(path):
        raise FormatError(f"{path} is a folder; give the checkpoint file itself "
                          "(for sharded safetensors, the *.safetensors.index.json)")
    try:
        mod = by_name(format) if format else sniff(path)
    except OSError as exc:
        raise FormatError(f"{path}: cannot be read ({exc})") from exc
    if mod is None:
        raise FormatError(f"{path}: not a checkpoint format weightport knows (by its first bytes or its "
                          f"name); supported: {_known_suffixes()}")
    return mod.read(path, trust_pickle=trust_pickle)


def write_checkpoint(path, sources, *, format=None, metadata=None, overwrite=False, shard_size=None,
                     progress=None) -> list:
    """Write tensors to ``path`` one at a time; returns the paths written (shards, then any index).

    ``sources`` is a Checkpoint, a name -> array mapping, (name, array) pairs or
    TensorSources. ``metadata`` (str -> str; ``weightport_layout`` records the
    layout) is stored where the format has room for it; a Checkpoint passes on
    its own layout when no metadata is given. ``shard_size`` (bytes) splits
    safetensors output. ``progress(nbytes)`` is called after each tensor.
    Nothing is left behind on failure, and an existing output is refused
    unless ``overwrite=True``.
    """
    path = os.fspath(path)
    mod = by_name(format) if format else format_for(path)
    if metadata is None and isinstance(sources, Checkpoint) and sources.layout:
        metadata = {LAYOUT_KEY: sources.layout}
    metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    sources = as_sources(sources)
    opts = {"progress": progress}
    if shard_size is not None:
        if mod.NAME != "safetensors":
            raise UsageError(f"shard_size works for safetensors output only, not {mod.NAME} ({path})")
        if int(shard_size) <= 0:
            raise UsageError(f"shard_size must be a positive number of bytes, got {shard_size!r}")
        opts["shard_size"] = int(shard_size)
    staging = Staging(overwrite=overwrite)
    try:
        mod.write(path, sources, metadata, staging=staging, **opts)
        return staging.commit()
    finally:
        staging.discard()


class Staging:
    """Output files written under temporary names beside their destinations, renamed in only when all are done."""

    def __init__(self, overwrite: bool = False):
        self.overwrite = overwrite
        self._pending: list = []  # (temporary, final)

    def file(self, final) -> str:
        """A temporary path to write ``final`` to; refuses an existing ``final`` unless overwriting."""
        final = os.path.abspath(os.fspath(final))
        if os.path.exists(final) and not self.overwrite:
            raise OutputExistsError(f"{final} already exists; nothing was written. Pass overwrite=True "
                                    "(--overwrite) to replace it, or choose another name")
        if any(f == final for _, f in self._pending):
            raise UsageError(f"{final} would be written twice in one output")
        folder = os.path.dirname(final)
        if not os.path.isdir(folder):
            raise UsageError(f"cannot write {final}: the folder {folder} does not exist")
        temp = os.path.join(folder, f".{os.path.basename(final)}.{uuid.uuid4().hex[:8]}.partial")
        self._pending.append((temp, final))
        return temp

    def commit(self) -> list:
        """Rename every temporary file into place (in the order they were asked for); the final paths."""
        done = []
        for temp, final in self._pending:
            os.replace(temp, final)
            done.append(final)
        self._pending = []
        return done

    def discard(self) -> None:
        for temp, _ in self._pending:
            try:
                os.remove(temp)
            except FileNotFoundError:
                pass
        self._pending = []
