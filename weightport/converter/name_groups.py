"""Look-alikes told apart by their names: the words that differ between members of one class, and which
group of one side's members those words pair with which group of the other's."""
from __future__ import annotations

from . import naming
from .pairs import words


def group_by(nodes, key) -> dict:
    """key -> the nodes with that key, in order; a key of None leaves a node out."""
    out: dict = {}
    for n in nodes:
        k = key(n)
        if k is not None:
            out.setdefault(k, []).append(n)
    return out


def _distinguishing(nodes) -> dict:
    """node -> the words of its path that not every member of its class has."""
    found = {id(n): words(n) for n in nodes}
    common = frozenset.intersection(*found.values()) if len(found) > 1 else frozenset()
    return {id(n): found[id(n)] - common for n in nodes}


def _score(a: frozenset, b: frozenset) -> int:
    return sum(1 for x in a if any(naming.agree(x, y) for y in b))


def name_groups(src, tgt) -> list:
    """[(source members, target members)] that names pair group to group, each with equal counts; [] if none.

    Members are grouped by their distinguishing words; a source group and a
    target group pair when each is the other's unique best match by agreeing
    words, and one group left on each side (of equal size) takes the rest.
    A split that leaves every member in one group says nothing and is [].
    """
    words_s, words_t = _distinguishing(src), _distinguishing(tgt)
    mine = group_by(src, lambda a: words_s[id(a)])
    theirs = group_by(tgt, lambda b: words_t[id(b)])
    if len(mine) == 1 and len(theirs) == 1:
        return []
    full = {**{ws: words(m[0]) for ws, m in mine.items()}, **{("t", wt): words(m[0]) for wt, m in theirs.items()}}

    def score(ws, wt):
        return -1 if naming.clash(full[ws], full[("t", wt)]) else _score(ws, wt)
    found, left_s, left_t = [], dict(mine), dict(theirs)
    changed = True
    while changed:
        changed = False
        for ws, members in list(left_s.items()):
            scores = {wt: score(ws, wt) for wt in left_t}
            best = max(scores.values(), default=0)
            tops = [wt for wt, s in scores.items() if s == best]
            if best == 0 or len(tops) != 1:
                continue
            wt = tops[0]
            back = [w for w in left_s if score(w, wt) >= best]
            if back != [ws] or len(members) != len(left_t[wt]):
                continue
            found.append((members, left_t.pop(wt)))
            del left_s[ws]
            changed = True
    if len(left_s) == 1 and len(left_t) == 1 and found:
        ((ws, members),), ((wt, others),) = left_s.items(), left_t.items()
        if len(members) == len(others) and score(ws, wt) >= 0:
            found.append((members, others))
    return found
