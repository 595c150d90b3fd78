"""One packed projection on one side against several separate ones on the other: split (or merged) by rows.

Implementations pack projections that read the same input into one matrix
(q, k and v in ``qkv_proj`` / ``query_key_value``; an MLP's gate and up in
``gate_up_proj``) where others keep a layer each. A packed layer pairs with
separate ones when its last name spells their roles (``qkv``, ``query_key_value``,
``gate_up``), exactly one sibling on the other side is named for each role,
all read as many features with or without a bias, and their output sizes add
up to the packed one's. Each partner then pairs with a ``Slice``: the packed
layer's output columns that hold its part, read from it (or written into it).

What weights cannot show is settled by evidence or refused:
- q/k/v one after another (``blocks``) or head by head (``per_head``): the
  ``packed_qkv`` option, else how a traced torch run of the packed side cuts
  its output (slices at the blocks' offsets, or a view to (heads, parts,
  head_dim)). A part of one head (or where both orders are one) needs neither.
- which block of a gate/up pair is the gate: the ``gate_up`` option, else the
  traced run, which shows which piece of the packed output passes the
  activation. The parts follow the order the name spells (q, k, v) otherwise.
"""
from __future__ import annotations

import re

import numpy as np

from ..errors import AmbiguityError, MatchError, UsageError, WeightportError
from ..mappings.einsum_dense import head_count
from . import naming
from .pairs import pair
from .slices import Assembled, Slice, cut, cut_columns

ATTENTION = ("query", "key", "value")
# a word spelling several roles at once, as packed names do
BUNDLES = {"qkv": ATTENTION, "wqkv": ATTENTION, "kv": ATTENTION[1:], "wkv": ATTENTION[1:], "qk": ATTENTION[:2]}
ROLES = frozenset(ATTENTION) | {"gate", "up"}


def roles_of(path: str):
    """The roles a packed layer's last name spells, in order (``gate_up_proj`` -> gate, up), or None."""
    last = naming.last_part(path).lower()
    found = []
    for token in re.split(r"[^a-z]+", last):
        if token in BUNDLES:
            found += BUNDLES[token]
        elif token:
            found += sorted(naming.words(token) & ROLES)
    return tuple(found) if len(found) >= 2 and len(set(found)) == len(found) else None


def _parent(path: str) -> str:
    return re.split(r"[./](?=[^./]*$)", str(path))[0] if re.search(r"[./]", str(path)) else ""


def linear_view(node):
    """(rule, hp, in features, out features, bias) of a node read as one (in, out) projection, else None."""
    for rule, hp in node.candidates:
        try:
            shapes = node.canonical_shapes(rule, hp)
            slots = rule.canonical(hp)
        except (WeightportError, KeyError, ValueError, TypeError):  # shapes only the other side can say
            continue
        if not shapes or slots[0] != "kernel" or len(slots) > 2:
            continue
        kernel = shapes[0]
        n = hp.get("inputs", 1) if hp.get("kernel_shape") else 1
        order = hp.get("permutation") or range(len(kernel))
        ordered = [kernel[i] for i in order]
        fan_in, fan_out = int(np.prod(ordered[:n])), int(np.prod(ordered[n:]))
        if len(kernel) == 2 or hp.get("kernel_shape"):
            return rule, hp, fan_in, fan_out, len(slots) == 2
    return None


class Split:
    """A packed node and its partners on the other side, in the order the packed name spells their roles."""

    def __init__(self, packed, partners, roles, packed_is_source: bool):
        self.packed, self.partners, self.roles = packed, partners, roles
        self.packed_is_source = packed_is_source
        self.sizes = [linear_view(p)[3] for p in partners]
        self.heads = [_heads(p) for p in partners]

    @property
    def attention(self) -> bool:
        return set(self.roles) <= set(ATTENTION)

    def cuts(self, packing: str, order) -> list:
        """For each partner, where its part lies in the packed outputs (``slices.cut``): ``blocks`` one after
        another in ``order`` (partner indices), or ``per_head`` interleaved by heads: one group per key/value
        head (every head where all parts have as many), holding each part's share in role order."""
        starts, start = [0] * len(self.sizes), 0
        for i in order:
            starts[i], start = start, start + self.sizes[i]
        if packing == "per_head":  # a blocks reading of the same parts, recorded beside, starts in role order
            starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        groups = self.groups
        shares = [size // groups if groups else 0 for size in self.sizes]
        return [cut(packing, role, starts[i], size, i, len(self.sizes), self.heads[i], groups,
                    sum(shares[:i]) if groups else None)
                for i, (role, size) in enumerate(zip(self.roles, self.sizes))]

    @property
    def groups(self):
        """How many groups the parts interleave in, read head by head: the fewest heads a part has (its key and
        value heads, each with its share of query heads), where every part's heads are a multiple; else None."""
        if not self.heads or not all(self.heads):
            return None
        fewest = min(self.heads)
        fits = all(h % fewest == 0 and size % fewest == 0 for h, size in zip(self.heads, self.sizes))
        return fewest if fits else None

    def columns(self, packing: str, order) -> list:
        """For each partner, the packed output columns holding its part (see ``cuts``)."""
        return [cut_columns(c, sum(self.sizes), self.packed.label) for c in self.cuts(packing, order)]


def _heads(node):
    for _, hp in node.candidates:
        h = head_count(hp)
        if h:
            return h
    return None


def find(src, tgt) -> list:
    """Every ``Split`` the names and sizes show (see the module docstring), each node in one at most."""
    found, used = [], set()
    for mine, theirs, is_source in ((src, tgt, True), (tgt, src, False)):
        siblings: dict = {}
        for n in theirs:
            siblings.setdefault(_parent(n.path), []).append(n)
        for n in mine:
            roles, view = roles_of(n.path), linear_view(n)
            if roles is None or view is None or id(n) in used or len(n.canonical_shapes(*view[:2])[0]) != 2:
                continue  # a packed kernel is cut along its one output axis
            groups = [g for g in (_partners(roles, view, members, n) for members in siblings.values()) if g]
            if len(groups) == 1 and not any(id(p) in used for p in groups[0]):
                found.append(Split(n, groups[0], roles, is_source))
                used |= {id(n)} | {id(p) for p in groups[0]}
    return found


def _partners(roles, view, members, packed):
    """The members named for ``roles`` (one each) that fit the packed ``view``, in role order; else None."""
    if naming.numbers(_parent(packed.path)) != naming.numbers(_parent(members[0].path) or members[0].path):
        return None
    chosen = []
    for role in roles:
        named = [m for m in members if role in naming.words(naming.last_part(m.path))]
        if len(named) != 1 or named[0] in chosen:
            return None
        chosen.append(named[0])
    views = [linear_view(m) for m in chosen]
    if any(v is None or v[2] != view[2] or v[4] != view[4] for v in views) or sum(v[3] for v in views) != view[3]:
        return None
    return chosen


def split(src, tgt, side_flow, options: dict) -> tuple:
    """(pairs, used node ids, dataflow images) for every ``Split`` found; refuses, before anything is changed,
    where a split's layout is unsettled (one message for all, with the options that settle them).

    ``side_flow(side)``: the traced Flow of the source (0) or target (1), or
    None. The images map a path to the other side's paths its layer stands for
    (the packed layer for its partners, or the reverse), for pairing by dataflow.
    """
    pairs, used, images, unsettled = [], set(), {}, {}
    for s in find(src, tgt):
        settled = settle(s, options, side_flow(0 if s.packed_is_source else 1))
        if not isinstance(settled, str) and not s.attention:
            _check_gate(s, side_flow(1 if s.packed_is_source else 0))
        if isinstance(settled, str):
            unsettled.setdefault(settled, []).append(s)
            continue
        pairs += _pairs(s, *settled)
        used |= {id(s.packed)} | {id(p) for p in s.partners}
        if s.packed_is_source:
            images[s.packed.path] = frozenset(p.path for p in s.partners)
        else:
            images.update({p.path: frozenset({s.packed.path}) for p in s.partners})
    if unsettled:
        raise AmbiguityError(_unsettled(unsettled))
    return pairs, used, images


def _pairs(s: Split, packing: str, order) -> list:
    rule, hp = linear_view(s.packed)[:2]
    found = []
    for partner, where, role, size in zip(s.partners, s.cuts(packing, order), s.roles, s.sizes):
        part = Slice(s.packed, rule, hp, where)
        part.candidates = [(r, {**part.part_hp} if r is rule else _linear_hp(part.part_hp))
                           for r, _ in partner.candidates if part.layout in r.layouts()]
        p = pair(part, partner, "split") if s.packed_is_source else pair(partner, part, "split")
        if p is None or not p.shapes_agree:
            raise MatchError(f"{s.packed.label} packs {list(s.roles)}, and {partner.label} is named for {role!r} "
                             f"with {size} outputs, but no rule moves that part between them; the target was not "
                             "changed. Pass hints= or strict=False")
        found.append(p)
    return found


def _linear_hp(hp: dict) -> dict:
    return {k: v for k, v in hp.items() if k in ("units", "use_bias", "in_out")}


def _one_order(s: Split) -> bool:
    """Whether one after another and head by head are the same columns (one group: every part a single head,
    or a multi-query layer's single key and value head)."""
    return all(h == 1 for h in s.heads) or s.groups == 1


def settle(s: Split, options: dict, flow) -> tuple:
    """(packing, order of the partners' blocks) for ``s``, from ``options`` or the packed side's traced run
    (``flow``; an option it contradicts is refused); else the name of the option that would settle it."""
    n = len(s.partners)
    if s.attention:
        traced = None if _one_order(s) else traced_packing(s, flow)
        packing = "blocks" if _one_order(s) else _agreed(s, "packed_qkv", options.get("packed_qkv"), traced)
        if packing == "per_head" and not s.groups:
            _heads_given(s, options.get("head_dim"))
        return (packing, list(range(n))) if packing else "packed_qkv"
    if "gate" not in s.roles or n != 2:
        return "gate_up"
    gate = _agreed(s, "gate_up", options.get("gate_up"), traced_gate(s, flow))
    if gate is None:
        return "gate_up"
    g = s.roles.index("gate")
    return "blocks", [g, 1 - g] if gate == "gate_first" else [1 - g, g]


def _heads_given(s: Split, head_dim) -> None:
    """The partners' head counts from option ``head_dim``, where they do not say them; refused where that
    leaves the groups of a head by head packing unknown."""
    if head_dim and all(size % head_dim == 0 for size in s.sizes):
        heads = [size // head_dim for size in s.sizes]
        if all(known in (None, h) for known, h in zip(s.heads, heads)):
            s.heads = heads
    if not s.groups:
        raise UsageError(f"{s.packed.label}: option packed_qkv='per_head' needs the parts' head counts, each a "
                         f"multiple of the fewest (the key/value heads), but {[p.label for p in s.partners]} have "
                         f"{s.sizes} outputs in {s.heads} heads; nothing was changed. Give the head size too: "
                         "options={'packed_qkv': 'per_head', 'head_dim': ...}")


def _agreed(s: Split, option: str, given, traced):
    """The option's value, or the traced run's; refused where both are known and differ."""
    if given and traced and given != traced:
        raise UsageError(f"{s.packed.label}: option {option}={given!r}, but a traced run of its model cuts its "
                         f"output as {traced!r}; nothing was changed. Drop the option, or check the model")
    return given or traced


UNSETTLED = {
    "packed_qkv": ("whether its parts lie one after another or head by head",
                   "'blocks' (one after another) or 'per_head' (interleaved by heads: for each key/value head, "
                   "its query heads, then it, then its value head)"),
    "gate_up": ("which of its blocks is the gate (the one an activation reads)", "'gate_first' or 'up_first'"),
}


def _unsettled(found: dict) -> str:
    """The refusal for splits whose layout nothing settled (``found``: option -> splits)."""
    lines = []
    for option, splits in found.items():
        s = splits[0]
        what, values = UNSETTLED[option]
        more = f" (and {len(splits) - 1} more like it)" if len(splits) > 1 else ""
        lines.append(f"  {s.packed.label}{more} packs {', '.join(s.roles)} in one projection that pairs with "
                     f"{', '.join(p.label for p in s.partners)} ({' + '.join(map(str, s.sizes))} outputs): "
                     f"{what} its weights cannot show; option {option!r}: {values}")
    keys = ", ".join(f"{option!r}: ..." for option in found)
    return ("packed projections split into separate layers, in an order nothing here shows (no traced run of the "
            "packed side's model showed how it cuts their output):\n" + "\n".join(lines)
            + f"\nNothing was changed. Pass options={{{keys}}} with the values above, or, from a file, its own "
            "live model as model= so a run shows it")


def traced_packing(s: Split, flow):
    """``blocks`` or ``per_head`` as the traced run cut the packed output, else None: slices at each block's
    offset and size; or a view of its last axis as (parts, heads, head_dim) for parts of one size, or as
    (groups, parts' heads per group, head_dim) (none where parts and groups are as many and both read). A head
    by head reading also tells the partners' head counts, where they do not say them themselves."""
    cuts = (flow.cuts.get(s.packed.path) if flow is not None else None) or []
    n = len(s.sizes)
    blocks = {(int(c[0]), len(c)) for c in s.columns("blocks", range(n))}
    pieces = {(offset, shape[-1]) for _, shape, offset in cuts if offset is not None and shape}
    if blocks <= pieces:
        return "blocks"
    found, total = {}, sum(s.sizes)
    for _, shape, _ in cuts:  # a view of the last axis as (a, b, c): parts outermost, or inside each group
        if len(shape) >= 2 and int(shape[-2]) * int(shape[-1]) == total:  # (heads, head_dim): one group?
            heads = _heads_of_view(s, 1, int(shape[-1]))
            found.update({"blocks": heads} if heads is not None else {})
        if len(shape) < 3:
            continue
        a, b, c = (int(x) for x in shape[-3:])
        if a * b * c != total:
            continue
        readings = {"blocks": None} if a == n and len(set(s.sizes)) == 1 and b * c == s.sizes[0] else {}
        heads = _heads_of_view(s, a, c)
        if heads is not None:
            readings["per_head"] = heads
        found.update(readings if a != n or len(readings) == 1 else {"blocks": None, "per_head": None})
    if len(found) != 1:
        return None
    packing, heads = found.popitem()  # "blocks" of one group: a multi-query layer's single key/value head
    if heads is not None:
        s.heads = heads
    return packing


def _heads_of_view(s: Split, groups: int, head_dim: int):
    """The partners' head counts if a view as (``groups``, ..., ``head_dim``) cuts the packed output head by
    head (each part whole heads, ``groups`` the fewest, as the partners' own counts say where they do)."""
    if any(size % head_dim for size in s.sizes):
        return None
    heads = [size // head_dim for size in s.sizes]
    agrees = all(known in (None, h) for known, h in zip(s.heads, heads))
    return heads if agrees and min(heads) == groups and all(h % groups == 0 for h in heads) else None


def traced_gate(s: Split, flow):
    """``gate_first`` or ``up_first`` from the piece of the packed output an activation read, else None."""
    found = (flow.activated_cuts.get(s.packed.path) if flow is not None else None) or set()
    if len(found) != 1:
        return None
    offset, size = next(iter(found))
    g = s.roles.index("gate")
    if size != s.sizes[g] or offset not in (0, s.sizes[1 - g]):
        return None
    return "gate_first" if offset == 0 else "up_first"


def assembled(plan, pairs) -> list:
    """``pairs`` (and ``plan.steps``, in place) with the pairs filling parts of one packed target layer made
    one pair writing its whole tensors, for a file."""
    from .engine import translate
    from .plan import Pair, Step, transform_text

    groups: dict = {}
    for p in pairs:
        if isinstance(p.target, Slice):
            groups.setdefault(id(p.target.base), []).append(p)
    if not groups:
        return pairs
    out, steps, done = [], [], set()
    for p, step in zip(pairs, plan.steps):
        if not isinstance(p.target, Slice):
            out.append(p)
            steps.append(step)
            continue
        if id(p.target.base) in done:
            continue
        done.add(id(p.target.base))
        source = Assembled(groups[id(p.target.base)], translate)
        shapes = source.canonical_shapes(None, None)
        whole = Pair(source, source.base, source.rule, source.hp, source.hp, shapes, shapes, "split")
        out.append(whole)
        steps.append(Step(source.label, source.base.label, source.rule.name, source.layout, source.base.layout,
                          source.hp, source.hp, shapes, transform_text(whole), evidence="split"))
    plan.steps[:] = steps
    return out


def _check_gate(s: Split, flow) -> None:
    """Refuse where the partners' own traced run contradicts their names: the one named ``gate`` must be the
    one whose output an activation reads, the other not. Says nothing where that run is not seen whole."""
    if flow is None or not (flow.complete and flow.sees_activations):
        return
    g = s.roles.index("gate")
    read = [bool(flow.activated_readers.get(p.path)) for p in s.partners]
    if read[g] and not read[1 - g]:
        return
    raise MatchError(f"{s.packed.label} packs {', '.join(s.roles)}, but of {s.partners[g].label} (named the gate) "
                     f"and {s.partners[1 - g].label}, a traced run shows an activation reading "
                     f"{'both' if all(read) else 'neither' if not any(read) else 'the other'}; the target was not "
                     "changed. Pass hints= naming the pairs, or port this block by hand")
