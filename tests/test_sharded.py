"""Sharded conversions, one unit of work per output shard: the same bytes serially, in a process pool and from the
command line; workers import no framework; a dead worker ends in a ShardError that resume=True completes."""
import json
import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np
import pytest

import weightport as wp
from sharded import SHARD, cli, contents, make_source, partials
from weightport.converter import shards
from weightport.converter.executors import InlineExecutor

pytestmark = pytest.mark.keras_free  # never imports Keras: runs under one backend (conftest.py)


def spawn_pool(n=2):
    return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_source(tmp_path_factory.mktemp("source"))


@pytest.fixture(scope="module")
def serial(source, tmp_path_factory):
    """The serial conversion: (its folder, its files' bytes, its report)."""
    out = tmp_path_factory.mktemp("serial")
    report = wp.convert(source, out / "model.safetensors", to="keras", shard_size=SHARD)
    return out, contents(out), report


def test_serial_shards_hold_whole_layers_and_the_index_their_digests(source, serial):
    out, files, report = serial
    index = json.loads(files["model.safetensors.index.json"])
    names = [n for n in files if n.endswith(".safetensors")]
    assert names == [f"model-0000{k}-of-00005.safetensors" for k in range(1, 6)]
    digests = json.loads(index["metadata"][shards.DIGESTS_KEY])
    assert digests == {n: shards.file_sha256(str(out / n)) for n in names}
    weight_map = index["weight_map"]
    for name, shard in weight_map.items():  # a layer's kernel and bias in one shard
        assert weight_map[name.rsplit("/", 1)[0] + "/bias"] == shard
    with wp.load(source) as src, wp.load(out / "model.safetensors") as got:
        for i in range(8):
            np.testing.assert_array_equal(got[f"blocks.{i}.proj/kernel"], src[f"blocks.{i}.proj.weight"].T)
            np.testing.assert_array_equal(got[f"blocks.{i}.proj/bias"], src[f"blocks.{i}.proj.bias"])
    assert report.shards == {"written": [str(out / n) for n in names], "kept": []}


def test_a_process_pool_and_the_command_line_write_the_same_bytes(source, serial, tmp_path):
    (tmp_path / "pool").mkdir()
    with spawn_pool() as pool:
        wp.convert(source, tmp_path / "pool" / "model.safetensors", to="keras", shard_size="520KB", executor=pool)
    assert contents(tmp_path / "pool") == serial[1]
    (tmp_path / "cli").mkdir()
    done = cli("convert", source, tmp_path / "cli" / "model.safetensors", "--to", "keras", "--shard-size", "520KB",
               "--workers", "2", "--quiet")
    assert done.returncode == 0, done.stderr
    assert contents(tmp_path / "cli") == serial[1]


def test_a_unit_is_json_and_its_worker_imports_no_framework(source, serial, tmp_path):
    plan = wp.convert(source, tmp_path / "x.safetensors", to="keras", dry_run=True).plan
    with wp.load(source) as ckpt:
        _, units = shards.make_units(plan, ckpt, tmp_path / "model.safetensors", {"weightport_layout": "keras"},
                                     shard_size=SHARD, dtype=None, allow_overflow=False, trust_pickle=False)
    unit = units[2]
    (tmp_path / "unit.json").write_text(json.dumps(unit))
    code = ("import json, sys; from weightport.converter.shards import write_shard; "
            "r = write_shard(json.load(open(sys.argv[1]))); "
            "print(json.dumps([r['sha256'], [m for m in ('torch', 'keras', 'jax', 'flax', 'tensorflow') "
            "if m in sys.modules]]))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "unit.json")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    digest, frameworks = json.loads(done.stdout)
    assert frameworks == []
    assert digest == shards.file_sha256(unit["path"]) and os.path.basename(unit["path"]) == "model-00003-of-00005.safetensors"
    assert partials(tmp_path) == []


def die_mid_shard(unit):
    """A unit whose worker dies (as the OOM killer would kill it) with its shard written under its temporary name."""
    shards.file_sha256 = lambda path: os._exit(1)
    return shards.write_shard(unit)


class DyingPool(ProcessPoolExecutor):
    """A spawned pool whose third unit kills its worker."""

    def __init__(self):
        super().__init__(2, mp_context=multiprocessing.get_context("spawn"))
        self.count = 0

    def submit(self, fn, *args, **kwargs):
        self.count += 1
        return super().submit(die_mid_shard if self.count == 3 else fn, *args, **kwargs)


def test_a_dead_worker_ends_in_a_shard_error_that_resume_completes(source, serial, tmp_path):
    with DyingPool() as pool, pytest.raises(wp.ShardError, match=r"shard .*model-0000\d-of-00005.safetensors.*"
                                                                 r"resume=True"):
        wp.convert(source, tmp_path / "model.safetensors", to="keras", shard_size=SHARD, executor=pool)
    left = os.listdir(tmp_path)
    assert partials(tmp_path) == [] and "model.safetensors.index.json" not in left
    in_place = [n for n in left if n.endswith(".safetensors")]
    assert len(in_place) < 5
    with pytest.raises(wp.OutputExistsError, match="resume=True"):  # leftovers are never silently replaced
        wp.convert(source, tmp_path / "model.safetensors", to="keras", shard_size=SHARD)
    report = wp.convert(source, tmp_path / "model.safetensors", to="keras", shard_size=SHARD, resume=True)
    assert len(report.shards["written"]) == 5 - len(report.shards["kept"])
    assert sorted(os.path.basename(p) for p in report.shards["kept"]) == sorted(in_place)
    assert contents(tmp_path) == serial[1]


def test_resume_rewrites_only_the_missing_and_damaged_shards(source, serial, tmp_path):
    out = tmp_path / "model.safetensors"
    wp.convert(source, out, to="keras", shard_size=SHARD)
    os.remove(tmp_path / "model-00002-of-00005.safetensors")
    with open(tmp_path / "model-00004-of-00005.safetensors", "r+b") as f:  # same size, one byte changed
        f.seek(-3, 2)
        byte = f.read(1)
        f.seek(-3, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    report = wp.convert(source, out, to="keras", shard_size=SHARD, resume=True)
    assert [os.path.basename(p) for p in report.shards["written"]] == ["model-00002-of-00005.safetensors",
                                                                       "model-00004-of-00005.safetensors"]
    assert len(report.shards["kept"]) == 3
    assert contents(tmp_path) == serial[1]
    again = wp.convert(source, out, to="keras", shard_size=SHARD, resume=True)
    assert again.shards["written"] == [] and contents(tmp_path) == serial[1]
    other = wp.convert(source, out, to="keras", shard_size=SHARD, resume=True, dtype="float16")
    assert len(other.shards["written"]) == len(other.files) - 1  # another plan: no shard of the old one is kept


class Flaky(InlineExecutor):
    """Each unit's first ``failures`` attempts fail as a dropped connection would."""

    def __init__(self, failures):
        self.failures, self.seen = failures, {}

    def submit(self, fn, unit):
        self.seen[unit["path"]] = self.seen.get(unit["path"], 0) + 1
        if self.seen[unit["path"]] <= self.failures:
            future = Future()
            future.set_exception(ConnectionResetError("the worker went away"))
            return future
        return super().submit(fn, unit)


def test_a_failed_unit_is_retried_then_reported_with_its_shard(source, serial, tmp_path):
    (tmp_path / "a").mkdir()
    wp.convert(source, tmp_path / "a" / "model.safetensors", to="keras", shard_size=SHARD, executor=Flaky(2))
    assert contents(tmp_path / "a") == serial[1]
    (tmp_path / "b").mkdir()
    with pytest.raises(wp.ShardError, match=r"model-0000\d-of-00005.safetensors was not written: ConnectionResetError"
                                            r".*tried 3 times.*0 of 5 shards are in place"):
        wp.convert(source, tmp_path / "b" / "model.safetensors", to="keras", shard_size=SHARD, executor=Flaky(3))
    assert [n for n in os.listdir(tmp_path / "b") if not n.endswith(".wp-journal")] == []


class Truncating(InlineExecutor):
    """Truncates a source file just before the first unit runs (a file damaged while the run goes on)."""

    def __init__(self, path):
        self.path = path

    def submit(self, fn, unit):
        if self.path is not None:
            self.path.write_bytes(self.path.read_bytes()[:-100])
            self.path = None
        return super().submit(fn, unit)


def test_a_source_damaged_during_the_run_is_reported_with_the_shard_and_no_partial_file(tmp_path):
    folder = tmp_path / "src"
    index = make_source(folder)
    damaged = json.loads(open(index).read())["weight_map"]["blocks.4.proj.weight"]
    with pytest.raises(wp.FormatError, match=rf"writing shard model-00001-of-00005.safetensors: .*{damaged}"):
        wp.convert(index, tmp_path / "model.safetensors", to="keras", shard_size=SHARD,
                   executor=Truncating(folder / damaged))
    assert partials(tmp_path) == [] and not (tmp_path / "model.safetensors.index.json").exists()


def test_bad_calls_are_refused_by_name(source, tmp_path):
    torch = pytest.importorskip("torch")
    with pytest.raises(wp.UsageError, match="give shard_size="):
        wp.convert(source, tmp_path / "m.safetensors", to="keras", executor=InlineExecutor())
    with pytest.raises(wp.UsageError, match="live model"):
        wp.save(torch.nn.Linear(7, 5), tmp_path / "m.safetensors", shard_size="1KB", executor=InlineExecutor())
    with pytest.raises(wp.UsageError, match="not safetensors"):
        wp.convert(source, tmp_path / "m.npz", to="keras", shard_size=100, resume=True)
    for bad in ("5XB", "-1", "0", "many"):
        with pytest.raises(wp.UsageError, match="shard_size="):
            wp.convert(source, tmp_path / "m.safetensors", to="keras", shard_size=bad)
    assert os.listdir(tmp_path) == []
    done = cli("convert", source, tmp_path / "m.safetensors", "--to", "keras", "--shard-size", "1MB", "--workers", "0")
    assert done.returncode == 2 and "--workers takes a positive number" in done.stderr and "Traceback" not in done.stderr
    done = cli("convert", source, tmp_path / "m.safetensors", "--to", "keras", "--resume")
    assert done.returncode == 2 and "give --shard-size too" in done.stderr, done.stderr


def test_the_progress_bar_counts_the_bytes_of_each_shard_as_it_finishes(source, tmp_path, monkeypatch):
    from weightport import progress

    seen = []

    class Bar:
        def __init__(self, total, label, quiet):
            seen.append(("total", total))

        def update(self, n):
            seen.append(("update", n))

        def close(self):
            seen.append(("close",))

    monkeypatch.setattr(progress, "bar", Bar)
    report = wp.convert(source, tmp_path / "model.safetensors", to="keras", shard_size=SHARD)
    total = seen[0][1]
    updates = [n for kind, *n in seen if kind == "update"]
    assert len(updates) == 5 and sum(n for (n,) in updates) == total and seen[-1] == ("close",)
    assert total == json.loads((tmp_path / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    assert len(report.files) == 6
