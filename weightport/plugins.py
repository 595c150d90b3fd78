"""Entry points of one group, without parsing every installed package's entry points first.

``importlib.metadata.entry_points(group=...)`` parses each distribution's
``entry_points.txt`` (~5 ms of the ~14 ms a lookup costs here, felt in a small
model's first port). Most environments have no weightport plugin at all, so
the files are first searched for the group's ``[section]`` header; only when
one names it does the full, exact lookup run.
"""
from __future__ import annotations

import functools


def entry_points(group: str) -> list:
    """The entry points of ``group``, as ``importlib.metadata.entry_points(group=group)`` gives them."""
    import sys
    from importlib import metadata

    sections = _declared_sections(tuple(sys.path))
    if f"[{group}]" in sections or UNREADABLE in sections:
        return list(metadata.entry_points(group=group))
    return []


UNREADABLE = None  # in the sections where some entry_points.txt could not be read: the exact lookup decides


@functools.lru_cache(maxsize=4)
def _declared_sections(path: tuple) -> set:
    """The ``[section]`` lines of every ``entry_points.txt`` installed on ``path`` (sys.path), read once for it:
    formats and rules both ask, and walking the installed packages costs ~30 ms here."""
    from importlib import metadata

    found = set()
    for dist in metadata.distributions(path=list(path)):
        try:
            text = dist.read_text("entry_points.txt") or ""
        except Exception:  # noqa: BLE001 - a file it cannot read
            found.add(UNREADABLE)
            continue
        found.update(line.strip() for line in text.splitlines() if line.lstrip().startswith("["))
    return found
