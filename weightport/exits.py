"""How the ``weightport`` command ends: one table of exit codes, and messages in the command's words.

Library errors are written for Python callers (``pass model=``); the command
says the same with its options (``pass --model``), through ``CLI_SPELLING``.
"""
from __future__ import annotations

import ast
import re
import shlex

from .errors import FormatError, MatchError, UsageError, WeightportError

# code, meaning, the exceptions that end with it. An exception takes the code of the first class
# in its MRO listed here, so the most specific wins: an AmbiguityError is a MatchError before it is
# a UsageError (a refusal), an OutputExistsError a WeightportError before it is an OSError.
EXIT_CODES = (
    (0, "done; for verify, the outputs agree", ()),
    (1, "refused: the weights do not fit the target, a pairing would be a guess, the output exists; "
        "for verify, the outputs differ", (WeightportError, MatchError)),
    (2, "usage error or unreadable input: a bad argument, a missing or corrupt file, an output that cannot be "
        "written",
     (UsageError, FormatError, OSError)),
    (3, "unexpected error (a bug): a one-line message; rerun with --debug for the traceback", (Exception,)),
    (130, "interrupted (Ctrl-C)", (KeyboardInterrupt,)),
    (141, "the reader of the output left early (as `head` does): quietly, as Unix tools do", (BrokenPipeError,)),
)
OK, REFUSED, USAGE, UNEXPECTED, INTERRUPTED, BROKEN_PIPE = (row[0] for row in EXIT_CODES)


def exit_code(exc: BaseException) -> int:
    """The exit code for ``exc``: the row of the most specific class in its MRO."""
    codes = {cls: code for code, _, classes in EXIT_CODES for cls in classes}
    for cls in type(exc).__mro__:
        if cls in codes:
            return codes[cls]
    return UNEXPECTED


def exit_table() -> str:
    """The exit codes as ``--help`` and the README list them."""
    return "\n".join(f"  {code:<4}{meaning}" for code, meaning, _ in EXIT_CODES)


# Python keyword (as messages spell it) -> the command-line option that says the same.
CLI_SPELLING = (
    (r"\s*\(CLI: [^)]*\)", ""),  # a message that already names the option for the CLI
    (r"(?<![\w-])strict=False\b", "--partial"),
    (r"(?<![\w-])trust_pickle=True\b", "--trust-pickle"),
    (r"(?<![\w-])overwrite=True\b", "--overwrite"),
    (r"(?<![\w-])replace_input=True\b", "--replace-input"),
    (r"(?<![\w-])allow_overflow=True\b", "--allow-overflow"),
    (r"(?<![\w-])dry_run=True\b", "--dry-run"),
    (r"(?<![\w-])hints=(\{[^}]*\})?", "--hint SOURCE=TARGET"),
    (r"(?<![\w-])(?:to|layout)=(['\"])([\w.-]+)\1", r"--to \2"),
    (r"(?<![\w-])(dtype|format)=(['\"])([\w.-]+)\2", r"--\1 \3"),
    (r"(?<![\w-])shard_size=(?![\w'\"])", "--shard-size"),
    (r"(?<![\w-])resume=True\b", "--resume"),
    (r"(?<![\w-])executor=/resume=", "--workers/--scheduler/--resume"),
    (r"(?<![\w-])executor=(?![\w'\"])", "--workers/--scheduler"),
    (r"(?<![\w-])(workers|scheduler)=(?![\w'\"])", r"--\1"),
    (r"(?<![\w-])(model|like|format|dtype|plan)=(?![\w'\"{(\[])", r"--\1"),  # a keyword named without a value
)


def cli_words(message: str) -> str:
    """``message`` with each Python keyword replaced by the command-line option that does the same (a
    ``hints={...}`` line with its pairs as as many ``--hint SOURCE=TARGET``)."""
    message = re.sub(r"(?<![\w-])hints=(\{[^}]*\})", _hint_options, message)
    for pattern, replacement in CLI_SPELLING:
        message = re.sub(pattern, replacement, message)
    return message


def _hint_options(found) -> str:
    """A literal ``hints={'a': 'b'}`` as ``--hint a=b``; anything else (a placeholder) as it was."""
    try:
        pairs = ast.literal_eval(found.group(1))
    except (ValueError, SyntaxError):
        return found.group(0)
    if not isinstance(pairs, dict) or not pairs or not all(isinstance(x, str) for kv in pairs.items() for x in kv):
        return found.group(0)
    return " ".join(f"--hint {shlex.quote(f'{a}={b}')}" for a, b in pairs.items())


def describe(exc: BaseException) -> str:
    """The one-line (or few-line) text the command prints for ``exc``."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, WeightportError):
        return cli_words(str(exc))
    if exit_code(exc) == USAGE:  # an OSError: "[Errno 13] Permission denied: 'out.safetensors'"
        return str(exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    return (f"unexpected error: {type(exc).__name__}: {first}\n"
            "  This is a bug in weightport or in a framework it called. Rerun with --debug for the traceback, "
            "and report it with the output of `weightport --version` (README: Reporting a bug).")
