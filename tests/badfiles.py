"""Small damaged or hostile checkpoints, one builder per kind of bad input (issue 12), for the hardening tests.

Each builder writes into a folder and returns the path; the bytes are made by
hand (or by breaking a file weightport wrote), never by the library under test
reading them.
"""
import io
import json
import struct
import zipfile

import h5py
import numpy as np

from weightport.converter.formats import write_checkpoint

WEIGHTS = {"fc.weight": np.arange(35, dtype=np.float32).reshape(7, 5) / 7, "fc.bias": np.ones(7, np.float32)}


def good(folder, name):
    """A small valid file of the format ``name``'s suffix picks."""
    path = folder / name
    meta = {"weightport_layout": "torch"}
    write_checkpoint(path, WEIGHTS, metadata=meta)
    return path


def safetensors_bytes(header, data=b""):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def deep_json(depth=100_000):
    return b"[" * depth + b"]" * depth


def huge_int_json(digits=5000):
    return b'{"a": ' + b"9" * digits + b"}"


def keras_archive(path, config=None, metadata=None, weights=None, raw_config=None, raw_metadata=None):
    """A .keras archive built by hand: config.json, metadata.json and model.weights.h5."""
    if weights is None:
        buf = io.BytesIO()
        with h5py.File(buf, "w") as h5:
            h5.create_dataset("layers/dense/vars/0", data=np.ones((3, 2), np.float32))
            h5.create_dataset("layers/dense/vars/1", data=np.zeros(2, np.float32))
        weights = buf.getvalue()
    config = config if config is not None else {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "Dense", "config": {"name": "dense", "units": 2}}]}}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", raw_config if raw_config is not None else json.dumps(config))
        z.writestr("metadata.json", raw_metadata if raw_metadata is not None else json.dumps(
            metadata if metadata is not None else {"keras_version": "3.0.0"}))
        z.writestr("model.weights.h5", weights)
    return path


def msgpack_array(shape_bytes, dtype_bytes, data):
    """A flax ext-1 array: (shape, dtype name, raw bytes), shape and dtype given as encoded msgpack."""
    body = b"\x93" + shape_bytes + dtype_bytes + b"\xc4" + bytes([len(data)]) + data
    return b"\xc7" + bytes([len(body)]) + b"\x01" + body


def msgpack_str(text):
    raw = text.encode()
    return bytes([0xA0 | len(raw)]) + raw


def msgpack_map(items):
    """A fixmap of already-encoded (key, value) byte pairs."""
    return bytes([0x80 | len(items)]) + b"".join(k + v for k, v in items)


# -- one builder per kind of bad input of issue 12, section 1: name -> (builder(folder) -> path, words the error says)

CASES = {}


def case(*needles):
    def register(build):
        CASES[build.__name__] = (build, needles)
        return build
    return register


@case("empty", "0 bytes")
def empty_pt(folder):
    path = folder / "empty.pt"
    path.write_bytes(b"")
    return path


@case("truncated")
def truncated_pt(folder):
    path = good(folder, "cut.pt")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


@case("not a readable torch file")
def truncated_legacy_pt(folder):
    import torch

    path = folder / "legacy.pt"
    torch.save({"a": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:40])
    return path


@case("a.npy", "decompressing")
def npz_corrupt_deflate(folder):
    path = folder / "deflated.npz"
    np.savez_compressed(path, a=np.linspace(0, 1, 10_000).reshape(100, 100))
    raw = bytearray(path.read_bytes())
    for i in range(200, 400):
        raw[i] ^= 0x55
    path.write_bytes(bytes(raw))
    return path


@case("weightport notes", "'dtypes' must map names to strings")
def npz_comment_wrong_types(folder):
    path = good(folder, "notes.npz")
    with zipfile.ZipFile(path, "a") as z:
        z.comment = json.dumps({"weightport": {"dtypes": {"fc.bias": 5}, "metadata": [1]}}).encode()
    return path


@case("'metadata' must map names to strings")
def npz_comment_metadata_not_a_map(folder):
    path = good(folder, "meta.npz")
    with zipfile.ZipFile(path, "a") as z:
        z.comment = json.dumps({"weightport": {"dtypes": {}, "metadata": [1, 2]}}).encode()
    return path


@case("fc.weight", "holds 4 bytes of data")
def npz_member_shorter_than_its_header(folder):
    path = folder / "short.npz"
    with zipfile.ZipFile(path, "w") as z:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (7, 5)})
        z.writestr("fc.weight.npy", buf.getvalue() + bytes(4))  # the header claims 140 bytes
    return path


@case("layers/d/vars/0", "h5py.Empty")
def h5_empty_dataset(folder):
    path = folder / "empty.weights.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("layers/d/vars/0", data=h5py.Empty("f4"))
    return path


@case("layers/d/vars/0", "bfloat16", "4-byte items")
def h5_float32_tagged_bfloat16(folder):
    path = folder / "tagged.weights.h5"
    with h5py.File(path, "w") as h5:
        ds = h5.create_dataset("layers/d/vars/0", data=np.ones((2, 3), np.float32))
        ds.attrs["dtype"] = "bfloat16"
    return path


@case("'layers/d/loop'", "a loop")
def h5_group_linked_to_itself(folder):
    path = folder / "loop.weights.h5"
    with h5py.File(path, "w") as h5:
        group = h5.create_group("layers/d")
        group.create_dataset("vars/0", data=np.ones(2, np.float32))
        group["loop"] = group
    return path


@case("strings, records or opaque bytes")
def h5_string_dataset(folder):
    path = folder / "text.weights.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("layers/d/vars/0", data=np.array([b"not", b"numbers"]))
    return path


@case("layer_names", "not UTF-8")
def h5_legacy_names_not_utf8(folder):
    path = folder / "legacy_names.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["layer_names"] = np.array([b"dense\xff\xfe"], dtype="S")
    return path


@case("model_config", "nested too deeply")
def h5_legacy_model_config_nested(folder):
    path = folder / "legacy_config.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["model_config"] = deep_json(50_000)
        h5.attrs["layer_names"] = np.array([b"dense"], dtype="S")
        group = h5.create_group("dense")
        group.attrs["weight_names"] = np.array([b"dense/kernel:0"], dtype="S")
        group.create_dataset("dense/kernel:0", data=np.ones((2, 3), np.float32))
    return path


@case("metadata.json", "JSON list, not an object")
def keras_metadata_is_a_list(folder):
    return keras_archive(folder / "meta.keras", metadata=[1, 2])


@case("config.json", "nested too deeply")
def keras_config_nested(folder):
    return keras_archive(folder / "deep.keras", raw_config=deep_json())


@case("metadata.json", "5,000 digits")
def keras_huge_integer(folder):
    return keras_archive(folder / "huge.keras", raw_metadata=huge_int_json())


@case("header", "nested too deeply")
def safetensors_nested_header(folder):
    path = folder / "deep.safetensors"
    path.write_bytes(safetensors_bytes(b'{"a":' + deep_json() + b"}"))
    return path


@case("header", "5,000 digits")
def safetensors_huge_integer(folder):
    path = folder / "huge.safetensors"
    path.write_bytes(safetensors_bytes(huge_int_json()))
    return path


@case("dtype ['F32']", "F32")
def safetensors_dtype_is_a_list(folder):
    path = folder / "dtype_list.safetensors"
    path.write_bytes(safetensors_bytes({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, bytes(4)))
    return path


@case("dtype {'x': 1}")
def safetensors_dtype_is_a_map(folder):
    path = folder / "dtype_map.safetensors"
    path.write_bytes(safetensors_bytes({"a": {"dtype": {"x": 1}, "shape": [1], "data_offsets": [0, 4]}}, bytes(4)))
    return path


@case("shard index", "nested too deeply")
def sharded_index_nested(folder):
    good(folder, "m.safetensors")
    path = folder / "m.safetensors.index.json"
    path.write_bytes(b'{"weight_map": ' + deep_json() + b"}")
    return path


@case("shape {'a': 2}", "list of non-negative integers")
def msgpack_shape_is_a_map(folder):
    path = folder / "shape_map.msgpack"
    array = msgpack_array(msgpack_map([(msgpack_str("a"), b"\x02")]), msgpack_str("float32"), bytes(8))
    path.write_bytes(msgpack_map([(msgpack_str("params"), msgpack_map([(msgpack_str("k"), array)]))]))
    return path


@case("'k'", "chunked array", "['x']")
def msgpack_chunks_lack_zero(folder):
    path = folder / "chunks.msgpack"
    array = msgpack_array(b"\x91\x02", msgpack_str("float32"), bytes(8))
    node = msgpack_map([(msgpack_str("__msgpack_chunked_array__"), b"\xc3"), (msgpack_str("shape"), b"\x91\x02"),
                        (msgpack_str("chunks"), msgpack_map([(msgpack_str("x"), array)]))])
    path.write_bytes(msgpack_map([(msgpack_str("k"), node)]))
    return path


@case("'(-1,)f4'", "not a numeric dtype")
def msgpack_subarray_dtype(folder):
    path = folder / "subarray.msgpack"
    path.write_bytes(msgpack_map([(msgpack_str("k"), msgpack_array(b"\x91\x02", msgpack_str("(-1,)f4"), bytes(8)))]))
    return path


@case("shape [True]")
def msgpack_shape_of_booleans(folder):
    path = folder / "bool_shape.msgpack"
    path.write_bytes(msgpack_map([(msgpack_str("k"), msgpack_array(b"\x91\xc3", msgpack_str("float32"), bytes(4)))]))
    return path
