"""Layer structure for checkpoints: which tensors belong to which layer, and under which rule.

A checkpoint is only names and tensors. Its layers come either from a live
model in the checkpoint's layout (each layer's tensor names are known), or
are inferred from standard naming: names are split into a tree at ``.``
(torch) or ``/`` (Keras), and the first tree node whose tensors some rule
recognises by names and shapes (``Rule.infer``) becomes a layer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..layouts import separator
from ..mappings.rule import registry




def kept_canonical_shapes(kept: dict, layout: str, rule, hp, native_shapes):
    """A node's shapes in canonical form under ``rule`` (None where its tensors do not fit it), from
    ``native_shapes(slots)``; pairing asks for them thousands of times, so they are ``kept`` per (rule, hp)."""
    key = (rule.name, repr(sorted(hp.items())))
    if key not in kept:
        found = native_shapes(rule.native_slots(layout, hp))
        try:
            kept[key] = rule.canonical_shapes(layout, hp, found)
        except (KeyError, ValueError):
            kept[key] = None
    return kept[key]


PLAIN = frozenset({bool, int, float, str, type(None)})


def hp_key(hp: dict):
    """A hashable key equal only for hp of equal values of equal types (``1``, ``1.0`` and ``True`` kept apart),
    or None where a value is not plain data (a dict, an object, nested tuples)."""
    out = []
    for k, v in hp.items():
        kind = type(v)
        if kind in PLAIN:
            out.append((k, kind, v))
        elif kind is tuple and all(type(x) in PLAIN for x in v):
            out.append((k, kind, v, tuple(map(type, v))))
        else:
            return None
    return tuple(sorted(out, key=lambda entry: entry[0]))


@dataclass
class FileNode:
    """One layer's tensors inside a checkpoint (the matcher's node protocol)."""

    path: str
    layout: str
    candidates: list
    checkpoint: object
    names: dict  # slot -> tensor name in the checkpoint
    frozen: object = field(default=None)
    inferred: bool = False  # rule guessed from names and shapes; a paired live layer may say better
    unordered: bool = False  # the file stores names alphabetically: its order is not the model's
    loose: bool = False  # one tensor no rule explains, paired by name and shape (the ``parameter`` rule)
    parts: list = field(default_factory=list)  # a composite group's sub-groups (attention's projections)
    tied_to: str | None = None  # see LayerRef.tied_to: a file stores such tensors once, under the other layer
    _shapes: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def label(self) -> str:
        return self.path or "<root>"

    def canonical_shapes(self, rule, hp):
        """Shapes in canonical form under ``rule``, or None if the tensors do not fit it."""
        return kept_canonical_shapes(self._shapes, self.layout, rule, hp, lambda slots: {
            s: tuple(self.checkpoint.shape(self.names[s])) for s in slots if s in self.names})

    def pairing_kind(self):
        """Everything ``pairs.pair`` reads of this group, hashable: groups of one kind pair alike with any node, so
        pairing tries one of them for all (49 x 49 BERT-base projections become 1 x 49). None for a loose
        tensor (paired by its name too) or hp that cannot be keyed."""
        keys = [hp_key(hp) for _, hp in self.candidates]
        if self.loose or None in keys:
            return None
        shapes = tuple(sorted((slot, tuple(self.checkpoint.shape(name))) for slot, name in self.names.items()))
        return (self.layout, self.inferred, tuple(zip((r for r, _ in self.candidates), keys)), shapes)

    def dtypes(self, rule, hp) -> dict:
        return {s: self.checkpoint.dtype(self.names[s]) for s in rule.native_slots(self.layout, hp) if s in self.names}

    def read(self, rule, hp) -> dict:
        return {s: self.checkpoint[self.names[s]] for s in rule.native_slots(self.layout, hp) if s in self.names}


def natural_key(name: str):
    """Sort key that puts ``layers.2`` before ``layers.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def ordered_names(checkpoint) -> list:
    """Tensor names in module order where the file keeps it, else in natural order.

    Files that store names alphabetically (safetensors written by most tools)
    lose module order; numeric-aware sorting at least keeps ``layers.10`` after
    ``layers.9``.
    """
    names = list(checkpoint)
    return sorted(names, key=natural_key) if names == sorted(names) else names


def tree_paths(names, layout: str) -> dict:
    """name -> the path a tensor is grouped under, in the order to visit them.

    That is the name itself, except for Flax variables, which keep one
    layer's tensors in several top-level collections (``params/bn/scale``
    beside ``batch_stats/bn/mean``): those are grouped by the path below the
    collection (``params`` first, which keeps module order), unless that
    would merge two tensors.
    """
    sep = separator(layout)
    if layout != "flax" or not names or any(sep not in n for n in names) \
            or "params" not in {n.partition(sep)[0] for n in names}:
        return {n: n for n in names}
    in_params = [n.partition(sep)[0] == "params" for n in names]
    ordered = [n for n, p in zip(names, in_params) if p] + [n for n, p in zip(names, in_params) if not p]
    below = {n: n.partition(sep)[2] for n in ordered}
    return below if len(set(below.values())) == len(below) else {n: n for n in names}


RULES_KEY = "weightport_layers"  # metadata: {group path: {"rule": name, "hp": hp}} of the layers in a file


def layer_record(p, names: list):
    """(group path, {"rule", "hp"}) a written file records for pair ``p``'s target tensors ``names``, else None.

    A declared part (``LayerRef.owner``) is stored under its owner's names,
    so the group records the owner's rule. A loose weight named by its own
    path has no group of its own: recording its parent would claim every
    tensor beside it (a Swin attention's projections) for the ``parameter``
    rule, so it is left for the reader to find as a loose tensor.
    """
    target = p.target
    group = group_path(names, target.layout)
    owner = getattr(target, "owner", None)
    if owner is not None:
        rule, hp = owner.candidates[0]
    elif getattr(target, "loose", False) and group != target.path:
        return None
    else:
        rule, hp = p.rule, p.target_hp
    hp = {k: v for k, v in hp.items() if k != "weight_norm"}  # read back, g and v fold on their own
    return group, {"rule": rule.name, "hp": hp}


def recorded_layers(checkpoint) -> dict:
    """The rule and hyperparameters weightport recorded for each layer of a file it wrote, if any."""
    import json

    from .plan import tuples

    text = checkpoint.metadata.get(RULES_KEY)
    try:
        return {path: (entry["rule"], tuples(entry.get("hp", {}))) for path, entry in json.loads(text).items()}
    except (TypeError, ValueError, KeyError, AttributeError):
        return {}


def group_path(names, layout: str) -> str:
    """The group (tree node) holding all of ``names``: their longest common prefix, in whole components."""
    sep = separator(layout)
    parts = [n.split(sep) for n in names]
    common = []
    for column in zip(*(p[:-1] for p in parts)):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    return sep.join(common)


def named(candidates, path) -> list:
    """The readings of a checkpoint group that its name speaks for, where it speaks for some.

    Shapes cannot tell an (out, in) ``lm_head`` from an Embedding table or a
    LayerNorm over two axes; its name can (``Rule.name_words``). A name that
    speaks for none of them leaves every reading.
    """
    from .naming import words

    said = words(path)
    kept = [(r, hp) for r, hp in candidates if said & r.name_words]
    return kept or candidates


def infer_nodes(checkpoint, layout: str, loose: bool = False) -> tuple:
    """(nodes, leftovers) for a checkpoint with no model: layers recognised from names and shapes.

    leftovers lists tensor names no rule explains; with ``loose``, each floating
    one becomes a node of its own instead (a class token, a position table),
    which the matcher pairs by name and shape. Where the file records
    which rule wrote a group (weightport's own files), that rule is taken
    instead of guessing: names and shapes cannot tell a bias-free depthwise
    kernel from a convolution kernel, or a Linear from an Embedding.
    """
    sep = separator(layout)
    tree = tree_paths(ordered_names(checkpoint), layout)
    names = list(tree)
    alphabetical = len(names) > 1 and list(checkpoint) == sorted(checkpoint)
    nodes, leftovers = [], []
    rules = sorted(registry, key=lambda r: -r.priority)
    recorded = recorded_layers(checkpoint)

    def visit(prefix: str, group: list, nodes: list, composite: bool = True, leftovers: list = leftovers):
        local = {(tree[n][len(prefix) + 1:] if prefix else tree[n]): n for n in group}
        shapes = {k: tuple(checkpoint.shape(v)) for k, v in local.items()}
        if prefix in recorded and recorded[prefix][0] in {r.name for r in rules}:
            rule = registry.get(recorded[prefix][0])  # what names and shapes cannot say (flatten_from...) too
            candidates = [(rule, {**recorded[prefix][1], **(rule.infer(layout, shapes) or {})})]
        else:
            candidates = named([(r, hp) for r in rules if (composite or not r.composite)
                                and (hp := r.infer(layout, shapes)) is not None], prefix)
        if candidates:
            rule, hp = candidates[0]
            parts = rule.expand(layout, hp)
            flags = {"inferred": prefix not in recorded, "unordered": alphabetical}
            declared = declared_parts(checkpoint, layout, prefix, local, rule, hp, flags) if rule.composite else []
            if declared:  # the parts its rule declares, stored under its own names (recorded or not)
                flags["parts"] = declared
            elif rule.composite and prefix not in recorded:  # its sub-groups, for a target that has no such layer
                inner, unexplained = [], []
                visit(prefix, group, inner, False, unexplained)
                flags["parts"] = [] if unexplained else inner
            if len(parts) == 1:
                nodes.append(FileNode(prefix, layout, candidates, checkpoint, local, **flags))
            else:  # one group standing for several canonical layers (a stacked torch RNN)
                nodes.extend(FileNode(f"{prefix}[{i}]", layout, [(rule, part)], checkpoint, local, **flags)
                             for i, part in enumerate(parts))
            return
        children: dict = {}
        for key, full in local.items():
            head, _, rest = key.partition(sep)
            if rest:
                children.setdefault(head, []).append(full)
            else:
                leftovers.append(full)
        for head, members in children.items():
            visit(f"{prefix}{sep}{head}" if prefix else head, members, nodes, composite, leftovers)

    visit("", names, nodes)
    if loose:
        nodes += _loose_nodes(checkpoint, layout, leftovers, alphabetical)
    return nodes, leftovers


def declared_parts(checkpoint, layout: str, prefix: str, local: dict, rule, hp, flags: dict) -> list:
    """A node for each part ``rule`` declares for a group (``Rule.parts``: keras-hub's ReversibleEmbedding is
    a table and an output projection), reading its slots under the group's own tensor names, as a live layer's
    declared parts do; [] where the rule declares none or a part's tensor is not in the group."""
    out, sep = [], separator(layout)
    for name, rule_name, part_hp in rule.parts(layout, hp):
        part = registry.get(rule_name)
        slots = part.native_slots(layout, part_hp)
        if not all(s in local for s in slots):
            return []
        out.append(FileNode(f"{prefix}{sep}{name}" if prefix else name, layout, [(part, dict(part_hp))], checkpoint,
                            {s: local[s] for s in slots}, **flags))
    return out


def _loose_nodes(checkpoint, layout: str, leftovers: list, alphabetical: bool) -> list:
    """A ``parameter`` node for each floating tensor in ``leftovers`` (taken out of it): paired by name and
    shape. Integer ones stay: bookkeeping (position ids, counters), not weights."""
    from .arrays import is_floating

    parameter, sep, nodes = registry.get("parameter"), separator(layout), []
    for name in [n for n in leftovers if is_floating(checkpoint.dtype(n))]:
        leftovers.remove(name)
        slot = name.rpartition(sep)[2]
        hp = {"slot": slot, "shape": tuple(checkpoint.shape(name))}
        nodes.append(FileNode(name, layout, [(parameter, hp)], checkpoint, {slot: name}, loose=True,
                              unordered=alphabetical))
    return nodes


def model_nodes(checkpoint, live_nodes, names_of) -> tuple:
    """Checkpoint nodes shaped like a live model's layers (same layout as the checkpoint).

    ``names_of(live_node, slot)`` gives the tensor name a slot is stored
    under. Returns (nodes, missing) where missing lists
    "layer: tensor" strings the checkpoint lacks.
    """
    nodes, missing = [], []
    for ln in live_nodes:
        rule, hp = ln.candidates[0]
        names, tied_to = {}, getattr(ln, "tied_to", None)
        for slot in rule.native_slots(ln.layout, hp):
            name = names_of(ln, slot)
            if name in checkpoint:
                names[slot] = name
            elif not tied_to and any(slot in lk.native and lk.canonical for lk in rule.links(ln.layout, hp)):
                missing.append(f"{ln.label}: {name}")
        parts = model_nodes(checkpoint, ln.parts, names_of)[0] if getattr(ln, "parts", None) else []
        nodes.append(FileNode(ln.path, ln.layout, ln.candidates, checkpoint, names, parts=parts, tied_to=tied_to))
    return nodes, missing


def config_nodes(checkpoint):
    """Layer nodes of a Keras archive from the classes and configs it records, or None where they cannot say.

    A ``.keras`` file stores each layer's variables by index (``layers/dense/vars/0``)
    and its config names the layer's class: a rule for that class reads the
    variables in ``get_weights()`` order and its hyperparameters from the
    config and shapes, so no Keras model has to be built (which would run
    whatever sizes the config claims). None, so the caller builds the model,
    when a group has no recorded class or rule, or when a rule's reading
    depends on the model's graph (a Flatten before a Dense).
    """
    groups: dict = {}
    for name in checkpoint:
        found = re.fullmatch(r"(?:(.*)/)?vars/(\d+)", name)
        if found is None:
            return None
        groups.setdefault(found.group(1) or "", []).append((int(found.group(2)), name))
    classes = {r.get("class_name") for r in checkpoint.layers.values()}
    rules = sorted(registry, key=lambda r: -r.priority)
    if any(classes & set(r.graph_sensitive.get("keras", ())) for r in rules):
        return None
    nodes = []
    for path, members in groups.items():
        record = checkpoint.layers.get(path) or {}
        config = record.get("config") if isinstance(record.get("config"), dict) else {}
        names = [n for _, n in sorted(members)]
        shapes = [tuple(checkpoint.shape(n)) for n in names]
        candidates, slots = [], []
        for rule in rules:
            if record.get("class_name") not in rule.classes.get("keras", ()):
                continue
            try:
                slots = rule.canonical(dict(config))
            except (KeyError, TypeError, ValueError):
                continue
            hp = rule.infer("keras", dict(zip(slots, shapes))) if len(slots) == len(names) else None
            if hp is not None:
                checked = {k: config[k] for k in rule.checks if k in config and not isinstance(config[k], (dict, list))}
                candidates.append((rule, {**checked, **hp}))
                break
        if not candidates:
            return None
        nodes.append(FileNode(path, "keras", candidates, checkpoint, dict(zip(slots, names))))
    return nodes
