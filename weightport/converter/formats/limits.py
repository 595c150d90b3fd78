"""Limits on what a file may claim, so that a small hostile file cannot cost gigabytes or minutes to open.

Readers check these before they allocate or walk what a header claims:

=================  ===========  ===================================================================
limit              default      what it bounds
=================  ===========  ===================================================================
MAX_TENSORS        250_000      tensors (datasets, archive members, arrays) in one file
MAX_HEADER_BYTES   100_000_000  a safetensors header; a JSON file (shard index, config, metadata)
MAX_VALUES         1_000_000    msgpack values that are not arrays (maps, keys, numbers) in one file
INFLATE_RATIO      200          a compressed or sparse tensor (npz member, HDF5 dataset, .keras
INFLATE_FLOOR      64 MiB       member) may expand to INFLATE_RATIO x its stored bytes or to
                                INFLATE_FLOOR bytes, whichever is larger
=================  ===========  ===================================================================

Any of them can be changed for one run with an environment variable named
``WEIGHTPORT_<LIMIT>`` (``WEIGHTPORT_MAX_TENSORS=1000000``,
``WEIGHTPORT_INFLATE_RATIO=2000``), read at every check, or for a process by
assigning the module attribute (``limits.MAX_TENSORS = 10**6``). A refusal
names the file, the limit and the variable to set.
"""
from __future__ import annotations

import os

from ...errors import FormatError

MAX_TENSORS = 250_000
MAX_HEADER_BYTES = 100_000_000  # the safetensors reference implementation's header limit too
MAX_VALUES = 1_000_000
INFLATE_RATIO = 200  # deflate reaches about 1000:1 on zeros; real weights compress to about 1:1
INFLATE_FLOOR = 64 << 20

_NAMES = ("MAX_TENSORS", "MAX_HEADER_BYTES", "MAX_VALUES", "INFLATE_RATIO", "INFLATE_FLOOR")


def get(name: str) -> int:
    """The limit in force: ``WEIGHTPORT_<name>`` if set, else this module's value."""
    if name not in _NAMES:
        raise KeyError(name)
    text = os.environ.get(f"WEIGHTPORT_{name}")
    if text is None:
        return int(globals()[name])
    try:
        return int(text.replace("_", ""))
    except ValueError:
        from ...errors import UsageError

        raise UsageError(f"WEIGHTPORT_{name}={text!r} is not a whole number") from None


def refuse(path, what: str, found: int, name: str):
    """The FormatError for ``found`` past limit ``name``, saying how to raise it."""
    return FormatError(f"{path}: {what}: {found:,} is past weightport's limit of {get(name):,} ({name}); "
                       f"the file may be hostile or damaged. If you trust it, raise the limit: "
                       f"WEIGHTPORT_{name}={max(found, get(name) * 2)}")


def check(path, what: str, found: int, name: str) -> None:
    """Refuse ``found`` when it is past the limit ``name``."""
    if found > get(name):
        raise refuse(path, what, found, name)


def check_inflation(path, what: str, expanded: int, stored: int) -> None:
    """Refuse a tensor or member that would expand from ``stored`` bytes to ``expanded``, past the limits."""
    allowed = max(get("INFLATE_FLOOR"), get("INFLATE_RATIO") * max(stored, 0))
    if expanded > allowed:
        raise FormatError(
            f"{path}: {what} expands from {stored:,} stored bytes to {expanded:,} bytes, more than weightport "
            f"allows ({get('INFLATE_RATIO')} x the stored size, or {get('INFLATE_FLOOR'):,} bytes); a small file "
            "claiming that much is a decompression bomb or damaged. If you trust it, raise the limit: "
            f"WEIGHTPORT_INFLATE_RATIO={max(2 * get('INFLATE_RATIO'), expanded // max(stored, 1) + 1)}")
