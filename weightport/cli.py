"""The ``weightport`` command: inspect | convert | verify | rules.

Exit codes: 0 ok, 1 conversion refused (mismatch), 2 usage error or unreadable input.
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import FormatError, UsageError, WeightportError

FORMAT_NAMES = ("safetensors", "torch", "keras", "npz")  # weightport.converter.formats.MODULES


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weightport", description="Move trained weights between frameworks.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("rules", help="list the layer rules and the classes each recognises")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_rules)
    p = sub.add_parser("inspect", help="list a checkpoint's tensors (name, shape, dtype, size), format and layout")
    p.add_argument("file", help="checkpoint: .safetensors (or its .index.json), .pt/.pth/.bin, .weights.h5, "
                                ".keras, .h5, .npz")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--format", default=None, choices=FORMAT_NAMES, help="read as this format instead of detecting it")
    p.add_argument("--trust-pickle", action="store_true",
                   help="let a torch file run pickled code (only for files you trust)")
    p.set_defaults(func=cmd_inspect)
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
