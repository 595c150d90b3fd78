"""Pair source layers with target layers, and say how each pair was made; refuse rather than guess.

Works on any layer nodes that offer ``path``, ``label``, ``layout``,
``candidates`` ((rule, hp) pairs) and ``canonical_shapes(rule, hp)``: live
layers and checkpoint groups alike. It never looks at a layer kind by name.

Layers of one kind and shapes ("look-alikes": an attention block's query and
key, a residual block's BatchNorms) are told apart by evidence, strongest
first: hints; identical paths; dataflow (the already-paired layers each one
follows and feeds, from one traced run of each model); the words of their
names; their position among repeated blocks (paths that differ only in
numbers). Declaration order alone is never used: two implementations of one
architecture declare, and even run, look-alikes in different orders. What no
evidence settles is refused with the candidates and a ready ``hints=`` line.
"""
from __future__ import annotations

import difflib

from ..errors import (AmbiguityError, ConfigMismatchError, MatchError, ShapeMismatchError, UnsupportedLayerError,
                      UsageError, WeightportError)
from ..mappings.transforms import IDENTITY
from . import naming
from .flow import UNKNOWN
from .plan import EVIDENCE, Pair, Plan, Step, reparametrized_notes, transform_text


def common_rule(a, b):
    """The most specific rule that handles both nodes, with each side's hyperparameters."""
    for rule, hp_a in a.candidates:
        for rule_b, hp_b in b.candidates:
            if rule is rule_b:
                return (rule,) + rule.share(hp_a, hp_b)
    return None


def adopted_rule(a, b):
    """``b``'s rule and hyperparameters for ``a``, a checkpoint group whose rule was only guessed from shapes.

    Shapes cannot tell a depthwise from a grouped convolution, or a GroupNorm
    from a LayerNorm; the live layer it is paired with can. Taken only when the
    group's tensors are exactly that rule's slots and their shapes match.
    """
    if not getattr(a, "inferred", False):
        return None
    for rule, hp in b.candidates:
        if a.layout not in rule.layouts():
            continue
        try:
            slots = set(rule.native_slots(a.layout, hp))
        except (KeyError, ValueError, TypeError):
            continue
        if set(a.names) <= slots and a.canonical_shapes(rule, hp) == b.canonical_shapes(rule, hp):
            return rule, hp, hp
    return None


def _parameter_view(node):
    """hp under the ``parameter`` rule: a loose node's own, or a single-tensor layer's stored as it is
    (under the first of its readings that stores it so: a file's (N, H) ``weight`` may be an Embedding)."""
    if getattr(node, "loose", False):
        return node.candidates[0][1]
    for rule, hp in node.candidates:
        try:
            links = rule.links(node.layout, hp)
        except WeightportError:
            continue
        if len(links) != 1 or len(links[0].canonical) != 1 or len(links[0].native) != 1 \
                or links[0].transform is not IDENTITY:
            continue
        shapes = _shapes_or_none(node, rule, hp)
        if shapes:
            return {"slot": links[0].native[0], "shape": tuple(shapes[0])}
    return None


def as_parameters(a, b):
    """The ``parameter`` rule for a loose tensor and its counterpart: another loose tensor, or a single-tensor
    layer whose name agrees (HF ViT's ``position_embeddings`` and keras-hub's ``position_embedding`` table)."""
    loose = getattr(a, "loose", False), getattr(b, "loose", False)
    if not any(loose) or (not all(loose) and not _words(a) & _words(b)) or naming.clash(_words(a), _words(b)):
        return None
    ha, hb = _parameter_view(a), _parameter_view(b)
    if ha is None or hb is None:
        return None
    from ..mappings.rule import registry

    return registry.get("parameter"), ha, hb


def pair(a, b, evidence: str = "shape") -> Pair | None:
    found = common_rule(a, b) or adopted_rule(a, b) or as_parameters(a, b)
    if found is None:
        return None
    rule, hp_a, hp_b = found
    return Pair(a, b, rule, hp_a, hp_b, a.canonical_shapes(rule, hp_a), b.canonical_shapes(rule, hp_b), evidence)


def describe(node) -> str:
    rule, hp = node.candidates[0]
    shapes = node.canonical_shapes(rule, hp)
    return f"{node.label} ({rule.name}, {_fmt_shapes(shapes)})"


def _fmt_shapes(shapes) -> str:
    if shapes is None:
        return "weights not in the expected layout"
    return ", ".join("x".join(map(str, s)) or "scalar" for s in shapes) or "no weights"


def _aliases(node) -> set:
    """Every spelling a hint may use for a node: its path, a layer's name, a Keras layer's variable-path
    prefix with and without the model's own name first."""
    obj = getattr(node, "obj", None)
    names = {node.path, node.label, getattr(obj, "name", None)}
    keras_path = getattr(obj, "path", None) if not getattr(node, "loose", False) else None
    if isinstance(keras_path, str):
        names |= {keras_path, keras_path.partition("/")[2]}
    return {n for n in names if n}


def _find(nodes, path, side) -> list:
    """The nodes a hint names: the one it spells, else every node below it (a prefix pairs whole blocks)."""
    path = str(path)
    exact = [n for n in nodes if path in _aliases(n)]
    if exact:
        return exact[:1]
    below = [n for n in nodes if any(a.startswith(path.rstrip("./") + sep) for a in _aliases(n) for sep in "./")]
    if below:
        return below
    close = difflib.get_close_matches(path, [n.path for n in nodes], n=3)
    raise UsageError(f"hint names {side} layer {path!r}, which is not among the {side}'s rule-bearing layers, "
                     "nor a prefix of any" + (f"; did you mean {close}?" if close else ""))


def _by_path(src, tgt) -> list | None:
    """Same names on both sides (a same-layout checkpoint into its model): pair by name."""
    by_path = {b.path: b for b in tgt}
    if len(src) != len(tgt) or set(by_path) != {a.path for a in src}:
        return None
    pairs = [pair(a, by_path[a.path], "path") for a in src]
    return pairs if all(p is not None for p in pairs) else None


def _positional(src, tgt) -> list | None:
    """Same number of layers and the same kinds in the same order: pairs for precise shape errors only."""
    if len(src) != len(tgt):
        return None
    pairs = [pair(a, b) for a, b in zip(src, tgt)]
    return pairs if all(p is not None for p in pairs) else None


def _shapes_or_none(node, rule, hp):
    """Canonical shapes, or None where they need what only the paired layer knows (MHA heads from a file)."""
    try:
        return node.canonical_shapes(rule, hp)
    except WeightportError:
        return None


def _classes(nodes, wanted=()) -> dict:
    """(kind, canonical shapes) -> the nodes of that class, in order.

    A node several rules could explain (a checkpoint group: Linear or
    Embedding?) is classed under the first reading found in ``wanted``, the
    other side's classes.
    """
    out = {}
    for n in nodes:
        keys = [(r.name, repr(_shapes_or_none(n, r, h))) for r, h in n.candidates]
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

    def side_flow(self, side: int):
        if self._sides[side] is _UNTRACED:
            self._sides[side] = self._flows(*self.nodes, side) if self._flows is not None else None
        return self._sides[side]

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
            if not (self.by_flow() or self.by_names() or self.by_position() or self.by_ordinal()):
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
        fits = {(id(a), id(b)) for a in left_s for b in left_t if (p := pair(a, b)) is not None and p.shapes_agree}
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
        paired = self.paths()
        targets = {t: t for t in paired.values()}
        sides = [(src_flow.feeds, tgt_flow.feeds)]
        if src_flow.complete and tgt_flow.complete:  # with no origin lost, every layer's readers are known too
            sides.append((src_flow.readers, tgt_flow.readers))
        progress = False
        for mine_of, theirs_of in sides:
            for cls in self.classes:
                if not cls.open:
                    continue
                mine = _group(cls.src, lambda a: _neighbours(mine_of.get(a.path), paired))
                theirs = _group(cls.tgt, lambda b: _neighbours(theirs_of.get(b.path), targets))
                for key, members in mine.items():
                    if len(members) == 1 and len(theirs.get(key, [])) == 1:
                        progress |= self.take(cls, members[0], theirs[key][0], "structure")
        return progress

    def by_names(self) -> bool:
        """Split or settle classes by the words that tell their members apart (``query`` vs ``key``)."""
        progress = False
        for cls in list(self.classes):
            if not cls.open:
                continue
            groups = [g for g in _name_groups(cls.src, cls.tgt) if self.same_degrees(*g)]
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

    def by_position(self) -> bool:
        """Repeated blocks: members whose paths differ only in numbers pair in numeric order."""
        progress = False
        for cls in self.classes:
            if not cls.open or len(cls.src) != len(cls.tgt):
                continue
            if len({naming.template(a.path) for a in cls.src}) == 1 == len({naming.template(b.path) for b in cls.tgt}):
                mine = sorted(cls.src, key=lambda n: naming.numbers(n.path))
                theirs = sorted(cls.tgt, key=lambda n: naming.numbers(n.path))
                if not all(self.same_degrees([a], [b]) and not naming.clash(_words(a), _words(b))
                           for a, b in zip(mine, theirs)):
                    continue
                if [naming.numbers(a.path) for a in mine] != [naming.numbers(b.path) for b in theirs]:
                    self.notes.append(  # dense, dense_1 against 0, 2: the order each was made in, nothing more
                        f"{', '.join(f'{a.label} -> {b.label}' for a, b in zip(mine, theirs))}: look-alikes paired in "
                        "the numeric order of their names, which do not number them alike, and the dataflow did not "
                        "settle it; check the outputs (check= or wp.verify) or pass hints=")
                for a, b in zip(mine, theirs):
                    progress |= self.take(cls, a, b, "position")
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
                if any(naming.clash(_words(a), _words(b)) for x, y in zip(mine, theirs) for a, b in zip(x, y)):
                    continue
                for a_block, b_block in zip(mine, theirs):
                    for a, b in zip(a_block, b_block):
                        a, b = (a, b) if members is cls.src else (b, a)
                        progress |= self.take(cls, a, b, "ordinal")
                break
        return progress

    def same_degrees(self, mine, theirs) -> bool:
        """Whether two groups could be each other's, as far as a complete dataflow can tell: as many layers
        feeding and reading each member, member for member (names and numbers can mislead; this cannot)."""
        flows = self.flows() if _UNTRACED not in self._sides else None
        if not flows or not all(f.complete for f in flows):
            return True
        degrees = []
        for flow, nodes in zip(flows, (mine, theirs)):
            readers = flow.readers
            degrees.append(sorted((len(flow.feeds.get(n.path, ())), len(readers.get(n.path, ()))) for n in nodes))
        return degrees[0] == degrees[1]

    def check_against_flow(self) -> None:
        """Where both models were traced, a pair made by name or position must not contradict the dataflow."""
        if self.flows() is None:
            return
        src_flow, tgt_flow = self.flows()
        paired = self.paths()
        for p in self.pairs:
            if p.evidence not in ("name", "position"):
                continue
            mine, theirs = src_flow.feeds.get(p.source.path), tgt_flow.feeds.get(p.target.path)
            if mine is None or theirs is None or UNKNOWN in mine | theirs or not mine <= set(paired):
                continue
            images = {paired[f] for f in mine}
            # a loose tensor one side reads as a layer (a position table) may add to a side: only a clash counts
            if not (images <= set(theirs) or set(theirs) <= images):
                raise MatchError(
                    f"{p.source.label} and {p.target.label} were paired by their {EVIDENCE[p.evidence]}, but the "
                    f"dataflow disagrees: the first reads {sorted(mine)}, the second {sorted(theirs)}, which are "
                    "not paired with each other. The target was not changed; pass hints={source_path: "
                    "target_path} for these layers")


def _neighbours(paths, image: dict):
    """The images of a layer's dataflow neighbours when every one is paired (``image``: path -> pair), else None."""
    if paths is None or UNKNOWN in paths or not all(p in image for p in paths):
        return None
    return frozenset(image[p] for p in paths)


def _blocks(nodes, rank) -> list:
    """``nodes`` grouped by their block numbers (blocks in numeric order), each block sorted by ``rank``."""
    found: dict = {}
    for n in nodes:
        found.setdefault(naming.numbers(n.path), []).append(n)
    return [sorted(found[k], key=rank) for k in sorted(found)]


def _group(nodes, key) -> dict:
    out: dict = {}
    for n in nodes:
        k = key(n)
        if k is not None:
            out.setdefault(k, []).append(n)
    return out


def _words(node) -> frozenset:
    obj = getattr(node, "obj", None)
    return naming.words(node.path, type(obj).__name__ if obj is not None else "")


def _distinguishing(nodes) -> dict:
    """node -> the words of its path that not every member of its class has."""
    found = {id(n): _words(n) for n in nodes}
    common = frozenset.intersection(*found.values()) if len(found) > 1 else frozenset()
    return {id(n): found[id(n)] - common for n in nodes}


def _score(a: frozenset, b: frozenset) -> int:
    return sum(1 for x in a if any(naming.agree(x, y) for y in b))


def _name_groups(src, tgt) -> list:
    """[(source members, target members)] that names pair group to group, each with equal counts; [] if none.

    Members are grouped by their distinguishing words; a source group and a
    target group pair when each is the other's unique best match by agreeing
    words, and one group left on each side (of equal size) takes the rest.
    A split that leaves every member in one group says nothing and is [].
    """
    words_s, words_t = _distinguishing(src), _distinguishing(tgt)
    mine = _group(src, lambda a: words_s[id(a)])
    theirs = _group(tgt, lambda b: words_t[id(b)])
    if len(mine) == 1 and len(theirs) == 1:
        return []
    full = {**{ws: _words(m[0]) for ws, m in mine.items()}, **{("t", wt): _words(m[0]) for wt, m in theirs.items()}}

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


# -- the whole match ------------------------------------------------------------------------------


def match(source_nodes, target_nodes, hints: dict | None = None, strict: bool = True, flows=None,
          strict_config: bool = False) -> tuple:
    """Pair the nodes; return (Plan, [Pair]) or raise without touching anything.

    strict_config: configuration differences that are only warned about
    (epsilon, padding, activation) refuse the port too.
    strict: every target layer must be filled by an unambiguous pair of equal
    shapes and no configuration error; source layers the target does not ask
    for (a head) are reported and warned about, unless ``strict="both"``,
    which refuses them too. strict=False keeps what pairs and reports the
    rest. ``flows``: see ``Pairing``.
    """
    src, tgt = _expanded(source_nodes, target_nodes), _expanded(target_nodes, source_nodes)
    source_nodes, target_nodes = list(src), list(tgt)
    tied_s = [n for n in src if getattr(n, "tied_to", None)]
    tied_t = [n for n in tgt if getattr(n, "tied_to", None)]
    tied = {id(n) for n in tied_s + tied_t}
    src, tgt = [n for n in src if id(n) not in tied], [n for n in tgt if id(n) not in tied]
    pairs = []
    for s_path, t_path in (hints or {}).items():
        mine, theirs = _find(src, s_path, "source"), _find(tgt, t_path, "target")
        if len(mine) == len(theirs) == 1:
            p = pair(mine[0], theirs[0], "hint")
            if p is None:
                raise MatchError(f"hint pairs {describe(mine[0])} with {describe(theirs[0])}, but no rule handles both")
            found = [p]
        else:  # two blocks: pair inside them by the usual evidence
            block = Pairing(mine, theirs, flows)
            left = block.run()
            if left:
                raise _ambiguity_error(left, block.flows() is not None)
            found = block.pairs
        pairs += found
        for p in found:
            src.remove(p.source)
            tgt.remove(p.target)

    plan = Plan()
    same = _by_path(src, tgt)
    if same is not None:
        pairs += same
    else:
        pairing = Pairing(src, tgt, flows)
        ambiguous = pairing.run()
        pairs += pairing.pairs
        plan.issues += pairing.notes
        if ambiguous:
            error = _ambiguity_error(ambiguous, pairing.flows() is not None)
            if strict:
                raise error
            plan.issues.append(str(error).split(". The target")[0])
        used_s = {id(p.source) for p in pairs}
        used_t = {id(p.target) for p in pairs}
        left_s = [a for a in src if id(a) not in used_s] + _untied(tied_s, pairs, "source")
        left_t = [b for b in tgt if id(b) not in used_t] + _untied(tied_t, pairs, "target")
        if strict and (left_t or (strict == "both" and left_s)):  # a source's surplus (a head) is only reported
            _refuse_unmatched(list(source_nodes), list(target_nodes), left_s, left_t)
        if left_s:
            listed = ", ".join(a.label for a in left_s[:8]) + (" ..." if len(left_s) > 8 else "")
            plan.issues.append(f"{len(left_s)} source layer(s) have no counterpart in the target and were not "
                               f"ported: {listed}")
        plan.unmatched_source += [describe(a) for a in left_s]
        plan.unmatched_target += [describe(b) for b in left_t]
    order = {id(a): i for i, a in enumerate(source_nodes)}  # the expanded nodes, parts included
    return _checked_plan(plan, sorted(pairs, key=lambda p: order[id(p.source)]), strict, strict_config)


def _untied(tied, pairs, side: str) -> list:
    """Tied nodes whose owner (the layer holding the same tensors) went unpaired: they are not filled either."""
    paired = {getattr(p, side).path for p in pairs}
    return [n for n in tied if n.tied_to not in paired]


def _expanded(nodes, others) -> list:
    """``nodes`` with each composite one (attention's four projections) replaced by its parts where no node
    of ``others`` could take it whole: the other implementation keeps those projections as layers of their own."""
    rules = {rule.name for n in others for rule, _ in n.candidates}
    out = []
    for n in nodes:
        parts = getattr(n, "parts", None)
        whole = any(rule.name in rules for rule, _ in n.candidates)
        out += parts if parts and not whole else [n]
    return out


def _refuse_unmatched(all_src, all_tgt, left_s, left_t):
    """Raise the most precise error for layers left without a counterpart."""
    loose = [b for b in left_t if getattr(b, "loose", False)]
    if loose:
        b = loose[0]
        raise UnsupportedLayerError(
            f"target layer {b.label.rpartition(b.framework.sep)[0] or '<root>'!r} "
            f"({b.framework.display_name(b.obj)}) holds the weight {b.candidates[0][1]['slot']!r} "
            f"{tuple(b.candidates[0][1]['shape'])} but no rule handles its class, and no source tensor pairs with "
            "it by name and shape; the target was not changed. Register a rule for it (see `weightport rules`), "
            "pass hints={source_path: target_path}, or strict=False to port everything else")
    positional = _positional(all_src, all_tgt)
    if positional is not None:
        for p in positional:
            if not p.shapes_agree:
                raise ShapeMismatchError(
                    f"source layer {describe(p.source)} does not fit target layer {describe(p.target)}: "
                    f"expected {_fmt_shapes(p.target_shapes)}, found {_fmt_shapes(p.source_shapes)}"
                    f"{_config_note(p)}; the target was not changed. Fix the model, pass hints=, "
                    "or strict=False to copy only what fits")
    raise MatchError(
        f"the source has {len(all_src)} rule-bearing layer{'s' * (len(all_src) != 1)} and the target "
        f"{len(all_tgt)}; "
        "these have no counterpart of the same kind and shapes:\n"
        + "".join(f"  source: {describe(a)}\n" for a in left_s)
        + "".join(f"  target: {describe(b)}\n" for b in left_t)
        + "The target was not changed. Pass hints={source_path: target_path}, or strict=False "
          "to copy only what pairs.")


def _ambiguity_error(classes, traced: bool) -> AmbiguityError:
    lines, guess = [], {}
    for cls in classes:
        lines.append(f"  source: {', '.join(a.label for a in cls.src)}\n"
                     f"  target: {', '.join(b.label for b in cls.tgt)}")
        guess.update({a.path: b.path for a, b in zip(cls.src, cls.tgt)})
    unordered = any(getattr(a, "unordered", False) for cls in classes for a in cls.src)
    checkpoint = any(not hasattr(a, "obj") for cls in classes for a in cls.src + cls.tgt)
    how = ("a checkpoint cannot be run: pass its own model as model= so its dataflow can be traced" if checkpoint else
           "pass check=(inputs_a, inputs_b), inputs both models accept, so they can be traced")
    why = ("the file stores its tensors in alphabetical, not model, order, and " if unordered else "") + (
        "neither their names nor the dataflow of a traced run tell which is which" if traced else
        f"their names do not tell which is which, and no run of both models could show what feeds what ({how})")
    return AmbiguityError(
        f"layers that look alike (same kind and shapes) cannot be paired safely: {why}.\n" + "\n".join(lines)
        + "\nThe target was not changed. If they correspond in the order listed, pass (after checking):\n"
        + f"  hints={guess!r}")


def _checked_plan(plan, pairs, strict, strict_config=False) -> tuple:
    """The plan's steps; configuration errors refuse (strict), warnings too with ``strict_config``."""
    kept = []
    for p in pairs:
        if not p.shapes_agree:
            raise ShapeMismatchError(
                f"{'hinted pair' if p.evidence == 'hint' else 'pair'} {describe(p.source)} -> {describe(p.target)}: "
                f"expected {_fmt_shapes(p.target_shapes)}, found {_fmt_shapes(p.source_shapes)}{_config_note(p)}; "
                "the target was not changed")
        issues = p.rule.check(p.source_hp, p.target_hp)
        errors = [i for i in issues if i.severity == "error" or strict_config]
        issues += reparametrized_notes(p)
        where = f"{p.source.label} -> {p.target.label} ({p.rule.name})"
        if errors and strict:
            raise ConfigMismatchError(f"{where}: " + "; ".join(map(str, errors))
                                      + ". The target was not changed; make the configurations agree")
        plan.issues += [f"{where}: {i}" for i in issues]
        if errors:
            plan.unmatched_source.append(describe(p.source))
            plan.unmatched_target.append(describe(p.target))
            continue
        kept.append(p)
        plan.steps.append(Step(
            source=p.source.label, target=p.target.label, rule=p.rule.name,
            source_layout=p.source.layout, target_layout=p.target.layout,
            source_hp=p.source_hp, target_hp=p.target_hp, shapes=p.source_shapes,
            transform=transform_text(p), exact=p.rule.exact(p.source.layout, p.source_hp)
            and p.rule.exact(p.target.layout, p.target_hp) and not p.source_hp.get("reparametrized"),
            evidence=p.evidence))
    return plan, kept


def _config_note(p: Pair) -> str:
    """Configuration errors that explain a shape difference (use_bias, center, affine...), for its message."""
    errors = [i for i in p.rule.check(p.source_hp, p.target_hp) if i.severity == "error"]
    return ("; the configurations differ: " + "; ".join(map(str, errors))) if errors else ""
