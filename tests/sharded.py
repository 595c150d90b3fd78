"""Helpers for the sharded-conversion tests: a small sharded torch-layout checkpoint, and outputs compared byte
for byte."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from weightport.converter.formats import write_checkpoint

# Linear layers of distinct, non-square, prime-ish sizes: about 2.4 MB in all, in 6 source shards
SHAPES = [(61, 1031), (67, 997), (71, 1009), (59, 1013), (73, 1019), (53, 1021), (79, 991), (47, 1033)]
SHARD = 520_000  # bytes: 5 output shards of whole layers (one or two each)


def make_source(folder) -> str:
    """A sharded torch-layout safetensors checkpoint of eight Linear layers; the path of its index."""
    rng = np.random.default_rng(7)
    tensors = {}
    for i, (out, inp) in enumerate(SHAPES):
        tensors[f"blocks.{i}.proj.weight"] = rng.standard_normal((out, inp)).astype("float32")
        tensors[f"blocks.{i}.proj.bias"] = rng.standard_normal(out).astype("float32")
    os.makedirs(folder, exist_ok=True)
    write_checkpoint(os.path.join(folder, "model.safetensors"), tensors, shard_size=450_000,
                     metadata={"weightport_layout": "torch"})
    return os.path.join(folder, "model.safetensors.index.json")


def contents(folder) -> dict:
    """Every file in ``folder`` (hidden ones too: a partial file would show) -> its bytes."""
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


def partials(folder) -> list:
    return [n for n in os.listdir(folder) if n.endswith(".partial")]


def cli(*args, cwd=None):
    exe = os.path.join(os.path.dirname(sys.executable), "weightport")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch")})
