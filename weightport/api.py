"""The public API: port, load, save, convert, get_weights, set_weights, verify.

Either side of a port may be a live model (Keras, torch...), a checkpoint
path, a loaded ``Checkpoint`` or a plain name -> array mapping (a state dict).
Ports run in ``converter.porting``, which resolves what it was given
(``converter.sides``), pairs layers (``converter.matcher``) or plans without
a target (``converter.planning``), and runs the plan (``converter.engine``);
nothing else lives here.
"""
from __future__ import annotations

import warnings

from .converter import checking, engine, matcher, porting, shards, sides, tracing
from .converter import options as rule_options
from .converter.checkpoint import Checkpoint
from .converter.frameworks import configured, require_adapter
from .converter.plan import Report
from .converter.verify import VerifyResult
from .errors import ShapeMismatchError, UsageError, WeightportWarning


def port(source, target, *, hints: dict | None = None, strict: bool = True, model=None,
         overwrite: bool = False, dtype=None, trust_pickle: bool = False, quiet: bool = False,
         check=None, atol: float = 1e-5, rtol: float = 1e-4, allow_overflow: bool = False,
         strict_config: bool = False, output=None, shard_size=None, executor=None, resume=False,
         options: dict | None = None) -> Report:
    """Copy the weights of ``source`` into ``target``; either may be a live model or a checkpoint.

    Layers are paired by kind and shape, and among look-alikes by evidence (hints, paths, dataflow, names);
    configuration weights cannot carry (epsilon, momentum...) is compared and differences are warned about
    (``report.warnings``). A value that would overflow the target's dtype is refused; a rounding cast marks its step
    "function-preserving, not bitwise"; NaN/Inf in the source are warned about. A refused port leaves the target as it
    was.

    Args:
        source: a live model (Keras, torch, Flax NNX or Linen, Equinox), a checkpoint (path, ``Checkpoint``, dict).
        target: a live model to fill, or a path: then a new file is written (see ``convert``).
        hints: ``{source_path: target_path}`` pairs that override the pairing.
        strict: True (the default) leaves the target untouched unless every target weight pairs
            unambiguously; source layers the target does not ask for (a head) are reported and warned
            about, and ``"both"`` refuses those too. False copies what pairs and reports the rest.
        model: a checkpoint's own live model, giving its structure where names alone cannot.
        overwrite: with a path as ``target``, replace an existing file.
        dtype: with a path as ``target``, cast floating tensors ("float16", "bfloat16"...; see ``convert``).
        trust_pickle: let a torch file run pickled code beyond plain tensors (only for files you trust).
        quiet: no progress bar (one shows on a terminal for ports and files over 64 MB).
        check: inputs to run both models on after the port (a pair ``(inputs_source, inputs_target)`` where layouts
            differ); if they differ, the target is restored and VerificationError names the first paired layer whose
            outputs part.
        atol: absolute tolerance of ``check``.
        rtol: relative tolerance of ``check`` (see ``verify``).
        allow_overflow: write values that overflow the target's dtype as inf instead of refusing.
        strict_config: refuse (ConfigMismatchError) even the differences only warned about by default (epsilon...).
        output: which output ``check`` compares where a model returns several, as in ``verify``.
        shard_size: with a path as ``target``, split a safetensors output into shards (see ``convert``).
        executor: with a path as ``target``, the executor writing the shards (see ``convert``).
        resume: with a path as ``target``, keep the shards an interrupted run finished (see ``convert``).
        options: what the port needs to know and weights cannot show, by name: ``{"rope": "interleaved->half"}``
            (or ``"half->interleaved"``, the source's order first) reorders the query and key projections' rows
            within each head between rotary embeddings' interleaved pairs (Meta's Llama, GPT-J) and rotate-half
            (Hugging Face's Llama, keras-hub), with ``"head_dim"`` where the layers do not show it and
            ``"rotary_dim"`` for partial rotary. The report's transform column names the layers reordered.
            ``{"packed_qkv": "blocks"}`` or ``"per_head"``: how a torch attention module's one packed q/k/v
            Linear holds them (one after another as timm's ``qkv``; head by head as GPT-NeoX's and Bloom's
            ``query_key_value``); without it such a module is refused (GPT-2's Conv1D ``c_attn`` needs none).
            A packed projection split into separate layers on the other side (``qkv_proj``, ``gate_up_proj``)
            takes ``packed_qkv`` too, and ``{"gate_up": "gate_first"}`` or ``"up_first"``, where no traced run
            of its live model shows how its output is cut (a file with no ``model=``).

    Returns:
        Report: the plan that ran (printed, a table of source -> target, rule, transform and shapes);
        ``report.target`` is the ported target: the object given, or a new one where the framework's
        objects cannot change (Flax Linen variables, Equinox modules).

    Raises:
        MatchError: layers could not be paired (AmbiguityError: ``hints`` or ``model`` must say which).
        ShapeMismatchError: a paired tensor has another shape than its slot.
        ConfigMismatchError: paired layers differ in what they compute (groups, use_bias...).
        UnsupportedLayerError: a layer holds weights that no rule handles (with ``strict=True``).
        CastOverflowError: a value overflows the target's dtype.
        VerificationError: ``check`` found different outputs.
        FormatError: a checkpoint could not be read (UnsafePickleError: it needs ``trust_pickle``).
        UsageError: the call itself is wrong: an unsupported object, arguments that do not go together.
    """
    if sides.is_path(target):
        return convert(source, target, model=model, hints=hints, strict=strict, overwrite=overwrite,
                       dtype=dtype, trust_pickle=trust_pickle, quiet=quiet, allow_overflow=allow_overflow,
                       shard_size=shard_size, executor=executor, resume=resume, options=options)
    report = porting.into_live(source, target, hints=hints, strict=strict, model=model, trust_pickle=trust_pickle,
                               quiet=quiet, check=check, atol=atol, rtol=rtol, allow_overflow=allow_overflow,
                               strict_config=strict_config, output=output, rule_options=rule_options.parse(options))
    _warn(report.plan)
    return report

def load(path, *, format: str | None = None, trust_pickle: bool = False) -> Checkpoint:
    """Open a checkpoint lazily: a name -> array mapping with ``.format``, ``.layout``, ``.metadata``.

    Only the header is read now; each tensor is read when indexed, so opening
    a large file is cheap. torch files are never unpickled beyond weights
    unless ``trust_pickle=True``.

    Args:
        path: a checkpoint: ``.safetensors`` (or a sharded set's
            ``.index.json``), ``.pt``/``.pth``/``.bin``, ``.weights.h5``,
            ``.keras``, legacy ``.h5``, ``.npz`` or ``.msgpack``; or an Orbax
            checkpoint folder (an item, a step, or a CheckpointManager's root,
            whose latest step is read).
        format: read as this format ("safetensors", "torch", "keras", "npz",
            "msgpack", "orbax") instead of detecting it from the file's first
            bytes and suffix.
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
    return sides.read_file(path, format=format, trust_pickle=trust_pickle)


def save(model, path, layout: str | None = None, like=None, *, format: str | None = None, overwrite: bool = False,
         dtype=None, shard_size: int | str | None = None, strict: bool = True, quiet: bool = False,
         allow_overflow: bool = False, executor=None, resume: bool = False, options: dict | None = None) -> Report:
    """Write ``model``'s weights to ``path`` in ``layout`` without needing the other framework's model.

    The file appears whole or not at all. A Keras model written in its own layout is recorded in the file's
    metadata (its ``to_json()``, never weights) where the format keeps any, so a refusal that needs the file's
    own model prints the line that rebuilds it.

    Args:
        model: a live model of any supported framework.
        path: the output file; its suffix picks the format (``.safetensors``,
            ``.pt``, ``.weights.h5``, ``.keras``, ``.npz``, ``.msgpack``), or
            the output folder of ``format="orbax"``.
        layout: whose conventions the tensors follow: "torch", "keras", "flax"
            or "equinox"; by default ``like``'s, keras for Keras files, else
            the model's own.
        like: a live model of the target framework giving the target names and
            structure: a torch module's state-dict names, or the variable paths
            Keras' ``load_weights`` expects in a ``.weights.h5``; for a
            ``.keras`` archive, the Keras model whose config it records; for
            Orbax, the Flax model (or Linen variables) whose state tree it takes.
        format: the output format by name, as in the formats table
            ("safetensors", "torch", "keras", "npz", "msgpack", "orbax"),
            instead of the one the suffix names; needed for an Orbax folder.
        overwrite: replace an existing file (otherwise refused).
        dtype: cast floating tensors (see ``convert``).
        shard_size: split a safetensors output into shards of at most this
            many bytes (or "5GB", "500MiB"), with an ``.index.json``.
        strict: False writes what pairs with ``like`` and reports the rest.
        quiet: no progress bar.
        allow_overflow: write values that overflow ``dtype`` as inf instead of
            refusing.
        executor: see ``convert``; a live model stays in this process, so
            it is refused here (save once, then ``convert`` the file).
        resume: see ``convert``.
        options: rule options weights cannot show (see ``port``).

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
    return convert(model, path, like=like, to=layout, format=format, overwrite=overwrite, dtype=dtype,
                   shard_size=shard_size, strict=strict, quiet=quiet, allow_overflow=allow_overflow,
                   executor=executor, resume=resume, options=options)


def convert(source, destination, model=None, *, to: str | None = None, like=None, format: str | None = None,
            hints: dict | None = None, strict: bool = True, overwrite: bool = False, dtype=None,
            shard_size: int | str | None = None, executor=None, resume: bool = False, trust_pickle: bool = False,
            quiet: bool = False, plan=None, dry_run: bool = False, allow_overflow=False, replace_input=False,
            options: dict | None = None) -> Report:
    """Convert a checkpoint (or live model) into a new file, tensor by tensor.

    Peak memory tracks the largest layer, not the model. The output is written under a temporary name and
    renamed into place: it appears whole or not at all. A cast that would turn finite values into inf is
    refused; one that rounds marks its step "function-preserving, not bitwise"; NaN/Inf are warned about.

    Args:
        source: a checkpoint path, a loaded ``Checkpoint``, a name -> array mapping or a live model.
        destination: the output file; its suffix picks the format (or ``format=``). A ``.keras`` archive
            takes its config from ``like``; an Orbax checkpoint is a folder (``format="orbax"``).
        model: a live model giving the structure names cannot: the source's if in its layout, else the target's.
        to: the target layout ("torch", "keras", "flax", "equinox"); by default the model's, keras for Keras files, else
            the source's.
        like: a live model of the target framework whose names (and a ``.weights.h5``'s variable paths) the
            output takes; a ``.keras`` archive also records its config, an Orbax checkpoint its state tree, and
            any file whose format keeps metadata the Keras model's ``to_json()`` (as ``save`` does).
        format: the output format by name ("safetensors", "torch", "keras", "npz", "msgpack", "orbax").
        hints: ``{source_path: target_path}`` pairs that override the pairing.
        strict: False converts what pairs and reports the rest.
        overwrite: replace an existing output (otherwise refused).
        dtype: cast floating tensors ("float16", "bfloat16", "float8_e4m3fn" where the format holds it...).
        shard_size: split a safetensors output into shards of at most this many bytes ("5GB", "500MiB" too),
            with an index; a layer's tensors stay in one shard.
        executor: a ``concurrent.futures.Executor`` writing one shard per unit of work (a process pool, a Dask
            ``client.get_executor()``) from the plan's JSON; the same bytes as without. Needs ``shard_size``.
        resume: keep the shards an interrupted run of this same conversion finished (sha256 checked).
        trust_pickle: let a torch source run pickled code beyond plain tensors (only for files you trust).
        quiet: no progress bar.
        plan: a Plan, or the path of one saved as JSON (``report.to_json()``), to run again with no model at hand; names
            and shapes are checked first.
        dry_run: plan without writing; ``report.to_json()`` can be reviewed, saved and given as ``plan``.
        allow_overflow: write values that overflow ``dtype`` as inf instead of refusing.
        replace_input: let the output replace the source file itself.
        options: rule options weights cannot show (see ``port``); a ``like=`` torch model whose layers use
            weight_norm needs none: their weights are written as its g and v.

    Returns:
        Report: the plan that ran (printed, a table); ``report.files`` lists the files written (none in a dry
        run), ``report.shards`` the shards a sharded run wrote and kept.

    Raises:
        OutputExistsError: the destination exists and ``overwrite`` is False.
        FormatError: the source is unreadable (UnsafePickleError: it needs ``trust_pickle``).
        AmbiguityError: the source's tensors fit several rules and no model says which.
        UsageError: no layout can be told, a ``.weights.h5`` without the Keras model, a suffix that names
            no format, an unreadable plan, an output that cannot be written (OutputError).
        ShardError: a shard's worker died past the retries; the same call with ``resume=True`` finishes.
        MatchError: the source does not pair with ``like``/``model`` (also ShapeMismatchError,
            ConfigMismatchError, UnsupportedLayerError); nothing was written.
        CastOverflowError: a value overflows ``dtype``.
    """
    written = dict(overwrite=overwrite, dtype=dtype, shard_size=shards.byte_size(shard_size), quiet=quiet,
                   resume=resume,
                   dry_run=dry_run, allow_overflow=allow_overflow, replace_input=replace_input, format=format,
                   executor=executor, trust_pickle=trust_pickle)
    report = porting.into_file(source, destination, model, to=to, like=like, hints=hints, strict=strict,
                               trust_pickle=trust_pickle, plan=plan, written=written,
                               rule_options=rule_options.parse(options))
    _warn(report.plan)
    return report

def _warn(plan) -> None:
    for issue in plan.issues:
        warnings.warn(issue, WeightportWarning, stacklevel=3)


def _single(layer):
    """(framework, rule, hp) for a layer a rule handles, else (framework, None, None)."""
    fw = require_adapter(layer, "layer")
    found = configured(fw.layout, layer)
    return (fw, *found[0]) if found else (fw, None, None)


def _settled_parts(layer, options) -> tuple:
    """(framework, [(framework, object, rule, hp)]) for a layer or a model's rule-bearing layers, each
    layout its weights cannot show settled by ``options`` (see ``port``), or refused."""
    fw, rule, hp = _single(layer)
    if rule is not None:  # a stacked torch RNN stands for several Keras layers: all of them
        parts = [(fw, layer, rule, part) for part in rule.expand(fw.layout, hp)]
    else:
        _, nodes, _ = sides.live_nodes(layer, "model", strict=True)
        parts = [(n.framework, n.obj, *n.candidates[0]) for n in nodes]
    parsed = rule_options.parse(options)
    for part_fw, obj, r, h in parts:
        rule_options.settle_hp(r, h, parsed)
        why = r.unsettled(h)
        if why:
            raise UsageError(f"{part_fw.display_name(obj)}: {why}")
    return fw, parts


def get_weights(layer, *, options: dict | None = None) -> list:
    """The weights of ``layer`` as Keras lists them (``get_weights()`` order and layout), as numpy.

    Works for a layer of any supported framework, so layers of two frameworks
    compare directly; for a whole model, the lists of its rule-bearing layers
    are concatenated in order, like Keras' ``model.get_weights()``.

    Args:
        layer: a live layer or model (Keras, torch, Flax, Equinox).
        options: what the weights cannot show, as for ``port`` (``{"packed_qkv": "per_head"}``).

    Returns:
        list of numpy arrays, e.g. ``[kernel (in, out), bias (out,)]`` for a
        torch Linear.

    Raises:
        UsageError: ``layer`` is not an object of a supported framework, or its layout needs an option.
        UnsupportedLayerError: a layer holds weights that no rule handles.
    """
    _, parts = _settled_parts(layer, options)
    # each part under its own hp: a stacked torch RNN's layers once each, Flax Linen groups too
    return [w for part_fw, obj, r, h in parts
            for w in r.to_canonical(part_fw.layout, h, part_fw.read(obj, r.native_slots(part_fw.layout, h)))]


def set_weights(layer, weights, *, options: dict | None = None):
    """Assign a Keras-ordered, Keras-layout weight list to a layer (or model) of any framework.

    Every shape is checked before anything is assigned, so a wrong list
    changes nothing.

    Args:
        layer: a live layer or model (Keras, torch, Flax, Equinox).
        weights: arrays (numpy, torch, jax...) in Keras' ``get_weights()`` order
            and layout: ``keras_layer.get_weights()`` or ``wp.get_weights(...)``.
        options: what the weights cannot show, as for ``port``.

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
    fw, parts = _settled_parts(layer, options)
    counts = [len(r.canonical(h)) for _, _, r, h in parts]
    if sum(counts) != len(weights):
        raise ShapeMismatchError(f"{fw.display_name(layer)} takes {sum(counts)} weights in all "
                                 f"({len(parts)} Keras layer(s)); got {len(weights)}")
    prepared, start = [], 0
    for (part_fw, obj, r, h), count in zip(parts, counts):
        prepared.append((part_fw, obj, engine.checked_layout(part_fw, obj, r, h, weights[start:start + count])))
        start += count
    for part_fw, obj, arrays in prepared:
        part_fw.write(obj, arrays)
    return fw.finish(layer)


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
            for both models, or a pair ``(output_a, output_b)``. A model that
            returns one array takes index 0 as that array (never its first row).

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
        _, nodes_a, _ = sides.live_nodes(a, "first model", False)
        _, nodes_b, _ = sides.live_nodes(b, "second model", False)
        pairs = checking.pairs_of(report, nodes_a, nodes_b) if report is not None else matcher.match(
            nodes_a, nodes_b, strict=False, flows=tracing.flows(a, b, (in_a, in_b)))[1]
        result.diverging = checking.locate(a, b, nodes_a, nodes_b, pairs, (in_a, in_b), atol, rtol)
    return result
