"""Legacy Keras 2 ``.h5``: the layer order of ``layer_names`` / ``weight_names``, and the layers' config.

Keras 2 lists its layers in a ``layer_names`` attribute (at the root, or
under ``model_weights`` in a whole-model file) and each layer's datasets in
its ``weight_names``; a whole-model file also holds ``model_config``.
"""
from __future__ import annotations

import numpy as np

from ....errors import FormatError
from ..guard import load_json
from .datasets import stored_order, text


def legacy_order(path, h5, datasets):
    """Keras 2 order from ``layer_names`` / ``weight_names``, or None if the file is not a legacy one."""
    root, prefix = h5, ""
    if "layer_names" not in h5.attrs and "model_weights" in h5 and "layer_names" in h5["model_weights"].attrs:
        root, prefix = h5["model_weights"], "model_weights/"
    if "layer_names" not in root.attrs:
        return None
    order = []
    layer_names = _names(path, root.attrs["layer_names"], "layer_names")
    for layer in layer_names:
        group = f"{prefix}{layer}"
        if group not in h5:
            raise FormatError(f"{path}: layer_names lists {layer!r} but the file has no group {group!r}")
        weight_names = _names(path, h5[group].attrs.get("weight_names", []), f"{group}'s weight_names")
        for wname in weight_names:
            name = f"{group}/{wname}"
            if name not in datasets:
                raise FormatError(f"{path}: layer {layer!r} lists weight {wname!r} but the file has no dataset "
                                  f"{name!r}; the file is damaged")
            order.append(name)
    listed = set(order)
    return order + [n for n in stored_order(datasets) if n not in listed]


def _names(path, value, what) -> list:
    """An attribute listing names (layer_names, weight_names) as a list of str; anything else is damage."""
    if isinstance(value, (bytes, str)):
        value = [value]
    if isinstance(value, np.ndarray) and value.size == 0:
        value = []  # Keras writes a layer without weights as an empty float array
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU" and value.ndim <= 1:
        value = value.tolist() if value.ndim else [value.item()]
    if not isinstance(value, list):
        raise FormatError(f"{path}: {what} should list names, but holds {type(value).__name__}; the file is "
                          "damaged")
    out = []
    for name in value:
        try:
            out.append(name.decode("utf-8") if isinstance(name, bytes) else name)
        except UnicodeDecodeError:
            raise FormatError(f"{path}: {what} holds a name that is not UTF-8 text ({name[:40]!r}); the file "
                              "is damaged") from None
        if not isinstance(out[-1], str) or not out[-1] or "\x00" in out[-1]:
            raise FormatError(f"{path}: {what} holds {out[-1]!r}, not a name; the file is damaged")
    return out


def legacy_layers(path, h5) -> dict:
    """Layer group -> {"class_name", "name", "config"}, from a whole-model file's ``model_config``; {} without one."""
    config = text(h5.attrs.get("model_config"))
    prefix = "model_weights/" if "model_weights" in h5 else ""
    config = load_json(config, path, "the model_config attribute") if isinstance(config, str) else None
    inner = config.get("config") if isinstance(config, dict) else None
    layers = inner.get("layers") if isinstance(inner, dict) else None
    return {f"{prefix}{lay['config']['name']}": {"class_name": lay.get("class_name"), "name": lay["config"]["name"],
                                                "config": lay["config"]}
            for lay in (layers if isinstance(layers, list) else []) if isinstance(lay, dict)
            and isinstance(lay.get("config"), dict) and isinstance(lay["config"].get("name"), str)}
