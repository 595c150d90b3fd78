"""A file that stores some of its model's tensors under other names: each name the model looks for and the file
lacks is paired with the one name the file holds, and the model does not, that alone fits it.

transformers 5 loads a checkpoint through a table of key renames and writes
the old keys back on ``save_pretrained``, so a file it saved today may name
tensors otherwise than the live model's ``state_dict`` (DINOv2's file keeps
``attention.attention.query`` for the live ``attention.q_proj``, ESM's
``LayerNorm.gamma``/``beta`` for ``.weight``/``.bias``). Where the model's own
library says how it renames (``frameworks/hf_names.py``), that is read first;
what is still missing is paired by what the names share: the same shape, the
same last component (``gamma``/``beta`` are TensorFlow's names for a norm's
``weight``/``bias``), the same block numbers, and module paths whose words
agree, every word of the shorter found in the longer (``query``/``q_proj``).
A name with no such partner, or with several, stays missing and the port is
refused as before.
"""
from __future__ import annotations

import re

from . import naming

NOTE = "stored under other names than the model's"  # begins the plan's note on them
# TensorFlow's names for a norm's scale and offset, which early BERT files and ESM's keep
SYNONYMS = {"gamma": "weight", "beta": "bias"}


def _key(name: str, shape) -> tuple:
    """What two names of one tensor must share: its shape, its slot (TensorFlow's names read as torch's) and
    the block numbers of its module path; and that path's words, which must agree."""
    parts = re.split(r"[./]", name)
    path = ".".join(parts[:-1])
    return (tuple(shape), SYNONYMS.get(parts[-1], parts[-1]), naming.numbers(path)), naming.words(path)


def _score(wa: frozenset, wb: frozenset) -> int:
    """How many words of two module paths agree; -1 where a word clashes (query against key) or where the path
    with fewer words says something the other does not (``encoder.adapter`` is not ``encoder.pooler``)."""
    short, long = sorted((wa, wb), key=len)
    if naming.clash(wa, wb) or not all(any(naming.agree(x, y) for y in long) for x in short):
        return -1
    return len(short)


def pair(wanted: dict, spare: dict) -> dict:
    """wanted name -> spare name, for each ``wanted`` (name -> shape: what the model needs and the file lacks)
    whose best fit among ``spare`` (name -> shape: what the file holds and the model does not name) is one name
    whose own best fit is that wanted name; ties, and names sharing no word, pair nothing."""
    groups: dict = {}
    for side, names in enumerate((wanted, spare)):
        for name, shape in names.items():
            key, words = _key(name, shape)
            groups.setdefault(key, ([], []))[side].append((name, words))
    found: dict = {}
    for mine, theirs in groups.values():
        score = {(w, s): _score(ww, ws) for w, ww in mine for s, ws in theirs}
        left_w, left_s = [w for w, _ in mine], [s for s, _ in theirs]
        while True:  # a pair made takes its names out of the others' ties (LayerNorm vs attention.LayerNorm)
            new = _mutual_best(score, left_w, left_s)
            if not new:
                break
            found.update(new)
            left_w = [w for w in left_w if w not in new]
            left_s = [s for s in left_s if s not in new.values()]
    return found


def _mutual_best(score: dict, wanted: list, spare: list) -> dict:
    """wanted -> spare where each is the other's one best, sharing at least one word."""
    found = {}
    for w in wanted:
        best = max((score[w, s] for s in spare), default=-1)
        tops = [s for s in spare if score[w, s] == best]
        if best > 0 and len(tops) == 1 and [v for v in wanted if score[v, tops[0]] >= best] == [w]:
            found[w] = tops[0]
    return found


def read_renamed(checkpoint, fw, live_nodes, names_of) -> tuple:
    """(``names_of`` looking each name the file lacks up under the file's own name for it, {model name: file
    name} for those): ``names_of(node, slot)`` is where the model expects a slot of its live layer nodes."""
    wanted, claimed = {}, set()

    def visit(nodes):
        for node in nodes:
            rule, hp = node.candidates[0]
            slots = rule.native_slots(node.layout, hp)
            try:
                shapes = fw.shapes(node.obj, slots)
            except Exception:  # noqa: BLE001 - a layer whose slots the adapter cannot size is not renamed
                shapes = {}
            for slot in slots:
                name = names_of(node, slot)
                if name in checkpoint:
                    claimed.add(name)
                elif slot in shapes:
                    wanted[name] = shapes[slot]
            visit(getattr(node, "parts", None) or [])
    visit(live_nodes)
    if not wanted:
        return names_of, {}
    found = pair(wanted, {n: checkpoint.shape(n) for n in checkpoint if n not in claimed})
    if not found:
        return names_of, {}

    def renamed(node, slot):
        name = names_of(node, slot)
        return found.get(name, name)
    return renamed, found


def notes(where: str, found: dict) -> list:
    """One note for the plan on the tensors read under the file's own names (``found``: model name -> file's)."""
    if not found:
        return []
    shown = ", ".join(f"{f} as {m}" for m, f in list(found.items())[:4])
    more = f" and {len(found) - 4} more" if len(found) > 4 else ""
    return [f"{len(found)} tensor(s) of {where} {NOTE} (transformers writes its legacy keys on save), each read as "
            f"the one model tensor it fits by shape, block numbers and words: {shown}{more}"]
