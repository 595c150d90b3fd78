"""Command-line strings made into values (models, sizes, dtypes, hints, outputs), each checked before any work.

A bad value is a UsageError (or argparse's own error) in the command's words,
raised before a model is built or a byte is read.
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager

from . import exits
from .errors import UsageError

VERSIONS_OF = ("numpy", "torch", "keras", "jax", "flax", "equinox", "safetensors", "h5py")


def version_text() -> str:
    """weightport's version and those of the libraries it works with, as a bug report wants them."""
    import platform
    from importlib import metadata

    from . import __version__

    found = []
    for dist in VERSIONS_OF:
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return f"weightport {__version__} (Python {platform.python_version()}; {', '.join(found)})"


class VersionAction(argparse.Action):
    """``--version``: looked up only when asked (reading package metadata takes a moment)."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def load_object(spec: str):
    """The object named by ``pkg.module:name`` or ``path/to/file.py:name``; a callable is called with no arguments."""
    import importlib
    import importlib.util

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
    return obj() if callable(obj) and not is_model(obj) else obj


def is_model(obj) -> bool:
    from .converter.frameworks import adapter_for

    return adapter_for(obj) is not None


def parse_size(text):
    """Bytes from '123', '500MB', '5GB' (powers of 1000) or '2GiB' (powers of 1024)."""
    from .converter.shards import byte_size

    return byte_size(text)


@contextmanager
def executor_for(args):
    """The executor ``--workers N`` (local processes) or ``--scheduler ADDRESS`` (Dask) asks for, else None."""
    from .converter import executors

    if args.workers is not None:
        with executors.local_processes(args.workers) as pool:
            yield pool
    elif args.scheduler:
        with executors.dask_scheduler(args.scheduler) as executor:
            yield executor
    else:
        yield None


def parse_dtype(text: str) -> str:
    """``text`` if it names a floating dtype (float16, bfloat16, float8_e4m3fn...), checked before any work."""
    from .converter.arrays import cast_dtype

    try:
        cast_dtype(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exits.cli_words(str(exc))) from None
    return text


def key_values(pairs, flag: str, usage: str) -> dict:
    """{key: value} from a repeated ``flag KEY=VALUE``; ``usage`` says what KEY=VALUE means in the error."""
    found = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"{flag} takes {usage}, got {pair!r}")
        found[key] = value
    return found


def parse_hints(pairs) -> dict | None:
    """{source path: target path} from repeated ``--hint SOURCE=TARGET``."""
    if not pairs:
        return None
    return key_values(pairs, "--hint", "SOURCE=TARGET (a source layer path, a target layer path)")


def parse_options(pairs) -> dict | None:
    """Rule options from repeated ``--option KEY=VALUE`` (``rope=interleaved->half``, ``head_dim=64``): whole
    numbers become ints; which names and values are known is checked by ``options=`` itself."""
    if not pairs:
        return None
    found = key_values(pairs, "--option", "KEY=VALUE (e.g. rope=interleaved->half, head_dim=64)")
    return {key.strip(): int(value) if value.strip().isdigit() else value.strip() for key, value in found.items()}


def check_destination(path: str) -> None:
    """Refuse an output whose suffix names no format before any work (the command picks the format by suffix)."""
    from .converter.formats import format_for, suffixes

    try:
        format_for(path)
    except UsageError:
        raise UsageError(f"cannot tell which format to write for {path!r}: end its name with one of "
                         f"{', '.join(suffixes(writable=True))}") from None
