"""Which layout a bare checkpoint's tensor names follow, judged by the slot names the rules declare.

A name is torch-like when its last dotted part is a torch slot of some rule
(``weight``, ``running_mean``, ``weight_ih_l0``...), Keras-like when its last
``/`` part is a Keras slot (``kernel``, ``moving_mean``...) or it is a Keras 3
``vars/<i>`` path. The slot names come from the rule registry, so a rule
registered by a plugin is recognised here with no change to this module:

- a rule may declare ``slot_patterns = {"torch": (r"gate_\\d+", ...)}``, regular
  expressions a whole slot name matches, for slots whose names depend on
  hyperparameters;
- otherwise its slots are read from ``native_slots(layout, {})``, numbers in
  them standing for any number (``weight_ih_l0`` also covers ``weight_ih_l3``).

Names a layout stores beside the rules' slots (torch's weight-norm halves)
count too. The registry is imported on the first detection, never when
weightport is imported.
"""
from __future__ import annotations

import re

from ..layouts import separator

_KERAS_SUFFIX = r"(:\d+)?"  # Keras 2 names its variables "<slot>:0"
_KERAS_VARS = re.compile(r"(^|/)vars/\d+$")  # Keras 3 .weights.h5: <object path>/vars/<i>
_FLAX_COLLECTIONS = ("params/", "batch_stats/")  # Flax trees also say kernel/bias: do not call them Keras
_cache: dict = {}


def _rules():
    from ..mappings import rule

    return rule.registry


def derived_patterns(rule, layout: str) -> list:
    """Patterns for ``rule``'s slots in ``layout`` read from its links: the last name part, numbers generalised."""
    try:
        slots = rule.native_slots(layout, {})
    except Exception:  # noqa: BLE001 - a rule whose links need hyperparameters says nothing here
        return []
    sep = separator(layout)
    leaves = {slot.rpartition(sep)[2] for slot in slots if slot}
    return sorted(re.sub(r"\d+", r"\\d+", re.escape(leaf)) for leaf in leaves)


def slot_patterns(rule, layout: str) -> list:
    """The slot-name patterns ``rule`` has in ``layout``: declared, else derived from its links."""
    declared = getattr(rule, "slot_patterns", None) or {}
    return list(declared[layout]) if layout in declared else derived_patterns(rule, layout)


def leaf_pattern(layout: str) -> re.Pattern:
    """One regex matching a tensor name whose last part is a slot some registered rule has in ``layout``."""
    registry = _rules()
    rules = list(registry)
    key = (layout, id(registry), tuple(rules))  # a rule registered or removed since makes a new pattern
    if key not in _cache:
        from .weight_norm import STORED_NAMES  # the halves a weight-normalised torch weight is stored as

        if len(_cache) > 16:
            _cache.clear()
        names = sorted({p for rule in rules if layout in rule.layouts() for p in slot_patterns(rule, layout)}
                       | set(STORED_NAMES if layout == "torch" else ()))
        sep = re.escape(separator(layout))
        suffix = _KERAS_SUFFIX if layout == "keras" else ""
        _cache[key] = re.compile(rf"(^|{sep})({'|'.join(names) or '(?!)'}){suffix}$")
    return _cache[key]


def detect_layout(names) -> str | None:
    """'torch' for dotted torch names, 'keras' for Keras weight paths, None when the names do not say."""
    names = list(names)
    if not names:
        return None
    torch_leaf, keras_leaf = leaf_pattern("torch"), leaf_pattern("keras")
    torch_like = sum(1 for n in names if "/" not in n and torch_leaf.search(n))
    keras_like = sum(1 for n in names if not n.startswith(_FLAX_COLLECTIONS)
                     and (_KERAS_VARS.search(n) or ("/" in n and keras_leaf.search(n))))
    if keras_like > torch_like and keras_like * 2 >= len(names):
        return "keras"
    if torch_like > keras_like and torch_like * 2 >= len(names):
        return "torch"
    return None
