"""Keras object paths (where ``save_weights`` puts each variable), from a model's config or a live model.

Keras imports only in ``variable_paths``, which needs a live model.
"""
from __future__ import annotations

import re

from ....errors import UsageError


def _snake(name: str) -> str:
    """Keras' own snake_case of a class name (how containers name their children's groups)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def config_layers(config: dict, base: str = "") -> dict:
    """Object path in the weights file -> {"class_name", "name", "config"}, from a model's config.json.

    Sequential and Functional models keep their layers in a list, which Keras
    saves under ``layers/<snake_case class name>[_<n>]``; a Sequential's
    automatic InputLayer is not in that list.
    """
    inner = config.get("config")
    inner = inner if isinstance(inner, dict) else {}
    name = inner.get("name")
    out = {base: {"class_name": config.get("class_name"), "name": name if isinstance(name, str) else None,
                  "config": inner}}
    children = inner.get("layers")
    if not isinstance(children, list):
        return out
    if (config.get("class_name") == "Sequential" and children and isinstance(children[0], dict)
            and children[0].get("class_name") == "InputLayer"):
        children = children[1:]
    used: dict = {}
    for child in children:
        if not isinstance(child, dict) or not isinstance(child.get("class_name"), str):
            continue
        key = _snake(child["class_name"])
        used[key] = used.get(key, -1) + 1
        name = key if used[key] == 0 else f"{key}_{used[key]}"
        out.update(config_layers(child, f"{base}/layers/{name}" if base else f"layers/{name}"))
    return out


def variable_paths(keras_model) -> list:
    """The dataset path Keras' ``save_weights`` gives each variable of ``keras_model.weights``, in that order.

    Found by running Keras' own saving walk with a store that records paths
    instead of writing, so nested layers, shared layers and attribute names
    land exactly where Keras puts them.
    """
    from keras.src.saving import saving_lib

    class Recorder(saving_lib.H5IOStore):
        def __init__(self):
            self.where, self.kept, self.prefix = {}, [], ""

        def __bool__(self):
            return True

        def make(self, path, metadata=None):
            self.prefix = path
            return self

        def __setitem__(self, key, value):
            self.kept.append(value)  # keeps ids unique while recording
            self.where.setdefault(id(value), f"{self.prefix}/vars/{key}" if self.prefix else f"vars/{key}")

        def close(self):
            pass

    recorder = Recorder()
    saving_lib._save_state(keras_model, weights_store=recorder, assets_store=None, inner_path="",
                           visited_saveables=set())
    paths = [recorder.where.get(id(v)) for v in keras_model.weights]
    missing = [v.path for v, p in zip(keras_model.weights, paths) if p is None]
    if missing:
        raise UsageError(f"Keras does not save {missing} of {keras_model.name} as plain variables (LoRA or "
                         "quantized layers store derived values); merge or drop them before writing .weights.h5")
    return paths
