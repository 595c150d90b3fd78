"""A part of a packed projection as a layer node of its own: some of its output columns, read or written in place.

The matcher pairs a ``Slice`` like any node. As a source it reads the packed
layer's tensors and hands over its columns; as a live target it writes its
columns into the packed tensors, leaving the others as they are (each part is
written in turn). Columns are cut in the canonical (in, out) kernel, so any
layout the packed layer's rule knows is cut the same way.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeMismatchError

LAYOUTS = ("blocks", "per_head")


def cut(layout: str, role: str, start: int, size: int, index: int, parts: int, heads) -> dict:
    """Where one part lies in a packed layer's outputs, as a plan records it (plain JSON): ``blocks`` uses
    ``start`` and ``size``; ``per_head`` uses ``index`` of ``parts``, ``heads`` heads of ``size // heads``
    each. Both readings are recorded, so a reviewer sees (and can edit) which one applies."""
    return {"layout": layout, "role": role, "start": int(start), "size": int(size), "index": int(index),
            "parts": int(parts), "heads": None if heads is None else int(heads)}


def cut_columns(part: dict, outputs: int, where: str) -> np.ndarray:
    """The packed output columns ``part`` (see ``cut``) names, checked to lie within ``outputs`` columns;
    ``where`` names the packed layer in a refusal."""
    layout, size = part.get("layout"), part.get("size")
    if layout not in LAYOUTS or not isinstance(size, int) or size <= 0 or not part.get("role"):
        raise ShapeMismatchError(f"{where}: a part needs a role, a layout of {list(LAYOUTS)} and a positive size, "
                                 f"found {part}; nothing was written")
    if layout == "blocks":
        start = part.get("start")
        if not isinstance(start, int) or start < 0 or start + size > outputs:
            raise ShapeMismatchError(f"{where}: part {part.get('role')!r} takes outputs {start}..{start + size - 1}"
                                     f" (blocks), but the packed layer has {outputs} outputs; nothing was written")
        return np.arange(start, start + size)
    heads, index, n = part.get("heads"), part.get("index"), part.get("parts")
    if not heads or size % heads or not isinstance(index, int) or not 0 <= index < (n or 0) \
            or heads * n * (size // heads) != outputs:
        raise ShapeMismatchError(f"{where}: part {part.get('role')!r} is cut head by head (part {index} of {n}, "
                                 f"{heads} heads, {size} outputs), which needs parts x size = {outputs} outputs "
                                 "(the packed layer's) and a size its heads divide; nothing was written")
    d = size // heads
    return (np.arange(heads)[:, None] * n * d + index * d + np.arange(d)[None, :]).ravel()


class Slice:
    """The columns of the packed node ``base`` (read as ``rule``/``hp``: a kernel (in, out), a bias) that
    ``part`` (see ``cut``) names."""

    def __init__(self, base, rule, hp, part: dict):
        self.base, self.base_rule, self.base_hp, self.record = base, rule, hp, part
        outputs = base.canonical_shapes(rule, hp)[0][-1]
        self.columns = cut_columns(part, outputs, base.label)
        role = part["role"]
        self.cut = (f"{role}: outputs {self.columns[0]}..{self.columns[-1]} of {base.label}"
                    if part["layout"] == "blocks"
                    else f"{role}: {len(self.columns)} of {base.label}'s outputs, interleaved head by head")
        self.path = self.label = f"{base.label}[{role}]"
        self.layout = base.layout
        self.part_hp = {**hp, "units": len(self.columns)}
        self.candidates: list = []
        self.inferred = getattr(base, "inferred", False)
        if hasattr(base, "framework"):
            self.obj, self.framework = base.obj, SliceFramework(self, base.framework)

    def checkpoints(self) -> list:
        """The checkpoints this part is read from (None for a live layer), for a run cut into shard units."""
        return [getattr(self.base, "checkpoint", None)]

    # -- the matcher's node protocol ------------------------------------------------------
    def canonical_shapes(self, rule, hp):
        try:
            return rule.canonical_shapes(self.layout, hp, self.native_shapes())
        except (KeyError, ValueError):
            return None

    def dtypes(self, rule, hp) -> dict:
        return self.base.dtypes(self.base_rule, self.base_hp)

    def read(self, rule, hp) -> dict:
        return self.native()

    # -- the packed tensors, cut and patched ------------------------------------------------
    def whole(self) -> list:
        """The packed layer's canonical tensors (kernel (in, out), maybe a bias)."""
        return self.base_rule.to_canonical(self.layout, self.base_hp, self.base.read(self.base_rule, self.base_hp))

    def native(self) -> dict:
        cut = [np.take(np.asarray(a), self.columns, axis=-1) for a in self.whole()]
        return self.base_rule.from_canonical(self.layout, self.part_hp, cut)

    def native_shapes(self) -> dict:
        shapes = self.base.canonical_shapes(self.base_rule, self.base_hp)
        cut = [tuple(s[:-1]) + (len(self.columns),) for s in shapes]
        return self.base_rule.native_shapes(self.layout, self.part_hp, cut)

    def patched(self, arrays: dict) -> dict:
        """The packed layer's native tensors with this part's columns set from ``arrays`` (its native tensors)."""
        part = self.base_rule.to_canonical(self.layout, self.part_hp, arrays)
        whole = [np.array(a, copy=True) for a in self.whole()]
        for full, mine in zip(whole, part):
            full[..., self.columns] = mine
        return self.base_rule.from_canonical(self.layout, self.base_hp, whole)


class SliceFramework:
    """The packed layer's framework, seen through one ``Slice``: what a live target's part needs to be written."""

    def __init__(self, part: Slice, framework):
        self.part, self.inner = part, framework
        self.layout = framework.layout

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def read(self, obj, slots) -> dict:
        return {s: a for s, a in self.part.native().items() if s in slots}

    def shapes(self, obj, slots) -> dict:
        return {s: tuple(a) for s, a in self.part.native_shapes().items() if s in slots}

    def dtypes(self, obj, slots) -> dict:
        return {s: d for s, d in self.part.dtypes(None, None).items() if s in slots}

    def destinations(self, obj, slots) -> dict:
        return {}  # the part's columns are not one block of memory: written through ``write``

    def fresh(self, obj, slots) -> dict:
        return {}

    def write(self, obj, arrays: dict) -> None:
        self.inner.write(self.part.base.obj, self.part.patched(arrays))


class Assembled:
    """The packed layer's whole tensors, assembled from the pairs that fill its parts (``parts``: pairs whose
    targets are Slices of one layer): a file is written tensor by tensor, not column by column. Its layout is
    the canonical one."""

    layout = "keras"

    def __init__(self, parts: list, translate):
        self.parts, self.translate = parts, translate
        first = parts[0].target
        self.rule, self.hp, self.base = first.base_rule, first.base_hp, first.base
        self.path = self.label = " + ".join(p.source.label for p in parts)
        self.candidates = [(self.rule, self.hp)]

    def canonical_shapes(self, rule, hp):
        return self.base.canonical_shapes(self.rule, self.hp)

    def checkpoints(self) -> list:
        return [getattr(p.source, "checkpoint", None) for p in self.parts]

    def dtypes(self, rule, hp) -> dict:
        found = self.parts[0].source.dtypes(self.parts[0].rule, self.parts[0].source_hp)
        dtype = next(iter(found.values()), np.dtype("float32"))
        return {s: dtype for s in rule.native_slots(self.layout, hp)}

    def read(self, rule, hp) -> dict:
        whole = None
        for p in self.parts:
            part = self.rule.to_canonical(p.target.layout, p.target.part_hp, self.translate(p))
            if whole is None:
                whole = [np.zeros(tuple(s), np.asarray(a).dtype) for s, a in zip(self.canonical_shapes(None, None),
                                                                                  part)]
            for full, mine in zip(whole, part):
                full[..., p.target.columns] = mine
        return dict(zip(self.rule.canonical(self.hp), whole))
