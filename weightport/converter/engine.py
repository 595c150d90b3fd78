"""Run matched pairs: read, translate through the canonical form, then write (files here; live models in
``assign``, which checks every pair before it assigns any).

Numbers are watched on the way (``Watch``): NaN or Inf in a source tensor is
reported, a cast that would turn finite values into inf is refused (unless
``allow_overflow``), and a cast that rounds marks its step "function-preserving,
not bitwise".
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ..errors import ShapeMismatchError, WeightportWarning
from ..mappings.fast_transpose import block_rows, reusing_buffers, threaded_blocks, transposed_parts
from ..mappings.transforms import IDENTITY, Chain, Reshape, Transpose, transpose_copy
from .arrays import cast, cast_checked, is_floating, nonfinite, sums_finite


class Watch:
    """What a run notices in the numbers, said per pair in the plan (its issues and steps) or as warnings."""

    def __init__(self, pairs, plan=None, allow_overflow: bool = False):
        self.plan, self.allow_overflow = plan, allow_overflow
        self._steps = {id(p): step for p, step in zip(pairs, plan.steps)} if plan is not None else {}
        self._scanned: set = set()
        self._rounded: dict = {}  # id(pair) -> the cast effects already said for it

    def _say(self, text: str) -> None:
        if self.plan is not None:
            self.plan.issues.append(text)
        else:
            warnings.warn(text, WeightportWarning, stacklevel=4)

    def source(self, p, native: dict, counted: dict | None = None) -> None:
        """Report NaN/Inf in the source tensors of ``p`` (each tensor once); ``counted`` (slot -> (NaN, Inf))
        holds counts already taken elsewhere (on a copy just made), which are not scanned again."""
        todo = {slot: a for slot, a in native.items() if (id(p), slot) not in self._scanned}
        self.counted(p, *[(slot, *(counted[slot] if counted and slot in counted else nonfinite(a)))
                          for slot, a in todo.items()])

    def counted(self, p, *counts) -> None:
        """Report (slot, NaN count, Inf count) of source tensors of ``p`` counted elsewhere (each tensor once)."""
        found = []
        for slot, nans, infs in counts:
            key = (id(p), slot)
            if key in self._scanned:
                continue
            self._scanned.add(key)
            if nans or infs:
                name = getattr(p.source, "names", {}).get(slot, slot)
                found.append(f"{name!r} ({', '.join(t for t in (f'{nans} NaN' * bool(nans), f'{infs} Inf' * bool(infs)) if t)})")
        if found:
            self._say(f"{p.source.label}: source tensor(s) {', '.join(found)} hold values that are not finite; "
                      "they were copied as they are. The source model is damaged (a diverged training run?)")

    def cast(self, p, where: str, array, dtype):
        """``array`` in ``dtype``: refused if it overflows, noted on the step if it rounds."""
        out, effect = cast_checked(array, dtype, where, allow_overflow=self.allow_overflow)
        if effect:
            self._note_cast(p, np.asarray(array).dtype, np.dtype(dtype), effect, where)
        return out

    def _note_cast(self, p, src, dst, effect, where) -> None:
        if effect == "overflows":
            self._say(f"{where}: values past {dst}'s range became inf (allow_overflow=True)")
        noted = self._rounded.setdefault(id(p), set())
        if effect in noted:
            return
        noted.add(effect)
        step = self._steps.get(id(p))
        if step is not None:
            step.exact = False
            step.transform = f"{step.transform} | {src}->{dst} cast {effect}".lstrip(" |")
        elif effect == "rounds":
            self._say(f"{p.source.label}: casting {src} to {dst} rounds values; function-preserving, not bitwise")


def translate(p, watch: Watch | None = None) -> dict:
    """The target-layout tensors for one pair (slot -> numpy array)."""
    native = p.source.read(p.rule, p.source_hp)
    if watch is not None:
        watch.source(p, native)
    try:
        canonical = p.rule.to_canonical(p.source.layout, p.source_hp, native)
    except KeyError as exc:
        raise ShapeMismatchError(
            f"{p.source.label}: rule {p.rule.name!r} needs the tensor {exc.args[0]!r} "
            f"({p.source.layout} layout), which the layer does not hold; it holds {sorted(native)}") from None
    return p.rule.from_canonical(p.target.layout, p.target_hp, canonical)


def live_bytes(pairs) -> int:
    """Roughly what a live port moves (canonical sizes at 4 bytes a value), for a progress bar's total."""
    return sum(4 * math.prod(s) for p in pairs for s in p.source_shapes or ())


class LayerTensors:
    """Translate one pair on first use and hand out its target tensors one by one.

    Writers load tensors in order, so at most one layer's translated tensors
    are alive at a time.
    """

    def __init__(self, p, watch: Watch | None = None):
        self.p, self._arrays, self.watch = p, None, watch

    def load(self, slot):
        if self._arrays is None:
            self._arrays = translate(self.p, self.watch)
        array = self._arrays.pop(slot)
        if not self._arrays:
            self._arrays = None  # all handed out; a later call would translate again
        return array


def target_sources(pairs, names_of, dtype=None, *, plan=None, allow_overflow: bool = False) -> list:
    """TensorSources for a file written in the targets' layout, shapes and dtypes known up front.

    ``names_of(pair, slot)`` names each target tensor. ``dtype`` casts
    floating tensors (integer counters keep theirs); a cast that overflows is
    refused unless ``allow_overflow``. With ``plan`` (whose steps match
    ``pairs``), NaN/Inf in the source and rounding casts are said there as the
    tensors are written.
    """
    from .arrays import cast_dtype
    from .checkpoint import TensorSource

    watch = Watch(pairs, plan, allow_overflow)
    out = []
    dtype = None if dtype is None else cast_dtype(dtype)  # names such as "bfloat16" (ml_dtypes) too
    for p in pairs:
        rule, layout, hp = p.rule, p.target.layout, p.target_hp
        shapes = rule.native_shapes(layout, hp, p.source_shapes)
        src_dtypes = p.source.dtypes(p.rule, p.source_hp)
        layer_dtype = next(iter(src_dtypes.values()), np.dtype("float32"))
        cache = LayerTensors(p, watch)
        origin = _origin(p)
        for lk in rule.links(layout, hp):
            src_link = _source_link(p, lk)
            for slot in lk.native:
                if not lk.canonical:  # a layout-only constant (num_batches_tracked)
                    dt = np.dtype(lk.transform.dtype)
                else:  # transforms keep dtypes: the dtype of the source tensor it comes from
                    dt = src_dtypes.get(src_link.native[0], layer_dtype) if src_link else layer_dtype
                if dtype is not None and is_floating(dt):
                    dt = np.dtype(dtype)
                name = names_of(p, slot)
                where = f"{p.source.label} -> tensor {name!r}"
                streamed = _plain_transpose_of(src_link, lk, shapes[slot])
                passthrough = _stored_bytes_of(p, src_link, lk, dt)
                if passthrough is not None:
                    source = TensorSource(name, shapes[slot], dt, _loader(watch, cache, p, slot, dt, where),
                                          file_range=passthrough, origin=origin,
                                          check=_scan_stored(watch, p, src_link.native[0]))
                elif streamed is not None:
                    (src_slot, flat), shape = streamed, shapes[slot]
                    read, stream = _slot_reader(p, src_slot, watch, flat), _slot_reader(p, src_slot, None, flat)
                    source = TensorSource(
                        name, shape, dt,
                        lambda r=read, d=dt, w=where, p=p, t=shape: watch.cast(
                            p, w, transpose_copy(r(), (1, 0)).reshape(t), d),
                        blocks=lambda r=stream, d=dt, w=where, p=p, s=src_slot, t=shape: _cast_blocks(
                            watch, p, w, r(), d, s, t),
                        fill=lambda sink, r=stream, d=dt, w=where, p=p, s=src_slot, t=shape: _fill_parts(
                            watch, p, w, r(), d, s, t, sink), origin=origin)
                else:
                    source = TensorSource(name, shapes[slot], dt, _loader(watch, cache, p, slot, dt, where),
                                          origin=origin)
                out.append(source)
    return out


def _loader(watch, cache, p, slot, dtype, where):
    return lambda: watch.cast(p, where, cache.load(slot), dtype)


def _origin(p) -> tuple:
    """The files a checkpoint pair's tensors are read from (none for a live model)."""
    if not hasattr(p.source, "checkpoint"):
        return ()
    ckpt = p.source.checkpoint
    found = [o for n in p.source.names.values() if n in ckpt for o in ckpt.source(n).origin]
    return tuple(dict.fromkeys(found + ([ckpt.path] if getattr(ckpt, "path", None) else [])))


def _cast_blocks(watch, p, where, a, dtype, slot=None, shape=None):
    """The streamed transpose of 2-D ``a`` in its own dtype, in blocks of whole slices of ``shape``'s first axis
    (the target's shape, ``a.T``'s by default), each block scanned for NaN/Inf as it is written (for source
    tensor ``slot``: the same values, transposed), then cast (and checked) to ``dtype``."""
    a = np.asarray(a)
    shape = tuple(shape or a.shape[::-1])
    inner = math.prod(shape[1:])  # a block must hold whole slices: rows of a.T, a multiple of this many values
    step = inner // math.gcd(inner, a.shape[0]) if inner else 1
    rows = None if len(shape) == 2 else max(step, block_rows(a.shape[0], a.dtype.itemsize) // step * step)
    counts, scan = [0, 0], slot is not None and is_floating(a.dtype)
    for block, finite in transposed_blocks(a, a.dtype, rows, check=sums_finite if scan else None):
        if scan and not all(finite):  # each part's sum, taken as it was filled, proves most blocks finite
            nans, infs = nonfinite(block)
            counts[0], counts[1] = counts[0] + nans, counts[1] + infs
        yield watch.cast(p, where, block.reshape((-1,) + shape[1:]), dtype)
    if slot is not None:
        watch.counted(p, (slot, *counts))


def _fill_parts(watch, p, where, a, dtype, slot, shape, sink):
    """The streamed transpose of 2-D ``a`` handed to ``sink.put(byte offset, part)`` by worker threads, each
    part filled in memory the sink lends (``sink.slot``) and summed for NaN/Inf as it is filled (source tensor
    ``slot`` counted value by value only where a sum is not finite); through ``_cast_blocks``, in order, where a
    cast is due."""
    a = np.asarray(a)
    if a.dtype != np.dtype(dtype):
        offset = 0
        for block in _cast_blocks(watch, p, where, a, dtype, slot, shape):
            sink.put(offset, block)
            offset += block.nbytes
        return
    scan = is_floating(a.dtype)
    finite = transposed_parts(a, sink.put, check=sums_finite if scan else None, lend=sink.slot)
    watch.counted(p, (slot, *(nonfinite(a) if scan and not all(finite) else (0, 0))))


def _scan_stored(watch, p, src_slot):
    """Scan a tensor copied byte for byte (never loaded otherwise) for NaN/Inf, just before it is copied."""
    return lambda: watch.source(p, {src_slot: p.source.checkpoint[p.source.names[src_slot]]})


def _source_link(p, target_link):
    """The source layout's link for the same canonical slots as ``target_link`` (None for constants)."""
    if not target_link.canonical:
        return None
    return next((lk for lk in p.rule.links(p.source.layout, p.source_hp)
                 if lk.canonical == target_link.canonical), None)


def _plain_transpose_of(src_link, target_link, shape):
    """(source slot, its 2-D shape or None) when ``target_link``'s tensor (of ``shape``) holds the bytes of a
    plain 2-D transpose of that source tensor, else None.

    That tensor can then be streamed in row blocks straight from the source
    (Dense kernels and attention projections, the bulk of a large model),
    never held whole in memory. Reshapes around the transpose keep the
    bytes: torch's ``q_proj.weight`` transposed is Keras's ``(d, heads,
    head_dim)`` query kernel; back, that kernel read as ``(d, heads *
    head_dim)`` is transposed.
    """
    if src_link is None or len(src_link.native) != 1 or len(target_link.native) != 1:
        return None
    slot = src_link.native[0]
    if target_link.transform is IDENTITY and _ends_in_2d_transpose(src_link.transform):
        return slot, None
    if src_link.transform is IDENTITY and _ends_in_2d_transpose(target_link.transform) and len(shape) == 2:
        return slot, (shape[1], shape[0])
    return None


def _ends_in_2d_transpose(t) -> bool:
    """Whether ``t`` (canonical -> layout) is reshapes, then a 2-D transpose: bytes moved only by the transpose."""
    parts = t.parts if isinstance(t, Chain) else (t,)
    return (len(parts) >= 1 and _is_2d_transpose(parts[-1])
            and all(isinstance(part, Reshape) for part in parts[:-1]))


def _stored_bytes_of(p, src_link, target_link, dtype):
    """The file byte range holding ``target_link``'s tensor unchanged (no transform, no cast), else None."""
    if (src_link is None or src_link.transform is not IDENTITY or target_link.transform is not IDENTITY
            or len(src_link.native) != 1 or not hasattr(p.source, "checkpoint")):
        return None
    stored = p.source.checkpoint.source(p.source.names[src_link.native[0]])
    return stored.file_range if stored.dtype == dtype else None


def _is_2d_transpose(t) -> bool:
    return isinstance(t, Transpose) and t.axes == (1, 0)


def _slot_reader(p, slot, watch=None, flat=None):
    """A reader of source tensor ``slot`` (seen as 2-D ``flat`` if given), scanned by ``watch`` if given."""
    def read():
        array = p.source.read(p.rule, p.source_hp)[slot]
        if watch is not None:
            watch.source(p, {slot: array})
        return array if flat is None else np.asarray(array).reshape(flat)

    return read


def transposed_blocks(a, dtype, rows: int | None = None, check=None):
    """(``a.T`` cast to ``dtype``, [``check`` of each part]) as consecutive row blocks; the next blocks are
    computed while the last is written.

    Worker threads fill a few buffers ahead (``threaded_blocks``: numpy
    releases the GIL while copying), so transposing runs on every core and
    overlaps writing; each applies ``check`` (if given) to the part it just
    filled. A block is valid until the next one is asked for.
    """
    for item in threaded_blocks(np.asarray(a), rows=rows, check=check):
        block, results = (item, []) if check is None else item
        yield cast(block, dtype), results


def write_file(pairs, names_of, plan, destination, layout, *, overwrite=False, dtype=None, shard_size=None,
               quiet=False, dry_run=False, allow_overflow=False, replace_input=False, format=None, like=None,
               executor=None, resume=False, trust_pickle=False, model_json=None):
    """Record each step's tensor names in the plan, then (unless a dry run) write the file; the Report.

    ``format`` names the output's format (else its suffix does); ``like`` is the live target model, for formats
    that store more than tensors; ``model_json`` (the text that rebuilds the model the file's names are from)
    goes into the metadata. A sharded safetensors output of a checkpoint file is written one unit per
    shard (``parallel``), on ``executor`` if given."""
    import json
    import os

    from ..progress import bar
    from .checkpoint import LAYOUT_KEY, MODEL_KEY
    from .formats import write_checkpoint
    from . import split_plans
    from .plan import PLAN_VERSION, Report, jsonable
    from .structure import RULES_KEY, layer_record

    layers = {}
    plan.version = PLAN_VERSION  # the steps' names (and splits) are recorded as this version records them
    for step, p in zip(plan.steps, pairs):
        step.source_names = dict(getattr(p.source, "names", {}))
        step.split = split_plans.record(p)
        step.target_names = {slot: names_of(p, slot) for slot in p.rule.native_slots(p.target.layout, p.target_hp)}
        found = layer_record(p, list(step.target_names.values()))
        if found is not None:
            layers.setdefault(*found)
    report = Report(plan, str(destination))
    report.files = []
    if dry_run:
        return report
    from . import parallel, shards

    metadata = {LAYOUT_KEY: layout, RULES_KEY: json.dumps(layers, default=jsonable)}
    if model_json:
        metadata[MODEL_KEY] = model_json
    if shards.wanted(pairs, destination, format=format, shard_size=shard_size, executor=executor, resume=resume):
        report.files, report.shards = parallel.write_sharded(
            pairs, plan, destination, metadata, shard_size=shard_size, dtype=dtype, allow_overflow=allow_overflow,
            overwrite=overwrite, resume=resume, executor=executor, quiet=quiet, trust_pickle=trust_pickle,
            replace_input=replace_input)
        return report
    sources = target_sources(pairs, names_of, dtype=dtype, plan=plan, allow_overflow=allow_overflow)
    progress = bar(sum(s.nbytes for s in sources), os.path.basename(str(destination)), quiet)
    try:
        with reusing_buffers():  # one set of transpose buffers for every tensor, not fresh pages for each
            report.files = write_checkpoint(destination, sources, metadata=metadata, overwrite=overwrite,
                                            shard_size=shard_size, progress=progress.update if progress else None,
                                            replace_input=replace_input, format=format, like=like)
    finally:
        if progress is not None:
            progress.close()
    return report


def checked_layout(fw, layer, rule, hp, weights) -> dict:
    """The layout tensors for one layer's canonical weights (``set_weights``), after checking every shape."""
    from .arrays import to_numpy

    names = rule.canonical(hp)
    label = fw.display_name(layer)
    weights = [np.asarray(to_numpy(w)) for w in weights]
    hp = rule.given(hp, [tuple(w.shape) for w in weights])
    slots = rule.native_slots(fw.layout, hp)
    expected = rule.canonical_shapes(fw.layout, hp, fw.shapes(layer, slots))
    for name, w, shape in zip(names, weights, expected):
        if tuple(w.shape) != tuple(shape):
            raise ShapeMismatchError(f"{label} ({rule.name}) weight {name!r}: expected shape {tuple(shape)} "
                                     f"(Keras layout), got {tuple(w.shape)}; nothing was assigned")
    return rule.from_canonical(fw.layout, hp, weights)
