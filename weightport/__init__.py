"""weightport: move trained weights between Keras, PyTorch, JAX/Flax, safetensors and ONNX.

Importing this package imports no framework: each call imports what it needs.
"""
from .api import convert, get_weights, load, port, save, set_weights, verify
from .errors import (AmbiguityError, ConfigMismatchError, FormatError, MatchError, OutputExistsError, ShapeMismatchError,
                     ShardError, UnsafePickleError, UnsupportedLayerError, UsageError, VerificationError, WeightportError,
                     WeightportWarning)
from .mappings.rule import Link, Rule, link, register

__version__ = "0.1.0"

__all__ = [
    "port", "convert", "load", "save", "get_weights", "set_weights", "verify",
    "Rule", "Link", "link", "register",
    "WeightportError", "UsageError", "UnsupportedLayerError", "ConfigMismatchError", "ShapeMismatchError",
    "MatchError", "AmbiguityError", "FormatError", "UnsafePickleError", "OutputExistsError", "ShardError", "VerificationError",
    "WeightportWarning",
]
