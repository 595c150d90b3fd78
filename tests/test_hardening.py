"""Hostile and unlucky inputs (issue 12): every bad file a named error, bounded cost, nothing left behind or
destroyed, no silent damage to numbers.

Each refusal is checked for the error class, the words that say what was wrong, the CLI's exit code (2 for
an unreadable input or an output that cannot be written, 1 for a refusal), the input's sha256 unchanged and
the folder left as it was.
"""
import errno
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile

import h5py
import numpy as np
import pytest

import weightport as wp
from badfiles import CASES, WEIGHTS, good, msgpack_str, safetensors_bytes
from weightport.cli import main
from weightport.converter.formats import Staging, open_checkpoint, staging, write_checkpoint
from weightport.errors import (CastOverflowError, FormatError, OutputError, OutputExistsError, WeightportError,
                               WeightportWarning)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def listing(folder) -> dict:
    """name -> sha256 of every entry in ``folder`` (links by their target text)."""
    out = {}
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name)
        out[name] = os.readlink(p) if os.path.islink(p) else ("<dir>" if os.path.isdir(p) else sha256(p))
    return out


def cli(capsys, *args):
    """(exit code, stderr) of ``weightport ARGS`` run in this process."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def read_all(path):
    with open_checkpoint(path) as ckpt:
        for name in ckpt:
            np.asarray(ckpt[name]).tobytes()


# -- 1. every unreadable input is a FormatError naming the file --------------------------------------------


@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.keras_free
def test_bad_file_is_a_format_error_naming_it(tmp_path, capsys, kind):
    build, needles = CASES[kind]
    path = build(tmp_path)
    before, digest = listing(tmp_path), sha256(path)
    with pytest.raises(FormatError) as info:
        with open_checkpoint(path) as ckpt:
            write_checkpoint(tmp_path / "out.safetensors", ckpt)
    message = str(info.value)
    for needle in (path.name,) + needles:
        assert needle in message, f"{needle!r} missing from: {message}"
    code, err = cli(capsys, "inspect", path)
    assert code == 2 and "Traceback" not in err and path.name in err, err
    assert sha256(path) == digest and listing(tmp_path) == before


@pytest.mark.keras_free
def test_lazy_load_errors_are_format_errors_naming_the_tensor(tmp_path):
    path = good(tmp_path, "m.safetensors")
    ckpt = open_checkpoint(path)
    with open(path, "r+b") as f:  # cut short after opening, as a concurrent writer or a full disk would
        f.truncate(path.stat().st_size - 30)
    with pytest.raises(FormatError, match=r"m\.safetensors: cannot read tensor 'fc\.bias'"):
        ckpt["fc.bias"]
    with pytest.raises(FormatError, match=r"m\.safetensors"):
        write_checkpoint(tmp_path / "out.npz", ckpt)
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


@pytest.mark.keras_free
def test_a_sniffer_that_chokes_leaves_the_reader_to_explain(tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(b"PK\x03\x04" + bytes(40))  # zip magic, then nothing a zip reader can use
    with pytest.raises(FormatError, match="m.npz"):
        read_all(path)


# -- 2. bounded cost on hostile inputs -----------------------------------------------------------------------


@pytest.fixture
def small_limits(monkeypatch):
    """Limits small enough to cross with small files (the defaults, by the variables users set)."""
    for name, value in {"INFLATE_FLOOR": 1 << 20, "INFLATE_RATIO": 50, "MAX_TENSORS": 100, "MAX_VALUES": 1000,
                        "MAX_HEADER_BYTES": 100_000}.items():
        monkeypatch.setenv(f"WEIGHTPORT_{name}", str(value))
    return monkeypatch


@pytest.mark.keras_free
def test_npz_deflate_bomb_is_refused_before_inflating(tmp_path, small_limits):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, w=np.zeros((1024, 1024), np.float32))  # 4 MB of zeros in about 4 KB
    assert path.stat().st_size < 20_000
    with pytest.raises(FormatError, match=r"bomb\.npz.*'w'.*WEIGHTPORT_INFLATE_RATIO"):
        open_checkpoint(path)
    small_limits.setenv("WEIGHTPORT_INFLATE_RATIO", "100000")  # the documented way to say "I trust it"
    with open_checkpoint(path) as ckpt:
        assert ckpt["w"].shape == (1024, 1024)


@pytest.mark.keras_free
def test_h5_compressed_or_unwritten_datasets_cannot_claim_more_than_the_limit(tmp_path, small_limits):
    gz = tmp_path / "gz.weights.h5"
    with h5py.File(gz, "w") as h5:
        h5.create_dataset("layers/d/vars/0", data=np.zeros((1024, 1024), np.float32), compression="gzip")
    holes = tmp_path / "holes.weights.h5"
    with h5py.File(holes, "w") as h5:  # chunks never written: the file claims 4 MB it does not hold
        h5.create_dataset("layers/d/vars/0", shape=(1024, 1024), dtype="f4", chunks=(64, 64))
    for path in (gz, holes):
        with pytest.raises(FormatError, match=rf"{path.name}.*layers/d/vars/0.*expands"):
            open_checkpoint(path)


@pytest.mark.keras_free
def test_keras_archive_with_a_compressed_weights_bomb_is_refused(tmp_path, small_limits):
    import io

    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        h5.create_dataset("layers/d/vars/0", data=np.zeros((1024, 1024), np.float32))
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", "{}")
        z.writestr("model.weights.h5", buf.getvalue())
    with pytest.raises(FormatError, match=r"bomb\.keras.*model\.weights\.h5.*expands"):
        open_checkpoint(path)


@pytest.mark.keras_free
def test_msgpack_claiming_millions_of_entries_is_refused_at_once(tmp_path):
    path = tmp_path / "claims.msgpack"
    path.write_bytes(b"\xdf" + (5_000_000).to_bytes(4, "big") + msgpack_str("a") + b"\x01")
    start = time.perf_counter()
    with pytest.raises(FormatError, match=r"claims\.msgpack.*claims 10,000,000 entries"):
        open_checkpoint(path)
    assert time.perf_counter() - start < 1


@pytest.mark.keras_free
def test_msgpack_of_many_small_values_is_refused_past_the_limit(tmp_path, small_limits):
    path = tmp_path / "ints.msgpack"
    path.write_bytes(b"\x81" + msgpack_str("a") + b"\xdc" + (5000).to_bytes(2, "big") + b"\x01" * 5000)
    with pytest.raises(FormatError, match=r"ints\.msgpack.*MAX_VALUES.*WEIGHTPORT_MAX_VALUES="):
        open_checkpoint(path)
    nested = tmp_path / "nested.msgpack"  # many small maps, each under the limit: the running count catches them
    nested.write_bytes(b"\x81" + msgpack_str("a") + b"\xdc" + (600).to_bytes(2, "big") + b"\x81\x01\x01" * 600)
    with pytest.raises(FormatError, match="MAX_VALUES"):
        open_checkpoint(nested)


@pytest.mark.keras_free
def test_tensor_count_and_header_size_limits(tmp_path, small_limits):
    header = {f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(150)}
    many = tmp_path / "many.safetensors"
    many.write_bytes(safetensors_bytes(header, bytes(150)))
    with pytest.raises(FormatError, match=r"many\.safetensors.*150 is past.*MAX_TENSORS"):
        open_checkpoint(many)
    h5 = tmp_path / "many.weights.h5"
    with h5py.File(h5, "w") as f:
        for i in range(150):
            f.create_dataset(f"layers/d{i}/vars/0", data=np.float32(i))
    with pytest.raises(FormatError, match=r"many\.weights\.h5.*MAX_TENSORS"):
        open_checkpoint(h5)
    big = tmp_path / "big.safetensors"
    big.write_bytes(safetensors_bytes(b'{"__metadata__": {"a": "' + b"x" * 200_000 + b'"}}'))
    with pytest.raises(FormatError, match=r"big\.safetensors.*header length.*MAX_HEADER_BYTES"):
        open_checkpoint(big)
    small_limits.setenv("WEIGHTPORT_MAX_TENSORS", "1000")
    assert len(open_checkpoint(many)) == 150


@pytest.mark.keras_free
def test_limits_are_documented_and_a_bad_override_is_a_usage_error(monkeypatch):
    from weightport.converter.formats import limits
    from weightport.errors import UsageError

    for name in limits._NAMES:
        assert name in limits.__doc__ and f"WEIGHTPORT_{name}".split("_")[0] in limits.__doc__
    monkeypatch.setenv("WEIGHTPORT_MAX_TENSORS", "lots")
    with pytest.raises(UsageError, match="WEIGHTPORT_MAX_TENSORS"):
        limits.get("MAX_TENSORS")


# -- 3. nothing left behind, nothing destroyed -------------------------------------------------------------


@pytest.mark.keras_free
def test_dangling_symlink_counts_as_existing(tmp_path, capsys):
    src = good(tmp_path, "in.safetensors")
    os.symlink(tmp_path / "nowhere", tmp_path / "out.safetensors")
    before = listing(tmp_path)
    with pytest.raises(OutputExistsError, match="symbolic link to nothing"):
        write_checkpoint(tmp_path / "out.safetensors", open_checkpoint(src))
    assert listing(tmp_path) == before
    write_checkpoint(tmp_path / "out.safetensors", open_checkpoint(src), overwrite=True)
    assert not os.path.islink(tmp_path / "out.safetensors") and not os.path.exists(tmp_path / "nowhere")


@pytest.mark.keras_free
def test_input_is_never_replaced_without_its_own_flag(tmp_path, capsys):
    src = good(tmp_path, "in.safetensors")
    os.link(src, tmp_path / "alias.safetensors")  # another name, the same file
    digest = sha256(src)
    for out in (src, tmp_path / "alias.safetensors"):
        with pytest.raises(OutputError, match="is the input being read"):
            wp.convert(src, out, overwrite=True)
        code, err = cli(capsys, "convert", src, out, "--overwrite")
        assert code == 2 and "--replace-input" in err and "Traceback" not in err, err
    assert sha256(src) == digest and not [n for n in os.listdir(tmp_path) if n.endswith(".partial")]
    code, err = cli(capsys, "convert", src, src, "--to", "keras", "--overwrite", "--replace-input", "--quiet")
    assert code == 0, err
    assert open_checkpoint(src).layout == "keras"


@pytest.mark.keras_free
def test_folder_at_the_output_name(tmp_path, capsys):
    src = good(tmp_path, "in.safetensors")
    os.mkdir(tmp_path / "out.safetensors")
    with pytest.raises(OutputError, match="is a folder"):
        write_checkpoint(tmp_path / "out.safetensors", open_checkpoint(src), overwrite=True)
    code, err = cli(capsys, "convert", src, tmp_path / "out.safetensors", "--overwrite")
    assert code == 2 and "folder" in err


@pytest.mark.keras_free
def test_sharded_overwrite_removes_the_shards_only_the_old_index_listed(tmp_path):
    tensors = {f"l{i}.weight": np.full((4, 4), i, np.float32) for i in range(6)}  # 64 bytes each
    out = tmp_path / "m.safetensors"
    write_checkpoint(out, tensors, shard_size=64)
    assert len([n for n in os.listdir(tmp_path) if n.startswith("m-")]) == 6
    (tmp_path / "keep.safetensors").write_bytes(b"not listed by any index")
    write_checkpoint(out, tensors, shard_size=200, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["keep.safetensors", "m-00001-of-00002.safetensors",
                                            "m-00002-of-00002.safetensors", "m.safetensors.index.json"]
    with open_checkpoint(out) as ckpt:
        assert sorted(ckpt) == sorted(tensors)


@pytest.mark.keras_free
def test_commit_never_replaces_a_file_that_appeared_meanwhile(tmp_path):
    """Two runs without overwrite: the one that commits second is refused, and the first one's file kept."""
    with Staging() as stage:
        temps = [stage.file(tmp_path / "a.bin"), stage.file(tmp_path / "b.bin")]
        for t in temps:
            open(t, "wb").write(b"ours")
        (tmp_path / "b.bin").write_bytes(b"theirs")  # the other run finished first
        with pytest.raises(OutputExistsError, match="appeared"):
            stage.commit()
    assert sorted(os.listdir(tmp_path)) == ["b.bin"] and (tmp_path / "b.bin").read_bytes() == b"theirs"


@pytest.mark.keras_free
def test_commit_without_hard_links_still_refuses_an_existing_name(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    write_checkpoint(tmp_path / "a.npz", WEIGHTS)
    with Staging() as stage:
        open(stage.file(tmp_path / "b.npz"), "wb").write(b"x")
        (tmp_path / "b.npz").write_bytes(b"theirs")
        with pytest.raises(OutputExistsError):
            stage.commit()
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.npz"] and (tmp_path / "b.npz").read_bytes() == b"theirs"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.keras_free
def test_stale_partials_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    host = staging._HOST
    dead = tmp_path / f".out.safetensors.wp-{host}-{_dead_pid()}-0123abcd.partial"
    alive = tmp_path / f".other.npz.wp-{host}-{os.getppid()}-0123abcd.partial"
    elsewhere = tmp_path / f".out.safetensors.wp-{'0' * 6 if host != '0' * 6 else '1' * 6}-{_dead_pid()}-0123abcd.partial"
    legacy = tmp_path / ".out.safetensors.0123abcd.partial"  # no writer recorded: not ours to judge
    for p in (dead, alive, elsewhere, legacy):
        p.write_bytes(b"half a file")
    write_checkpoint(tmp_path / "out.safetensors", WEIGHTS)
    assert not dead.exists() and alive.exists() and elsewhere.exists() and legacy.exists()


@pytest.mark.keras_free
def test_os_errors_while_writing_are_named_and_leave_nothing(tmp_path, monkeypatch):
    src = good(tmp_path, "in.safetensors")
    before = listing(tmp_path)
    for code, words in ((errno.ENOSPC, "no space left"), (errno.EROFS, "read-only file system"),
                        (errno.EACCES, "no permission")):
        def fail(nbytes, code=code):
            raise OSError(code, os.strerror(code))

        with pytest.raises(OutputError, match=rf"cannot write \S*out\.safetensors: .*{words}.*nothing was left behind"):
            write_checkpoint(tmp_path / "out.safetensors", open_checkpoint(src), progress=fail)
        assert listing(tmp_path) == before


@pytest.mark.keras_free
def test_too_little_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    import collections

    src = good(tmp_path, "in.safetensors")
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(staging.shutil, "disk_usage", lambda folder: usage(10**9, 10**9 - 10, 10))
    with pytest.raises(OutputError, match="needs 168 bytes but its file system has 10 free"):
        write_checkpoint(tmp_path / "out.safetensors", open_checkpoint(src))
    assert sorted(os.listdir(tmp_path)) == ["in.safetensors"]


@pytest.mark.keras_free
def test_read_only_folder_is_refused_up_front(tmp_path, monkeypatch):
    src = good(tmp_path, "in.safetensors")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(OutputError, match="no permission to write in"):
        write_checkpoint(tmp_path / "out.safetensors", open_checkpoint(src))
    assert sorted(os.listdir(tmp_path)) == ["in.safetensors"]


@pytest.mark.keras_free
def test_file_size_limit_mid_write_is_exit_2_and_leaves_nothing(tmp_path):
    """A real OS error mid-write (ulimit -f: EFBIG), through the command."""
    src = tmp_path / "in.safetensors"
    write_checkpoint(src, {f"l{i}.weight": np.ones((64, 256), np.float32) for i in range(4)})
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))
        from weightport.cli import main
        sys.exit(main(["convert", {str(src)!r}, {str(tmp_path / 'out.npz')!r}, "--quiet"]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "too large" in done.stderr and "Traceback" not in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.safetensors"]


@pytest.mark.keras_free
def test_save_plan_onto_an_existing_file_is_refused_before_converting(tmp_path, capsys):
    src = good(tmp_path, "in.safetensors")
    (tmp_path / "plan.json").write_text("mine")
    code, err = cli(capsys, "convert", src, tmp_path / "out.safetensors", "--save-plan", tmp_path / "plan.json")
    assert code == 1 and "plan.json" in err
    assert sorted(os.listdir(tmp_path)) == ["in.safetensors", "plan.json"]


CHILD = """
import signal, sys, time
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as in a terminal, even when the suite runs under nohup (SIG_IGN)
import weightport.converter.formats.fileio as fileio
real = fileio.blocks_checked
def slow(source, where):  # a slow disk: each block takes a while
    for item in real(source, where):
        time.sleep(0.03)
        yield item
fileio.blocks_checked = slow
from weightport.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    """A 24 MB torch-layout safetensors of six 1024x1024 Dense layers."""
    path = tmp_path_factory.mktemp("big") / "big.safetensors"
    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(6):
        tensors[f"layers.{i}.weight"] = rng.standard_normal((1024, 1024), np.float32)
        tensors[f"layers.{i}.bias"] = rng.standard_normal(1024, np.float32)
    write_checkpoint(path, tensors, metadata={"weightport_layout": "torch"})
    return path


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
@pytest.mark.keras_free
def test_killed_conversion_leaves_nothing_after_the_next_run(tmp_path, big_input, sig):
    src = tmp_path / "in.safetensors"
    os.link(big_input, src)
    digest = sha256(src)
    out = tmp_path / "out.safetensors"
    args = [sys.executable, "-c", CHILD, "convert", str(src), str(out), "--to", "keras", "--quiet"]
    child = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    partial = []
    while time.monotonic() < deadline and child.poll() is None:  # mid-write: a partial file with bytes in it
        partial = [n for n in os.listdir(tmp_path) if n.endswith(".partial")]
        if partial and os.path.getsize(tmp_path / partial[0]) > (4 << 20):
            break
        time.sleep(0.01)
    assert child.poll() is None and partial, "the conversion ended before it could be interrupted"
    child.send_signal(sig)
    _, err = child.communicate(timeout=60)
    assert child.returncode == -sig, err  # ended by the signal, as the caller (timeout, a scheduler) expects
    left = sorted(os.listdir(tmp_path))
    if sig == signal.SIGKILL:  # uncatchable: its partial stays until the next run
        assert left == sorted(["in.safetensors"] + partial)
    else:
        assert left == ["in.safetensors"], "SIGTERM/SIGHUP must clean up like Ctrl-C"
    assert main(["convert", src, out, "--to", "keras", "--quiet"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["in.safetensors", "out.safetensors"]
    assert sha256(src) == digest


@pytest.mark.keras_free
def test_signal_handlers_are_restored_and_only_installed_over_the_default(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    mine = lambda *a: None  # noqa: E731
    signal.signal(signal.SIGHUP, mine)
    try:
        with Staging():
            assert signal.getsignal(signal.SIGTERM) is not previous
            assert signal.getsignal(signal.SIGHUP) is mine  # a handler the caller set is left alone
        assert signal.getsignal(signal.SIGTERM) is previous and signal.getsignal(signal.SIGHUP) is mine
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


# -- 4. no silent damage to numbers ------------------------------------------------------------------------


def torch_file(tmp_path, weight, bias=None, name="src.safetensors"):
    path = tmp_path / name
    bias = np.zeros(weight.shape[0], np.float32) if bias is None else bias
    write_checkpoint(path, {"fc.weight": weight, "fc.bias": bias}, metadata={"weightport_layout": "torch"})
    return path


@pytest.mark.keras_free
def test_overflowing_cast_is_refused_naming_the_tensor_and_value(tmp_path, capsys):
    weight = np.full((5, 7), 0.5, np.float32)
    weight[2, 3] = 1e6
    src = torch_file(tmp_path, weight)
    with pytest.raises(CastOverflowError, match=r"fc\.weight.*float32 to float16.*1000000.*65504"):
        wp.convert(src, tmp_path / "half.safetensors", dtype="float16")
    code, err = cli(capsys, "convert", src, tmp_path / "half.safetensors", "--dtype", "float16")
    assert code == 1 and "--allow-overflow" in err and "allow_overflow=True" not in err
    assert sorted(os.listdir(tmp_path)) == ["src.safetensors"]
    with pytest.warns(WeightportWarning, match="became inf"):
        report = wp.convert(src, tmp_path / "half.safetensors", dtype="float16", allow_overflow=True)
    assert np.isinf(wp.load(tmp_path / "half.safetensors")["fc.weight"][2, 3]) and not report.exact


@pytest.mark.keras_free
def test_live_port_refuses_an_overflow_before_changing_anything(tmp_path):
    import torch

    weight = np.full((5, 7), 0.5, np.float32)
    weight[4, 6] = -7e4
    src = torch_file(tmp_path, weight)
    lin = torch.nn.Linear(7, 5).half()
    before = lin.weight.detach().clone()
    with pytest.raises(CastOverflowError, match=r"weight.*-70000"):
        wp.port(src, lin)
    assert torch.equal(lin.weight, before), "a refused port changed the target"
    with pytest.warns(WeightportWarning, match="inf"):
        wp.port(src, lin, allow_overflow=True)
    assert torch.isinf(lin.weight[4, 6])


@pytest.mark.keras_free
def test_rounding_cast_is_reported_function_preserving_not_bitwise(tmp_path):
    import torch

    weight = (np.arange(35, dtype=np.float32).reshape(5, 7) + 1) / 3  # thirds round in bfloat16
    src = torch_file(tmp_path, weight)
    lin = torch.nn.Linear(7, 5).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeightportWarning)  # rounding is said in the report, not warned
        report = wp.port(src, lin)
    assert not report.exact and "function-preserving, not bitwise" in str(report) and "rounds" in str(report)
    report = wp.convert(src, tmp_path / "b.safetensors", dtype="bfloat16")
    assert not report.exact and "float32->bfloat16 cast rounds" in str(report)
    exact = wp.port(src, torch.nn.Linear(7, 5))  # negative control: float32 into float32 stays bitwise
    assert exact.exact and "rounds" not in str(exact)
    halves = torch_file(tmp_path, np.full((5, 7), 0.5, np.float32), name="halves.safetensors")
    assert wp.port(halves, torch.nn.Linear(7, 5).half()).exact  # values float16 holds exactly: still bitwise


def test_rounding_into_a_bfloat16_keras_model_is_reported(tmp_path):
    keras = pytest.importorskip("keras")

    src = torch_file(tmp_path, (np.arange(35, dtype=np.float32).reshape(5, 7) + 1) / 3)
    model = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5, dtype="bfloat16")])
    report = wp.port(src, model)
    assert not report.exact and "bfloat16" in str(report) and "function-preserving" in str(report)


@pytest.mark.keras_free
def test_nan_and_inf_in_the_source_are_warned_naming_the_tensors(tmp_path):
    import torch

    bias = np.array([0, np.nan, 1, np.inf, 2], np.float32)
    src = torch_file(tmp_path, np.ones((5, 7), np.float32), bias)
    with pytest.warns(WeightportWarning, match=r"'fc\.bias' \(1 NaN, 1 Inf\)"):
        report = wp.convert(src, tmp_path / "copy.safetensors")  # copied byte for byte: still scanned
    assert any("fc.bias" in w for w in report.warnings)
    with pytest.warns(WeightportWarning, match=r"fc\.bias"):
        wp.port(src, torch.nn.Linear(7, 5))
    clean = torch_file(tmp_path, np.ones((5, 7), np.float32), name="clean.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeightportWarning)  # negative control: finite weights, no warning
        wp.convert(clean, tmp_path / "clean_copy.safetensors")
