"""``.keras`` archives written as Keras writes them: ``metadata.json``, ``config.json``, ``model.weights.h5``.

The config and metadata come from the live Keras model the weights are for
(``like``), serialized as ``model.save`` does; the weights member is the
``.weights.h5`` this package writes, assembled in a scratch file beside the
output and stored uncompressed (as Keras stores it, so it is read in place).
The model's variables no tensor fills (a seed generator's state) are written
as the model holds them, as a port into the live model leaves them.
``keras.saving.load_model`` then gives that model with the written weights.

Keras is imported only here, when an archive is written.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import zipfile

from ....errors import UsageError
from ...checkpoint import TensorSource
from ..guard import describe
from .archive import ARCHIVE_WEIGHTS
from .paths import variable_paths
from .writer import write_h5


def model_json(model, path) -> tuple:
    """(config.json, metadata.json) text for ``model``, as ``model.save`` writes them; UsageError if Keras
    cannot serialize the model."""
    import keras

    if not isinstance(model, keras.Model):
        raise UsageError(f"{path}: a .keras archive holds a Keras model; like= is a {type(model).__name__}. "
                         "Pass the keras.Model the weights are for")
    try:
        from keras.src.saving.serialization_lib import ObjectSharingScope  # shared layers, as model.save does
    except ImportError:  # another Keras layout: layers shared between branches are then written twice
        ObjectSharingScope = contextlib.nullcontext
    try:
        with ObjectSharingScope():
            config = json.dumps(keras.saving.serialize_keras_object(model))
    except Exception as exc:  # noqa: BLE001 - whatever get_config raises, the user's model is at fault
        raise UsageError(f"{path}: Keras cannot record the config of {model.name!r} ({type(model).__name__}): "
                         f"{describe(exc)}; nothing was written. Give its class a get_config() (and register "
                         "it with keras.saving.register_keras_serializable), or write a .weights.h5 and load it "
                         "with model.load_weights") from None
    metadata = json.dumps({"keras_version": keras.__version__,
                           "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")})
    return config, metadata


def _with_rest(model, sources) -> list:
    """``sources`` and, after them, the model's variables none of them fills, as the model holds them."""
    named = {s.name for s in sources}
    rest = [TensorSource.of(p, v) for v, p in zip(model.weights, variable_paths(model)) if p not in named]
    return list(sources) + rest


def write_archive(path: str, sources, metadata, *, staging, progress=None, like=None) -> None:
    if like is None:
        raise UsageError(f"{path}: a .keras archive records the model's config, which weights alone do not give: "
                         "pass like= (the Keras model the weights are for), or write a .weights.h5 and load it "
                         "with model.load_weights")
    config, meta = model_json(like, path)
    weights = staging.scratch(path)
    write_h5(weights, _with_rest(like, list(sources)), metadata, progress, path)
    with zipfile.ZipFile(staging.file(path), "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("metadata.json", meta)
        archive.writestr("config.json", config)
        archive.write(weights, ARCHIVE_WEIGHTS)
