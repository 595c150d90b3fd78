"""Reading live objects of any framework by plain attribute access, so that no rule imports a framework."""
from __future__ import annotations


def class_names(obj) -> set:
    """The names of every class in ``obj``'s MRO: a subclass of a recognised class is recognised too."""
    return {cls.__name__ for cls in type(obj).__mro__}


def has_class(obj, *names: str) -> bool:
    """Whether any class in ``obj``'s MRO is named one of ``names``."""
    return any(cls.__name__ in names for cls in type(obj).__mro__)


def fn_name(fn) -> str:
    """A function's name (an activation's), else its repr."""
    return getattr(fn, "__name__", repr(fn))


KERAS_ACTIVATIONS = {"swish": "silu"}  # Keras' other names for one function


def keras_activation(layer):
    """The activation a Keras layer applies itself, in torch's words where they differ; None for linear."""
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    return None if name in (None, "linear") else KERAS_ACTIVATIONS.get(name, name)


def keras_graph():
    """The Keras adapter's readers of a functional graph (which layer feeds which), for the few rules whose
    configuration depends on it.

    Imported when a rule first asks, with a live Keras layer at hand: the graph
    is the adapter's knowledge, and mappings import no framework and no
    converter module at import time.
    """
    from ..converter.frameworks import keras

    return keras
