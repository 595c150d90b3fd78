"""Run matched pairs: read, translate through the canonical form, then write.

Into a live model, every tensor is translated and shape-checked before the
first assignment, so a refusal leaves the target as it was.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeMismatchError
from ..mappings.transforms import IDENTITY, Transpose, fill_transposed, transpose_copy
from .arrays import cast


def translate(p) -> dict:
    """The target-layout tensors for one pair (slot -> numpy array)."""
    native = p.source.read(p.rule, p.source_hp)
    try:
        canonical = p.rule.to_canonical(p.source.layout, p.source_hp, native)
    except KeyError as exc:
        raise ShapeMismatchError(
            f"{p.source.label}: rule {p.rule.name!r} needs the tensor {exc.args[0]!r} "
            f"({p.source.layout} layout), which the layer does not hold; it holds {sorted(native)}") from None
    return p.rule.from_canonical(p.target.layout, p.target_hp, canonical)


def run_into_live(pairs) -> None:
    """Translate every pair, check every shape, then assign (and carry the frozen state)."""
    prepared = []
    for p in pairs:
        arrays = translate(p)
        expected = p.target.framework.shapes(p.target.obj, list(arrays))
        for slot, arr in arrays.items():
            if slot in expected and tuple(arr.shape) != tuple(expected[slot]):
                raise ShapeMismatchError(
                    f"{p.source.label} -> {p.target.label}: slot {slot!r} expects shape {tuple(expected[slot])}, "
                    f"translated source has {tuple(arr.shape)}; the target was not changed")
        prepared.append((p, arrays))
    for p, arrays in prepared:
        p.target.framework.write(p.target.obj, arrays)
        frozen = p.source.framework.is_frozen(p.source.obj) if hasattr(p.source, "framework") else None
        if frozen is not None:
            p.target.framework.set_frozen(p.target.obj, frozen)


class LayerTensors:
    """Translate one pair on first use and hand out its target tensors one by one.

    Writers load tensors in order, so at most one layer's translated tensors
    are alive at a time.
    """

    def __init__(self, p):
        self.p, self._arrays = p, None

    def load(self, slot):
        if self._arrays is None:
            self._arrays = translate(self.p)
        array = self._arrays.pop(slot)
        if not self._arrays:
            self._arrays = None  # all handed out; a later call would translate again
        return array


def target_sources(pairs, names_of, dtype=None) -> list:
    """TensorSources for a file written in the targets' layout, shapes and dtypes known up front.

    ``names_of(pair, slot)`` names each target tensor. ``dtype`` casts
    floating tensors (integer counters keep theirs).
    """
    from .arrays import cast_dtype, is_floating
    from .checkpoint import TensorSource

    out = []
    dtype = None if dtype is None else cast_dtype(dtype)  # names such as "bfloat16" (ml_dtypes) too
    for p in pairs:
        rule, layout, hp = p.rule, p.target.layout, p.target_hp
        shapes = rule.native_shapes(layout, hp, p.source_shapes)
        src_dtypes = p.source.dtypes(p.rule, p.source_hp)
        layer_dtype = next(iter(src_dtypes.values()), np.dtype("float32"))
        cache = LayerTensors(p)
        for lk in rule.links(layout, hp):
            src_link = _source_link(p, lk)
            for slot in lk.native:
                if not lk.canonical:  # a layout-only constant (num_batches_tracked)
                    dt = np.dtype(lk.transform.dtype)
                else:  # transforms keep dtypes: the dtype of the source tensor it comes from
                    dt = src_dtypes.get(src_link.native[0], layer_dtype) if src_link else layer_dtype
                if dtype is not None and is_floating(dt):
                    dt = np.dtype(dtype)
                streamed = _plain_transpose_of(src_link, lk)
                passthrough = _stored_bytes_of(p, src_link, lk, dt)
                if passthrough is not None:
                    source = TensorSource(names_of(p, slot), shapes[slot], dt, _loader(cache, slot, dt),
                                          file_range=passthrough)
                elif streamed is not None:
                    read = _slot_reader(p, streamed)
                    source = TensorSource(names_of(p, slot), shapes[slot], dt, lambda r=read, d=dt: cast(
                        transpose_copy(r(), (1, 0)), d), blocks=lambda r=read, d=dt: transposed_blocks(r(), d))
                else:
                    source = TensorSource(names_of(p, slot), shapes[slot], dt, _loader(cache, slot, dt))
                out.append(source)
    return out


def _loader(cache, slot, dtype):
    return lambda: cast(cache.load(slot), dtype)


def _source_link(p, target_link):
    """The source layout's link for the same canonical slots as ``target_link`` (None for constants)."""
    if not target_link.canonical:
        return None
    return next((lk for lk in p.rule.links(p.source.layout, p.source_hp)
                 if lk.canonical == target_link.canonical), None)


def _plain_transpose_of(src_link, target_link):
    """The source slot whose plain 2-D transpose ``target_link``'s tensor is, else None.

    That tensor can then be streamed in row blocks straight from the source
    (Dense kernels, the bulk of a large model), never held whole in memory.
    """
    if src_link is None or len(src_link.native) != 1 or len(target_link.native) != 1:
        return None
    flips = [_is_2d_transpose(lk.transform) for lk in (src_link, target_link)]
    plain = [lk.transform is IDENTITY for lk in (src_link, target_link)]
    return src_link.native[0] if (flips[0] and plain[1]) or (plain[0] and flips[1]) else None


def _stored_bytes_of(p, src_link, target_link, dtype):
    """The file byte range holding ``target_link``'s tensor unchanged (no transform, no cast), else None."""
    if (src_link is None or src_link.transform is not IDENTITY or target_link.transform is not IDENTITY
            or len(src_link.native) != 1 or not hasattr(p.source, "checkpoint")):
        return None
    stored = p.source.checkpoint.source(p.source.names[src_link.native[0]])
    return stored.file_range if stored.dtype == dtype else None


def _is_2d_transpose(t) -> bool:
    return isinstance(t, Transpose) and t.axes == (1, 0)


def _slot_reader(p, slot):
    return lambda: p.source.read(p.rule, p.source_hp)[slot]


def transposed_blocks(a, dtype, rows: int = 256):
    """``a.T`` cast to ``dtype``, as consecutive row blocks; the next block is computed while the last is written.

    Two buffers take turns: a helper thread fills one (numpy releases the
    GIL while copying) while the caller writes the other out, so transposing
    and writing overlap on two cores. A block is valid until the next one is
    asked for.
    """
    from concurrent.futures import ThreadPoolExecutor

    a = np.asarray(a)
    n_out = a.shape[1]
    buffers = [np.empty((min(rows, n_out), a.shape[0]), dtype=a.dtype) for _ in range(2 if n_out > rows else 1)]
    starts = list(range(0, n_out, rows))

    def job(k):
        return fill_transposed(a, starts[k], buffers[k % len(buffers)][:min(rows, n_out - starts[k])])

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(job, 0)
        for k in range(len(starts)):
            block = pending.result()
            if k + 1 < len(starts):
                pending = pool.submit(job, k + 1)
            yield cast(block, dtype)
