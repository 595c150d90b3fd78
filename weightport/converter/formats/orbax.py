"""Orbax checkpoints (``orbax.checkpoint``): a folder, read one tensor at a time and written whole.

What a path may name:

- an item folder, holding ``_METADATA`` (what ``StandardCheckpointer`` and
  ``PyTreeCheckpointer`` write);
- a step folder of a ``CheckpointManager`` (``<root>/<step>``), holding one
  item folder (``default``, or any single other name);
- a ``CheckpointManager`` root: its latest step is read (name a step by
  giving its folder).

Names are the tree's keys joined with ``/`` (``params/Dense_0/kernel``), as for
Flax msgpack files; an NNX state's variables, which Orbax stores as
``<path>/value``, are named by their path. Shapes and dtypes come from the
metadata; each tensor is restored alone (the rest of the tree a placeholder),
on the host, as numpy in its stored dtype (bfloat16 included). Leaves that are
not arrays (Python numbers, strings) are not tensors and are left out.

Writing nests the ``/`` names back into a tree (into the structure of the
``like`` model's state where one is given: an NNX module's ``nnx.state``, a
Linen variables dict), so ``StandardCheckpointer().restore(path, target)``
reads it; its leaves no tensor fills (an NNX RNG state) are saved as ``like``
holds them. The whole tree is held in memory while Orbax writes it. Another
layout than Flax's is recorded in the checkpoint's custom metadata.

orbax is imported only when a folder is read or written.
"""
from __future__ import annotations

import os
import re

import numpy as np

from ...errors import FormatError, UsageError
from ..checkpoint import LAYOUT_KEY, Checkpoint, TensorSource, detect_layout
from .fileio import load_checked

NAME = "orbax"
SUFFIXES = ()  # a folder has no suffix: written with format="orbax"
SNIFF_ORDER = 80
WRITABLE = True
FOLDER = True
ITEM_METADATA = "_METADATA"
MARKERS = (ITEM_METADATA, "_CHECKPOINT_METADATA", "manifest.ocdbt", "_sharding")
_STEP = re.compile(r"^(?:.*_)?(\d+)$")  # "12", or with a step prefix "step_12"; never Orbax's "12.orbax-...-tmp-..."


def _folders(path) -> list:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _marked(path) -> bool:
    return any(os.path.exists(os.path.join(path, m)) for m in MARKERS)


def _steps(path) -> list:
    """(step, folder) of a manager root's step folders, oldest first."""
    found = [(int(m[1]), name) for name in _folders(path) if (m := _STEP.match(name))]
    return sorted(found)


def sniff(path: str, head: bytes) -> bool:
    """A folder with Orbax's files in it, in an item folder of it, or in a step's item folder."""
    if not os.path.isdir(path):
        return False
    if _marked(path) or any(_marked(os.path.join(path, d)) for d in _folders(path)):
        return True
    steps = _steps(path)
    return bool(steps) and sniff(os.path.join(path, steps[-1][1]), head)


def locate(path: str) -> tuple:
    """(item folder, step or None) that ``path`` names (see the module docstring); FormatError if none."""
    if os.path.isfile(os.path.join(path, ITEM_METADATA)):
        return path, None
    items = [d for d in _folders(path) if os.path.isfile(os.path.join(path, d, ITEM_METADATA))]
    if len(items) == 1 or "default" in items:
        return os.path.join(path, items[0] if len(items) == 1 else "default"), None
    if items:
        raise FormatError(f"{path}: a checkpoint step of several items ({', '.join(items)}); give the item's "
                          f"folder, e.g. {os.path.join(path, items[0])}")
    steps = _steps(path)
    if steps:
        step, name = steps[-1]
        item, _ = locate(os.path.join(path, name))
        return item, step
    if _marked(path):
        raise FormatError(f"{path}: an Orbax checkpoint folder without its {ITEM_METADATA} (the tree's "
                          "structure, shapes and dtypes); it is incomplete or damaged: save it again")
    raise FormatError(f"{path}: no Orbax checkpoint in this folder ({ITEM_METADATA} in it, in an item folder, or "
                      "in a numbered step folder)")


def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError as exc:
        raise UsageError(f"Orbax checkpoints need orbax-checkpoint ({exc}); pip install orbax-checkpoint, or "
                         "weightport[jax]") from None
    return ocp


# -- reading ------------------------------------------------------------------------------------------------


def _skeleton(node, ocp):
    """The tree with every leaf a placeholder (what Orbax skips when restoring)."""
    if isinstance(node, dict):
        return {k: _skeleton(v, ocp) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_skeleton(v, ocp) for v in node)
    return ocp.PLACEHOLDER


def _with_leaf(node, keys, leaf):
    """A copy of ``node`` along ``keys`` only, with ``leaf`` at the end (the rest shared, not copied)."""
    if not keys:
        return leaf
    key, rest = keys[0], keys[1:]
    if isinstance(node, dict):
        return {**node, key: _with_leaf(node[key], rest, leaf)}
    items = list(node)
    items[key] = _with_leaf(items[key], rest, leaf)
    return type(node)(items)


def _leaves(node, keys=()):
    """(keys, metadata) of every array leaf, in the tree's order."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, keys + (k,))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _leaves(v, keys + (i,))
    elif type(node).__name__ == "ArrayMetadata" and hasattr(node, "shape") and hasattr(node, "dtype"):
        yield keys, node  # ScalarMetadata (a Python number), StringMetadata: not tensors


def _name(keys, tree) -> str:
    """``a/b/c``; an NNX variable's ``<path>/value`` (the only entry of its map) is named by its path."""
    parent = tree
    for k in keys[:-1]:
        parent = parent[k]
    if len(keys) > 1 and keys[-1] == "value" and isinstance(parent, dict) and len(parent) == 1:
        keys = keys[:-1]
    return "/".join(str(k) for k in keys)


def _loader(ckptr, item, skeleton, keys, meta, ocp):
    def load():
        wanted = _with_leaf(skeleton, keys, meta)
        args = _with_leaf(skeleton, keys, ocp.RestoreArgs(restore_type=np.ndarray, dtype=meta.dtype))
        restored = ckptr.restore(item, args=ocp.args.PyTreeRestore(item=wanted, restore_args=args))
        for k in keys:
            restored = restored[k]
        out = np.asarray(restored)
        out.flags.writeable = False
        return out

    return load


def read(path: str, **opts) -> Checkpoint:
    if not os.path.isdir(path):
        raise FormatError(f"{path}: not a folder; an Orbax checkpoint is a folder (give the folder holding "
                          f"{ITEM_METADATA}, a step folder, or a CheckpointManager's root)")
    item, step = locate(path)
    ocp = _orbax()
    ckptr = ocp.PyTreeCheckpointer()
    try:
        meta = ckptr.metadata(item)
        tree = getattr(getattr(meta, "item_metadata", None), "tree", None)
        if not isinstance(tree, (dict, list, tuple)):
            raise FormatError(f"{item}: orbax finds no tree of arrays in it (its {ITEM_METADATA}, or the array "
                              "store it describes, is missing or damaged); the checkpoint is incomplete: save it again")
    except BaseException:
        ckptr.close()
        raise
    custom = getattr(meta, "custom_metadata", None) or {}
    metadata = {str(k): str(v) for k, v in custom.items() if isinstance(v, str)}
    if item != path:
        metadata["orbax_item"] = os.path.relpath(item, path)
    if step is not None:
        metadata["orbax_step"] = str(step)
    skeleton = _skeleton(tree, ocp)
    sources = [TensorSource(_name(keys, tree), leaf.shape, leaf.dtype, _loader(ckptr, item, skeleton, keys, leaf, ocp))
               for keys, leaf in _leaves(tree)]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise FormatError(f"{item}: tensor names {twice[:5]} appear twice once the tree's keys are joined with '/'")
    layout = metadata.get(LAYOUT_KEY) or ("torch" if detect_layout(names) == "torch" else "flax")
    return Checkpoint(path, NAME, sources, metadata=metadata, layout=layout, closer=ckptr.close)


# -- writing ------------------------------------------------------------------------------------------------


def _nested(arrays: dict, path) -> dict:
    """The ``/`` names as nested dicts."""
    root: dict = {}
    for name, array in arrays.items():
        parts = name.split("/")
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"{path}: {name!r} lies under another tensor's name; a tree cannot hold both")
        if parts[-1] in node or "" in parts:
            raise UsageError(f"{path}: tensor name {name!r} is empty between '/' or is also a prefix of others")
        node[parts[-1]] = array
    return root


def like_tree(like):
    """The tree Orbax saves for ``like``: an NNX module's ``nnx.state``, a Linen ``(module, variables)`` pair's
    variables, a mapping itself; None for anything else."""
    from collections.abc import Mapping

    if isinstance(like, tuple) and len(like) == 2 and isinstance(like[1], Mapping):
        return like[1]
    if isinstance(like, Mapping):
        return like
    if any(c.__module__.startswith("flax.nnx") for c in type(like).__mro__):
        from flax import nnx

        return nnx.state(like)
    return None


def _key(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def shaped_like(arrays: dict, tree, path):
    """``tree`` with each leaf replaced by the array of its name (``a/b`` or, for an NNX variable, ``a/b`` of
    ``a/b/value``); leaves no array fills stay as ``tree`` holds them."""
    import jax

    used = set()

    def fill(keypath, leaf):
        keys = [_key(k) for k in keypath]
        for name in ("/".join(keys), "/".join(keys[:-1]) if keys and keys[-1] == "value" else None):
            if name in arrays:
                used.add(name)
                array = arrays[name]
                if tuple(np.shape(leaf)) != array.shape:
                    raise UsageError(f"{path}: tensor {name!r} is {array.shape} but like= holds "
                                     f"{tuple(np.shape(leaf))} there; nothing was written")
                return jax.numpy.asarray(array)
        return leaf

    out = jax.tree_util.tree_map_with_path(fill, tree)
    stray = [n for n in arrays if n not in used]
    if stray:
        raise UsageError(f"{path}: tensors {stray[:5]} have no place in the structure of like= (its state's "
                         "paths); nothing was written. Give like= the model these weights are for")
    return out


def write(path: str, sources, metadata, *, staging, progress=None, like=None, **opts) -> None:
    ocp = _orbax()
    import jax

    arrays = {}
    for s in sources:
        arrays[s.name] = load_checked(s, path)
        if progress is not None:
            progress(s.nbytes)
    structure = like_tree(like) if like is not None else None
    if structure is not None:
        tree = shaped_like(arrays, structure, path)
    else:
        tree = jax.tree.map(jax.numpy.asarray, _nested(arrays, path))
    custom = dict(metadata) if metadata.get(LAYOUT_KEY, "flax") != "flax" else {}
    temp = staging.folder(path)
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
        ckptr.save(temp, args=ocp.args.StandardSave(tree), custom_metadata=custom)
