"""The ``weightport`` command: inspect | convert | verify | rules.

Exit codes: 0 ok, 1 conversion refused (mismatch), 2 usage error or unreadable input.
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import FormatError, UsageError, WeightportError

FORMAT_NAMES = ("safetensors", "torch", "keras", "npz", "msgpack")  # weightport.converter.formats.MODULES


def cmd_rules(args) -> int:
    from .mappings.rule import all_rules

    rows = [{"rule": r.name, **{lay: list(r.classes.get(lay, ())) for lay in r.layouts()}} for r in all_rules()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in all_rules():
        print(f"{r.name}")
        for lay in r.layouts():
            print(f"  {lay:<6} {', '.join(r.classes[lay])}")
    return 0


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB"):
        if nbytes < 1024:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GB"


def cmd_inspect(args) -> int:
    from .converter.formats import open_checkpoint

    with open_checkpoint(args.file, format=args.format, trust_pickle=args.trust_pickle) as ckpt:
        rows = [{"name": name, "shape": list(ckpt.shape(name)), "dtype": ckpt.dtype(name).name,
                 "nbytes": ckpt.source(name).nbytes} for name in ckpt]
        totals = {"tensors": len(ckpt), "parameters": ckpt.num_parameters, "bytes": ckpt.nbytes}
        if args.json:
            print(json.dumps({"path": ckpt.path, "format": ckpt.format, "layout": ckpt.layout,
                              "metadata": ckpt.metadata, "totals": totals, "tensors": rows,
                              "layers": {k: v.get("class_name") for k, v in ckpt.layers.items()}}, indent=1))
            return 0
        width = max([len(r["name"]) for r in rows] + [4])
        shapes = [str(tuple(r["shape"])) for r in rows]
        swidth = max([len(x) for x in shapes] + [5])
        print(f"{'name':<{width}}  {'shape':<{swidth}}  {'dtype':<8}  size")
        for r, shape in zip(rows, shapes):
            print(f"{r['name']:<{width}}  {shape:<{swidth}}  {r['dtype']:<8}  {_size(r['nbytes'])}")
        print(f"\n{totals['tensors']} tensors, {totals['parameters']:,} parameters, {_size(totals['bytes'])} "
              f"({totals['bytes']:,} bytes)")
        print(f"format: {ckpt.format}   layout: {ckpt.layout or 'unknown (names do not say)'}")
        for key, value in ckpt.metadata.items():
            print(f"  {key}: {value if len(value) <= 80 else value[:77] + '...'}")
    return 0


def load_object(spec: str):
    """The object named by ``pkg.module:name`` or ``path/to/file.py:name``; a callable is called with no arguments."""
    import importlib
    import importlib.util
    import os

    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--model/--like take MODULE:NAME or FILE.py:NAME, got {spec!r}")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            where = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(module_name))[0],
                                                           module_name)
            if where is None or not os.path.exists(module_name):
                raise UsageError(f"no Python file {module_name!r} (from {spec!r})")
            module = importlib.util.module_from_spec(where)
            sys.path.insert(0, os.path.dirname(os.path.abspath(module_name)))
            where.loader.exec_module(module)
        else:
            sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
        obj = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load {spec!r}: {exc}") from exc
    return obj() if callable(obj) and not _is_model(obj) else obj


def _is_model(obj) -> bool:
    from .converter.frameworks import adapter_for

    return adapter_for(obj) is not None


def parse_size(text):
    """Bytes from '123', '500MB', '5GB' (powers of 1000) or '2GiB' (powers of 1024)."""
    if text is None:
        return None
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    number = text.rstrip("BbIiKkMmGg")
    unit = text[len(number):].upper()
    try:
        return int(float(number) * units[unit])
    except (KeyError, ValueError):
        raise UsageError(f"--shard-size takes a size such as 5GB or 500MiB, got {text!r}") from None


def cmd_convert(args) -> int:
    from .api import convert

    model = load_object(args.model) if args.model else None
    like = load_object(args.like) if args.like else None
    report = convert(args.source, args.destination, model=model, to=args.to, like=like, strict=not args.partial,
                     overwrite=args.overwrite, dtype=args.dtype, shard_size=parse_size(args.shard_size),
                     trust_pickle=args.trust_pickle, quiet=args.quiet or args.json, plan=args.plan,
                     dry_run=args.dry_run)
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
    return 0


def cmd_verify(args) -> int:
    import numpy as np

    from .api import port, verify

    a, b = load_object(args.model_a), load_object(args.model_b)
    for weights, model in ((args.weights_a, a), (args.weights_b, b)):
        if weights:
            port(weights, model, trust_pickle=args.trust_pickle)
    x_a = np.load(args.inputs)
    x_b = np.load(args.inputs_b) if args.inputs_b else x_a
    result = verify(a, b, (x_a, x_b), atol=args.atol, rtol=args.rtol)
    if args.json:
        print(json.dumps({"ok": result.ok, "max_abs_diff": result.max_abs_diff, "max_rel_diff": result.max_rel_diff,
                          "atol": result.atol, "rtol": result.rtol, "notes": result.notes}, indent=1))
    else:
        print(result)
    return 0 if result.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weightport", description="Move trained weights between frameworks.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("rules", help="list the layer rules and the classes each recognises")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_rules)
    p = sub.add_parser("inspect", help="list a checkpoint's tensors (name, shape, dtype, size), format and layout")
    p.add_argument("file", help="checkpoint: .safetensors (or its .index.json), .pt/.pth/.bin, .weights.h5, "
                                ".keras, .h5, .npz, .msgpack")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--format", default=None, choices=FORMAT_NAMES, help="read as this format instead of detecting it")
    p.add_argument("--trust-pickle", action="store_true",
                   help="let a torch file run pickled code (only for files you trust)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("convert", help="convert a checkpoint to another format and/or layout, tensor by tensor")
    p.add_argument("source", help="input checkpoint")
    p.add_argument("destination", help="output file (its suffix picks the format)")
    p.add_argument("--to", choices=("keras", "torch", "flax", "equinox"), help="target layout (default: the model's, keras for "
                                                            "Keras files, else the source's)")
    p.add_argument("--model", help="MODULE:NAME or FILE.py:NAME of a model (or a function building one) giving the "
                                   "structure: the source's if in its layout, else the target's")
    p.add_argument("--like", help="MODULE:NAME of a target-framework model whose names the output should use")
    p.add_argument("--dtype", help="cast floating tensors, e.g. float16 or bfloat16")
    p.add_argument("--shard-size", help="split safetensors output into shards of this size (e.g. 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--partial", action="store_true", help="convert what pairs and report the rest (strict=False)")
    p.add_argument("--trust-pickle", action="store_true", help="let a torch file run pickled code")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no report")
    p.add_argument("--dry-run", action="store_true", help="plan and report, write nothing")
    p.add_argument("--save-plan", metavar="FILE", help="save the plan as JSON (review it, or replay it with --plan)")
    p.add_argument("--plan", metavar="FILE", help="run a saved plan: no --model needed, names and shapes checked")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("verify", help="run two models on the same input and compare their outputs")
    p.add_argument("model_a", help="MODULE:NAME or FILE.py:NAME of the first model (or a function building it)")
    p.add_argument("model_b", help="the same for the second model")
    p.add_argument("--inputs", required=True, help=".npy input for both models (or for the first)")
    p.add_argument("--inputs-b", help=".npy input for the second model when it needs another layout (NHWC...)")
    p.add_argument("--weights-a", help="checkpoint to port into the first model before comparing")
    p.add_argument("--weights-b", help="checkpoint to port into the second model before comparing")
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--trust-pickle", action="store_true", help="let a torch file run pickled code")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, FormatError) as exc:
        print(f"weightport: {exc}", file=sys.stderr)
        return 2
    except WeightportError as exc:
        print(f"weightport: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
