"""One-row input tables that only one side has (RoBERTa's token types: with one row, every token reads row 0).

Such a table adds one constant vector to every token, in the same sum as a table both sides have (the position
table). The function is kept by folding: a source's row is added to every row of that other table on the way in;
a target's own such table is written as zeros. Both need the dataflow of a traced run to show that the two
tables are read by the same layers: without it nothing is folded, and the matcher refuses as before.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeMismatchError
from .pairs import Fixed, describe
from .plan import Pair


def is_input_table(node) -> bool:
    """Whether ``node`` can only be a table that reads the model's inputs (an embedding)."""
    return all(rule.reads_inputs for rule, _ in node.candidates)


def holds_zeros(node) -> bool:
    rule, hp = node.candidates[0]
    return all(not np.any(np.asarray(w)) for w in node.read(rule, hp).values())


def one_row(node) -> bool:
    """Whether ``node`` is an input table of exactly one row, which holds something."""
    if not is_input_table(node):
        return False
    rule, hp = node.candidates[0]
    shapes = node.canonical_shapes(rule, hp)
    return bool(shapes) and len(shapes) == 1 and len(shapes[0]) == 2 and shapes[0][0] == 1 and not holds_zeros(node)


def summed_with(node, pairs, flow, side: str) -> list:
    """The pairs whose ``side`` node is an input table as wide as ``node`` and read by exactly its readers."""
    readers = flow.readers.get(node.path) if flow is not None and flow.complete else None
    if not readers:
        return []
    rule, hp = node.candidates[0]
    width = node.canonical_shapes(rule, hp)[0][1]
    found = [p for p in pairs if is_input_table(getattr(p, side)) and flow.readers.get(getattr(p, side).path) == readers
             and len(p.source_shapes[0]) == 2 and p.source_shapes[0][1] == width]
    return sorted(found, key=lambda p: p.source_shapes[0][0])  # the smallest: a position table, not the tied vocab


def fold_sources(left_s, pairs, source_flow, notes: list) -> list:
    """Fold each non-zero one-row source table the target lacks into a table summed with it; the rest of
    ``left_s`` is returned. ``source_flow()`` traces the source only when some table calls for it."""
    rest = []
    for a in left_s:
        into = summed_with(a, pairs, source_flow(), "source") if one_row(a) else []
        if not into:
            rest.append(a)
            continue
        p = into[0]
        p.source = Folded(p.source, a)
        rule, hp = a.candidates[0]  # kept in the plan, so that a saved plan folds it again
        p.source_hp = {**p.source_hp, "folded": {a.label: {"rule": rule.name, "hp": hp,
                                                           "names": dict(getattr(a, "names", {}))}}}
        notes.append(f"source layer {describe(a)} has no counterpart in the target; its only row, which every "
                     f"token reads, was added to every row of {p.source.label} (read by the same layers), which "
                     "keeps the function but not the tables' values")
    return rest


def zero_targets(left_t, pairs, target_flow, notes: list) -> tuple:
    """(pairs that write zeros into each non-zero one-row target table the source lacks, summed with a table
    both have; the rest of ``left_t``)."""
    rest, made = [], []
    for b in left_t:
        if not (one_row(b) and summed_with(b, pairs, target_flow(), "target")):
            rest.append(b)
            continue
        rule, hp = b.candidates[0]
        shapes = b.canonical_shapes(rule, hp)
        zeros = {slot: np.zeros_like(np.asarray(t)) for slot, t in b.read(rule, hp).items()}
        made.append(Pair(Fixed(b, zeros, f"(zeros for {b.label})"), b, rule, hp, hp, shapes, shapes, "zeros"))
        notes.append(f"target layer {describe(b)} has no counterpart in the source; every token reads its only "
                     "row, in the same sum as a table both have, so it was set to zeros to keep the function")
    return made, rest


def replayed(node, hp: dict, ckpt):
    """``node`` of a saved plan's step with the tables the plan folded into it, read from ``ckpt`` again."""
    from ..mappings.rule import registry
    from .structure import FileNode

    for label, table in hp.get("folded", {}).items():
        missing = [n for n in table["names"].values() if n not in ckpt]
        if missing or not table["names"]:
            raise ShapeMismatchError(f"{ckpt.path}: the plan folds {label} into {node.label}, but the checkpoint "
                                     f"does not hold {missing or 'its tensors'}; nothing was written")
        rule = registry.get(table["rule"])
        node = Folded(node, FileNode(label, node.layout, [(rule, table["hp"])], ckpt, table["names"]))
    return node


class Folded:
    """A source table read with another one-row table's row added to each of its rows (see the module)."""

    def __init__(self, base, row_table):
        self.base, self.row_table = base, row_table

    def __getattr__(self, name):
        if name == "checkpoint":  # never copied byte for byte from its file: it is not what the file holds
            raise AttributeError(name)
        return getattr(self.base, name)

    def read(self, rule, hp) -> dict:
        row_rule, row_hp = self.row_table.candidates[0]
        (row,) = row_rule.to_canonical(self.row_table.layout, row_hp, self.row_table.read(row_rule, row_hp))
        canonical = rule.to_canonical(self.base.layout, hp, self.base.read(rule, hp))
        table = np.asarray(canonical[0])
        at = np.result_type(table.dtype, np.float32)  # float32 sums as keras-hub's converter does; bf16 rounded once
        canonical[0] = (table.astype(at) + np.asarray(row, dtype=at)[0]).astype(table.dtype)
        return rule.from_canonical(self.base.layout, hp, canonical)
