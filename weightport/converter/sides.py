"""The two sides of a port or conversion: what a user handed over, resolved once into layer nodes.

Either side may be a live model (any framework an adapter knows), a checkpoint path, a loaded ``Checkpoint``
or a plain name -> array mapping (a state dict). A path is opened once; a ``.keras`` archive whose config
cannot say what each variable is becomes the Keras model it describes.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ShapeMismatchError, UnsupportedLayerError, UsageError
from ..layouts import separator
from . import renames, weight_norm
from .arrays import is_floating
from .checkpoint import MODEL_KEY, Checkpoint, as_sources
from .frameworks import adapter_for, require_adapter, walk
from .structure import config_nodes, infer_nodes, model_nodes

KERAS_IMPORTS = ("keras", "keras_hub", "keras_cv", "keras_nlp")  # packages Keras' deserializer imports itself


def is_path(obj) -> bool:
    return isinstance(obj, (str, os.PathLike))


def is_live(obj) -> bool:
    return adapter_for(obj) is not None


def read_file(path, *, format=None, trust_pickle: bool = False) -> Checkpoint:
    """The checkpoint at ``path``, opened lazily (``wp.load``)."""
    from .formats import open_checkpoint

    if not is_path(path):
        raise UsageError(f"wp.load reads a file: pass a path (str or os.PathLike), not a {type(path).__name__}; "
                         "a live model or a name -> array mapping can be given to port, convert and save directly")
    return open_checkpoint(path, format=format, trust_pickle=trust_pickle)


def checkpoint(obj, trust_pickle: bool) -> Checkpoint:
    """``obj`` as a Checkpoint: itself, the file at a path, or a mapping's arrays."""
    if isinstance(obj, Checkpoint):
        return obj
    if is_path(obj):
        return read_file(obj, trust_pickle=trust_pickle)
    if isinstance(obj, Mapping):
        return Checkpoint(None, "memory", as_sources(obj))
    raise UsageError(f"cannot read weights from a {type(obj).__module__}.{type(obj).__name__}: pass a live "
                     "model, a checkpoint path, a loaded Checkpoint or a name -> array mapping")


@dataclass
class Side:
    """One side as given, opened: a live model with its adapter, or a checkpoint."""

    obj: object
    framework: object = None
    checkpoint: Checkpoint | None = None

    @property
    def live(self) -> bool:
        return self.framework is not None

    @property
    def layout(self):
        return self.framework.layout if self.live else self.checkpoint.layout


def resolve(obj, trust_pickle: bool) -> Side:
    """``obj`` opened once (see the module docstring)."""
    fw = adapter_for(obj)
    if fw is not None:  # a live model, or a file an adapter walks as one (an ONNX graph)
        return Side(obj, framework=fw)
    if is_path(obj):
        ckpt = checkpoint(obj, trust_pickle)
        if ckpt.metadata.get("keras_file") != "keras" or config_nodes(ckpt) is not None:
            return Side(ckpt, checkpoint=ckpt)
        import keras

        ckpt.close()
        obj = keras.saving.load_model(obj, compile=False)
    fw = adapter_for(obj)
    return Side(obj, framework=fw) if fw is not None else Side(obj, checkpoint=checkpoint(obj, trust_pickle))


def live_nodes(obj, role: str, strict: bool) -> tuple:
    """(framework, rule-bearing layer nodes, notes on layers no rule handles) of a live model."""
    fw = require_adapter(obj, role)
    nodes, unmapped = walk(fw, obj)
    if unmapped and strict:
        u = unmapped[0]
        raise UnsupportedLayerError(
            f"{role} layer {u.path!r} ({u.class_name}) holds weights {u.weights} but no rule handles "
            f"{u.class_name}; the target was not changed. Register a rule for it (see `weightport rules`), "
            "or pass strict=False to port everything else")
    return fw, nodes, [f"{u.path} ({u.class_name}: {', '.join(u.weights)}): no rule" for u in unmapped]


def source_nodes(side: Side, *, model, strict: bool) -> tuple:
    """(nodes, notes) of a source: a live model's layers, or a checkpoint's groups (shaped by ``model``, its
    own live model, where given); weight-normalised pairs in a torch file read as their one weight."""
    if side.live:
        _, nodes, notes = live_nodes(side.obj, "source", strict)
        return nodes, notes
    ckpt, folded = weight_norm.folded(side.checkpoint)
    nodes, notes = _checkpoint_nodes(ckpt, model=model, strict=strict)
    for node in nodes:
        how = {slot: "weight_norm" for slot, name in node.names.items() if name in folded}
        for _, hp in node.candidates if how else ():
            hp["reparametrized"] = how
    return nodes, notes


def _checkpoint_nodes(ckpt, *, model, strict: bool) -> tuple:
    where = ckpt.path or "the given mapping"
    if model is not None:
        fw, live, _ = live_nodes(model, "model", strict)
        if ckpt.layout not in (None, fw.layout):
            raise UsageError(f"{where} holds {ckpt.layout}-layout tensors but model= is a {fw.layout} model")
        names_of = _stored_once(ckpt, fw.tensor_aliases(model), fw.saved_names(model),
                                names_for(model, fw, ckpt.path or ""))
        names_of, renamed = renames.read_renamed(ckpt, fw, live, names_of)  # keys renamed on save (transformers 5)
        nodes, missing = model_nodes(ckpt, live, names_of)
        if missing and strict:
            raise ShapeMismatchError(f"{where} lacks tensors the model needs: {', '.join(missing[:5])}"
                                     + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                                     + "; nothing was written or changed")
        used = {n for node in nodes for n in node.names.values()}
        leftovers = [n for n in ckpt if n not in used]
        return nodes, ([f"{m}: missing" for m in missing] + [f"{n}: not in the model" for n in leftovers]
                       + renames.notes(where, renamed))
    if ckpt.layout is None:
        raise UsageError(f"cannot tell whether {where} holds torch- or keras-layout tensors from its names; "
                         "pass model= (a live model in the file's layout)")
    from_config = config_nodes(ckpt) if ckpt.metadata.get("keras_file") == "keras" else None
    if from_config is not None:
        return from_config, []
    if ckpt.layout == "keras" and any(re.search(r"(^|/)vars/\d+$", n) for n in ckpt):
        raise UsageError(f"{where} stores Keras variables by index only; pass model= (the Keras model it "
                         "belongs to) or use the .keras archive, which records each layer's class"
                         + keras_model_hint(ckpt))
    nodes, leftovers = infer_nodes(ckpt, ckpt.layout, loose=True)
    # integer tensors nobody claims are bookkeeping (position_ids, step counters), not weights
    unexplained = [n for n in leftovers if is_floating(ckpt.dtype(n))]
    if unexplained and strict:
        raise UnsupportedLayerError(
            f"{where}: no rule recognises the tensors {unexplained[:5]}"
            + (f" and {len(unexplained) - 5} more" if len(unexplained) > 5 else "")
            + "; nothing was changed. Pass model= to give the structure, or strict=False to skip them")
    return nodes, [f"{n}: no rule recognises it" for n in leftovers]


def _stored_once(ckpt, aliases: dict, saved: dict, names_of) -> callable:
    """``names_of`` where a tensor is looked up under the name the file stores it by: the key the model's
    library writes it under (``saved``: transformers 5 writes legacy keys), or, for a tensor the model shares
    under several names (a tied head), the one name ``save_pretrained`` wrote it once by."""
    def named(node, slot):
        name = names_of(node, slot)
        if name in ckpt:
            return name
        if saved.get(name) in ckpt:
            return saved[name]
        return next((other for other in aliases.get(name, ()) if other in ckpt), name)
    return named


def names_for(model, fw, path) -> callable:
    """names(node, slot) -> the name of that slot's tensor in a file at ``path``, as ``model``'s framework
    stores it there: the adapter's own naming where it has one (Keras files, Flax collections), else the
    layer's path and the slot joined by the layout's separator."""
    own = fw.file_names(model, str(path))
    if own is not None:
        return own
    sep = separator(fw.layout)

    def joined(node, slot):
        if getattr(node, "loose", False):
            return node.path  # the owner's path and the weight's name already
        owner = getattr(node, "owner", None)  # a declared part's tensors are named as its owner's
        base = owner.path if owner is not None else re.sub(r"\[\d+\]$", "", node.path)  # [i]: module path
        return f"{base}{sep}{slot}" if base else slot
    return joined


def own_model_hint(side: Side) -> str:
    """For a refusal: the line that builds a checkpoint's own model, from what the file records (a Keras-layout
    file, ``keras_model_hint``) or from the ``config.json`` that ``save_pretrained`` left beside it (a torch file);
    "" where there is none to name."""
    ckpt = side.checkpoint
    if ckpt is None or ckpt.path is None:
        return ""
    if ckpt.layout == "keras":
        return keras_model_hint(ckpt)
    return transformers_hint(ckpt) if ckpt.layout in (None, "torch") else ""


def transformers_hint(ckpt) -> str:
    """The line that builds a transformers model from the ``architectures`` of the config.json beside ``ckpt``;
    "" when there is none (a Keras-layout file written beside the folder's config is not offered it)."""
    folder = os.path.dirname(os.path.abspath(ckpt.path))
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            classes = json.load(f).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return ""
    if len(classes) != 1 or not re.fullmatch(r"[A-Za-z_]\w*", str(classes[0])):
        return ""
    return (f"\nRather than a guess, pass the file's own model, built from the config.json beside it (its weights "
            f"are not used), so its structure and dataflow settle the port:\n"
            f"  model=transformers.{classes[0]}(transformers.AutoConfig.from_pretrained({folder!r}))")


def keras_model_hint(ckpt) -> str:
    """The line that rebuilds the Keras model a Keras-layout file was written from, out of the ``model.to_json()``
    that ``wp.save``/``wp.convert`` recorded in it (``MODEL_KEY``); where the file records none (Keras' own
    ``.weights.h5``, a torch file, a file converted with no Keras model at hand), a sentence saying so."""
    if ckpt.path is None:
        return ""
    try:
        record = json.loads(ckpt.metadata.get(MODEL_KEY) or "null")
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("class_name"), str):
        return (f"\n{ckpt.path} does not record which Keras model wrote it (Keras' own .weights.h5 files, torch "
                "files and files converted with no Keras model at hand hold no such note), so no line can rebuild "
                "that model here: pass model=, the Keras model the file was written from, built with the same config")
    what = record.get("registered_name") or record["class_name"]
    module = str(record.get("module") or "")
    imported = "" if module.split(".")[0] in KERAS_IMPORTS else f" (import {module} first: it registers {what})"
    path = os.path.abspath(ckpt.path)
    return (f"\nThe file records the Keras model it was written from ({what}): pass that model, rebuilt from its "
            f"config (its weights are not used), so its structure and dataflow settle the pairing{imported}:\n"
            f"  model=keras.models.model_from_json(wp.load({path!r}).metadata[{MODEL_KEY!r}])")
