"""One exception tree, so callers can catch ``WeightportError`` and nothing else.

Every message names the thing at fault (file, layer, slot or tensor), what was
expected, what was found, and what to try next.
"""


class WeightportError(Exception):
    """Root of every error weightport raises on purpose."""


class UsageError(WeightportError, ValueError):
    """The call itself is wrong: an unknown layout, an unsupported object, bad arguments."""


class UnsupportedLayerError(WeightportError):
    """A layer holds weights but no rule knows how to translate it."""


class ConfigMismatchError(WeightportError):
    """Two paired layers differ in configuration that weights cannot carry."""


class ShapeMismatchError(WeightportError):
    """A tensor does not have the shape its slot expects."""


class MatchError(WeightportError):
    """Source and target layers could not be paired; the target was left untouched."""


class AmbiguityError(MatchError, UsageError):
    """Several readings fit and weightport will not guess; more information (a model, hints) settles it.

    A refusal like any ``MatchError``, and a ``UsageError`` for callers who catch that.
    """


class VerificationError(WeightportError):
    """A port checked with ``check=`` computes something else than its source; the target was restored."""


class FormatError(WeightportError):
    """A file is unreadable, corrupt or not what its name or header claims."""


class UnsafePickleError(FormatError):
    """A torch file needs full unpickling, which could run arbitrary code."""


class OutputExistsError(WeightportError, FileExistsError):
    """The destination exists and ``overwrite`` was not asked for."""


class OutputError(UsageError):
    """The output cannot be written where asked: no space, no permission, a read-only file system,
    a folder in the way, or the output would replace the input. Nothing was left behind."""


class ShardError(OutputError):
    """A shard of a sharded conversion could not be written (its worker died, or failed past its retries).
    The shards already in place are kept: the same call with ``resume=True`` writes the rest."""


class CastOverflowError(WeightportError):
    """Casting a tensor to a narrower float type would turn finite values into inf."""


class WeightportWarning(UserWarning):
    """A conversion went through, but something may change the model's outputs."""
