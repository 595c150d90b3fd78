"""The ``weightport`` command: inspect | convert | verify | rules.

Exit codes: 0 ok, 1 conversion refused (mismatch), 2 usage error or unreadable input.
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import FormatError, UsageError, WeightportError


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weightport", description="Move trained weights between frameworks.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("rules", help="list the layer rules and the classes each recognises")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_rules)
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
