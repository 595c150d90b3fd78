"""The boundary of every reader: whatever a format library raises on bad bytes becomes a FormatError.

Readers check what they can and say precisely what is wrong. What they did
not foresee (zipfile, zlib, struct, h5py, json, torch's unpickler and zip
reader raising KeyError, IndexError, RecursionError, UnicodeError... on a
damaged or hostile file) is caught here, at one place per reader: opening,
each lazy tensor load, and each sniff. The user then sees which file, what
was being read, and what the library said, never a traceback.

ImportError, MemoryError, KeyboardInterrupt and SystemExit pass through:
they are not the file's fault.
"""
from __future__ import annotations

import json
import pickle
import struct
import zipfile
import zlib
from contextlib import contextmanager

from ...errors import FormatError, WeightportError
from . import limits

# what libraries raise on bytes they cannot make sense of (RecursionError and NotImplementedError are
# RuntimeErrors, UnicodeError and JSONDecodeError ValueErrors, KeyError and IndexError LookupErrors)
LIBRARY_ERRORS = (OSError, EOFError, ValueError, TypeError, LookupError, AttributeError, ArithmeticError,
                  RuntimeError, AssertionError, BufferError, struct.error, zlib.error, zipfile.BadZipFile,
                  pickle.UnpicklingError)


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``, short enough for one error line."""
    if isinstance(exc, RecursionError):
        return "nested too deeply (RecursionError)"
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 300:
        first = first[:297] + "..."
    kind = type(exc).__name__
    if kind == "error":  # zlib.error, struct.error
        kind = f"{type(exc).__module__}.error"
    return f"{kind}: {first}" if first else kind


@contextmanager
def reading(path, what: str):
    """Run a read of ``path``; a library error becomes ``FormatError('<path>: <what>: <error>; ...')``."""
    try:
        yield
    except WeightportError:
        raise
    except LIBRARY_ERRORS as exc:
        raise FormatError(f"{path}: {what}: {describe(exc)}. The file is truncated, damaged or not what its "
                          "name says; re-download or re-export it") from exc


def guard_source(source, path) -> None:
    """Route ``source``'s lazy loads (whole or in blocks) through ``reading``, naming the tensor."""
    what = f"cannot read tensor {source.name!r} {source.shape} {source.dtype}"
    source.guard(lambda: reading(path, what))


def guard_checkpoint(ckpt) -> None:
    """Guard every tensor load of an opened checkpoint."""
    for source in ckpt.sources():
        guard_source(source, ckpt.path)


class _HugeNumber(ValueError):
    pass


def _int(text: str) -> int:
    if len(text) > _MAX_DIGITS:
        raise _HugeNumber(f"an integer of {len(text):,} digits")
    return int(text)


_MAX_DIGITS = 100  # no size, offset or shape needs more; Python's own limit (4300) would say "set_int_max_str_digits"


def load_json(raw, path, what: str):
    """Parse JSON bytes from ``path``; too large, not UTF-8, malformed or nested too deeply is a FormatError."""
    limits.check(path, f"{what} of {len(raw):,} bytes", len(raw), "MAX_HEADER_BYTES")
    try:
        return json.loads(raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw, parse_int=_int)
    except _HugeNumber as exc:
        raise FormatError(f"{path}: {what} holds {exc}, which no real metadata does; the file is damaged or "
                          "hostile") from None
    except RecursionError:
        raise FormatError(f"{path}: {what} is JSON nested too deeply to be real metadata; the file is damaged "
                          "or hostile") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and ints past Python's digit limit
        raise FormatError(f"{path}: {what} is not valid UTF-8 JSON ({describe(exc)}); the file is damaged") \
            from exc
