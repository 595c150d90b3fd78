"""Sharded conversions on a Dask cluster (two worker processes, one cluster for the module): the same bytes as the
serial conversion, from Python and from `--scheduler`; a worker killed mid-run still ends in the same output."""
import os

import pytest

import weightport as wp
from sharded import SHARD, cli, contents, make_source, partials

pytestmark = pytest.mark.keras_free  # never imports Keras: runs under one backend (conftest.py)

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="512MiB",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        with distributed.Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    source = make_source(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("serial")
    wp.convert(source, out / "model.safetensors", to="keras", shard_size=SHARD)
    return source, contents(out)


def test_a_dask_cluster_and_scheduler_write_the_same_bytes(client, serial, tmp_path):
    source, expected = serial
    (tmp_path / "py").mkdir()
    executor = client.get_executor()
    wp.convert(source, tmp_path / "py" / "model.safetensors", to="keras", shard_size=SHARD, executor=executor)
    assert contents(tmp_path / "py") == expected
    os.remove(tmp_path / "py" / "model-00002-of-00005.safetensors")  # the same units again: written, not cached
    report = wp.convert(source, tmp_path / "py" / "model.safetensors", to="keras", shard_size=SHARD,
                        executor=executor, resume=True)
    assert [os.path.basename(p) for p in report.shards["written"]] == ["model-00002-of-00005.safetensors"]
    assert contents(tmp_path / "py") == expected
    (tmp_path / "cli").mkdir()
    done = cli("convert", source, tmp_path / "cli" / "model.safetensors", "--to", "keras", "--shard-size", "520KB",
               "--scheduler", client.scheduler.address, "--quiet")
    assert done.returncode == 0, done.stderr
    assert contents(tmp_path / "cli") == expected


class KillingExecutor:
    """Dask's executor, but the third unit handed over kills one of the workers (as the OOM killer would)."""

    def __init__(self, client):
        self.client, self.executor, self.count, self.killed = client, client.get_executor(), 0, None

    def submit(self, fn, *args):
        future = self.executor.submit(fn, *args)
        self.count += 1
        if self.count == 3:
            busy = sorted(w for w, keys in self.client.processing().items() if keys)  # one holding a unit
            victim = (busy or sorted(self.client.scheduler_info()["workers"]))[0]
            try:
                self.client.run(os._exit, 1, workers=[victim])
            except Exception:  # the worker dies before it can answer
                self.killed = victim
        return future


def test_a_worker_killed_mid_run_still_ends_in_the_same_output(client, serial, tmp_path):
    source, expected = serial
    out = tmp_path / "model.safetensors"
    killing = KillingExecutor(client)
    try:
        wp.convert(source, out, to="keras", shard_size=SHARD, executor=killing)
    except wp.ShardError:  # the retries ran out: the next run completes it
        assert partials(tmp_path) == []
        wp.convert(source, out, to="keras", shard_size=SHARD, executor=client.get_executor(), resume=True)
    assert killing.killed and contents(tmp_path) == expected
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the worker for the next test
