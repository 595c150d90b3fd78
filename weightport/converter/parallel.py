"""Run a sharded conversion's units (``shards``) on an executor: check the output, resume, retry, then the index.

The order is what makes a stopped run safe to repeat: names are checked before any work; each shard is
renamed into place whole by its own unit, and its digest journalled here as it finishes; the index, which
is what makes the shards a checkpoint, is written last, and only once every shard is in place.
"""
from __future__ import annotations

import json
import os

from ..errors import OutputError, OutputExistsError, ShardError, UsageError, WeightportError
from . import shards


def write_sharded(pairs, plan, destination, metadata, *, shard_size, dtype=None, allow_overflow=False,
                  overwrite=False, resume=False, executor=None, quiet=False, trust_pickle=False,
                  replace_input=False) -> tuple:
    """Write ``plan`` as a sharded safetensors output, one unit per shard; (files written, shard counts).

    The counts say which shards this run wrote and which it kept (``resume``).
    """
    from .executors import InlineExecutor
    from .formats import check_space, staging

    ckpt = shards.file_source(pairs)
    index_path, units = shards.make_units(plan, ckpt, destination, metadata, shard_size=shard_size, dtype=dtype,
                                          allow_overflow=allow_overflow, trust_pickle=trust_pickle)
    digest = shards.plan_digest(units, ckpt)
    folder = os.path.dirname(index_path)
    inputs = sorted({o for s in ckpt.sources() for o in s.origin} | {ckpt.path})
    refuse_existing(index_path, [u["path"] for u in units], inputs, overwrite=overwrite or resume,
                    replace_input=replace_input)
    staging.remove_stale(folder)
    old_index = shards_index(index_path)
    done = kept_shards(units, digest, old_index, journal_path(index_path)) if resume else {}
    todo = [u for u in units if u["path"] not in done]
    check_space(folder, sum(u["nbytes"] for u in todo))
    with Progress(sum(u["nbytes"] for u in units), os.path.basename(index_path), quiet) as progress:
        progress.update(sum(u["nbytes"] for u in units if u["path"] in done))

        def finished(unit, result):
            merge(plan, unit, result)
            done[unit["path"]] = result["sha256"]
            save_journal(journal_path(index_path), digest, done)
            progress.update(result["nbytes"])

        try:
            run_units(executor if executor is not None else InlineExecutor(), todo, finished)
        except ShardError as exc:
            settle(folder, todo)
            raise ShardError(f"{exc}; {len(done)} of {len(units)} shards are in place. Run the same conversion "
                             "again with resume=True to write the rest") from exc.__cause__
        except BaseException:
            settle(folder, todo)
            raise
        staging.remove_stale(folder)  # what a worker that died mid-shard left
    files = [u["path"] for u in units]
    write_index(index_path, units, done, digest, old_index, overwrite=overwrite or resume)
    _remove(journal_path(index_path))
    written = [u["path"] for u in todo]
    return files + [index_path], {"written": written, "kept": [f for f in files if f not in written]}


def refuse_existing(index_path, paths, inputs, *, overwrite, replace_input) -> None:
    """Refuse, before any work, an output name that is taken (unless overwriting or resuming) or is an input."""
    for path in [index_path, *paths]:
        if any(os.path.exists(path) and os.path.exists(i) and os.path.samefile(path, i) for i in inputs):
            what = ("the input being read" if not replace_input else
                    "an input: a sharded conversion renames each shard into place as it finishes, while other "
                    "units still read the input, so it cannot replace it")
            raise OutputError(f"cannot write {path}: it is {what}; nothing was written. Write to another name")
        if not overwrite and os.path.lexists(path):
            raise OutputExistsError(f"{path} already exists; nothing was written. Pass overwrite=True to replace "
                                    "it, or resume=True to keep the shards an interrupted run of this same "
                                    "conversion finished")
    if not os.path.isdir(os.path.dirname(index_path)):
        raise UsageError(f"cannot write {index_path}: the folder {os.path.dirname(index_path)} does not exist")


def settle(folder, units, seconds: float = 5.0) -> None:
    """After a failed run, remove the partial shards of workers that died; wait (a little) for those still dying.

    A dead worker's pipe closes a moment before its process is gone, so its partial file can look alive
    just when the run learns of its death; a worker still writing will rename its shard (whole) or remove it.
    """
    import time

    from .formats import staging

    prefixes = tuple(f".{os.path.basename(u['path'])}.wp-" for u in units)
    deadline = time.monotonic() + seconds
    while True:
        staging.remove_stale(folder)
        try:
            left = [n for n in os.listdir(folder) if n.startswith(prefixes) and n.endswith(".partial")]
        except OSError:
            return
        if not left or time.monotonic() > deadline:
            return
        time.sleep(0.05)


# -- resume --------------------------------------------------------------------------------------------------


def journal_path(index_path: str) -> str:
    """Where a run in progress records the digests of the shards it finished (removed once the index is in)."""
    folder, base = os.path.split(index_path)
    return os.path.join(folder, f".{base}.wp-journal")


def shards_index(index_path: str) -> dict:
    """An existing index as JSON (empty if there is none, or it cannot be read: then nothing in it is trusted)."""
    from .formats import safetensors

    try:
        index = safetensors.read_index(index_path) if os.path.isfile(index_path) else {}
    except WeightportError:
        return {}
    return index if isinstance(index, dict) else {}


def recorded(digest: str, old_index: dict, journal: str) -> dict:
    """Shard file name -> sha256, as recorded for the plan ``digest`` by a finished index or a run's journal."""
    found = {}
    meta = old_index.get("metadata") or {}
    if isinstance(meta, dict) and meta.get(shards.PLAN_KEY) == digest:
        try:
            found.update(json.loads(meta.get(shards.DIGESTS_KEY, "{}")))
        except (TypeError, ValueError):
            pass
    try:
        with open(journal, encoding="utf-8") as f:
            entry = json.load(f)
        if isinstance(entry, dict) and entry.get("plan") == digest:
            found.update(entry.get("sha256") or {})
    except (OSError, ValueError):
        pass
    return {k: v for k, v in found.items() if isinstance(k, str) and isinstance(v, str)}


def kept_shards(units, digest, old_index, journal) -> dict:
    """Path -> sha256 of the shards in place whose bytes hash to the digest recorded for this plan."""
    known = recorded(digest, old_index, journal)
    kept = {}
    for unit in units:
        path = unit["path"]
        expected = known.get(os.path.basename(path))
        if expected and os.path.isfile(path) and shards.file_sha256(path) == expected:
            kept[path] = expected
    return kept


def save_journal(path: str, digest: str, done: dict) -> None:
    """Record the finished shards' digests, replacing the journal in one rename (never half-written)."""
    from .formats.staging import partial_name

    temp = partial_name(path)
    try:
        with open(temp, "w", encoding="utf-8") as f:
            json.dump({"plan": digest, "sha256": {os.path.basename(p): d for p, d in done.items()}}, f)
        os.replace(temp, path)
    except OSError:
        _remove(temp)  # a journal is an aid to resuming; without it the shards are redone


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


# -- running -------------------------------------------------------------------------------------------------


def run_units(executor, units, finished, retries: int = shards.RETRIES) -> None:
    """Submit the units, call ``finished(unit, result)`` as each one ends; retry what failed by chance.

    In this process (``InlineExecutor``) one unit runs at a time, so the first failure stops the run;
    elsewhere every unit is handed over at once and the executor schedules them.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    from .executors import InlineExecutor

    window = 1 if isinstance(executor, InlineExecutor) else max(len(units), 1)
    queue, pending, failures = list(units), {}, {}
    try:
        while queue or pending:
            while queue and len(pending) < window:
                unit = queue.pop(0)
                pending[submit(executor, unit)] = unit
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(ready, key=lambda f: pending[f]["path"]):
                unit = pending.pop(future)
                try:
                    result = future.result()
                except WeightportError as exc:  # deterministic: it would fail again
                    raise named(exc, unit) from exc
                except Exception as exc:  # a worker died, a connection dropped: try again, a few times
                    failures[unit["path"]] = failures.get(unit["path"], 0) + 1
                    if failures[unit["path"]] > retries:
                        raise ShardError(f"shard {unit['path']} was not written: {type(exc).__name__}: {exc} "
                                         f"(tried {retries + 1} times)") from exc
                    pending[submit(executor, unit, exc)] = unit
                else:
                    finished(unit, result)
    finally:
        for future in pending:
            future.cancel()


def submit(executor, unit, previous=None):
    """``executor.submit(write_shard, unit)``; an executor that takes no more work is a ShardError."""
    import uuid

    try:  # each attempt its own task: Dask would otherwise hand back a cached (or failed) result of the same unit
        return executor.submit(shards.write_shard, {**unit, "attempt": uuid.uuid4().hex})
    except Exception as exc:
        why = f"{type(previous).__name__}: {previous}; " if previous is not None else ""
        raise ShardError(f"shard {unit['path']} was not written: {why}the executor takes no more work "
                         f"({type(exc).__name__}: {exc})") from previous or exc


def named(exc: WeightportError, unit):
    """``exc`` again, its message naming the shard that was being written."""
    try:
        return type(exc)(f"writing shard {os.path.basename(unit['path'])}: {exc}")
    except TypeError:
        return exc


def merge(plan, unit, result) -> None:
    """What a unit saw in the numbers (NaN/Inf, rounding casts), into the run's plan."""
    for i, (exact, transform) in zip(unit["indices"], result["steps"]):
        plan.steps[i].exact, plan.steps[i].transform = exact, transform
    plan.issues += [issue for issue in result["issues"] if issue not in plan.issues]


def write_index(index_path, units, done, digest, old_index, *, overwrite) -> None:
    """The index, last: every shard's tensors, the plan's digest and each shard's sha256; renamed into place."""
    from .formats import Staging

    names = {u["path"]: os.path.basename(u["path"]) for u in units}
    metadata = {**units[0]["metadata"], "total_size": sum(u["nbytes"] for u in units), shards.PLAN_KEY: digest,
                shards.DIGESTS_KEY: json.dumps({names[p]: done[p] for p in names}, separators=(",", ":"))}
    index = {"metadata": metadata, "weight_map": {t: names[u["path"]] for u in units for t in u["names"]}}
    folder = os.path.dirname(index_path)
    old = old_index.get("weight_map") if isinstance(old_index.get("weight_map"), dict) else {}
    with Staging(overwrite=overwrite) as staging:
        with open(staging.file(index_path), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
        for shard in set(old.values()) - set(names.values()):  # shards only the old index listed
            if isinstance(shard, str) and shard == os.path.basename(shard) and shard.endswith(".safetensors"):
                staging.obsolete(os.path.join(folder, shard))
        staging.commit()


class Progress:
    """A bar over the bytes of every shard, fed as units finish (shown as ``progress.bar`` decides)."""

    def __init__(self, total: int, label: str, quiet: bool):
        from ..progress import bar

        self._bar = bar(total, label, quiet)

    def update(self, nbytes: int) -> None:
        if self._bar is not None and nbytes:
            self._bar.update(nbytes)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()
