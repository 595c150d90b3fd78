"""The formats table, discovered: every format module of this package, plus plugins and run-time additions.

A module (or subpackage) here is a format when it declares what the table
needs, so adding a format is adding one file:

- ``NAME``: what users pass as ``format=`` / ``--format``;
- ``SUFFIXES``: file names it is known by (the longest match picks the writer);
- ``SNIFF_ORDER``: lower is tried first when guessing a file's format from
  its first bytes (a format with weak magic, like msgpack's, goes last);
- ``WRITABLE``: whether it has a writer;
- ``sniff(path, head) -> bool``, ``read(path, **opts) -> Checkpoint`` and,
  if writable, ``write(path, sources, metadata, *, staging, progress, **opts)``
  (``opts["like"]``: the live target model, where one was given);
- optionally ``FOLDER = True``: the checkpoint is a folder (Orbax); such a
  module alone is asked to ``sniff`` folders (with ``head=b""``), and files
  never.

Outside this package, a format module is added by an entry point in the
``weightport.formats`` group (naming the module), or by ``register(module)``.
"""
from __future__ import annotations

import importlib
import pkgutil
import warnings

from ...errors import UsageError, WeightportWarning

ENTRY_POINTS = "weightport.formats"
REQUIRED = ("NAME", "SUFFIXES", "SNIFF_ORDER", "WRITABLE", "sniff", "read")
_PACKAGE = __name__.rpartition(".")[0]
_found: dict | None = None  # name -> module, from this package and entry points
_added: dict = {}  # name -> module, from register()


def is_format(module) -> bool:
    """Whether ``module`` declares everything the table needs."""
    return all(hasattr(module, attr) for attr in REQUIRED) and (not module.WRITABLE or hasattr(module, "write"))


def register(module):
    """Add a format module to the table (a plugin's, or a test's); returns it. A built-in name is refused."""
    if not is_format(module):
        missing = [a for a in REQUIRED + ("write",) if not hasattr(module, a)]
        raise UsageError(f"{getattr(module, '__name__', module)!r} is not a format module: it lacks {missing}")
    if module.NAME in _discovered() and _discovered()[module.NAME] is not module:
        raise UsageError(f"format {module.NAME!r} exists already; give the new one another NAME")
    _added[module.NAME] = module
    return module


def unregister(name: str) -> None:
    """Remove a format added with ``register``."""
    _added.pop(name, None)


def _discovered() -> dict:
    global _found
    if _found is None:
        found = {}
        package = importlib.import_module(_PACKAGE)
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{_PACKAGE}.{info.name}")
            if is_format(module):
                found[module.NAME] = module
        found.update(_plugins(found))
        _found = found
    return _found


def _plugins(builtin: dict) -> dict:
    """Format modules named by ``weightport.formats`` entry points; a broken one is skipped with a warning."""
    from ...plugins import entry_points

    found = {}
    for ep in entry_points(ENTRY_POINTS):
        try:
            module = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break every command
            warnings.warn(f"format plugin {ep.name!r} ({ep.value}) cannot be loaded ({exc}); skipped",
                          WeightportWarning, stacklevel=3)
            continue
        if not is_format(module) or module.NAME in builtin:
            warnings.warn(f"format plugin {ep.name!r} ({ep.value}) is not a format module or reuses a built-in "
                          f"name; skipped (a format declares {', '.join(REQUIRED)})", WeightportWarning, stacklevel=3)
            continue
        found[module.NAME] = module
    return found


def modules() -> list:
    """Every format module, in sniff order."""
    every = {**_discovered(), **_added}
    return sorted(every.values(), key=lambda m: (m.SNIFF_ORDER, m.NAME))


def names() -> tuple:
    """Format names, in sniff order (the CLI's ``--format`` choices)."""
    return tuple(m.NAME for m in modules())


def suffixes(writable: bool = False) -> tuple:
    """Every suffix a format is known by (only those of writable formats, if asked), in sniff order."""
    return tuple(s for m in modules() if m.WRITABLE or not writable for s in m.SUFFIXES)


def by_name(name: str):
    """The format module called ``name``."""
    found = {m.NAME: m for m in modules()}
    if name not in found:
        raise UsageError(f"unknown format {name!r}; known formats: {', '.join(found)}")
    return found[name]
