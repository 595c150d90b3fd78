"""Keras 3 ``.weights.h5`` and legacy Keras 2 ``.h5`` files opened as one lazy Checkpoint.

Keras 3 stores each object's variables as ``<object path>/vars/<i>``, the
object path following how the model holds it (``layers/dense_1``,
``layers/block/layers/conv2d``...; the model's own at ``vars/<i>``). Tensor
names are the datasets' ``/``-joined paths, in the order Keras wrote them.
"""
from __future__ import annotations

from ....errors import FormatError
from ...checkpoint import Checkpoint, TensorSource
from .datasets import dtype_of, find_datasets, loader, stored_order, text
from .legacy import legacy_layers, legacy_order

NAME = "keras"


def read_h5(path: str) -> Checkpoint:
    """An HDF5 weights file (Keras 3 or legacy Keras 2) as a lazy Checkpoint."""
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise FormatError(f"{path}: not a readable HDF5 file ({exc}); it may be truncated or damaged") from exc
    try:
        return checkpoint_of(path, h5, h5.close, {}, {})
    except BaseException:
        h5.close()
        raise


def checkpoint_of(path, h5, closer, metadata, layers) -> Checkpoint:
    """The Checkpoint of an open HDF5 weights file; ``closer`` runs on close, ``metadata``/``layers`` add to its own."""
    datasets = find_datasets(path, h5)
    legacy = legacy_order(path, h5, datasets)
    if legacy is not None:
        order, kind = legacy, "legacy-h5"
    else:
        order, kind = stored_order(datasets), metadata.pop("keras_file", "weights.h5")
    attrs = {k: text(v) for k, v in h5.attrs.items() if k != "model_config" and isinstance(text(v), str)}
    metadata = {**attrs, **metadata, "keras_file": kind}
    if kind == "legacy-h5":
        layers = {**legacy_layers(path, h5), **layers}
    else:
        layers = {**_group_names(h5, datasets), **layers}
    sources = [TensorSource(name, datasets[name].shape, dtype_of(datasets[name], path, name),
                            loader(path, datasets[name], name)) for name in order]
    return Checkpoint(path, NAME, sources, metadata=metadata, layers=layers, closer=closer)


def _group_names(h5, datasets) -> dict:
    """Object path -> {"name": layer name}, from the ``name`` attribute Keras 3 puts on each ``vars`` group."""
    out, seen = {}, set()
    for name in datasets:
        vars_path = name.rpartition("/")[0]
        if vars_path.rpartition("/")[2] != "vars" or vars_path in seen:
            continue
        seen.add(vars_path)
        layer_name = h5[vars_path].attrs.get("name")
        if layer_name is not None:
            out[vars_path[: -len("vars")].rstrip("/")] = {"name": text(layer_name)}
    return out
