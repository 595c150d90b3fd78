"""The evidence that pairs look-alikes (same kind and shapes), strongest first, and the bookkeeping of it.

``Pairing`` runs the steps until nothing moves: a kind and shapes found once
on each side; the dataflow of one traced run of each model; the words of the
names; the position among repeated blocks; ordinals against the other side's
run order. Each step pairs only what it settles alone; the rest stays open.
"""
from __future__ import annotations

from ..errors import MatchError
from . import guesses, naming
from .flow import UNKNOWN
from .plan import EVIDENCE
from .name_groups import group_by, name_groups
from .pairs import fitting, pair, shapes_or_none, words


def _classes(nodes, wanted=()) -> dict:
    """(kind, canonical shapes) -> the nodes of that class, in order.

    A node several rules could explain (a checkpoint group: Linear or
    Embedding?) is classed under the first reading found in ``wanted``, the
    other side's classes.
    """
    out = {}
    for n in nodes:
        keys = [(r.name, repr(shapes_or_none(n, r, h))) for r, h in n.candidates]
        out.setdefault(next((k for k in keys if k in wanted), keys[0]), []).append(n)
    return out


class LookAlikes:
    """One class of look-alikes still to pair: source and target members, in model order."""

    def __init__(self, src, tgt):
        self.src, self.tgt = list(src), list(tgt)

    @property
    def open(self) -> bool:
        return bool(self.src) and bool(self.tgt)


_UNTRACED = object()  # a side not yet asked for its flow


class Pairing:
    """Pairs look-alikes class by class, by the strongest evidence that settles each; see the module docstring.

    ``flows(source_nodes, target_nodes, side)`` returns the ``Flow`` of one
    traced run of the source (side 0) or target (side 1) model among those
    nodes, or None where that side cannot be run; it is called only when
    dataflow is needed, the source first, since a checkpoint without its
    model cannot be traced and the target's run would then go unused.
    """

    def __init__(self, src, tgt, flows=None):
        self.pairs: list = []
        self.notes: list = []  # warnings about pairs made on weaker evidence
        self._flows, self._sides = flows, [_UNTRACED, _UNTRACED]
        self.nodes = (list(src), list(tgt))
        self.traced = self.nodes  # the nodes a run is traced among (a pairing of what is left keeps the first's)
        self.images: dict = {}  # source path -> target paths its layer stands for, paired outside (a split)
        target_classes = _classes(tgt)
        source_classes = _classes(src, target_classes)
        self.classes = [LookAlikes(source_classes.get(k, []), target_classes.get(k, []))
                        for k in list(source_classes) + [k for k in target_classes if k not in source_classes]]

    # -- bookkeeping -------------------------------------------------------------------
    def take(self, cls: LookAlikes, a, b, evidence: str) -> bool:
        p = pair(a, b, evidence)
        if p is None:
            return False
        self.pairs.append(p)
        cls.src.remove(a)
        cls.tgt.remove(b)
        return True

    def paths(self) -> dict:
        return {p.source.path: p.target.path for p in self.pairs}

    def flows(self):
        """Both sides' flows, or None unless both models could be traced."""
        if self.side_flow(0) is None or self.side_flow(1) is None:
            return None
        return tuple(self._sides)

    def untraced(self) -> tuple:
        """(side -> why that side gave no flow, whether the inputs were the caller's): see ``tracing.flows``."""
        return dict(getattr(self._flows, "failed", None) or {}), bool(getattr(self._flows, "given", False))

    def side_flow(self, side: int):
        if self._sides[side] is _UNTRACED:
            self._sides[side] = self._flows(*self.traced, side) if self._flows is not None else None
        return self._sides[side]

    def without(self, used: set, images: dict) -> "Pairing":
        """A pairing of the nodes not in ``used`` (ids), sharing this one's runs; ``images``: see ``self.images``."""
        rest = Pairing([n for n in self.nodes[0] if id(n) not in used],
                       [n for n in self.nodes[1] if id(n) not in used], self._flows)
        rest.traced, rest._sides, rest.images = self.traced, self._sides, dict(images)
        return rest

    # -- the steps -------------------------------------------------------------------
    def run(self) -> list:
        """Pair what the evidence settles; return the classes left with members on both sides."""
        self.settle()
        self.regroup_by_shared()
        self.settle()
        self.check_against_flow()
        return [c for c in self.classes if c.open]

    def settle(self) -> None:
        for cls in self.classes:
            if len(cls.src) == 1 and len(cls.tgt) == 1:
                self.take(cls, cls.src[0], cls.tgt[0], "shape")
        while any(c.open for c in self.classes):
            if not (self.by_flow() or self.by_names() or self.by_position() or self.by_block()
                    or self.by_ordinal() or self.by_activation() or self.by_training()):
                break

    def regroup_by_shared(self) -> None:
        """Class again what is left by the shapes two layers have once paired.

        Some shapes are known only when the other side says what one side
        cannot (a torch PReLU's slopes take the Keras alpha's shape; a file's
        attention heads come from the live layer): such layers fall into
        different classes at first.
        """
        left_s = [a for c in self.classes for a in c.src]
        left_t = [b for c in self.classes for b in c.tgt]
        if not left_s or not left_t:
            return
        fits = fitting(left_s, left_t)
        if not fits:
            return
        self.classes = [c for c in self.classes if c.open and not any((id(a), id(b)) in fits for a in c.src
                                                                      for b in left_t)]
        kept = {id(n) for c in self.classes for n in c.src + c.tgt}
        todo_s = [a for a in left_s if id(a) not in kept]
        todo_t = [b for b in left_t if id(b) not in kept]
        while todo_s:  # connected components of the "fits" relation
            group_s, group_t, frontier = [todo_s.pop(0)], [], True
            while frontier:
                frontier = False
                for b in [b for b in todo_t if any((id(a), id(b)) in fits for a in group_s)]:
                    todo_t.remove(b)
                    group_t.append(b)
                    frontier = True
                for a in [a for a in todo_s if any((id(a), id(b)) in fits for b in group_t)]:
                    todo_s.remove(a)
                    group_s.append(a)
                    frontier = True
            self.classes.append(LookAlikes(group_s, group_t))
        if todo_t:
            self.classes.append(LookAlikes([], todo_t))

    def by_flow(self) -> bool:
        """Pair look-alikes whose paired neighbours in the dataflow are theirs alone, on both sides.

        A look-alike's inputs (or readers) count only once every one of them
        is paired: then a partner must have exactly their images. Two
        members that share them stay unpaired here.
        """
        if not any(c.open for c in self.classes) or self.flows() is None:
            return False
        src_flow, tgt_flow = self.flows()
        sides = [(src_flow.feeds, tgt_flow.feeds)]
        if src_flow.complete and tgt_flow.complete:  # with no origin lost, every layer's readers are known too
            sides.append((src_flow.readers, tgt_flow.readers))
        progress = False
        for mine_of, theirs_of in sides:
            progress |= self.by_neighbours(mine_of, theirs_of, "structure")
        return progress

    def by_activation(self) -> bool:
        """Last of all: look-alikes that read and feed the same layers, told apart by whose output passes an
        activation on its way to a reader (``down(gelu(gate(x)) * up(x))``: gate's does, up's does not).

        Only where both runs were followed completely, activations included;
        a member whose activated readers are not all paired says nothing.
        """
        flows = self.flows()
        if flows is None or not all(f.complete and f.sees_activations for f in flows):
            return False
        return self.by_neighbours(flows[0].activated_readers, flows[1].activated_readers, "activation")

    def by_neighbours(self, mine_of: dict, theirs_of: dict, evidence: str) -> bool:
        """Pair each open look-alike whose neighbours (``mine_of``/``theirs_of``: path -> paths), all paired,
        are the images of exactly one partner's, and no other member's."""
        paired = {**{s: frozenset({t}) for s, t in self.paths().items()}, **self.images}
        targets = {t: frozenset({t}) for ts in paired.values() for t in ts}
        progress = False
        for cls in self.classes:
            if not cls.open:
                continue
            mine = group_by(cls.src, lambda a: _neighbours(mine_of.get(a.path), paired))
            theirs = group_by(cls.tgt, lambda b: _neighbours(theirs_of.get(b.path), targets))
            for key, members in mine.items():
                if len(members) == 1 and len(theirs.get(key, [])) == 1:
                    progress |= self.take(cls, members[0], theirs[key][0], evidence)
        return progress

    def by_names(self) -> bool:
        """Split or settle classes by the words that tell their members apart (``query`` vs ``key``)."""
        progress = False
        for cls in list(self.classes):
            if not cls.open:
                continue
            groups = [g for g in name_groups(cls.src, cls.tgt) if self.same_degrees(*g)]
            if not groups:
                continue
            progress = True
            self.classes.remove(cls)
            for mine, theirs in groups:
                sub = LookAlikes(mine, theirs)
                if len(mine) == 1 and len(theirs) == 1:
                    self.take(sub, mine[0], theirs[0], "name")
                self.classes.append(sub)
            rest = LookAlikes([a for a in cls.src if not any(a in g[0] for g in groups)],
                              [b for b in cls.tgt if not any(b in g[1] for g in groups)])
            if rest.src or rest.tgt:
                self.classes.append(rest)
        return progress

    def by_training(self) -> bool:
        """Last: a class whose members are trained on one side and computed state on the other (keras-hub's
        DINOv2 computes with a trainable position table and keeps a non-trainable one to load and save) splits
        by that: trained pairs with trained, state with state. A file's tensors count as trained."""
        progress = False
        for cls in list(self.classes):
            kept = lambda n: bool(getattr(n, "untrained", False))  # noqa: E731
            if not cls.open or len({kept(n) for n in cls.src + cls.tgt}) < 2:
                continue
            self.classes.remove(cls)
            for flag in (False, True):
                sub = LookAlikes([a for a in cls.src if kept(a) == flag], [b for b in cls.tgt if kept(b) == flag])
                if len(sub.src) == 1 and len(sub.tgt) == 1:
                    progress |= self.take(sub, sub.src[0], sub.tgt[0], "training")
                self.classes.append(sub)
        return progress

    def by_position(self) -> bool:
        """Repeated blocks: members whose paths differ only in numbers pair in numeric order."""
        progress = False
        for cls in self.classes:
            if not cls.open or len(cls.src) != len(cls.tgt):
                continue
            if len({naming.template(a.path) for a in cls.src}) == 1 == len({naming.template(b.path) for b in cls.tgt}):
                number = naming.common_numbering([a.path for a in cls.src], [b.path for b in cls.tgt])
                key = lambda n: number(n.path)  # noqa: E731
                if not all(naming.numbered_evenly(number, [n.path for n in side]) for side in (cls.src, cls.tgt)):
                    continue
                mine, theirs = sorted(cls.src, key=key), sorted(cls.tgt, key=key)
                numbered_alike = [key(a) for a in mine] == [key(b) for b in theirs]
                if not self.numbers_may_pair(list(zip(mine, theirs)), numbered_alike):
                    continue
                if not numbered_alike:
                    self.notes.append(  # dense, dense_1 against 0, 2: the order each was made in, nothing more
                        f"{', '.join(f'{a.label} -> {b.label}' for a, b in zip(mine, theirs))}: look-alikes paired in "
                        "the numeric order of their names, which do not number them alike, and the dataflow did not "
                        "settle it; check the outputs (check= or wp.verify) or pass hints=")
                for a, b in zip(mine, theirs):
                    progress |= self.take(cls, a, b, "position")
        return progress

    def by_block(self) -> bool:
        """A class mixing members of repeated blocks with others (each block's last norm and the model's final
        one) splits by block numbers, where both sides have the same blocks with as many members in each:
        members alone in their block (or alone outside every block) on both sides pair."""
        progress = False
        for cls in list(self.classes):
            if not cls.open or len({naming.template(a.path) for a in cls.src}) < 2:
                continue  # one template: by_position's
            number = naming.common_numbering([a.path for a in cls.src], [b.path for b in cls.tgt])
            mine, theirs = group_by(cls.src, lambda a: number(a.path)), group_by(cls.tgt, lambda b: number(b.path))
            if mine.keys() != theirs.keys() or any(len(mine[k]) != len(theirs[k]) for k in mine):
                continue
            alone = [(mine[k][0], theirs[k][0]) for k in mine if len(mine[k]) == 1]
            if not self.numbers_may_pair(alone, True):
                continue
            self.classes.remove(cls)
            for k in mine:
                sub = LookAlikes(mine[k], theirs[k])
                if len(sub.src) == 1:
                    progress |= self.take(sub, sub.src[0], sub.tgt[0], "position")
                self.classes.append(sub)
        return progress

    def by_ordinal(self) -> bool:
        """Look-alikes one side numbers within each block (``ln_1``, ``ln_2``; ``layernorm_before``/``_after``)
        pair with the other side's, block by block, in the order its traced run used them.

        Needs the other side's run (a live model): its order inside a block is
        what it computes first, not what it declared first.
        """
        progress = False
        for cls in self.classes:
            if not cls.open:
                continue
            for members, others, side in ((cls.src, cls.tgt, 1), (cls.tgt, cls.src, 0)):
                numbered = [n for n in members if naming.ordinal(n.path) is not None and naming.numbers(n.path)]
                other = [n for n in others if naming.numbers(n.path)]  # those in repeated blocks
                if len(numbered) < 2 or any(naming.ordinal(n.path) is not None for n in others):
                    continue
                flow = self.side_flow(side)  # run only when the names call for it
                if flow is None:
                    continue
                ran = {path: i for i, path in enumerate(flow.order)}
                if any(n.path not in ran for n in other):
                    continue
                mine = _blocks(numbered, lambda n: naming.ordinal(n.path))
                theirs = _blocks(other, lambda n: ran[n.path])
                if [len(b) for b in mine] != [len(b) for b in theirs] or any(
                        len({naming.ordinal(n.path) for n in b}) != len(b) for b in mine):
                    continue
                if any(naming.clash(words(a), words(b)) for x, y in zip(mine, theirs) for a, b in zip(x, y)):
                    continue
                for a_block, b_block in zip(mine, theirs):
                    for a, b in zip(a_block, b_block):
                        a, b = (a, b) if members is cls.src else (b, a)
                        progress |= self.take(cls, a, b, "ordinal")
                break
        return progress

    def numbers_may_pair(self, pairs: list, numbered_alike: bool) -> bool:
        """Whether blocks' members paired by number (``pairs``: (source, target)) stand: no words clash, and
        the dataflow agrees member for member, or (numbered alike) differs by one offset throughout."""
        if any(naming.clash(words(a), words(b)) for a, b in pairs):
            return False
        return all(self.same_degrees([a], [b]) for a, b in pairs) or (
            numbered_alike and self.differ_alike([a for a, _ in pairs], [b for _, b in pairs]))

    def same_degrees(self, mine, theirs) -> bool:
        """Whether two groups could be each other's, as far as a complete dataflow can tell: as many layers
        feeding and reading each member, member for member (names and numbers can mislead; this cannot)."""
        flows = self.complete_flows()
        if flows is None:
            return True
        return sorted(map(flows[0].degrees, mine)) == sorted(map(flows[1].degrees, theirs))

    def differ_alike(self, mine, theirs) -> bool:
        """Whether each member of ``mine`` differs from its partner in ``theirs`` (paired in order) by the same
        number of feeding and reading layers. Then the difference is how the two implementations wire every
        block (a router read before its experts or applied after them), not a sign of a wrong pairing, which
        would shift members' counts unevenly."""
        flows = self.complete_flows()
        if flows is None:
            return True
        offsets = {tuple(x - y for x, y in zip(flows[0].degrees(a), flows[1].degrees(b))) for a, b in zip(mine, theirs)}
        return len(offsets) == 1

    def complete_flows(self):
        """Both flows, if both sides were already traced and followed completely; else None."""
        flows = self.flows() if _UNTRACED not in self._sides else None
        return flows if flows and all(f.complete for f in flows) else None

    def check_against_flow(self) -> None:
        """Where both models were traced, a pair made by name or position must not contradict the dataflow.

        Only such pairs are checked: where shapes settled every pair, neither model is traced for it."""
        checked = [p for p in self.pairs if p.evidence in ("name", "position")]
        if not checked or self.flows() is None:
            return
        src_flow, tgt_flow = self.flows()
        paired = self.paths()
        for p in checked:
            mine, theirs = src_flow.feeds.get(p.source.path), tgt_flow.feeds.get(p.target.path)
            if mine is None or theirs is None or UNKNOWN in mine | theirs or not mine <= set(paired):
                continue
            images = {paired[f] for f in mine}
            # a loose tensor one side reads as a layer (a position table) may add to a side: only a clash counts
            if not (images <= set(theirs) or set(theirs) <= images):
                raise MatchError(
                    f"{p.source.label} and {p.target.label} were paired by their {EVIDENCE[p.evidence]}, but the "
                    f"dataflow disagrees: the first reads {sorted(mine)}, the second {sorted(theirs)}, which are "
                    "not paired with each other. The target was not changed. "
                    + guesses.reader_hint(p, self.pairs, tgt_flow, images))


def _neighbours(paths, image: dict):
    """The images of a layer's dataflow neighbours when every one is paired (``image``: path -> paths), else None."""
    if paths is None or UNKNOWN in paths or not all(p in image for p in paths):
        return None
    return frozenset().union(*(image[p] for p in paths))


def _blocks(nodes, rank) -> list:
    """``nodes`` grouped by their block numbers (blocks in numeric order), each block sorted by ``rank``."""
    found: dict = {}
    for n in nodes:
        found.setdefault(naming.numbers(n.path), []).append(n)
    return [sorted(found[k], key=rank) for k in sorted(found)]
