"""Where shard units run: in this process, in fresh local processes, or on a Dask cluster.

Any ``concurrent.futures.Executor`` does; these are the ones the command line builds (``--workers``,
``--scheduler``) and the one a serial conversion uses, so that serial and parallel runs go through the very
same unit function. Dask is imported here only, and only when a scheduler address is given.
"""
from __future__ import annotations

from concurrent.futures import Executor, Future
from contextlib import contextmanager

from ..errors import UsageError

DASK_RETRIES = 2  # Dask reruns a unit whose task failed this many times (a dead worker's units it reschedules itself)


class InlineExecutor(Executor):
    """Runs each unit at once, in this process, and hands back a finished future: the serial conversion."""

    def submit(self, fn, /, *args, **kwargs):
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # Ctrl-C is not the unit's result: it goes on up
            future.set_exception(exc)
        return future


@contextmanager
def local_processes(workers: int):
    """A pool of ``workers`` spawned processes: each starts bare, importing no framework this process holds."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers= takes a positive number of processes, got {workers!r}")
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


@contextmanager
def dask_scheduler(address: str, timeout: float = 30):
    """An executor on the Dask cluster whose scheduler listens at ``address`` (``tcp://host:8786``)."""
    try:
        from distributed import Client
    except ImportError:
        raise UsageError("scheduler= needs Dask, which is not installed: pip install 'weightport[dask]'") from None
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {address!r} ({type(exc).__name__}: {exc}); check "
                         "the address and that the scheduler is running") from None
    try:
        yield client.get_executor(retries=DASK_RETRIES, pure=False)
    finally:
        client.close()
