"""When a conversion shows a progress bar: on a terminal, for outputs worth waiting for, unless told.

A bar on a pipe or in a log is noise, and one for a few kilobytes flickers
past; hence the default. The command's ``--progress``/``--no-progress`` set
``forced``; ``quiet=True`` in the Python API always wins.
"""
from __future__ import annotations

import shutil
import sys

MIN_BYTES = 64 << 20  # below this an output is written before a bar would be read
forced: bool | None = None  # None: decide by terminal and size


def wanted(total: int, quiet: bool = False, stream=None) -> bool:
    """Whether writing ``total`` bytes shows a bar on ``stream`` (standard error by default)."""
    if quiet:
        return False
    if forced is not None:
        return forced
    stream = sys.stderr if stream is None else stream
    return total >= MIN_BYTES and stream.isatty()


def bar(total: int, label: str, quiet: bool = False):
    """A tqdm bar over ``total`` bytes, or None where none is wanted."""
    if not wanted(total, quiet):
        return None
    from tqdm import tqdm

    # a terminal that reports 0 columns (some CI consoles, emacs shells) would get an empty bar
    columns = shutil.get_terminal_size((80, 24)).columns or 80
    return tqdm(total=total, unit="B", unit_scale=True, desc=label, ncols=columns, file=sys.stderr)
