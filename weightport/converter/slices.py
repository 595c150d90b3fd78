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


def cut(layout: str, role: str, start: int, size: int, index: int, parts: int, heads, groups=None,
        group_start=None) -> dict:
    """Where one part lies in a packed layer's outputs, as a plan records it (plain JSON): ``blocks`` uses
    ``start`` and ``size``; ``per_head`` cuts the outputs into ``groups`` groups (one per key/value head; every
    head where all parts have as many), each holding ``size // groups`` outputs of this part from
    ``group_start`` on. Both readings are recorded, so a reviewer sees (and can edit) which one applies; a
    record with no ``groups`` (parts of one size) is read as ``index`` of ``parts``, ``heads`` groups."""
    record = {"layout": layout, "role": role, "start": int(start), "size": int(size), "index": int(index),
              "parts": int(parts), "heads": None if heads is None else int(heads)}
    if groups is not None:
        record.update(groups=int(groups), group_start=int(group_start))
    return record


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
    groups, first, index, n = _grouping(part)
    if not groups or size % groups or outputs % groups or not isinstance(first, int) or first < 0 \
            or first + size // groups > outputs // groups or not isinstance(index, int) or not 0 <= index < (n or 0):
        raise ShapeMismatchError(f"{where}: part {part.get('role')!r} is cut head by head (part {index} of {n}, "
                                 f"{size} outputs in {groups} groups from {first} on in each), which needs groups "
                                 f"that divide its size and the packed layer's {outputs} outputs, and a share that "
                                 "fits in each group; nothing was written")
    share, width = size // groups, outputs // groups
    return (np.arange(groups)[:, None] * width + first + np.arange(share)[None, :]).ravel()


def _grouping(part: dict) -> tuple:
    """(groups, this part's first output in each group, index, parts) of a ``per_head`` record."""
    index, n, heads = part.get("index"), part.get("parts"), part.get("heads")
    if "groups" in part:
        return part.get("groups"), part.get("group_start"), index, n
    size = part.get("size")
    share = size // heads if isinstance(heads, int) and heads > 0 and isinstance(size, int) else None
    return heads, None if share is None or not isinstance(index, int) else index * share, index, n


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
                    else f"{role}: {len(self.columns)} of {base.label}'s outputs, interleaved by heads")
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
