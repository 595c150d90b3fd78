"""The file engine's streamed write path, byte for byte against a plain numpy conversion of the same file.

The engine transposes in worker threads: for safetensors, each worker fills a
part in the writer's staging memory and one writer thread writes it at its
offset (in any order); for other formats and casts, a few blocks ahead of one
writer, in reused buffers. These
tests force many small parts and blocks (with a tail that is not a whole one)
so that every part of both pipelines runs, and compare the whole output file
with one built from ``source.T`` by numpy.
"""
import json
import os
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import weightport as wp  # noqa: E402
from weightport.mappings import fast_transpose  # noqa: E402

HEADS, HEAD_DIM = 4, 12
D = HEADS * HEAD_DIM  # 48


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.num_heads = HEADS
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(D, D, bias=False) for _ in range(4))


class Net(nn.Module):
    """Odd sizes on purpose: 1001 and 37 are no multiple of a block or of 16."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(53, D)  # stored bytes copied as they are
        self.self_attn = Attention()  # transpose, then reshape to (D, heads, head_dim) / (heads, head_dim, D)
        self.norm = nn.LayerNorm(D)  # unchanged
        self.up = nn.Linear(D, 1001)  # transposed kernel (48, 1001), bias unchanged
        self.down = nn.Linear(1001, 37)  # transposed kernel (1001, 37)


def _model():
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p))
    return net


def _reference(state, header):
    """Each output tensor as numpy computes it from the source: ``W.T`` for kernels (reshaped), else as stored."""
    out = {}
    for name, info in header.items():
        shape = tuple(info["shape"])
        if name.endswith("/kernel"):
            layer, part = name.rsplit("/", 1)[0], name.split("/")[-2]
            torch_name = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "attention_output": "o_proj"}
            key = (f"self_attn.{torch_name[part]}.weight" if part in torch_name else f"{layer}.weight")
            out[name] = state[key].T.reshape(shape)
        else:
            key = name.replace("/", ".").replace(".embeddings", ".weight").replace(".gamma", ".weight") \
                .replace(".beta", ".bias")
            out[name] = state[key].reshape(shape)
    return out


def _read(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    return data, 8 + n, header


def _convert(tmp_path, monkeypatch, dtype=None, name="k.safetensors"):
    net = _model()
    src = tmp_path / "t.safetensors"
    if not src.exists():
        wp.save(net, src)
    monkeypatch.setattr(fast_transpose, "BLOCK_BYTES", 64)  # blocks of 16 rows: many blocks, a short tail
    monkeypatch.setattr(fast_transpose, "PART_BYTES", 64)  # parts of 16 rows, put by several workers
    wp.convert(src, tmp_path / name, net, to="keras", dtype=dtype)
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    return state, tmp_path / name


@pytest.mark.parametrize("dtype", [None, "float16"])
def test_output_file_equals_a_plain_numpy_conversion_byte_for_byte(tmp_path, monkeypatch, dtype):
    state, out = _convert(tmp_path, monkeypatch, dtype)
    data, start, header = _read(out)
    expected = _reference(state, header)
    kinds = {n: tuple(i["shape"]) for n, i in header.items()}
    # every kind of tensor is there: plain and reshaped transposes, unchanged, stored bytes copied as they are
    assert kinds["self_attn/query/kernel"] == (D, HEADS, HEAD_DIM)
    assert kinds["self_attn/attention_output/kernel"] == (HEADS, HEAD_DIM, D)
    assert kinds["down/kernel"] == (1001, 37) and kinds["up/kernel"] == (D, 1001)
    assert {"embed/embeddings", "norm/gamma", "up/bias"} <= set(kinds)
    body = b"".join(np.ascontiguousarray(expected[n]).astype(dtype or np.float32).tobytes()
                    for n in sorted(header, key=lambda n: header[n]["data_offsets"][0]))
    assert data[start:] == body  # the whole data section: every tensor, in order, nothing else
    for n, info in header.items():
        assert info["dtype"] == ("F16" if dtype else "F32"), n


def test_transposes_really_are_transposes(tmp_path, monkeypatch):
    """Negative control for the reference: a kernel written as stored (not transposed) would not match it."""
    state, out = _convert(tmp_path, monkeypatch)
    data, start, header = _read(out)
    lo, hi = header["down/kernel"]["data_offsets"]
    written = np.frombuffer(data[start + lo:start + hi], np.float32).reshape(1001, 37)
    np.testing.assert_array_equal(written, state["down.weight"].T)
    assert not np.array_equal(written.reshape(-1), state["down.weight"].reshape(-1))


def test_block_sizes_do_not_change_the_bytes(tmp_path, monkeypatch):
    """Default blocks (one or two per tensor here) and 16-row blocks write the same file."""
    _, small = _convert(tmp_path, monkeypatch, name="small.safetensors")
    monkeypatch.setattr(fast_transpose, "BLOCK_BYTES", 32 << 20)
    monkeypatch.setattr(fast_transpose, "PART_BYTES", 32 << 20)
    wp.convert(tmp_path / "t.safetensors", tmp_path / "big.safetensors", _model(), to="keras")
    assert small.read_bytes() == (tmp_path / "big.safetensors").read_bytes()


def test_threaded_blocks_match_the_transpose_for_odd_shapes():
    rng = np.random.default_rng(1)
    for shape, rows, workers, depth in [((37, 1001), 16, 2, 2), ((1001, 37), 48, 3, 1), ((5, 3), 16, 4, 2),
                                        ((33, 17), 16, 1, 0)]:
        a = rng.standard_normal(shape).astype(np.float32)
        blocks = [b.copy() for b in fast_transpose.threaded_blocks(a, rows=rows, workers=workers, depth=depth)]
        assert all(len(b) == rows for b in blocks[:-1]) and 0 < len(blocks[-1]) <= rows
        np.testing.assert_array_equal(np.concatenate(blocks), a.T)


def test_buffers_are_reused_across_tensors_only_inside_reusing_buffers():
    a = np.arange(64 * 40, dtype=np.float32).reshape(64, 40)

    def first_buffers():
        return {id(np.asarray(b).base) for b in fast_transpose.threaded_blocks(a, rows=16)}

    with fast_transpose.reusing_buffers():
        assert first_buffers() == first_buffers()  # the same memory for the next tensor
        outer = fast_transpose.threaded_blocks(a, rows=16)
        held = next(outer).copy()
        inner = [b.copy() for b in fast_transpose.threaded_blocks(a, rows=16)]  # the buffers are busy: own ones
        rest = [held] + [b.copy() for b in outer]
    np.testing.assert_array_equal(np.concatenate(inner), a.T)
    np.testing.assert_array_equal(np.concatenate(rest), a.T)


def test_a_failure_mid_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """A transpose that fails after some blocks were written: no output, no temporary file left behind."""
    net = _model()
    src = tmp_path / "t.safetensors"
    wp.save(net, src)
    monkeypatch.setattr(fast_transpose, "BLOCK_BYTES", 64)
    monkeypatch.setattr(fast_transpose, "PART_BYTES", 64)
    original, calls = fast_transpose._fill_part, []

    def failing(a, first, block, lo, hi, finite=None):
        calls.append(first)
        if len(calls) > 40:
            raise OSError(28, "No space left on device (simulated)")
        return original(a, first, block, lo, hi, finite)

    monkeypatch.setattr(fast_transpose, "_fill_part", failing)
    with pytest.raises(Exception) as info:
        wp.convert(src, tmp_path / "k.safetensors", net, to="keras")
    assert "space" in str(info.value).lower() or "space" in str(info.value.__cause__).lower()
    assert len(calls) > 40  # it failed part-way through, after blocks had been written
    assert sorted(os.listdir(tmp_path)) == ["t.safetensors"]


def test_stored_bytes_across_file_systems_are_copied_through_a_small_buffer(tmp_path, monkeypatch):
    """Where the kernel cannot copy (another file system), unchanged tensors are read in chunks from the file:
    the same bytes, and no layer is translated (which held its tensors until the unit ended)."""
    from weightport.converter import engine

    _, normal = _convert(tmp_path, monkeypatch, name="normal.safetensors")
    translated = []
    original = engine.translate
    monkeypatch.setattr(engine, "translate", lambda p, watch=None: translated.append(p) or original(p, watch))

    def cross_device(*args):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", cross_device)
    monkeypatch.setattr(fast_transpose, "BLOCK_BYTES", 64)
    monkeypatch.setattr(fast_transpose, "PART_BYTES", 64)
    wp.convert(tmp_path / "t.safetensors", tmp_path / "fallback.safetensors", _model(), to="keras")
    assert (tmp_path / "fallback.safetensors").read_bytes() == normal.read_bytes()
    assert translated == []  # every tensor here is stored bytes or a streamed transpose


def test_chunked_copy_crosses_chunk_boundaries_and_refuses_a_short_file(tmp_path):
    from weightport.converter.formats import fileio
    from weightport.errors import FormatError

    data = bytes(range(256)) * 41  # 10496 bytes
    (tmp_path / "src").write_bytes(data)
    with open(tmp_path / "dst", "wb") as f:
        f.write(b"head")
        f.flush()
        fileio.copy_range_read(f.fileno(), (str(tmp_path / "src"), 7, 10000), 4, chunk=1000 + 3)
    assert (tmp_path / "dst").read_bytes() == b"head" + data[7:10007]
    with open(tmp_path / "dst2", "wb") as f, pytest.raises(FormatError, match="ended inside"):
        fileio.copy_range_read(f.fileno(), (str(tmp_path / "src"), 10000, 1000), 0, chunk=256)


@pytest.mark.parametrize("dtype", ["u1", "<u2", "<u4", "<u8"])
def test_wide_transposes_move_every_bit_pattern(dtype):
    """16 bytes at a time, then split: every value's bits land where ``a.T`` puts them (NaN payloads, signalling
    NaNs, subnormals as float32), for blocks that start anywhere and workers' column ranges of any size."""
    rng = np.random.default_rng(3)
    size = np.dtype(dtype).itemsize
    a = rng.integers(0, 256, size=(70, 96 * size), dtype=np.uint8).view(dtype)  # 96 columns of any itemsize
    if size == 4:
        a[0, :6] = [0x7F800001, 0xFF800001, 0x7FA00000, 0x00000001, 0x7FC00001, 0xFFFFFFFF]  # as float32: sNaN...
    values = a.view({4: np.float32, 8: np.float64}.get(size, a.dtype))
    expected = values.T.copy()
    for first, rows, lo, hi in [(0, 96, 0, 70), (16, 32, 3, 61), (48, 48, 17, 18), (95, 1, 0, 70), (8, 24, 0, 0)]:
        block = np.zeros((rows, 70), values.dtype)
        fast_transpose.fill_transposed(values, first, block, lo, hi)
        assert block.view(a.dtype)[:, lo:hi].tobytes() == expected.view(a.dtype)[first:first + rows, lo:hi].tobytes()
        assert not block.view(a.dtype)[:, :lo].any() and not block.view(a.dtype)[:, hi:].any()  # nothing else
    out = np.empty_like(expected)
    for _ in fast_transpose.transposed_rows(values, rows=32, out=out):
        pass
    assert out.tobytes() == expected.tobytes()
    assert out.tobytes() != values.reshape(expected.shape).tobytes()  # negative control: not a reshape


def test_nan_and_inf_in_streamed_kernels_are_counted_exactly(tmp_path, monkeypatch):
    """Each worker sums the part it filled; a part whose sum is not finite is counted value by value, so the
    counts are exact across many blocks, and finite values whose sum overflows raise no alarm."""
    lin, big = torch.nn.Linear(40, 300), torch.nn.Linear(40, 300)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(300, 40))
        lin.weight[5, 3] = lin.weight[150, 39] = lin.weight[299, 0] = float("nan")
        lin.weight[0, 0], lin.weight[200, 20] = float("inf"), float("-inf")
        big.weight.fill_(3e38)  # finite, but any sum of two overflows
    wp.save(lin, tmp_path / "bad.safetensors")
    wp.save(big, tmp_path / "big.safetensors")
    monkeypatch.setattr(fast_transpose, "BLOCK_BYTES", 64)  # blocks of 16 rows: the bad values in several
    with pytest.warns(wp.WeightportWarning, match=r"'weight' \(3 NaN, 2 Inf\)"):
        wp.convert(tmp_path / "bad.safetensors", tmp_path / "bad_k.safetensors", to="keras")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", wp.WeightportWarning)
        wp.convert(tmp_path / "big.safetensors", tmp_path / "big_k.safetensors", to="keras")
    assert (wp.load(tmp_path / "big_k.safetensors")["kernel"] == np.float32(3e38)).all()


def test_parts_written_by_the_workers_equal_the_one_writer_stream(tmp_path, monkeypatch):
    """The safetensors writer's parts path (workers fill the writer's staging slots, one writer thread writes
    them) and the streamed blocks path give the same file byte for byte; parts really arrived out of order from
    several threads, in lent slots."""
    import threading

    from weightport.converter import checkpoint
    from weightport.converter.formats import fileio

    puts, original = [], fileio.fill_at

    class Recording:
        def __init__(self, sink, name):
            self.sink, self.name, self.slot = sink, name, sink.slot

        def put(self, offset, part):
            lent = self.sink.out._slot_offset(np.asarray(part)) is not None  # noqa: SLF001
            puts.append((self.name, offset, threading.get_ident(), lent))
            self.sink.put(offset, part)

    def recording(out, source, start, where):
        real = source._fill  # noqa: SLF001
        source._fill = lambda sink: real(Recording(sink, source.name))  # noqa: SLF001 - watch the parts go by
        return original(out, source, start, where)

    monkeypatch.setattr(fileio, "fill_at", recording)
    _, parts = _convert(tmp_path, monkeypatch, name="parts.safetensors")
    assert len({t for _, _, t, _ in puts}) > 1  # more than one worker put parts
    assert all(lent for *_, lent in puts)  # each in the writer's staging memory, written by its thread
    order = [o for n, o, _, _ in puts if n == "up/kernel"]
    assert len(order) > 2 and sorted(order) == sorted(set(order))  # every part once
    monkeypatch.setattr(checkpoint.TensorSource, "fillable", property(lambda self: False))
    _, stream = _convert(tmp_path, monkeypatch, name="stream.safetensors")
    assert parts.read_bytes() == stream.read_bytes()


def test_a_part_outside_its_tensor_is_refused_and_leaves_nothing(tmp_path):
    """``fill_at`` holds each part to the tensor's dtype and byte range, and counts every byte."""
    from weightport.converter.checkpoint import TensorSource
    from weightport.converter.formats import write_checkpoint
    from weightport.errors import FormatError

    def source(fill):
        return TensorSource("w", (4, 8), np.float32, lambda: np.zeros((4, 8), np.float32), fill=fill)

    good = np.arange(32, dtype=np.float32).reshape(4, 8)
    write_checkpoint(tmp_path / "ok.safetensors", [source(lambda sink: [sink.put(64, good[2:]), sink.put(0, good[:2])])])
    assert np.array_equal(wp.load(tmp_path / "ok.safetensors")["w"], good)  # out of order, in place
    for fill, words in [(lambda sink: sink.put(96, good[:2]), "at byte 96"),
                        (lambda sink: sink.put(0, good.astype(np.float64)), "float64"),
                        (lambda sink: sink.put(0, good[:2]), "produced 64 of its 128 bytes")]:
        with pytest.raises(FormatError, match=words):
            write_checkpoint(tmp_path / "bad.safetensors", [source(fill)])
        assert sorted(os.listdir(tmp_path)) == ["ok.safetensors"]
