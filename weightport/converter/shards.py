"""Sharded safetensors output, one unit of work per shard, run on any ``concurrent.futures.Executor``.

Why units: a checkpoint of hundreds of gigabytes converts in hours on one core, and the cores (or the
machines of a Dask cluster) sit idle. The plan is cut into shards first: layers are assigned to shards in
plan order, a layer's tensors together, each shard up to ``shard_size`` bytes (one layer larger than that
gets a shard of its own), named as Hugging Face names them (``model-00001-of-00008.safetensors``). A unit
is JSON: its steps of the plan, the source's path and format, the shard's path; a worker opens the source
itself, reads only its layers' tensors, writes its shard under a temporary name and renames it into place,
importing no framework. The serial conversion runs the same units in this process (``InlineExecutor``), so
every executor writes the same bytes. The index comes last, once every shard is in place, with each
shard's sha256 and a digest of the whole plan in its metadata.

Resume: a run that stops part-way (a worker killed past its retries, Ctrl-C, a crash) leaves the shards
it finished, each renamed in whole, and a journal of their digests (``.<index>.wp-journal``) beside them,
but no index. The same conversion with ``resume=True`` keeps each shard whose file hashes to the digest
recorded for this very plan (same steps, same source files by size and modification time) and writes
the others; a partial file is never kept, nor a shard without a digest recorded for this plan.

Retries: a unit that fails with anything but a ``WeightportError`` (which would fail again: a damaged
source tensor) is submitted again, ``RETRIES`` times; an executor that takes no more work (a process pool
whose worker died) ends the run with a ``ShardError`` naming the shard. Dask reschedules a dead worker's
tasks itself.
"""
from __future__ import annotations

import hashlib
import json
import os

from ..errors import UsageError

RETRIES = 2
DIGESTS_KEY = "weightport_sha256"  # in the index's metadata: shard file name -> sha256 of its bytes
PLAN_KEY = "weightport_plan"  # in the index's metadata: the digest of the plan the shards were written from
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def byte_size(value, what: str = "shard_size"):
    """Bytes from ``123``, ``"500MB"``, ``"5GB"`` (powers of 1000) or ``"2GiB"`` (powers of 1024); None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        size = int(value)
    else:
        text = str(value).strip().replace(" ", "")
        number = text.rstrip("BbIiKkMmGgTt")
        try:
            size = int(float(number) * _UNITS[text[len(number):].upper()])
        except (KeyError, ValueError):
            raise UsageError(f"{what}= takes a size such as 5GB or 500MiB (or a number of bytes), got {value!r}") from None
    if size <= 0:
        raise UsageError(f"{what}= must be a positive number of bytes, got {value!r}")
    return size


def file_source(pairs):
    """The one checkpoint file every pair reads from, which workers can open themselves; else None."""
    # a packed layer's part (or an assembly of parts) reads the checkpoints its nodes say: replay rebuilds it
    found = {id(c): c for p in pairs for c in (p.source.checkpoints() if hasattr(p.source, "checkpoints")
                                               else [getattr(p.source, "checkpoint", None)])}
    ckpt = next(iter(found.values())) if len(found) == 1 else None
    return ckpt if ckpt is not None and ckpt.path and os.path.exists(ckpt.path) else None


def wanted(pairs, destination, *, format, shard_size, executor, resume) -> bool:
    """Whether this output is written in shard units; refuses ``executor``/``resume`` where it cannot be."""
    from .formats import by_name, format_for

    is_safetensors = (by_name(format) if format else format_for(str(destination))).NAME == "safetensors"
    units = shard_size is not None and is_safetensors and file_source(pairs) is not None
    if (executor is not None or resume) and not units:
        why = ("give shard_size= too: one unit of work is one output shard" if shard_size is None else
               "the output is not safetensors" if not is_safetensors else
               "the source is not one checkpoint file that workers can open themselves (a live model or "
               "in-memory tensors); save it to a file first, or leave executor= and resume= out")
        raise UsageError(f"executor=/resume= write {destination} shard by shard, but {why}")
    return units


# -- the unit: one shard, in whichever process runs it ------------------------------------------------------


def replayed(steps, ckpt, dtype, allow_overflow):
    """(plan, TensorSources) of plan ``steps`` (JSON) on ``ckpt``: what a unit writes, tensor by tensor, in order."""
    from . import engine, planning
    from .plan import Plan

    plan = Plan.from_json(json.dumps({"steps": steps}))
    pairs, names_of = planning.replay(plan, ckpt)
    return plan, engine.target_sources(pairs, names_of, dtype=dtype, plan=plan, allow_overflow=allow_overflow)


def write_shard(unit: dict) -> dict:
    """Write one shard (``unit`` as ``make_units`` made it) under a temporary name, then rename it into place.

    Imports no framework. Returns what the run needs back: the shard's sha256 and size, and what the numbers
    showed on the way (NaN/Inf, rounding casts), per step.
    """
    from ..mappings.fast_transpose import reusing_buffers
    from .formats import Staging, open_checkpoint, safetensors

    final = unit["path"]
    with open_checkpoint(unit["source"], format=unit["format"], trust_pickle=unit["trust_pickle"]) as ckpt:
        plan, sources = replayed(unit["steps"], ckpt, unit["dtype"], unit["allow_overflow"])
        if [s.name for s in sources] != unit["names"]:
            raise UsageError(f"{final}: the plan's steps replayed on {unit['source']} give other tensors than "
                             "the shard was planned with; was the source replaced during the run?")
        with Staging(overwrite=True) as staging:
            temp = staging.file(final)
            with reusing_buffers():  # one set of transpose buffers for the shard's tensors
                safetensors.write_one(temp, final, sources, unit["metadata"])
            digest = file_sha256(temp)
            staging.commit()
    return {"sha256": digest, "nbytes": sum(s.nbytes for s in sources), "issues": plan.issues,
            "steps": [[s.exact, s.transform] for s in plan.steps]}


def file_sha256(path: str) -> str:
    """The sha256 of a file's bytes, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- planning the units -----------------------------------------------------------------------------------


def assign(steps, sources, shard_size) -> list:
    """Step indices per shard: layers in plan order, a layer's tensors together, up to ``shard_size`` bytes each."""
    owner = {name: i for i, step in enumerate(steps) for name in step["target_names"].values()}
    sizes = [0] * len(steps)
    for s in sources:
        sizes[owner[s.name]] += s.nbytes
    shards, current, total = [], [], 0
    for i, size in enumerate(sizes):
        if current and total + size > shard_size:
            shards.append(current)
            current, total = [], 0
        current.append(i)
        total += size
    return shards + [current] if current or not shards else shards


def make_units(plan, ckpt, destination, metadata, *, shard_size, dtype, allow_overflow, trust_pickle) -> tuple:
    """(index path, units): the JSON each shard's worker needs, shards assigned and named."""
    from .arrays import cast_dtype
    from .formats import safetensors

    steps = json.loads(plan.to_json())["steps"]
    dtype = None if dtype is None else cast_dtype(dtype).name
    _, sources = replayed(steps, ckpt, dtype, allow_overflow)
    groups = assign(steps, sources, shard_size)
    index_path = os.path.abspath(safetensors.index_path_of(os.fspath(destination)))
    folder = os.path.dirname(index_path)
    owner = {name: i for i, step in enumerate(steps) for name in step["target_names"].values()}
    units = []
    for group, name in zip(groups, safetensors.shard_names(index_path, len(groups))):
        members = set(group)
        units.append({"path": os.path.join(folder, name), "source": os.path.abspath(ckpt.path),
                      "format": ckpt.format, "trust_pickle": bool(trust_pickle), "dtype": dtype,
                      "allow_overflow": bool(allow_overflow), "metadata": safetensors.tagged(metadata),
                      "indices": group, "steps": [steps[i] for i in group],
                      "names": [s.name for s in sources if owner[s.name] in members],
                      "nbytes": sum(s.nbytes for s in sources if owner[s.name] in members)})
    return index_path, units


def plan_digest(units, ckpt) -> str:
    """What a kept shard must have been written from: every unit, and the source files by size and mtime."""
    files = sorted({o for s in ckpt.sources() for o in s.origin} | {ckpt.path})
    stamps = [[f, os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files if os.path.isfile(f)]
    # the shards by file name: the same conversion into another folder has the same plan (and index)
    text = json.dumps({"units": [{**{k: v for k, v in u.items() if k != "trust_pickle"},
                                  "path": os.path.basename(u["path"])} for u in units],
                       "sources": stamps}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
