"""The public API: port, load, save, convert, get_weights, set_weights, verify.

Either side of a port may be a live model (Keras, torch...), a checkpoint
path, a loaded ``Checkpoint`` or a plain name -> array mapping (a state dict).
"""
from __future__ import annotations

import json
import os
import re
import sys
import warnings
from collections.abc import Mapping

from .converter import checking, engine, matcher, tracing, weight_norm
from .converter.arrays import is_floating
from .converter.checkpoint import Checkpoint, as_sources
from .converter.frameworks import adapter_for, configured, require_adapter, walk
from .converter.plan import Report
from .converter.plan import _jsonable
from .converter.structure import RULES_KEY, config_nodes, group_path, infer_nodes, model_nodes
from .converter.verify import VerifyResult
from .layouts import separator
from .errors import (AmbiguityError, ShapeMismatchError, UnsupportedLayerError, UsageError, WeightportError,
                     WeightportWarning)

KERAS_SUFFIXES = (".weights.h5", ".keras", ".h5", ".hdf5")


def _live_nodes(obj, role: str, strict: bool):
    """(framework, rule-bearing layer nodes, notes on layers no rule handles) of a live model."""
    fw = require_adapter(obj, role)
    nodes, unmapped = walk(fw, obj)
    if unmapped and strict:
        u = unmapped[0]
        raise UnsupportedLayerError(
            f"{role} layer {u.path!r} ({u.class_name}) holds weights {u.weights} but no rule handles "
            f"{u.class_name}; the target was not changed. Register a rule for it (see `weightport rules`), "
            "or pass strict=False to port everything else")
    return fw, nodes, [f"{u.path} ({u.class_name}: {', '.join(u.weights)}): no rule" for u in unmapped]


def port(source, target, *, hints: dict | None = None, strict: bool = True, model=None,
         overwrite: bool = False, dtype=None, trust_pickle: bool = False, quiet: bool = False,
         check=None, atol: float = 1e-5, rtol: float = 1e-4, allow_overflow: bool = False,
         strict_config: bool = False, output=None) -> Report:
    """Copy the weights of ``source`` into ``target``; either may be a live model or a checkpoint.

    Layers are paired by kind and shape, and among look-alikes by the
    evidence the matcher finds (hints, paths, dataflow, names); configuration
    that weights cannot carry (epsilon, momentum...) is compared, and
    differences are warned about and listed in ``report.warnings``. A value
    that would overflow the target's dtype (float32 1e6 into float16) is
    refused; a cast that rounds marks its step "function-preserving, not
    bitwise"; NaN/Inf in the source are warned about. A refused port leaves
    the target as it was.

    Args:
        source: a live model (Keras, torch, Flax NNX or Linen variables,
            Equinox), a checkpoint path, a loaded ``Checkpoint`` or a
            name -> array mapping (a state dict).
        target: a live model to fill, or a path: then a new file is written
            (see ``convert``).
        hints: ``{source_path: target_path}`` pairs that override the pairing.
        strict: True (the default) leaves the target untouched unless every
            target weight pairs unambiguously; source layers the target does
            not ask for (a head) are reported and warned about. ``"both"``
            refuses those too. False copies what pairs and reports the rest
            (``report.unmatched_source``, ``report.unmatched_target``).
        model: a checkpoint's own live model, giving its structure where names
            alone cannot.
        overwrite: with a path as ``target``, replace an existing file.
        dtype: with a path as ``target``, cast floating tensors ("float16",
            "bfloat16", "float8_e4m3fn"...; see ``convert``).
        trust_pickle: let a torch file run pickled code beyond plain tensors
            (only for files you trust).
        quiet: no progress bar (one shows on a terminal for ports and files over 64 MB).
        check: inputs to run both models on after the port (a pair
            ``(inputs_source, inputs_target)`` where their layouts differ); if
            the outputs differ, the target is restored and VerificationError
            names the first paired layer whose outputs part.
        atol: absolute tolerance of ``check``.
        rtol: relative tolerance of ``check`` (see ``verify``).
        output: which output ``check`` compares where a model returns several (an HF model's
            ``last_hidden_state`` beside a pooled one): as in ``verify``.
        allow_overflow: write values that overflow the target's dtype as inf
            instead of refusing.
        strict_config: refuse (ConfigMismatchError) where configuration that
            weights cannot carry differs, even where it is only warned about
            by default (epsilon, padding, activation...).

    Returns:
        Report: the plan that ran (printed, a table of source -> target, rule,
        transform and shapes); ``report.target`` is the ported target: the
        object given, or a new one where the framework's objects cannot change
        (Flax Linen variables, Equinox modules).

    Raises:
        MatchError: layers could not be paired; an AmbiguityError where several
            pairings fit and ``hints`` or ``model`` must say which.
        ShapeMismatchError: a paired tensor has another shape than its slot.
        ConfigMismatchError: paired layers differ in configuration that changes
            what they compute (groups, use_bias...).
        UnsupportedLayerError: a layer holds weights that no rule handles
            (with ``strict=True``).
        CastOverflowError: a value overflows the target's dtype.
        VerificationError: ``check`` found different outputs.
        FormatError: a checkpoint could not be read (UnsafePickleError: it
            needs ``trust_pickle``).
        UsageError: the call itself is wrong: an unsupported object,
            arguments that do not go together.
    """
    if _is_path(target):
        return convert(source, target, model=model, hints=hints, strict=strict, overwrite=overwrite,
                       dtype=dtype, trust_pickle=trust_pickle, quiet=quiet, allow_overflow=allow_overflow)
    tgt_fw = require_adapter(target, "target")
    source = _open_source(source, trust_pickle)
    src_nodes = None
    if model is None and not _is_live(source) and _layout_of(source, trust_pickle) == tgt_fw.layout:
        # a checkpoint into a model of its own framework: where the names agree, they say what each tensor is
        src_nodes, src_notes = _source_nodes(source, model=target, strict=False, trust_pickle=trust_pickle)
        if any(note.endswith(("missing", "not in the model")) for note in src_notes):
            src_nodes = None  # names differ: pair by kind, order and shape instead
    if src_nodes is None:
        src_nodes, src_notes = _source_nodes(source, model=model, strict=strict, trust_pickle=trust_pickle)
    tgt_fw, tgt_nodes, tgt_notes = _live_nodes(target, "target", strict)
    # a checkpoint's dataflow is that of its own model (model=), whose layers have the checkpoint's paths
    traced_source = source if _is_live(source) else model
    if traced_source is model and model is not None and require_adapter(model, "model").layout != \
            _layout_of(source, trust_pickle):
        traced_source = None
    if check is not None and not _is_live(source):
        raise UsageError("check= runs the source model next to the ported target, but the source is a checkpoint; "
                         "port it into its own model first and pass that model as the source, or call "
                         "wp.verify(source_model, target, inputs) yourself")
    flows = tracing.flows(traced_source, target, check)
    plan, pairs = matcher.match(src_nodes, tgt_nodes, hints=hints, strict=strict, flows=flows,
                                strict_config=strict_config)
    plan.unmatched_source += src_notes
    plan.unmatched_target += tgt_notes
    saved = checking.snapshot(pairs) if check is not None else None
    from .progress import bar

    progress = bar(engine.live_bytes(pairs), "port", quiet)
    try:
        engine.run_into_live(pairs, plan, allow_overflow=allow_overflow,
                             progress=progress.update if progress else None)
    finally:
        if progress is not None:
            progress.close()
    ported = tgt_fw.finish(target)
    if check is not None:
        try:
            checking.check_port(source, ported, src_nodes, tgt_nodes, pairs, check, atol, rtol, output)
        except WeightportError:
            checking.restore(saved)
            tgt_fw.finish(target)
            raise
    _warn(plan)
    return Report(plan, ported)


def load(path, *, format: str | None = None, trust_pickle: bool = False) -> Checkpoint:
    """Open a checkpoint lazily: a name -> array mapping with ``.format``, ``.layout``, ``.metadata``.

    Only the header is read now; each tensor is read when indexed, so opening
    a large file is cheap. torch files are never unpickled beyond weights
    unless ``trust_pickle=True``.

    Args:
        path: a checkpoint: ``.safetensors`` (or a sharded set's
            ``.index.json``), ``.pt``/``.pth``/``.bin``, ``.weights.h5``,
            ``.keras``, legacy ``.h5``, ``.npz`` or ``.msgpack``.
        format: read as this format ("safetensors", "torch", "keras", "npz",
            "msgpack") instead of detecting it from the file's first bytes and
            suffix.
        trust_pickle: let a torch file run pickled code beyond plain tensors
            (only for files you trust: unpickling can run anything).

    Returns:
        Checkpoint: ``ckpt[name]`` (a read-only array), ``ckpt.shape(name)``,
        ``ckpt.dtype(name)``, ``ckpt.layout`` ("torch", "keras", "flax"... or
        None where the names do not say); usable in a ``with`` block.

    Raises:
        FormatError: the file is missing, unreadable or not what its name says.
        UnsafePickleError: a torch file needs full unpickling and
            ``trust_pickle`` is False.
        UsageError: an unknown ``format``.
    """
    from .converter.formats import open_checkpoint

    if not _is_path(path):
        raise UsageError(f"wp.load reads a file: pass a path (str or os.PathLike), not a {type(path).__name__}; "
                         "a live model or a name -> array mapping can be given to port, convert and save directly")
    return open_checkpoint(path, format=format, trust_pickle=trust_pickle)


def save(model, path, layout: str | None = None, like=None, *, overwrite: bool = False, dtype=None,
         shard_size: int | None = None, strict: bool = True, quiet: bool = False,
         allow_overflow: bool = False) -> Report:
    """Write ``model``'s weights to ``path`` in ``layout`` without needing the other framework's model.

    The file appears whole or not at all.

    Args:
        model: a live model of any supported framework.
        path: the output file; its suffix picks the format (``.safetensors``,
            ``.pt``, ``.weights.h5``, ``.npz``, ``.msgpack``).
        layout: whose conventions the tensors follow: "torch", "keras", "flax"
            or "equinox"; by default ``like``'s, keras for Keras files, else
            the model's own.
        like: a live model of the target framework giving the target names and
            structure: a torch module's state-dict names, or the variable paths
            Keras' ``load_weights`` expects in a ``.weights.h5``.
        overwrite: replace an existing file (otherwise refused).
        dtype: cast floating tensors (see ``convert``).
        shard_size: split a safetensors output into shards of at most this
            many bytes, with an ``.index.json``.
        strict: False writes what pairs with ``like`` and reports the rest.
        quiet: no progress bar.
        allow_overflow: write values that overflow ``dtype`` as inf instead of
            refusing.

    Returns:
        Report: the plan that ran; ``report.files`` lists the files written.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        UsageError: no layout can be told, the suffix names no format, a
            ``.weights.h5`` without the Keras model, an output that cannot be
            written (OutputError).
        MatchError: ``model`` and ``like`` do not pair (also
            ShapeMismatchError, ConfigMismatchError, UnsupportedLayerError).
        CastOverflowError: a value overflows ``dtype``.
    """
    return convert(model, path, like=like, to=layout, overwrite=overwrite, dtype=dtype, shard_size=shard_size,
                   strict=strict, quiet=quiet, allow_overflow=allow_overflow)


def convert(source, destination, model=None, *, to: str | None = None, like=None, hints: dict | None = None,
            strict: bool = True, overwrite: bool = False, dtype=None, shard_size: int | None = None,
            trust_pickle: bool = False, quiet: bool = False, plan=None, dry_run: bool = False,
            allow_overflow: bool = False, replace_input: bool = False) -> Report:
    """Convert a checkpoint (or live model) into a new file, tensor by tensor.

    Peak memory tracks the largest layer, not the model. The output is
    written under a temporary name and renamed into place: it appears whole
    or not at all. A cast that would turn finite values into inf is refused;
    one that rounds marks its step "function-preserving, not bitwise";
    NaN/Inf in the source are warned about.

    Args:
        source: a checkpoint path, a loaded ``Checkpoint``, a name -> array
            mapping or a live model.
        destination: the output file; its suffix picks the format.
        model: a live model giving the structure names cannot: if it is in the
            source's layout it describes the source, otherwise it is the target
            (as ``like``).
        to: the target layout ("torch", "keras", "flax", "equinox"); by default
            the model's, keras for Keras files, else the source's own.
        like: a live model of the target framework whose names (and, for a
            ``.weights.h5``, variable paths) the output takes.
        hints: ``{source_path: target_path}`` pairs that override the pairing.
        strict: False converts what pairs and reports the rest.
        overwrite: replace an existing output (otherwise refused).
        dtype: cast floating tensors: "float32", "float16", "bfloat16", or
            "float8_e4m3fn"/"float8_e5m2" where the format holds them
            (safetensors, ``.npz``, ``.msgpack``); integer tensors keep theirs.
        shard_size: split a safetensors output into shards of at most this
            many bytes, with an ``.index.json``.
        trust_pickle: let a torch source run pickled code beyond plain tensors
            (only for files you trust).
        quiet: no progress bar.
        plan: a Plan, or the path of one saved as JSON (``report.to_json()``),
            to run again with no model at hand; every name and shape is
            checked against the source first.
        dry_run: plan without writing; ``report.to_json()`` can be reviewed,
            saved, and given back as ``plan``.
        allow_overflow: write values that overflow ``dtype`` as inf instead of
            refusing.
        replace_input: let the output replace the source file itself.

    Returns:
        Report: the plan that ran (printed, a table); ``report.files`` lists the
        files written (none for a dry run).

    Raises:
        OutputExistsError: the destination exists and ``overwrite`` is False.
        FormatError: the source is unreadable (UnsafePickleError: it needs
            ``trust_pickle``).
        AmbiguityError: the source's tensors fit several rules and no model
            says which.
        UsageError: no layout can be told, a ``.weights.h5`` without the Keras
            model, a suffix that names no format, an unreadable plan, an output
            that cannot be written (OutputError).
        MatchError: the source does not pair with ``like``/``model`` (also
            ShapeMismatchError, ConfigMismatchError, UnsupportedLayerError);
            nothing was written.
        CastOverflowError: a value overflows ``dtype``.
    """
    source = _open_source(source, trust_pickle)
    if plan is not None:
        plan, pairs, names_of = _replay(plan, source, trust_pickle)
        return _write(pairs, names_of, plan, destination, plan.steps[0].target_layout if plan.steps else to,
                      overwrite, dtype, shard_size, quiet, dry_run, allow_overflow, replace_input)
    src_layout = _layout_of(source, trust_pickle)
    model_layout = require_adapter(model, "model").layout if model is not None else None
    source_model = model if model_layout == src_layout and not _is_live(source) else None
    if model is not None and source_model is None and like is None:
        like = model
    if like is None and str(destination).endswith(KERAS_SUFFIXES) and src_layout == "keras" and _is_live(source):
        like = source  # a Keras model saved as Keras weights: it says where each variable goes
    layout = to or (require_adapter(like, "like").layout if like is not None else None) \
        or ("keras" if str(destination).endswith(KERAS_SUFFIXES) else src_layout)
    if layout is None:
        raise UsageError(f"cannot tell which layout to write {destination}: pass to='torch' or to='keras'")
    if like is not None and require_adapter(like, "like").layout != layout:
        raise UsageError(f"like= is a {require_adapter(like).layout} model but the target layout is {layout!r}")

    src_nodes, src_notes = _source_nodes(source, model=source_model, strict=strict, trust_pickle=trust_pickle)
    if like is not None:
        fw, tgt_nodes, tgt_notes = _live_nodes(like, "like", strict)
        flows = tracing.flows(source if _is_live(source) else source_model, like)
        plan, pairs = matcher.match(src_nodes, tgt_nodes, hints=hints, strict=strict, flows=flows)
        plan.unmatched_target += tgt_notes
        names = _names_for(like, fw, destination)
        names_of = lambda p, slot: names(p.target, slot)  # noqa: E731
    else:
        if str(destination).endswith(KERAS_SUFFIXES):
            raise UsageError(f"writing {destination} needs the Keras model it is for (like= or model=), so "
                             "each variable lands where keras' load_weights looks for it")
        plan, pairs = _same_structure(src_nodes, layout)
        sep = separator(layout)
        names_of = lambda p, slot: f"{p.target.path}{sep}{slot}" if p.target.path else slot  # noqa: E731
    plan.unmatched_source += src_notes
    return _write(pairs, names_of, plan, destination, layout, overwrite, dtype, shard_size, quiet, dry_run,
                  allow_overflow, replace_input)


def _write(pairs, names_of, plan, destination, layout, overwrite, dtype, shard_size, quiet, dry_run,
           allow_overflow=False, replace_input=False) -> Report:
    """Record each step's tensor names in the plan, then (unless a dry run) write the file."""
    from .converter.checkpoint import LAYOUT_KEY
    from .converter.formats import write_checkpoint

    layers = {}
    for step, p in zip(plan.steps, pairs):
        step.source_names = dict(getattr(p.source, "names", {}))
        step.target_names = {slot: names_of(p, slot) for slot in p.rule.native_slots(p.target.layout, p.target_hp)}
        group = group_path(list(step.target_names.values()), p.target.layout)
        layers.setdefault(group, {"rule": p.rule.name, "hp": p.target_hp})
    if dry_run:
        _warn(plan)
        report = Report(plan, str(destination))
        report.files = []
        return report
    sources = engine.target_sources(pairs, names_of, dtype=dtype, plan=plan, allow_overflow=allow_overflow)
    progress = _progress_bar(sum(s.nbytes for s in sources), destination, quiet)
    try:
        metadata = {LAYOUT_KEY: layout, RULES_KEY: json.dumps(layers, default=_jsonable)}
        written = write_checkpoint(destination, sources, metadata=metadata, overwrite=overwrite,
                                   shard_size=shard_size, progress=progress.update if progress else None,
                                   replace_input=replace_input)
    finally:
        if progress is not None:
            progress.close()
    _warn(plan)
    report = Report(plan, str(destination))
    report.files = written
    return report


# -- sides of a port ----------------------------------------------------------------


def _is_path(obj) -> bool:
    return isinstance(obj, (str, os.PathLike))


def _is_live(obj) -> bool:
    return adapter_for(obj) is not None


def _warn(plan) -> None:
    for issue in plan.issues:
        warnings.warn(issue, WeightportWarning, stacklevel=3)


def _checkpoint(obj, trust_pickle: bool) -> Checkpoint:
    if isinstance(obj, Checkpoint):
        return obj
    if _is_path(obj):
        return load(obj, trust_pickle=trust_pickle)
    if isinstance(obj, Mapping):
        return Checkpoint(None, "memory", as_sources(obj))
    raise UsageError(f"cannot read weights from a {type(obj).__module__}.{type(obj).__name__}: pass a live "
                     "model, a checkpoint path, a loaded Checkpoint or a name -> array mapping")


def _open_source(obj, trust_pickle: bool):
    """A path opened once: a Checkpoint; for a ``.keras`` archive whose config cannot say what each variable
    is (a Flatten before a Dense, nested layers), the Keras model it describes."""
    if not _is_path(obj):
        return obj
    ckpt = _checkpoint(obj, trust_pickle)
    if ckpt.metadata.get("keras_file") == "keras" and config_nodes(ckpt) is None:
        import keras

        ckpt.close()
        return keras.saving.load_model(obj, compile=False)
    return ckpt


def _layout_of(obj, trust_pickle: bool):
    fw = adapter_for(obj)
    return fw.layout if fw is not None else _checkpoint(obj, trust_pickle).layout


def _source_nodes(obj, *, model, strict: bool, trust_pickle: bool) -> tuple:
    """(nodes, notes) for the source side of a port, live or checkpoint."""
    if _is_live(obj):
        _, nodes, notes = _live_nodes(obj, "source", strict)
        return nodes, notes
    ckpt, folded = weight_norm.folded(_checkpoint(obj, trust_pickle))
    nodes, notes = _checkpoint_nodes(ckpt, model=model, strict=strict)
    for node in nodes:
        how = {slot: "weight_norm" for slot, name in node.names.items() if name in folded}
        for _, hp in node.candidates if how else ():
            hp["reparametrized"] = how
    return nodes, notes


def _checkpoint_nodes(ckpt, *, model, strict: bool) -> tuple:
    where = ckpt.path or "the given mapping"
    if model is not None:
        fw, live, _ = _live_nodes(model, "model", strict)
        if ckpt.layout not in (None, fw.layout):
            raise UsageError(f"{where} holds {ckpt.layout}-layout tensors but model= is a {fw.layout} model")
        nodes, missing = model_nodes(ckpt, live, _names_for(model, fw, ckpt.path or ""))
        if missing and strict:
            raise ShapeMismatchError(f"{where} lacks tensors the model needs: {', '.join(missing[:5])}"
                                     + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                                     + "; nothing was written or changed")
        used = {n for node in nodes for n in node.names.values()}
        leftovers = [n for n in ckpt if n not in used]
        return nodes, [f"{m}: missing" for m in missing] + [f"{n}: not in the model" for n in leftovers]
    if ckpt.layout is None:
        raise UsageError(f"cannot tell whether {where} holds torch- or keras-layout tensors from its names; "
                         "pass model= (a live model in the file's layout)")
    from_config = config_nodes(ckpt) if ckpt.metadata.get("keras_file") == "keras" else None
    if from_config is not None:
        return from_config, []
    if ckpt.layout == "keras" and any(re.search(r"(^|/)vars/\d+$", n) for n in ckpt):
        raise UsageError(f"{where} stores Keras variables by index only; pass model= (the Keras model it "
                         "belongs to) or use the .keras archive, which records each layer's class")
    nodes, leftovers = infer_nodes(ckpt, ckpt.layout, loose=True)
    # integer tensors nobody claims are bookkeeping (position_ids, step counters), not weights
    unexplained = [n for n in leftovers if is_floating(ckpt.dtype(n))]
    if unexplained and strict:
        raise UnsupportedLayerError(
            f"{where}: no rule recognises the tensors {unexplained[:5]}"
            + (f" and {len(unexplained) - 5} more" if len(unexplained) > 5 else "")
            + "; nothing was changed. Pass model= to give the structure, or strict=False to skip them")
    return nodes, [f"{n}: no rule recognises it" for n in leftovers]


def _names_for(model, fw, path) -> callable:
    """names(node, slot) -> tensor name of that slot, as ``model``'s framework stores it in ``path``."""
    if fw.layout == "keras" and str(path).endswith((".h5", ".hdf5", ".keras")):
        from .converter.formats.keras import variable_paths

        where = {id(v): p for v, p in zip(model.weights, variable_paths(model))}

        def keras_h5(node, slot):
            if getattr(node, "loose", False):  # a weight the layer holds itself, by its name
                return where[id(next(v for v in node.obj.weights if v.path == f"{node.obj.path}/{slot}"))]
            rule, hp = node.candidates[0]
            index = rule.native_slots(node.layout, hp).index(slot)
            return where[id(node.obj.weights[index])]
        return keras_h5
    if hasattr(fw, "tensor_name"):  # the framework names its tensors itself (Flax: Linen collections)
        return fw.tensor_name
    sep = separator(fw.layout)

    def dotted(node, slot):
        if getattr(node, "loose", False):
            return node.path  # the owner's path and the weight's name already
        base = re.sub(r"\[\d+\]$", "", node.path)  # an expanded layer's module path
        return f"{base}{sep}{slot}" if base else slot
    return dotted


def _replay(plan, source, trust_pickle: bool) -> tuple:
    """(plan, pairs, names_of) that run a saved plan on a checkpoint, every name and shape checked first."""
    from .converter.plan import Plan
    from .converter.structure import FileNode
    from .mappings.rule import registry

    if not isinstance(plan, Plan):
        try:
            with open(plan, encoding="utf-8") as f:
                plan = Plan.from_json(f.read())
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise UsageError(f"cannot read the plan {plan}: {exc}; give a file written by "
                             "`weightport convert --dry-run --save-plan` (or report.to_json())") from None
    ckpt = _checkpoint(source, trust_pickle)
    pairs = []
    for step in plan.steps:
        rule = registry.get(step.rule)
        if not step.source_names or not step.target_names:
            raise UsageError(f"plan step {step.source} -> {step.target} records no tensor names; only plans of "
                             "file conversions (convert/save with dry_run=True) can be run again")
        missing = [n for n in step.source_names.values() if n not in ckpt]
        if missing:
            raise ShapeMismatchError(f"{ckpt.path}: the plan needs tensors {missing[:5]} for {step.source}, "
                                     "which the checkpoint does not hold; nothing was written")
        node = FileNode(step.source, step.source_layout, [(rule, step.source_hp)], ckpt, step.source_names)
        shapes = node.canonical_shapes(rule, step.source_hp)
        if shapes != [tuple(s) for s in step.shapes]:
            raise ShapeMismatchError(f"{ckpt.path}: {step.source} has shapes {shapes}, the plan expects "
                                     f"{step.shapes}; nothing was written")
        pairs.append(matcher.Pair(node, _Virtual(step.target, step.target_layout), rule, step.source_hp,
                                  step.target_hp, shapes, shapes))
    names = {id(p): step.target_names for p, step in zip(pairs, plan.steps)}
    return plan, pairs, lambda p, slot: names[id(p)][slot]


class _Virtual:
    """A target layer that exists only as the names it will be written under."""

    def __init__(self, path, layout):
        self.path, self.label, self.layout = path, path or "<root>", layout


def _laid_out(nodes) -> list:
    """Nodes as they can be written alone: a composite group whose layout needs what only a paired layer says
    (the heads of attention projections read from a file) is written as its parts (four Linear layers)."""
    out = []
    for node in nodes:
        rule, hp = node.candidates[0]
        try:
            node.canonical_shapes(rule, hp)
            whole = True
        except WeightportError:
            whole = False
        out += [node] if whole or not getattr(node, "parts", None) else node.parts
    return out


def _moved_alike(node, layout) -> bool:
    """Whether every reading of a group moves its tensors between its layout and ``layout`` the same way
    (a lone scale as a LayerNorm's gamma or an RMSNorm's scale: a copy either way), so the choice is moot."""
    ways = set()
    for rule, hp in node.candidates:
        try:
            ways.add(tuple(lk.transform.describe() for lay in (node.layout, layout) for lk in rule.links(lay, hp)))
        except WeightportError:
            return False
    return len(ways) == 1


def _same_structure(src_nodes, layout) -> tuple:
    """Plan for writing the source's own layers in ``layout`` (no target model to match)."""
    from .converter.plan import Plan, Step

    plan, pairs = Plan(), []
    for node in _laid_out(src_nodes):
        rules = [r for r, _ in node.candidates]
        # a live layer's class settles its rule; names and shapes alone may not
        if layout != node.layout and len(rules) > 1 and getattr(node, "inferred", False) \
                and not _moved_alike(node, layout):
            raise AmbiguityError(f"{node.label}: its tensors fit several rules ({', '.join(r.name for r in rules)}), "
                                 f"which differ in {layout} layout; pass model= or like= to say which")
        rule, hp = node.candidates[0]
        if layout not in rule.layouts():
            raise UsageError(f"{node.label}: rule {rule.name!r} has no {layout!r} layout")
        shapes = node.canonical_shapes(rule, hp)
        written = {k: v for k, v in hp.items() if k != "reparametrized"}  # the file holds the folded weight
        p = matcher.Pair(node, _Virtual(node.path, layout), rule, hp, written, shapes, shapes)
        pairs.append(p)
        plan.issues += [f"{node.label}: {note}" for note in matcher.reparametrized_notes(p)]
        plan.steps.append(Step(node.label, node.label, rule.name, node.layout, layout, hp, written, shapes,
                               matcher.transform_text(p), rule.exact(node.layout, hp) and rule.exact(layout, hp)
                               and not hp.get("reparametrized")))
    return plan, pairs


def _progress_bar(total: int, destination, quiet: bool):
    from .progress import bar

    return bar(total, os.path.basename(str(destination)), quiet)


def _single(layer):
    """(framework, rule, hp) for a layer a rule handles, else None."""
    fw = require_adapter(layer, "layer")
    found = configured(fw.layout, layer)
    if not found:
        return fw, None, None
    return fw, found[0][0], found[0][1]


def get_weights(layer) -> list:
    """The weights of ``layer`` as Keras lists them (``get_weights()`` order and layout), as numpy.

    Works for a layer of any supported framework, so layers of two frameworks
    compare directly; for a whole model, the lists of its rule-bearing layers
    are concatenated in order, like Keras' ``model.get_weights()``.

    Args:
        layer: a live layer or model (Keras, torch, Flax, Equinox).

    Returns:
        list of numpy arrays, e.g. ``[kernel (in, out), bias (out,)]`` for a
        torch Linear.

    Raises:
        UsageError: ``layer`` is not an object of a supported framework.
        UnsupportedLayerError: a layer holds weights that no rule handles.
    """
    fw, rule, hp = _single(layer)
    if rule is not None:  # one layer (a stacked torch RNN stands for several Keras layers: all of them)
        return [w for part in rule.expand(fw.layout, hp)
                for w in rule.to_canonical(fw.layout, part, fw.read(layer, rule.native_slots(fw.layout, part)))]
    _, nodes, _ = _live_nodes(layer, "model", strict=True)
    # each node under its own hp: a stacked torch RNN's parts once each, Flax Linen groups too
    return [w for n in nodes for rule, hp in n.candidates[:1]
            for w in rule.to_canonical(n.layout, hp, n.read(rule, hp))]


def set_weights(layer, weights):
    """Assign a Keras-ordered, Keras-layout weight list to a layer (or model) of any framework.

    Every shape is checked before anything is assigned, so a wrong list
    changes nothing.

    Args:
        layer: a live layer or model (Keras, torch, Flax, Equinox).
        weights: arrays (numpy, torch, jax...) in Keras' ``get_weights()`` order
            and layout: ``keras_layer.get_weights()`` or ``wp.get_weights(...)``.

    Returns:
        The layer with its new weights: ``layer`` itself, or for frameworks
        whose objects cannot change (Equinox modules, Flax Linen variables) a
        new one.

    Raises:
        ShapeMismatchError: the list has the wrong length or a weight the wrong
            shape; nothing was assigned.
        UsageError: ``layer`` is not an object of a supported framework.
        UnsupportedLayerError: a layer holds weights that no rule handles.
    """
    weights = list(weights)
    fw, rule, hp = _single(layer)
    if rule is not None:  # a stacked torch RNN stands for several Keras layers: it takes all their weights
        parts = [(fw, layer, rule, part) for part in rule.expand(fw.layout, hp)]
    else:
        _, nodes, _ = _live_nodes(layer, "model", strict=True)
        parts = [(n.framework, n.obj, *n.candidates[0]) for n in nodes]
    counts = [len(r.canonical(h)) for _, _, r, h in parts]
    if sum(counts) != len(weights):
        raise ShapeMismatchError(f"{fw.display_name(layer)} takes {sum(counts)} weights in all "
                                 f"({len(parts)} Keras layer(s)); got {len(weights)}")
    prepared, start = [], 0
    for (part_fw, obj, r, h), count in zip(parts, counts):
        prepared.append((part_fw, obj, _checked(part_fw, obj, r, h, weights[start:start + count])))
        start += count
    for part_fw, obj, arrays in prepared:
        part_fw.write(obj, arrays)
    return fw.finish(layer)


def _checked(fw, layer, rule, hp, weights) -> dict:
    """The layout tensors for one layer's canonical weights, after checking every shape."""
    import numpy as np

    from .converter.arrays import to_numpy

    names = rule.canonical(hp)
    label = fw.display_name(layer)
    weights = [np.asarray(to_numpy(w)) for w in weights]
    hp = rule.given(hp, [tuple(w.shape) for w in weights])
    slots = rule.native_slots(fw.layout, hp)
    expected = rule.canonical_shapes(fw.layout, hp, fw.shapes(layer, slots))
    for name, w, shape in zip(names, weights, expected):
        if tuple(w.shape) != tuple(shape):
            raise ShapeMismatchError(f"{label} ({rule.name}) weight {name!r}: expected shape {tuple(shape)} "
                                     f"(Keras layout), got {tuple(w.shape)}; nothing was assigned")
    return rule.from_canonical(fw.layout, hp, weights)


def verify(a, b, inputs, *, atol: float = 1e-5, rtol: float = 1e-4, locate: bool = False, report=None,
           output=None) -> VerifyResult:
    """Run both models on ``inputs`` in inference mode and compare their outputs.

    Outputs that differ only by channels-first vs channels-last are compared
    after moving the axis (said in ``.notes``). A port is proven by this, not
    by its report.

    Args:
        a: the first model: Keras, torch, Flax NNX, ``(linen_module, variables)``
            or Equinox.
        b: the second model, the reference for ``rtol``.
        inputs: one input for both models, or a pair ``(inputs_a, inputs_b)``
            when the two need different layouts (e.g. NCHW for torch, NHWC for
            Keras).
        atol: absolute tolerance.
        rtol: relative tolerance: the outputs agree when
            ``max_abs_diff <= atol + rtol * max|output of b|``.
        locate: when the outputs differ (always, with True), run both once
            more and name the first paired layer, in ``b``'s running order,
            whose outputs differ (``.diverging``), with the configuration
            differences its rule knows.
        report: the port's report, whose pairs ``locate`` follows; without it
            the layers are paired again.
        output: which output to compare when a model returns several (torch
            RNNs return ``(output, (h, c))``): an index, a key or a callable,
            for both models, or a pair ``(output_a, output_b)``.

    Returns:
        VerifyResult: ``.ok`` (also its truth value), ``.max_abs_diff``,
        ``.max_rel_diff``, ``.notes`` and ``.diverging``; printed, a verdict.

    Raises:
        UsageError: a model is not of a supported framework or returned
            nothing, or the two outputs differ in number or shape.
    """
    in_a, in_b = tracing.split_inputs(inputs)
    result = checking.run_both(a, b, (in_a, in_b), atol, rtol, output)
    if locate is True or (locate and not result.ok):
        _, nodes_a, _ = _live_nodes(a, "first model", False)
        _, nodes_b, _ = _live_nodes(b, "second model", False)
        pairs = _pairs_of(report, nodes_a, nodes_b) if report is not None else matcher.match(
            nodes_a, nodes_b, strict=False, flows=tracing.flows(a, b, (in_a, in_b)))[1]
        result.diverging = checking.locate(a, b, nodes_a, nodes_b, pairs, (in_a, in_b), atol, rtol)
    return result


def _pairs_of(report, nodes_a, nodes_b) -> list:
    """The pairs a port's report made, between the layers of the two models given (in either direction)."""
    a = {n.label: n for n in nodes_a for n in [n] + list(getattr(n, "parts", []))}
    b = {n.label: n for n in nodes_b for n in [n] + list(getattr(n, "parts", []))}
    pairs = []
    for step in report.steps:
        x, y = (a.get(step.source), b.get(step.target)) if step.source in a else (a.get(step.target), b.get(step.source))
        found = matcher.pair(x, y, step.evidence) if x is not None and y is not None else None
        if found is not None:
            pairs.append(found)
    return pairs
