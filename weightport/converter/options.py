"""Rule options (``options=``): what a port needs to know and weights cannot show, checked and set on the pairs.

``{"rope": "interleaved->half"}`` (or ``"half->interleaved"``, the source's order first): rotary embeddings pair
the features of each query and key head either interleaved (Meta's Llama, GPT-J: ``(2i, 2i+1)``) or rotate-half
(Hugging Face's Llama, keras-hub: ``(i, i + d/2)``). Both compute the same function once the q and k projections'
output rows are reordered within each head; v, o and everything else stay as they are. ``head_dim`` and
``rotary_dim`` (partial rotary, GPT-NeoX/Phi: only the first ``rotary_dim`` features of each head rotate) are
read from the models where they show, else must be given. The reordering is set on the interleaved side's hp
(``mappings.link_options``), so a saved plan replays it.
"""
from __future__ import annotations

import re

from ..errors import UsageError
from ..mappings.link_options import rotary_slots
from . import naming
from .plan import transform_text

ORDERS = {"interleaved->half": "source", "half->interleaved": "target"}  # which side stores interleaved
KNOWN = {"rope": tuple(ORDERS), "head_dim": int, "rotary_dim": int, "packed_qkv": ("blocks", "per_head"),
         "gate_up": ("gate_first", "up_first")}
ROLES = frozenset({"query", "key"})
# one tensor holding queries, keys (and values) together: which of its rows are whose, weights cannot show
PACKED = re.compile(r"(^|_)(c_attn|w?qkv(_proj)?|query_key_value|in_proj|w?kv(_proj)?|key_value)$")


def parse(options) -> dict:
    """``options`` checked: known names, values of the right kind; {} for None."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise UsageError(f"options= takes a dict of rule options by name, e.g. {{'rope': 'interleaved->half'}}; "
                         f"got a {type(options).__name__}")
    out = {}
    for key, value in options.items():
        kind = KNOWN.get(key)
        if kind is None:
            raise UsageError(f"unknown option {key!r}; known: {sorted(KNOWN)}")
        if isinstance(kind, tuple) and value not in kind:
            raise UsageError(f"option {key}={value!r}: expected one of {list(kind)}"
                             + (" (the source's order first)" if key == "rope" else ""))
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UsageError(f"option {key}={value!r}: expected a positive whole number")
        out[key] = value
    if ("head_dim" in out and not {"rope", "packed_qkv"} & set(out)) or ("rotary_dim" in out and "rope" not in out):
        raise UsageError("option head_dim belongs to the rope or packed_qkv option, and rotary_dim to rope: pass "
                         "that option too")
    return out


def settle(nodes, options: dict) -> None:
    """Before pairing: give the layers whose weights cannot show a layout (``Rule.unsettled``: how a packed
    q/k/v tensor interleaves) the one ``packed_qkv`` names, in place."""
    for node in nodes:
        for n in (node, *getattr(node, "parts", ())):
            for rule, hp in n.candidates:
                settle_hp(rule, hp, options)


def settle_hp(rule, hp: dict, options: dict) -> None:
    """One layer's ``hp`` settled by ``options`` (see ``settle``), in place."""
    if options.get("packed_qkv") and rule.unsettled(hp):
        hp["packing"] = options["packed_qkv"]


def apply(plan, pairs, options: dict) -> None:
    """Set ``options`` on the pairs they concern (in place, with each step's transform text), or refuse."""
    if options.get("rope"):
        _apply_rope(plan, pairs, options)


def _last_words(node) -> frozenset:
    last = naming.last_part(node.path)
    return naming.words(last)


def _rotary_roles(p) -> list:
    """The canonical slots of ``p`` that hold queries or keys: an attention layer's query and key projections,
    or the whole of a layer one side names as a query or key (q_proj, wq, query, k_norm...). A layer packing
    queries and keys with values is refused: which rows are whose cannot be told."""
    canonical = p.rule.canonical(p.source_hp)
    inside = [s for s in canonical if s.split("/")[0] in ("query", "key")]
    for node, hp in ((p.source, p.source_hp), (p.target, p.target_hp)):
        packed = [lk.native for lk in p.rule.links(node.layout, hp) if len(set(lk.canonical) & set(inside)) > 1]
        if packed:
            _refuse_packed(f"{node.label}.{packed[0][0]}")
    if inside and any(s.startswith("query/") for s in canonical):
        return inside
    found = set()
    for node in (p.source, p.target):
        last = naming.last_part(node.path).lower()
        words = _last_words(node)
        if PACKED.search(last) or len(words & {"query", "key", "value"}) > 1:
            _refuse_packed(node.label)
        found |= words & ROLES
    return list(canonical) if found else []


def _refuse_packed(where: str):
    raise UsageError(
        f"option rope: {where!r} holds queries and keys together in one tensor, packed in an order weights cannot "
        "show (GPT-2 and torch stack q, k, v; GPT-NeoX interleaves them per head); the rope option reorders "
        "separate query and key projections only. Nothing was changed: split the packed projection into q, k "
        "and v layers first, or port without the option")


def _head_dim(options, found) -> int:
    """The per-head size: the option's, else what the layers show (an EinsumDense kernel's last axis, an
    attention layer's key_dim, the output size over the head counts a module declares); all must agree."""
    shown, counted = set(), None
    for p, slots in found:
        shapes = dict(zip(p.rule.canonical(p.source_hp), p.source_shapes))
        for hp in (p.source_hp, p.target_hp):
            if hp.get("key_dim"):
                shown.add(int(hp["key_dim"]))
        for slot in slots:
            shape = shapes[slot]
            if len(shape) == 3 and slot.rpartition("/")[2] == "kernel":
                shown.add(int(shape[-1]))
            heads = set(p.source_hp.get("heads_context") or ()) | set(p.target_hp.get("heads_context") or ())
            if len(shape) == 2 and heads:
                fits = {shape[-1] // h for h in heads if shape[-1] % h == 0}
                counted = fits if counted is None else counted & fits
    given = options.get("head_dim")
    if given and shown and shown != {given}:
        raise UsageError(f"option head_dim={given}, but the attention layers show a head size of {sorted(shown)}; "
                         "nothing was changed")
    if given:
        return given
    if len(shown) == 1:
        return shown.pop()
    if not shown and counted is not None and len(counted) == 1:
        return counted.pop()
    layers = ", ".join(p.source.label for p, _ in found[:4])
    raise UsageError(f"option rope: the size of each attention head cannot be told from the layers ({layers}"
                     f"{'...' if len(found) > 4 else ''}){'; they show ' + str(sorted(shown)) if shown else ''}. "
                     "Nothing was changed: pass it, e.g. options={'rope': ..., 'head_dim': 64}")


def _apply_rope(plan, pairs, options) -> None:
    found = [(p, slots) for p in pairs for slots in [_rotary_roles(p)] if slots]
    if not found:
        raise UsageError(
            f"option rope={options['rope']!r}: no query or key projection among the paired layers (looked for "
            "attention layers and layers named q, q_proj, query, wq, k, k_proj, key, wk); nothing was changed. "
            "Port without the option, or name the layers' pairing with hints=")
    head_dim = _head_dim(options, found)
    rotary = options.get("rotary_dim", head_dim)
    if rotary % 2 or rotary > head_dim:
        raise UsageError(f"option rotary_dim={rotary}: it must be even and at most head_dim {head_dim}")
    side = ORDERS[options["rope"]]
    steps = {id(p): step for p, step in zip(pairs, plan.steps)}
    for p, slots in found:
        shapes = dict(zip(p.rule.canonical(p.source_hp), p.source_shapes))
        bad = [s for s in slots if not shapes[s] or shapes[s][-1] % head_dim]
        if bad:
            raise UsageError(f"option rope: {p.source.label} -> {p.target.label}: {bad[0]} {tuple(shapes[bad[0]])} "
                             f"is not a whole number of heads of {head_dim} along its last axis; nothing was "
                             "changed: check head_dim")
        hp = {**getattr(p, f"{side}_hp"), "rope": {"slots": slots, "head_dim": head_dim, "rotary_dim": rotary}}
        layout = getattr(p, side).layout
        if rotary_slots(p.rule.links(layout, hp), hp) != set(slots):
            raise UsageError(f"option rope: rule {p.rule.name!r} of {p.source.label} -> {p.target.label} cannot "
                             "reorder its query/key features; nothing was changed")
        setattr(p, f"{side}_hp", hp)
        step = steps.get(id(p))
        if step is not None:
            setattr(step, f"{side}_hp", hp)
            step.transform = transform_text(p)
