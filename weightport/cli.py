"""The ``weightport`` command: inspect | convert | verify | rules.

How it ends (exit codes, messages in the command's words, no traceback unless
``--debug``) is in ``exits``; this module parses arguments and runs commands.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from . import exits, layouts
from .cliargs import (VersionAction, check_destination, executor_for, load_object, parse_dtype, parse_hints,
                      parse_options, parse_size)
from .errors import WeightportWarning


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def size_text(nbytes: float) -> str:
    """'432 B', '2.8 KB', '1.5 GB' (powers of 1024)."""
    for unit in ("B", "KB", "MB"):
        if nbytes < 1024:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GB"


# -- rules -----------------------------------------------------------------------------


def recognised(rule, layout: str) -> str:
    """What a user can give for ``rule`` in ``layout``: its classes, or the structure it recognises."""
    described = getattr(rule, "describe_classes", {}).get(layout)
    return described or ", ".join(rule.classes.get(layout, ())) or "(recognised by structure)"


def cmd_rules(args) -> int:
    from .mappings.rule import all_rules

    rules = list(all_rules())
    if args.json:
        rows = [{"rule": r.name, **{lay: list(r.classes.get(lay, ())) for lay in r.layouts()},
                 "recognises": {lay: recognised(r, lay) for lay in r.layouts()}} for r in rules]
        print(json.dumps(rows, indent=1))
        return exits.OK
    width = max(len(lay) for r in rules for lay in r.layouts())
    for r in rules:
        print(r.name)
        for lay in r.layouts():
            print(f"  {lay:<{width}}  {recognised(r, lay)}")
    return exits.OK


# -- inspect ---------------------------------------------------------------------------


def layer_of(name: str, layers: dict) -> dict:
    """What the file says of the layer holding tensor ``name``: the deepest group path above it, or what it
    says of the tensor itself (an ONNX initializer: the op and input reading it)."""
    if name in layers:
        return layers[name]
    above = [group for group in layers if name.startswith(group + "/")]
    return layers[max(above, key=len)] if above else {}


def layer_label(info: dict) -> str:
    name, cls = info.get("name"), info.get("class_name")
    return f"{name} ({cls})" if name and cls else name or cls or ""


def cmd_inspect(args) -> int:
    from .converter.formats import open_checkpoint

    with open_checkpoint(args.file, format=args.format, trust_pickle=args.trust_pickle) as ckpt:
        layers = {g: info for g, info in ckpt.layers.items() if g and isinstance(info, dict)}
        rows = []
        for name in ckpt:
            info = layer_of(name, layers)
            row = {"name": name, "shape": list(ckpt.shape(name)), "dtype": ckpt.dtype(name).name,
                   "nbytes": ckpt.source(name).nbytes}
            # where the file names the layer (Keras files): its name and class
            row.update({key: info[src] for key, src in (("layer", "name"), ("class", "class_name")) if info.get(src)})
            rows.append(row)
        totals = {"tensors": len(ckpt), "parameters": ckpt.num_parameters, "bytes": ckpt.nbytes}
        if args.json:
            print(json.dumps({"path": ckpt.path, "format": ckpt.format, "layout": ckpt.layout,
                              "metadata": ckpt.metadata, "totals": totals, "tensors": rows,
                              "layers": {k: v.get("class_name") for k, v in ckpt.layers.items()}}, indent=1))
            return exits.OK
        print_table(rows)
        total = size_text(totals["bytes"]) + (f" ({totals['bytes']:,} bytes)" if totals["bytes"] >= 1024 else "")
        print(f"\n{plural(totals['tensors'], 'tensor')}, {plural(totals['parameters'], 'parameter')}, {total}")
        print(f"format: {ckpt.format}   layout: {ckpt.layout or 'unknown (names do not say)'}")
        for key, value in ckpt.metadata.items():
            print(f"  {key}: {value if len(value) <= 80 else value[:77] + '...'}")
    return exits.OK


def print_table(rows) -> None:
    """name, shape, dtype, size, and the layer each tensor belongs to where the file names it."""
    columns = [("name", [r["name"] for r in rows]), ("shape", [str(tuple(r["shape"])) for r in rows]),
               ("dtype", [r["dtype"] for r in rows]), ("size", [size_text(r["nbytes"]) for r in rows])]
    labels = [layer_label({"name": r.get("layer"), "class_name": r.get("class")}) for r in rows]
    if any(labels):
        columns.append(("layer", labels))
    widths = [max([len(head)] + [len(v) for v in values]) for head, values in columns]
    print("  ".join(head.ljust(w) for (head, _), w in zip(columns, widths)).rstrip())
    for i in range(len(rows)):
        print("  ".join(values[i].ljust(w) for (_, values), w in zip(columns, widths)).rstrip())


# -- convert ---------------------------------------------------------------------------


def cmd_convert(args) -> int:
    from . import progress
    from .api import convert, load

    check_destination(args.destination)
    if args.save_plan and not args.overwrite and os.path.lexists(args.save_plan):  # every output checked first
        from .errors import OutputExistsError

        raise OutputExistsError(f"{args.save_plan} already exists; nothing was written. Pass --overwrite to "
                                "replace it, or choose another name")
    model = load_object(args.model) if args.model else None
    like = load_object(args.like) if args.like else None
    source = load(args.source, format=args.format, trust_pickle=args.trust_pickle) if args.format else args.source
    show = args.progress if args.progress is not None else (False if args.quiet or args.json else None)
    progress.forced = show
    try:
        with executor_for(args) as executor:
            report = convert(source, args.destination, model=model, to=args.to, like=like,
                             hints=parse_hints(args.hint), strict=not args.partial, overwrite=args.overwrite,
                             dtype=args.dtype, shard_size=parse_size(args.shard_size), trust_pickle=args.trust_pickle,
                             quiet=show is False, plan=args.plan, dry_run=args.dry_run,
                             allow_overflow=args.allow_overflow, replace_input=args.replace_input,
                             executor=executor, resume=args.resume, options=parse_options(args.option))
    finally:
        progress.forced = None
    if args.save_plan:
        from .converter.formats import Staging

        staging = Staging(overwrite=args.overwrite)
        try:
            with open(staging.file(args.save_plan), "w", encoding="utf-8") as f:
                f.write(report.to_json())
            staging.commit()
        finally:
            staging.discard()
    if args.json:
        print(json.dumps({"files": report.files, "plan": json.loads(report.to_json())}, indent=1))
    elif not args.quiet:
        print(report)
        print("wrote " + ", ".join(report.files) if report.files else "dry run: nothing written")
    return exits.OK


# -- verify ----------------------------------------------------------------------------


def cmd_verify(args) -> int:
    import numpy as np

    from .api import port, verify

    a, b = load_object(args.model_a), load_object(args.model_b)
    for weights, model in ((args.weights_a, a), (args.weights_b, b)):
        if weights:
            port(weights, model, trust_pickle=args.trust_pickle)
    x_a = np.load(args.inputs)
    x_b = np.load(args.inputs_b) if args.inputs_b else x_a
    result = verify(a, b, (x_a, x_b), atol=args.atol, rtol=args.rtol, locate=args.locate)
    if args.json:
        diverging = result.diverging and {"source": result.diverging.source, "target": result.diverging.target,
                                          "rule": result.diverging.rule, "max_abs_diff": result.diverging.max_abs_diff,
                                          "issues": result.diverging.issues}
        print(json.dumps({"ok": result.ok, "max_abs_diff": result.max_abs_diff, "max_rel_diff": result.max_rel_diff,
                          "atol": result.atol, "rtol": result.rtol, "notes": result.notes,
                          "diverging": diverging}, indent=1))
    else:
        print(result)
    return exits.OK if result.ok else exits.REFUSED


# -- the parser ------------------------------------------------------------------------


def format_option(parser, help_text: str) -> None:
    """``--format``, its choices read from the formats table (a plugin's format is offered too)."""
    from .converter import formats

    parser.add_argument("--format", default=None, choices=formats.names(), help=help_text)


def add_rules(command) -> None:
    p = command("rules", help="list the layer rules and what each recognises in each layout")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_rules)


def add_inspect(command) -> None:
    from .converter.formats import suffixes

    p = command("inspect", help="list a checkpoint's tensors (name, shape, dtype, size, layer), format and layout")
    p.add_argument("file", help=f"checkpoint: {', '.join(suffixes())}")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    format_option(p, "read as this format instead of detecting it")
    p.add_argument("--trust-pickle", action="store_true",
                   help="let a torch file run pickled code (only for files you trust)")
    p.set_defaults(func=cmd_inspect)


def add_convert(command) -> None:
    p = command("convert", help="convert a checkpoint to another format and/or layout, tensor by tensor")
    p.add_argument("source", help="input checkpoint")
    p.add_argument("destination", help="output file (its suffix picks the format)")
    p.add_argument("--to", choices=layouts.writable(),
                   help="target layout (default: the model's, keras for Keras files, else the source's)")
    p.add_argument("--model", help="MODULE:NAME or FILE.py:NAME of a model (or a function building one) giving the "
                                   "structure: the source's if in its layout, else the target's")
    p.add_argument("--like", help="MODULE:NAME of a target-framework model whose names the output should use")
    p.add_argument("--hint", action="append", metavar="SOURCE=TARGET",
                   help="pair these two layers (paths); repeat for more")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="a rule option weights cannot show: rope=interleaved->half (or half->interleaved, the "
                        "source's order first), head_dim=N, rotary_dim=N; repeat for more")
    format_option(p, "read the source as this format instead of detecting it")
    p.add_argument("--dtype", type=parse_dtype,
                   help="cast floating tensors: float32, float16, bfloat16, float8_e4m3fn, float8_e5m2 (float8 "
                        "where the output format holds it)")
    p.add_argument("--shard-size", help="split safetensors output into shards of this size (e.g. 5GB)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="write the shards (--shard-size) in N local processes, one shard per unit of work")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="write the shards on the Dask cluster at ADDRESS (tcp://host:8786; needs weightport[dask])")
    p.add_argument("--resume", action="store_true",
                   help="keep the shards an interrupted run of the same conversion finished (digests checked), "
                        "write the rest")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--replace-input", action="store_true",
                   help="let the output replace the input file itself (refused otherwise, even with --overwrite)")
    p.add_argument("--allow-overflow", action="store_true",
                   help="let values too large for the output dtype become inf (refused otherwise)")
    p.add_argument("--partial", action="store_true", help="convert what pairs and report the rest (strict=False)")
    p.add_argument("--trust-pickle", action="store_true", help="let a torch file run pickled code")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: on a terminal, for outputs over 64 MB)")
    p.add_argument("--quiet", action="store_true", help="no report, and no progress bar unless --progress")
    p.add_argument("--dry-run", action="store_true", help="plan and report, write nothing")
    p.add_argument("--save-plan", metavar="FILE", help="save the plan as JSON (review it, or replay it with --plan)")
    p.add_argument("--plan", metavar="FILE", help="run a saved plan: no --model needed, names and shapes checked")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_convert)


def add_verify(command) -> None:
    p = command("verify", help="run two models on the same input and compare their outputs")
    p.add_argument("model_a", help="MODULE:NAME or FILE.py:NAME of the first model (or a function building it)")
    p.add_argument("model_b", help="the same for the second model")
    p.add_argument("--inputs", required=True, help=".npy input for both models (or for the first)")
    p.add_argument("--inputs-b", help=".npy input for the second model when it needs another layout (NHWC...)")
    p.add_argument("--weights-a", help="checkpoint to port into the first model before comparing")
    p.add_argument("--weights-b", help="checkpoint to port into the second model before comparing")
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--locate", action="store_true",
                   help="name the first paired layer (in the second model's running order) whose outputs differ")
    p.add_argument("--trust-pickle", action="store_true", help="let a torch file run pickled code")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_verify)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightport", description="Move trained weights between frameworks.",
        epilog="exit codes:\n" + exits.exit_table(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=VersionAction, help="show the versions of weightport and the "
                                                                 "frameworks it finds, then exit")
    parser.add_argument("--debug", action="store_true", help="on an error, print the traceback too")
    common = argparse.ArgumentParser(add_help=False)  # --debug after the command works as well
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, **kw):
        return sub.add_parser(name, parents=[common], epilog="exit codes:\n" + exits.exit_table(),
                              formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    for add in (add_rules, add_inspect, add_convert, add_verify):
        add(command)
    return parser


def show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one line in the command's words, not Python's file:line form."""
    label = "warning" if issubclass(category, WeightportWarning) else category.__name__
    print(f"weightport: {label}: {exits.cli_words(str(message))}", file=sys.stderr)


def main(argv=None) -> int:
    """Run the command; return its exit code (see ``exits.EXIT_CODES``)."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        try:
            args = build_parser().parse_args(argv)  # --help, --version and bad arguments end here (SystemExit)
            with warnings.catch_warnings():
                warnings.showwarning = show_warning
                return args.func(args)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, inside the guard, not at interpreter exit
    except BrokenPipeError:
        # the reader left (`| head`): send what is still buffered nowhere and end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exits.BROKEN_PIPE
    except (Exception, KeyboardInterrupt) as exc:
        if "--debug" in argv:
            import traceback

            traceback.print_exc()
        print(f"weightport: {exits.describe(exc)}", file=sys.stderr)
        return exits.exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
