"""The safetensors writer's one writer thread (``OffsetWriter``): its fallbacks write the very same bytes, and a
write that fails in that thread (a full disk) reaches the caller as a clear error, leaving nothing behind."""
import errno
import os
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import weightport as wp  # noqa: E402
from weightport.converter.formats import fileio, offset_writer  # noqa: E402
from weightport.errors import OutputError  # noqa: E402
from weightport.mappings import fast_transpose  # noqa: E402

pytestmark = pytest.mark.keras_free


def _source(tmp_path):
    """A torch-layout file whose kernels are transposed in many small parts (37 and 1001: no multiple of 16)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(48, 1001), torch.nn.Linear(1001, 37), torch.nn.LayerNorm(37))
    src = tmp_path / "t.safetensors"
    wp.save(net, src)
    return src, net


def _convert(src, net, out, monkeypatch):
    monkeypatch.setattr(fast_transpose, "PART_BYTES", 64)  # parts of 16 rows: many, from several workers
    wp.convert(src, out, net, to="keras")
    return out.read_bytes()


def _counting(monkeypatch, name):
    calls, real = [], getattr(os, name)

    def counted(*args):
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(os, name, counted)
    return calls


def test_parts_cut_in_pieces_and_written_without_fallocate_give_the_same_bytes(tmp_path, monkeypatch):
    src, net = _source(tmp_path)
    normal = _convert(src, net, tmp_path / "normal.safetensors", monkeypatch)
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    written = wp.load(tmp_path / "normal.safetensors")
    assert np.array_equal(written["0/kernel"], state["0.weight"].T)
    assert not np.array_equal(written["0/kernel"].reshape(-1), state["0.weight"].reshape(-1))  # not as stored

    sizes, real = [], os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: sizes.append(len(data)) or real(fd, data, offset))
    monkeypatch.setattr(fileio, "WRITE_PIECE", 999)  # pieces that cut floats in two
    assert _convert(src, net, tmp_path / "pieces.safetensors", monkeypatch) == normal
    assert max(sizes) == 999

    monkeypatch.setattr(os, "posix_fallocate", lambda *a: (_ for _ in ()).throw(OSError(errno.EOPNOTSUPP, "no")))
    assert _convert(src, net, tmp_path / "plain.safetensors", monkeypatch) == normal


def test_pwrite_all_writes_every_byte_in_pieces_even_after_short_writes(tmp_path, monkeypatch):
    data = np.arange(1000, dtype=np.uint16).reshape(10, 100)  # 2,000 bytes
    monkeypatch.setattr(fileio, "WRITE_PIECE", 300)
    sizes, real = [], os.pwrite

    def short(fd, piece, offset):  # the kernel may write less than asked: every other call writes 100 bytes
        sizes.append(len(piece))
        return real(fd, piece[:100] if len(sizes) % 2 else piece, offset)

    monkeypatch.setattr(os, "pwrite", short)
    path = tmp_path / "f"
    path.write_bytes(b"\xff" * 7)
    fd = os.open(path, os.O_WRONLY)
    try:
        fileio.pwrite_all(fd, data, 7)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\xff" * 7 + data.tobytes()
    assert max(sizes) == 300 and len(sizes) > 2000 // 300


def test_a_full_disk_in_the_writer_thread_is_said_and_leaves_nothing(tmp_path, monkeypatch):
    """The writer thread's error stops the workers (none waits for a staging slot for ever) and is raised in
    the caller's thread, as the OutputError any failed write gives."""
    src, net = _source(tmp_path)
    before = sorted(os.listdir(tmp_path))
    calls, real = [], os.pwrite

    def filling(*args):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        return real(*args)

    monkeypatch.setattr(os, "pwrite", filling)
    with pytest.raises(OutputError, match=r"cannot write \S*k\.safetensors: no space left.*nothing was left behind"):
        _convert(src, net, tmp_path / "k.safetensors", monkeypatch)
    assert len(calls) > 3  # it failed part-way through, after parts had been written
    assert sorted(os.listdir(tmp_path)) == before


def test_a_disk_too_small_is_refused_before_any_tensor_is_transposed(tmp_path, monkeypatch):
    src, net = _source(tmp_path)
    transposed = []
    real = fast_transpose._fill_part
    monkeypatch.setattr(fast_transpose, "_fill_part", lambda *a, **k: transposed.append(1) or real(*a, **k))

    def full(fd, offset, nbytes):
        raise OSError(errno.ENOSPC, "No space left on device (simulated)")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OutputError, match="no space left"):
        _convert(src, net, tmp_path / "k.safetensors", monkeypatch)
    assert transposed == []  # the space was reserved first
    assert not (tmp_path / "k.safetensors").exists()
    monkeypatch.undo()
    monkeypatch.setattr(fast_transpose, "_fill_part", lambda *a, **k: transposed.append(1) or real(*a, **k))
    _convert(src, net, tmp_path / "k.safetensors", monkeypatch)  # negative control: with room, it is written
    assert (tmp_path / "k.safetensors").exists() and transposed


def test_a_real_full_file_system_is_refused_cleanly(tmp_path):
    """A 1 MiB tmpfs (where this runs as root and may mount one): the output does not fit, which is seen before
    anything is written, and the file system is left as it was."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        torch.manual_seed(0)
        net = torch.nn.Linear(512, 1000)  # ~2 MB of float32
        wp.save(net, tmp_path / "big.safetensors")
        (small / "pad").write_bytes(b"x" * 4096)
        with pytest.raises(OutputError, match=r"needs [\d,]+ bytes but its file system has [\d,]+ free"):
            wp.convert(tmp_path / "big.safetensors", small / "k.safetensors", net, to="keras")
        assert sorted(os.listdir(small)) == ["pad"]
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_parts_in_lent_slots_are_queued_and_others_written_at_once(tmp_path):
    path = tmp_path / "f"
    with open(path, "wb") as f, offset_writer.OffsetWriter(f.fileno(), slots=2) as out:
        lent = out.slot(8)
        lent[:] = np.arange(8, dtype=np.uint8)
        out.put(8, lent)
        out.put(0, np.arange(100, 108, dtype=np.uint8))  # not in a slot: written by this thread
        assert out._slot_offset(lent) is not None and out._slot_offset(np.zeros(8, np.uint8)) is None  # noqa: SLF001
    assert path.read_bytes() == bytes(range(100, 108)) + bytes(range(8))


def test_write_in_pieces_writes_every_byte_in_order(monkeypatch):
    import io

    data = np.arange(250, dtype=np.float32)  # 1,000 bytes, pieces that cut floats in two
    monkeypatch.setattr(fileio, "WRITE_PIECE", 300)
    f, sizes = io.BytesIO(), []
    real = f.write
    f.write = lambda piece: sizes.append(len(piece)) or real(piece)
    f.write(b"head")
    fileio.write_in_pieces(f, data.view(np.uint8))
    assert f.getvalue() == b"head" + data.tobytes()
    assert sizes == [4, 300, 300, 300, 100]
