"""Forward equivalence: run two models on the same input and compare what comes out."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from .arrays import is_floating


@dataclass
class VerifyResult:
    """``ok`` when ``max_abs_diff <= atol + rtol * max|reference|`` for every output.

    ``max_rel_diff`` is the largest absolute difference divided by the largest
    magnitude of the reference (second model's) output, so outputs near zero do
    not blow it up.
    """

    ok: bool
    max_abs_diff: float
    max_rel_diff: float
    atol: float
    rtol: float
    outputs: int = 0
    notes: list = field(default_factory=list)
    # with locate: the first paired layer (in the second model's running order) whose outputs part, or None
    diverging: object = None

    def __bool__(self):
        return self.ok

    def __str__(self):
        verdict = "equivalent" if self.ok else "NOT equivalent"
        text = (f"{verdict}: {self.outputs} output(s), max abs diff {self.max_abs_diff:.3g}, "
                f"max rel diff {self.max_rel_diff:.3g} (atol {self.atol:g}, rtol {self.rtol:g})")
        lines = [text] + [f"  note: {n}" for n in self.notes]
        if self.diverging is not None:
            lines.append(f"  first diverging layer: {self.diverging}")
        return "\n".join(lines)

    __repr__ = __str__


def _flatten(out, where: str = "") -> list:
    """(where, array) for every leaf of a model's outputs, dicts in key order; ``where`` names the leaf
    (``past_key_values``, ``[1]``) for messages."""
    if isinstance(out, dict):
        return [a for k in sorted(out) for a in _flatten(out[k], f"{where}.{k}" if where else str(k))]
    if isinstance(out, (list, tuple)):
        return [a for i, o in enumerate(out) for a in _flatten(o, f"{where}[{i}]")]
    return [(where, np.asarray(out))]


def _numbers(leaf, index: int, model: str) -> np.ndarray:
    """The leaf's array as float64; an output that is no array of numbers (a transformers cache object) is
    refused with its name, since it cannot be compared and the outputs would pair up wrongly around it."""
    where, a = leaf
    if a.dtype.kind in "biuf" or is_floating(a.dtype):  # bfloat16 arrives as ml_dtypes' (kind "V")
        return a.astype(np.float64)
    found = type(a.item()).__name__ if a.ndim == 0 and a.dtype == object else f"an array of dtype {a.dtype}"
    raise UsageError(f"output {index}{f' ({where})' if where else ''} of the {model} model is {found}, not an "
                     "array of numbers, so it cannot be compared: pass output= (an index, key or callable, or a pair "
                     "of them, one per model) to pick the outputs to compare, or inputs that make the model return "
                     "none (use_cache=False for a transformers model)")


def _align(a: np.ndarray, b: np.ndarray, notes: list, index: int, where=("", "")) -> np.ndarray:
    """``a`` reshaped to ``b``'s layout when they differ only by channels-first vs channels-last."""
    if a.shape == b.shape:
        return a
    if a.ndim >= 3 and a.ndim == b.ndim:
        last = np.moveaxis(a, 1, -1)
        if last.shape == b.shape:
            notes.append(f"output {index}: compared after moving axis 1 of the first model's output to the end "
                         "(channels-first vs channels-last)")
            return last
        first = np.moveaxis(a, -1, 1)
        if first.shape == b.shape:
            notes.append(f"output {index}: compared after moving the last axis of the first model's output to axis 1")
            return first
    named = f" ({where[0]} and {where[1]})" if any(where) else ""
    raise UsageError(f"output {index}{named}: the first model gives shape {a.shape}, the second {b.shape}; "
                     "they cannot be compared (outputs pair in order, dicts' in key order: pass output= to pick "
                     "the ones that correspond)")


def compare(out_a, out_b, atol: float, rtol: float) -> VerifyResult:
    flat_a, flat_b = _flatten(out_a), _flatten(out_b)
    if len(flat_a) != len(flat_b):
        raise UsageError(f"the first model returns {len(flat_a)} outputs, the second {len(flat_b)}")
    notes, ok, max_abs, max_rel = [], True, 0.0, 0.0
    for i, (leaf_a, leaf_b) in enumerate(zip(flat_a, flat_b)):
        a, b = _numbers(leaf_a, i, "first"), _numbers(leaf_b, i, "second")
        a = _align(a, b, notes, i, (leaf_a[0], leaf_b[0]))
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        if not np.isfinite(diff):
            diff = float("inf")
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")))
        ok = ok and diff <= atol + rtol * scale
    return VerifyResult(ok, max_abs, max_rel, atol, rtol, len(flat_a), notes)


@dataclass
class Divergence:
    """The first paired layer whose outputs differ, and the configuration differences its rule knows."""

    source: str
    target: str
    rule: str
    max_abs_diff: float
    issues: list = field(default_factory=list)

    def __str__(self):
        text = f"{self.source} -> {self.target} ({self.rule}), max abs diff {self.max_abs_diff:.3g}"
        return text + "".join(f"; {i}" for i in self.issues)


def pick(out, which):
    """One output of a model's outputs: an index, a key, or a callable applied to them all.

    A model that returns a single array has one output: index 0 (or -1) is that
    array, never its first row (slicing the batch would compare the wrong thing).
    """
    if which is None:
        return out
    if callable(which):
        return which(out)
    if not isinstance(out, (dict, list, tuple)):  # one tensor is the only output: an index must not slice it
        if isinstance(which, int) and not isinstance(which, bool) and which in (0, -1):
            return out
        raise UsageError(f"output={which!r} selects among several outputs, but the model returns one array of "
                         f"shape {tuple(np.shape(out))}; give output=0 (or none) for it")
    try:
        return out[which]
    except (KeyError, IndexError, TypeError) as exc:
        raise UsageError(f"output={which!r} does not select an output of {type(out).__name__} ({exc}); give an "
                         "index, a key or a callable") from None


def first_divergence(pairs, flow_a, flow_b, atol: float, rtol: float):
    """(pair, max abs diff) of the first pair, in the order the second model ran them, whose outputs differ."""
    order = {path: i for i, path in enumerate(flow_b.order)}
    for p in sorted(pairs, key=lambda p: order.get(p.target.path, len(order))):
        a, b = flow_a.outputs.get(p.source.path), flow_b.outputs.get(p.target.path)
        if a is None or b is None:
            continue
        b = np.asarray(b, np.float64)
        try:
            a = _align(np.asarray(a, np.float64), b, [], 0)
        except UsageError:
            continue  # shapes that cannot be compared (a packed output): look further
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        if not np.isfinite(diff) or diff > atol + rtol * (float(np.max(np.abs(b))) if b.size else 0.0):
            return p, diff
    return None
