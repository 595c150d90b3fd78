"""Keras files, one format (``keras``): ``.weights.h5`` (Keras 3), ``.keras`` archives, legacy Keras 2 ``.h5``.

- ``h5`` opens an HDF5 weights file, walked and checked by ``datasets``,
  ordered as Keras 2 listed it by ``legacy``;
- ``archive`` reads a ``.keras`` zip's weights in place, its layers named by
  its config (``paths``);
- ``writer`` writes ``.weights.h5`` as Keras' ``save_weights`` does, and ``archive_writer`` a ``.keras``
  archive around one, its config from the live model (``like=``);
- ``paths.variable_paths`` gives a live model's variables their dataset paths.

h5py is imported when a file is read or written; Keras only by
``variable_paths``, which needs a live model.
"""
from __future__ import annotations

from ..fileio import ZIP_MAGIC
from .archive import ARCHIVE_WEIGHTS, is_archive, read_archive
from .datasets import H5_MAGIC
from .h5 import NAME, read_h5
from .paths import config_layers, variable_paths
from .writer import write

__all__ = ["ARCHIVE_WEIGHTS", "H5_MAGIC", "NAME", "SNIFF_ORDER", "SUFFIXES", "WRITABLE", "config_layers", "read",
           "sniff", "variable_paths", "write"]

SUFFIXES = (".weights.h5", ".keras", ".h5", ".hdf5")
SNIFF_ORDER = 20
WRITABLE = True  # .weights.h5 and .h5; a .keras archive with the model's config from like=


def sniff(path: str, head: bytes) -> bool:
    return head[:8] == H5_MAGIC or is_archive(path, head)


def read(path: str, **opts):
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == ZIP_MAGIC or path.lower().endswith(".keras"):
        return read_archive(path)
    return read_h5(path)
