"""The two kinds of port behind the public API: into a live model, and into a new file.

Each resolves its sides once (``sides``), pairs the layers (``matcher``) or
plans without a target (``planning``), and runs the plan (``engine``); the
report is returned, and warning about it is left to the caller.
"""
from __future__ import annotations

import contextlib
import functools
import gc

from ..errors import MatchError, UsageError, WeightportError
from ..layouts import separator
from . import (assign, checking, constants, engine, matcher, options, planning, renames, sides, splits, tracing,
               weight_norm)
from .checkpoint import MODEL_KEY
from .frameworks import require_adapter
from .plan import Report

KERAS_SUFFIXES = (".weights.h5", ".keras", ".h5", ".hdf5")


def collector_paused(port):
    """``port`` run with Python's cycle collector paused: in a process holding a large model, each full
    collection a port's many small allocations set off walks every object of it (0.2 s for a BERT-base in
    keras-hub; a file conversion's many array views set collections off too), while what a port leaves behind
    is freed by reference counts alone."""
    @functools.wraps(port)
    def paused(*args, **kwargs):
        was = gc.isenabled()
        gc.disable()
        try:
            return port(*args, **kwargs)
        finally:
            if was:
                gc.enable()
    return paused


@contextlib.contextmanager
def own_model_offered(src, traced):
    """A refusal that asks for model=, of a checkpoint whose own model was not given, gains the line that builds
    that model where the file or its folder says which it is (``sides.own_model_hint``). Other refusals (a tie on
    one side only) are not settled by that model and get no line."""
    try:
        yield
    except (MatchError, UsageError) as refused:  # UsageError: a file's tensors read alone (attention heads)
        wanted = traced is None and not src.live and "model=" in str(refused)
        hint = sides.own_model_hint(src) if wanted else ""
        if not hint:
            raise
        raise type(refused)(f"{refused}{hint}") from None


@collector_paused
def into_live(source, target, *, hints, strict, model, trust_pickle, quiet, check, atol, rtol, allow_overflow,
              strict_config, output, rule_options=None) -> Report:
    """``wp.port`` into a live ``target``; ``rule_options`` as ``options.parse`` checked them."""
    tgt_fw = require_adapter(target, "target")
    src = sides.resolve(source, trust_pickle)
    if check is not None and not src.live:
        raise UsageError("check= runs the source model next to the ported target, but the source is a checkpoint; "
                         "port it into its own model first and pass that model as the source, or call "
                         "wp.verify(source_model, target, inputs) yourself")
    src_nodes = None
    if model is None and not src.live and src.layout == tgt_fw.layout:
        # a checkpoint into a model of its own framework: where the names agree, they say what each tensor is
        src_nodes, src_notes = sides.source_nodes(src, model=target, strict=False)
        if any(note.endswith(("missing", "not in the model")) for note in src_notes):
            src_nodes = None  # names differ: pair by kind, order and shape instead
    if src_nodes is None:
        with own_model_offered(src, model):
            src_nodes, src_notes = sides.source_nodes(src, model=model, strict=strict)
    _, tgt_nodes, tgt_notes = sides.live_nodes(target, "target", strict)
    options.settle(src_nodes + tgt_nodes, rule_options or {})
    # a checkpoint's dataflow is that of its own model (model=), whose layers have the checkpoint's paths
    if src.live:
        traced = src.obj
    elif model is not None and require_adapter(model, "model").layout == src.layout:
        traced = model
    else:
        traced = None
    with own_model_offered(src, traced):
        plan, pairs = matcher.match(src_nodes, tgt_nodes, hints=hints, strict=strict,
                                    flows=tracing.flows(traced, target, check), strict_config=strict_config,
                                    source_constants=lambda: constants.held(traced), options=rule_options)
    options.apply(plan, pairs, rule_options or {})
    plan.issues += [n for n in src_notes if renames.NOTE in n]  # said, as weaker evidence is
    plan.unmatched_source += [n for n in src_notes if renames.NOTE not in n]
    plan.unmatched_target += tgt_notes
    saved = checking.snapshot(pairs) if check is not None else None
    assign.run_with_progress(pairs, plan, allow_overflow=allow_overflow, quiet=quiet)
    ported = tgt_fw.finish(target)
    if check is not None:
        try:
            checking.check_port(src.obj, ported, src_nodes, tgt_nodes, pairs, check, atol, rtol, output)
        except WeightportError:
            checking.restore(saved)
            tgt_fw.finish(target)
            raise
    return Report(plan, ported)


@collector_paused
def into_file(source, destination, model, *, to, like, hints, strict, trust_pickle, plan, written: dict,
              rule_options=None) -> Report:
    """``wp.convert``: ``source`` written to ``destination``; ``written`` holds the file options."""
    src = sides.resolve(source, trust_pickle)
    if plan is not None and rule_options:
        raise UsageError(f"options={rule_options} with plan=: a plan already holds the options it was made with "
                         "(in its steps' hp); pass one or the other")
    if plan is not None:
        plan = planning.read_plan(plan)
        pairs, names_of = planning.replay(plan, src.checkpoint or sides.checkpoint(src.obj, trust_pickle))
        layout = plan.steps[0].target_layout if plan.steps else to
        return engine.write_file(pairs, names_of, plan, destination, layout, **written)
    to_keras_file = written.get("format") == "keras" or (
        written.get("format") is None and str(destination).endswith(KERAS_SUFFIXES))
    model_fw = require_adapter(model, "model") if model is not None else None
    source_model = model if model_fw is not None and model_fw.layout == src.layout and not src.live else None
    if model is not None and source_model is None and like is None:
        like = model
    if like is None and to_keras_file and src.layout == "keras" and src.live:
        like = src.obj  # a Keras model saved as Keras weights: it says where each variable goes
    like_fw = require_adapter(like, "like") if like is not None else None
    layout = to or (like_fw.layout if like_fw else None) or ("keras" if to_keras_file else src.layout)
    if layout is None:
        raise UsageError(f"cannot tell which layout to write {destination}: pass to='torch' or to='keras'")
    if like_fw is not None and like_fw.layout != layout:
        raise UsageError(f"like= is a {like_fw.layout} model but the target layout is {layout!r}")
    src_nodes, src_notes = sides.source_nodes(src, model=source_model, strict=strict)
    if like is not None:
        _, tgt_nodes, tgt_notes = sides.live_nodes(like, "like", strict)
        options.settle(src_nodes + tgt_nodes, rule_options or {})
        traced = src.obj if src.live else source_model
        with own_model_offered(src, traced):
            plan, pairs = matcher.match(src_nodes, tgt_nodes, hints=hints, strict=strict,
                                        flows=tracing.flows(traced, like), options=rule_options,
                                        source_constants=lambda: constants.held(traced))
        pairs = splits.assembled(plan, pairs)  # a packed layer's parts, filled from separate ones, written whole
        weight_norm.split_on_write(plan, pairs)  # a weight_norm layer's file holds its g and v
        plan.unmatched_target += tgt_notes
        names = sides.names_for(like, like_fw, destination)
        names_of = lambda p, slot: names(p.target, slot)  # noqa: E731
    else:
        if to_keras_file:
            raise UsageError(f"writing {destination} needs the Keras model it is for (like= or model=), so "
                             "each variable lands where keras' load_weights looks for it")
        options.settle(src_nodes, rule_options or {})
        plan, pairs = planning.as_it_is(src_nodes, layout)
        sep = separator(layout)
        names_of = lambda p, slot: f"{p.target.path}{sep}{slot}" if p.target.path else slot  # noqa: E731
    options.apply(plan, pairs, rule_options or {})
    plan.issues += [n for n in src_notes if renames.NOTE in n]  # said, as weaker evidence is
    plan.unmatched_source += [n for n in src_notes if renames.NOTE not in n]
    return engine.write_file(pairs, names_of, plan, destination, layout, like=like,
                             model_json=writer_json(src, like, source_model, layout), **written)


def writer_json(src, like, source_model, layout):
    """The text that rebuilds the model whose names the output carries (``like``, else the source's own model
    where the layout stays), recorded in the file (``MODEL_KEY``); a source file's own record where it has one
    and no model is at hand; None where none is known."""
    own = like if like is not None else (src.obj if src.live else source_model) if layout == src.layout else None
    if own is not None:
        return require_adapter(own, "model").model_json(own)
    if like is None and src.checkpoint is not None and layout == src.layout:
        return src.checkpoint.metadata.get(MODEL_KEY)
    return None

