"""Bad input is refused with a named error naming the file (and tensor); nothing partial is left, nothing changes."""
import json
import os
import struct

import numpy as np
import pytest

from weightport.converter.checkpoint import TensorSource
from weightport.converter.formats import open_checkpoint, write_checkpoint
from weightport.errors import FormatError, OutputExistsError, UnsafePickleError, WeightportError

pytestmark = pytest.mark.keras_free  # never imports Keras: runs under one backend (conftest.py)


def snapshot(folder):
    """Every file under ``folder`` with its bytes and modification time."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = (f.read(), os.stat(p).st_mtime_ns)
    return out


def assert_refused(path, error, *needles, **open_kwargs):
    """Opening (then converting) ``path`` raises ``error`` naming it; the folder is left exactly as it was."""
    folder = os.path.dirname(path)
    before = snapshot(folder)
    with pytest.raises(error) as info:
        with open_checkpoint(path, **open_kwargs) as ckpt:
            write_checkpoint(os.path.join(folder, "out.safetensors"), ckpt)
    assert issubclass(info.type, WeightportError)
    message = str(info.value)
    for needle in (os.path.basename(path),) + needles:
        assert needle in message, f"{needle!r} missing from: {message}"
    assert snapshot(folder) == before, "the input was modified or output was left behind"
    return message


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def good_file(tmp_path):
    path = tmp_path / "good.safetensors"
    rng = np.random.default_rng(0)
    write_checkpoint(path, {"fc.weight": rng.standard_normal((7, 5)).astype(np.float32),
                            "fc.bias": rng.standard_normal(5).astype(np.float32)})
    return path


def test_truncated_safetensors(tmp_path):
    raw = good_file(tmp_path).read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(raw[:-7])
    assert_refused(str(bad), FormatError, "truncated", "fc.bias")
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(raw[:5])
    assert_refused(str(tiny), FormatError, "too short")


def test_header_length_beyond_the_file(tmp_path):
    raw = good_file(tmp_path).read_bytes()
    bad = tmp_path / "long_header.safetensors"
    bad.write_bytes(struct.pack("<Q", len(raw) * 4) + raw[8:])
    assert_refused(str(bad), FormatError, "header length", "past the end")


def test_overlapping_offsets(tmp_path):
    header = {"a.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b.weight": {"dtype": "F32", "shape": [3], "data_offsets": [12, 24]}}
    bad = tmp_path / "overlap.safetensors"
    bad.write_bytes(safetensors_bytes(header, bytes(24)))
    assert_refused(str(bad), FormatError, "overlap", "b.weight", "a.weight")


def test_shape_and_dtype_do_not_fit_the_byte_range(tmp_path):
    header = {"a.weight": {"dtype": "F32", "shape": [7, 5], "data_offsets": [0, 120]}}
    bad = tmp_path / "mismatch.safetensors"
    bad.write_bytes(safetensors_bytes(header, bytes(120)))
    assert_refused(str(bad), FormatError, "a.weight", "(7, 5)", "140", "120")


def test_unknown_dtype_and_hole_are_refused(tmp_path):
    bad = tmp_path / "dtype.safetensors"
    bad.write_bytes(safetensors_bytes({"w": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 2]}}, bytes(2)))
    assert_refused(str(bad), FormatError, "'w'", "Q7")
    hole = tmp_path / "hole.safetensors"
    hole.write_bytes(safetensors_bytes({"w": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}, bytes(4)))
    assert_refused(str(hole), FormatError, "'w'", "holes")


class TouchFile:
    """Unpickling this calls open(path, "w"): the kind of side effect weights_only must prevent."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    import torch

    victim = tmp_path / "victim" / "touched.txt"
    victim.parent.mkdir()
    bad = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.ones(2, 3), "payload": TouchFile(str(victim))}, bad)
    assert not victim.exists()
    message = assert_refused(str(bad), UnsafePickleError, "trust_pickle=True", "--trust-pickle")
    assert "open" in message  # says why: the global it would call
    assert not victim.exists(), "the pickle ran code"
    with open_checkpoint(bad, trust_pickle=True) as ckpt:  # control: the payload is live once trusted
        assert list(ckpt) == ["fc.weight"]
    assert victim.exists()


def test_h5_external_link_is_refused(tmp_path):
    import h5py

    with h5py.File(tmp_path / "outside.h5", "w") as f:
        f.create_dataset("secret", data=np.arange(6.0))
    bad = tmp_path / "linked.weights.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("layers/dense/vars/0", data=np.ones((7, 5), np.float32))
        f["layers/dense/vars/1"] = h5py.ExternalLink(str(tmp_path / "outside.h5"), "secret")
    assert_refused(str(bad), FormatError, "external link", "layers/dense/vars/1")


def test_h5_virtual_dataset_is_refused(tmp_path):
    import h5py

    with h5py.File(tmp_path / "part.h5", "w") as f:
        f.create_dataset("x", data=np.arange(5.0))
    layout = h5py.VirtualLayout(shape=(5,), dtype="f8")
    layout[:] = h5py.VirtualSource(str(tmp_path / "part.h5"), "x", shape=(5,))
    bad = tmp_path / "virtual.weights.h5"
    with h5py.File(bad, "w") as f:
        f.create_virtual_dataset("layers/dense/vars/0", layout)
    assert_refused(str(bad), FormatError, "virtual", "layers/dense/vars/0")


def test_missing_shard_named_by_the_index(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {f"block{i}.weight": rng.standard_normal((3, 5)).astype(np.float32) for i in range(4)}
    written = write_checkpoint(tmp_path / "model.safetensors", tensors, shard_size=100)
    os.remove(written[1])
    missing = os.path.basename(written[1])
    assert_refused(written[-1], FormatError, missing, "missing")


def test_shard_holding_tensors_the_index_does_not_assign(tmp_path):
    rng = np.random.default_rng(2)
    tensors = {f"block{i}.weight": rng.standard_normal((3, 5)).astype(np.float32) for i in range(4)}
    written = write_checkpoint(tmp_path / "model.safetensors", tensors, shard_size=100)
    index = json.loads(open(written[-1]).read())
    index["weight_map"]["block0.weight"] = os.path.basename(written[-2])
    with open(written[-1], "w") as f:
        json.dump(index, f)
    assert_refused(written[-1], FormatError, "block0.weight", "does not hold")


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert_refused(str(bad), FormatError, "not a checkpoint format")
    assert_refused(str(tmp_path / "absent.safetensors"), FormatError, "no such file")


@pytest.mark.parametrize("filename", ["model.safetensors", "model.npz", "model.pt", "model.weights.h5"])
def test_existing_output_is_refused_without_overwrite(tmp_path, filename):
    old = {"a.weight": np.zeros((2, 3), np.float32)}
    new = {"a.weight": np.ones((3, 2), np.float32)}
    write_checkpoint(tmp_path / filename, old)
    before = snapshot(tmp_path)
    with pytest.raises(OutputExistsError, match=filename):
        write_checkpoint(tmp_path / filename, new)
    assert snapshot(tmp_path) == before
    write_checkpoint(tmp_path / filename, new, overwrite=True)
    with open_checkpoint(tmp_path / filename) as ckpt:
        assert np.array_equal(ckpt["a.weight"], new["a.weight"])
    assert os.listdir(tmp_path) == [filename]


def test_existing_index_refuses_a_sharded_write_before_any_shard(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    before = snapshot(tmp_path)
    with pytest.raises(OutputExistsError, match="index.json"):
        write_checkpoint(tmp_path / "model.safetensors", {"a": np.zeros(40, np.float32), "b": np.ones(40)},
                         shard_size=100)
    assert snapshot(tmp_path) == before


def _failing_sources():
    def boom():
        raise OSError("disk went away")

    return [TensorSource("first.weight", (7, 5), np.float32, lambda: np.ones((7, 5), np.float32)),
            TensorSource("second.weight", (5,), np.float32, boom)]


@pytest.mark.parametrize("filename, kwargs", [("model.safetensors", {}), ("model.safetensors", {"shard_size": 64}),
                                              ("model.npz", {}), ("model.pt", {}), ("model.weights.h5", {})])
def test_failure_mid_write_leaves_nothing(tmp_path, filename, kwargs):
    with pytest.raises(OSError, match="disk went away"):
        write_checkpoint(tmp_path / filename, _failing_sources(), **kwargs)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("filename", ["model.safetensors", "model.npz", "model.pt", "model.weights.h5"])
def test_source_that_breaks_its_promise_is_refused(tmp_path, filename):
    liar = TensorSource("fc.weight", (7, 5), np.float32, lambda: np.ones((5, 7), np.float32))
    with pytest.raises(FormatError, match=r"fc\.weight.*\(7, 5\).*\(5, 7\)"):
        write_checkpoint(tmp_path / filename, [liar])
    assert os.listdir(tmp_path) == []


def test_a_file_that_is_neither_zip_nor_pickle_is_not_called_an_unsafe_pickle(tmp_path):
    """Text with a .pt suffix is not a pickle needing trust: the advice to pass trust_pickle would be wrong."""
    pytest.importorskip("torch")
    path = tmp_path / "notes.pt"
    path.write_text("not a torch file at all")
    with pytest.raises(FormatError, match="neither a zip archive") as caught:
        open_checkpoint(str(path))
    assert not isinstance(caught.value, UnsafePickleError) and "trust" not in str(caught.value)
