"""The likeliest pairing of look-alikes no evidence settled: a guess printed as a ``hints=`` line to check.

It pairs layers of the same block by the words their names share. Block
numbers are compared slot by slot, and a slot one side counts from 0 and the
other from 1 (transformers' ``layer.0``, ``layer.1`` against keras-hub's
``_1_conv``, ``_2_conv``) is compared after counting both from 0, where every
block shows that; where some blocks show it and others do not, that slot
cannot be compared, and nothing it numbers is guessed.
"""
from __future__ import annotations

from . import naming
from .pairs import describe, fmt_shapes, pair


def likely_pairs(src, tgt, fits=None) -> dict:
    """A guess at ``src``'s counterparts among ``tgt``, for a hint to check: pairs in the same block that are
    each other's one best match by words in common (a tie guesses nothing), and a last one left on each side;
    ``fits(a, b)``, where given, rules out the pairs it says no to."""
    number = numbering([a.path for a in src], [b.path for b in tgt])

    def score(a, b):
        mine, theirs = number(a.path), number(b.path)
        if None in mine or mine != theirs or naming.clash(naming.words(a.path), naming.words(b.path)):
            return -1
        if fits is not None and not fits(a, b):
            return -1
        return len(naming.words(a.path) & naming.words(b.path))

    guess, left_s, left_t = {}, list(src), list(tgt)
    found = True
    while found:
        found = False
        for a in list(left_s):
            scores = [score(a, b) for b in left_t]
            best = max(scores, default=-1)
            if best < 0 or scores.count(best) != 1:
                continue
            b = left_t[scores.index(best)]
            if [score(x, b) for x in left_s].count(best) == 1 and max(score(x, b) for x in left_s) == best:
                guess[a.path] = b.path
                left_s.remove(a)
                left_t.remove(b)
                found = True
    if len(left_s) == len(left_t) == 1 and score(left_s[0], left_t[0]) >= 0:
        guess[left_s[0].path] = left_t[0].path
    return guess


def look_alike_advice(classes, listed: int = 8) -> str:
    """The lines a refusal of look-alikes ends with (``classes``: each with ``src`` and ``tgt``): the likeliest
    pairing by block numbers and names as a ``hints=`` line, last, said to be a guess; for what names do not
    guess, every source path with the target paths it may be, to choose from (a value no hint accepts as it
    is, so an unedited paste is refused, never a pairing made by order)."""
    guess = {}
    for cls in classes:
        guess.update(likely_pairs(cls.src, cls.tgt))
    choose = {}
    for cls in classes:
        theirs = [b.path for b in cls.tgt if b.path not in guess.values()]
        shown = " | ".join(theirs[:listed]) + (" | ..." if len(theirs) > listed else "")
        choose.update({a.path: f"<one of: {shown}>" for a in cls.src if a.path not in guess})
    out = []
    if choose:
        out.append(("Names do not even guess which is which" if not guess else "Names do not guess the rest")
                   + ": choose each target below (after checking the outputs, with check= or wp.verify), and pass "
                   f"{'them' if not guess else 'them with the line after'} as hints=:\n  {choose!r}")
    if guess:
        out.append("The likeliest pairing (by block numbers and names) is a guess"
                   + ("" if not choose else ", and names do not even guess the rest")
                   + "; if it is right, pass (after checking the outputs, with check= or wp.verify):\n"
                   f"  hints={guess!r}")
    return "\n".join(out)


def unpaired_advice(left_s, left_t, listed: int = 8) -> str:
    """What a refusal says about layers left unpaired on both sides, in place of a placeholder ``hints=`` line:
    the likeliest pairs (by names and block numbers) that a rule handles at equal shapes, as a line to paste,
    last, said to be a guess; the likeliest ones whose shapes differ, which no hint can pair; or that nothing
    left on one side fits anything left on the other."""
    if not left_s:
        them = "them" if len(left_t) > 1 else "it"
        return f"The source has no layer left to pair with {them}, so no hints= line can fill {them}."
    fitting = {}
    for a in left_s:
        for b in left_t:
            found = pair(a, b, "hint")
            if found is not None:
                fitting[a.path, b.path] = found
    guess = likely_pairs(left_s, left_t, fits=lambda a, b: (a.path, b.path) in fitting)
    agree = {s: t for s, t in guess.items() if fitting[s, t].shapes_agree}
    out = [f"As the likeliest counterparts left, {describe(p.source)} would be {p.target.label}, which needs "
           f"{fmt_shapes(p.target_shapes)}: the models are configured differently there, and no hint pairs layers "
           "of other shapes." for p in [fitting[s, t] for s, t in guess.items() if s not in agree][:listed]]
    if not fitting:
        out.append("No layer left in the source fits one left in the target under any rule, so no hints= line "
                   "can pair them.")
    elif agree:
        out.append("The likeliest pairing of what is left (by names and block numbers, among layers a rule handles "
                   "at equal shapes) is a guess" + ("" if len(agree) == len(left_t) else " for some of them")
                   + "; if it is right, pass (after checking the outputs, with check= or wp.verify):\n"
                   f"  hints={agree!r}")
    elif not out:
        shown = [f"{s} -> {t}" for (s, t), p in fitting.items() if p.shapes_agree][:listed]
        out.append("Names do not guess which of them are counterparts; "
                   + (f"those a rule handles at equal shapes: {', '.join(shown)}. Pass hints= with those that are "
                      "(after checking the outputs, with check= or wp.verify)." if shown else
                      "no two of them have equal shapes under a rule they share, so no hints= line can pair them."))
    return "\n".join(out)


def reader_hint(p, pairs, tgt_flow, images: set) -> str:
    """The hint a dataflow that contradicts pair ``p`` suggests for its source: the one target look-alike (among
    ``pairs``' targets) that reads what the source's counterparts are (a guess to check), else the look-alikes."""
    alike = [q.target for q in pairs if q.rule is p.rule and q.target_shapes == p.target_shapes]
    readers = [b for b in alike if set(tgt_flow.feeds.get(b.path, ())) == images]
    if len(readers) == 1:
        return ("By the dataflow, its counterpart is a guess; if it is right, pass (after checking the outputs, "
                f"with check= or wp.verify):\n  hints={ {p.source.path: readers[0].path}!r}")
    return (f"Pass hints= pairing {p.source.path!r} with the right one of the target's look-alikes: "
            + ", ".join(repr(b.path) for b in alike[:8]) + (" ..." if len(alike) > 8 else ""))


def numbering(src: list, tgt: list):
    """How to number both sides' paths for the guess: ``naming.common_numbering``, or every number of the paths'
    templates (a slot counted from another base makes the first fall back to fewer numbers), each ``rebased``:
    the one under which the most paths find a partner of the same numbers. A path whose template's numbers are
    counted from bases that differ between blocks is numbered by none (its slot reads None)."""
    tried = [rebased(src, tgt, number) for number in (naming.common_numbering(src, tgt), naming.slot_numbers)]
    best, every = max(tried, key=lambda number: _partnered(src, tgt, number)), tried[1]
    return lambda path: every(path) if None in every(path) else best(path)


def _partnered(src: list, tgt: list, number) -> int:
    """How many of ``src`` have a partner in ``tgt`` numbered alike (each taken once), first reading first."""
    left = [number(p) for p in tgt]
    found = 0
    for p in src:
        n = number(p)
        if None not in n and n in left:
            left.remove(n)
            found += 1
    return found


def rebased(src: list, tgt: list, number):
    """``number`` (path -> tuple), with each slot counted from the same base on both sides (see the module):
    a slot one side counts from 1 and the other from 0 in every block is counted from 0 on both; one where some
    blocks differ in base and others do not reads None. Paths are taken by how many numbers they have, where
    both sides have as many paths with that many."""
    found = {p: tuple(number(p)) for p in src + tgt}
    for length in {len(n) for n in found.values()}:
        mine = [p for p in src if len(found[p]) == length]
        theirs = [p for p in tgt if len(found[p]) == length]
        if len(mine) != len(theirs):  # as many numbers for unalike counts of paths: a misreading, not blocks
            continue
        for i in range(length):
            shift = _shift(_values_by_block(mine, found, i), _values_by_block(theirs, found, i))
            for side, by in ((mine, shift[0]), (theirs, shift[1])):
                for p in side:
                    n = found[p]
                    if n[i] is not None:
                        found[p] = n[:i] + ((n[i] - by) if by is not None else None,) + n[i + 1:]
    return lambda path: found.get(path, tuple(number(path)))


def _values_by_block(paths, found, i) -> dict:
    """The numbers in slot ``i`` of ``paths``, per block (the slots before it)."""
    out: dict = {}
    for p in paths:
        out.setdefault(found[p][:i], set()).add(found[p][i])
    return out


def _shift(mine: dict, theirs: dict) -> tuple:
    """(what to take from each side's slot: 0 or 1, None where the slot cannot be compared)."""
    shared = [k for k in mine if k in theirs and None not in mine[k] | theirs[k]]
    bases = {(min(mine[k]), min(theirs[k])) for k in shared}
    if not shared or bases == {(0, 0)} or not bases & {(0, 1), (1, 0)}:
        return 0, 0
    if len(bases) == 1:  # one base per side, as many members in each block: counted alike from another base
        (a, b), = bases
        if all(len(mine[k]) == len(theirs[k]) and _run(mine[k], a) and _run(theirs[k], b) for k in shared):
            return a, b
    return None, None


def _run(values: set, start: int) -> bool:
    """Whether ``values`` are start, start + 1, ... with none missing: ordinals, not arbitrary numbers."""
    return values == set(range(start, start + len(values)))
