"""Fuzzing every reader: a damaged file is a FormatError (a WeightportError), never another exception.

Each test starts from a small valid file of one format and damages it as
disks, downloads and attackers do: cut it short, flip bytes, copy a piece of
it over another, cut a piece out or repeat one. Opening the result and
reading every tensor must either work or raise a WeightportError; anything
else (KeyError, struct.error, RecursionError...) fails the test.

Bounded for CI: a fixed seed (``derandomize``) and few examples per format;
``WEIGHTPORT_FUZZ_EXAMPLES=2000`` explores further.
"""
import io
import json
import os

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from badfiles import keras_archive
from weightport.converter.formats import open_checkpoint, write_checkpoint
from weightport.errors import WeightportError

pytestmark = pytest.mark.keras_free  # never imports Keras: runs under one backend (conftest.py)

EXAMPLES = int(os.environ.get("WEIGHTPORT_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
TENSORS = {"enc.fc.weight": (np.arange(21, dtype=np.float32).reshape(7, 3) - 10) / 3,
           "enc.fc.bias": np.arange(3, dtype=np.float16),
           "enc.norm.num_batches_tracked": np.array(5, np.int64)}


def _torch_legacy(path):
    import torch

    torch.save({k: torch.from_numpy(v.copy()) for k, v in TENSORS.items()}, path,
               _use_new_zipfile_serialization=False)


def _npz_compressed(path):
    np.savez_compressed(path, **{k: v for k, v in TENSORS.items()})


def _legacy_h5(path):
    with h5py.File(path, "w") as h5:
        h5.attrs["layer_names"] = np.array([b"dense"], dtype="S")
        h5.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"layers": [
            {"class_name": "Dense", "config": {"name": "dense", "units": 3}}]}})
        group = h5.create_group("dense")
        group.attrs["weight_names"] = np.array([b"dense/kernel:0", b"dense/bias:0"], dtype="S")
        group.create_dataset("dense/kernel:0", data=TENSORS["enc.fc.weight"].T.copy())
        group.create_dataset("dense/bias:0", data=np.ones(7, np.float32))


def _keras_archive(path):
    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        h5.create_dataset("layers/dense/vars/0", data=TENSORS["enc.fc.weight"])
        h5.create_dataset("layers/dense/vars/1", data=np.ones(3, np.float32))
    keras_archive(path, weights=buf.getvalue())


def _written(name):
    return lambda path: write_checkpoint(path, TENSORS, metadata={"weightport_layout": "torch"})


def _sharded(path):
    write_checkpoint(path, TENSORS, shard_size=64, metadata={"weightport_layout": "torch"})


# file name -> how to make a valid one; the reader is picked from the damaged bytes (then the name)
SEEDS = {
    "m.safetensors": _written("safetensors"),
    "m.safetensors.index.json": _sharded,
    "m.pt": _written("torch"),
    "legacy.pt": _torch_legacy,
    "m.npz": _written("npz"),
    "compressed.npz": _npz_compressed,
    "m.weights.h5": _written("keras"),
    "legacy.h5": _legacy_h5,
    "m.keras": _keras_archive,
    "m.msgpack": _written("msgpack"),
}


@st.composite
def damage(draw, size):
    """(kind, args): one way of spoiling ``size`` bytes."""
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "delete", "repeat"]))
    pos = st.integers(0, max(size - 1, 0))
    if kind == "truncate":
        return kind, (draw(pos),)
    if kind == "flip":
        return kind, (draw(st.lists(st.tuples(pos, st.integers(1, 255)), min_size=1, max_size=8)),)
    return kind, (draw(pos), draw(pos), draw(st.integers(1, 64)))


def spoil(raw: bytes, kind, args) -> bytes:
    if kind == "truncate":
        return raw[:args[0]]
    if kind == "flip":
        out = bytearray(raw)
        for i, mask in args[0]:
            out[i] ^= mask
        return bytes(out)
    a, b, n = args
    if kind == "splice":  # a piece copied over another place
        piece = raw[a:a + n]
        return raw[:b] + piece + raw[b + len(piece):]
    if kind == "delete":
        return raw[:a] + raw[a + n:]
    return raw[:a] + raw[a:a + n] * 2 + raw[a + n:]  # repeat


def read_everything(path):
    """Open ``path`` and read every tensor's bytes, as inspect and convert would."""
    with open_checkpoint(path) as ckpt:
        for name in ckpt:
            ckpt.shape(name), ckpt.dtype(name), ckpt.source(name).nbytes
            array = np.asarray(ckpt[name])
            array.tobytes()
        dict(ckpt.metadata), dict(ckpt.layers), ckpt.layout


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    made = {}
    for name, make in SEEDS.items():
        folder = tmp_path_factory.mktemp(name.replace(".", "_"))
        make(folder / name)
        read_everything(folder / name)  # the seed itself is valid
        made[name] = folder / name
    return made


@pytest.mark.parametrize("name", list(SEEDS))
def test_damaged_file_is_a_named_error_or_reads(seeds, name):
    path = seeds[name]
    raw = path.read_bytes()
    if name.endswith(".index.json"):  # damage the index, or the first shard it names
        shard = path.parent / sorted(p for p in os.listdir(path.parent) if p.endswith("-of-00002.safetensors"))[0]
        targets = [path, shard]
    else:
        targets = [path]
    originals = {t: t.read_bytes() for t in targets}

    @FUZZ
    @given(which=st.integers(0, len(targets) - 1), how=damage(max(len(raw), len(originals[targets[-1]]))))
    def check(which, how):
        target = targets[which]
        data = originals[target]
        kind, args = how
        if kind == "flip":
            args = ([(i % max(len(data), 1), m) for i, m in args[0]],)
        try:
            target.write_bytes(spoil(data, kind, args))
            try:
                read_everything(path)
            except WeightportError as exc:
                assert str(exc) and (path.name in str(exc) or target.name in str(exc)), str(exc)
        finally:
            target.write_bytes(data)

    check()


def test_damage_helpers_do_what_they_say():
    raw = bytes(range(10))
    assert spoil(raw, "truncate", (3,)) == raw[:3]
    assert spoil(raw, "flip", ([(0, 1)],))[0] == 1
    assert spoil(raw, "splice", (0, 5, 2)) == bytes([0, 1, 2, 3, 4, 0, 1, 7, 8, 9])
    assert spoil(raw, "delete", (2, 0, 3)) == bytes([0, 1, 5, 6, 7, 8, 9])
    assert spoil(raw, "repeat", (1, 0, 2)) == bytes([0, 1, 2, 1, 2, 3, 4, 5, 6, 7, 8, 9])
