"""Live frameworks: find the adapter for an object and walk its layers.

An adapter knows one framework's object model (children, weights, frozen
state, how to run it) and nothing about layer kinds: which layers bear a rule
is asked of the rule registry.
"""
from __future__ import annotations

import importlib

from ...errors import UsageError

# Checked in this order: under KERAS_BACKEND=torch every Keras layer is also a
# torch.nn.Module, so Keras must be asked first.
ADAPTER_MODULES = ("keras", "torch", "flax", "equinox", "onnx")


class Framework:
    """Base adapter; one subclass per live framework."""

    layout = ""
    package = ""  # the framework's top-level package: its own layer classes live there (``builtin``)
    sep = "."  # joins a parent's path and a child's name

    def owns(self, obj) -> bool:
        raise NotImplementedError

    def children(self, layer) -> list:
        """(name, child) pairs of direct sub-layers."""
        raise NotImplementedError

    def own_weights(self, layer) -> list:
        """Names of weights held directly by ``layer`` (not by its children)."""
        raise NotImplementedError

    def constants(self, model) -> dict:
        """path -> array of all ``model`` holds that training does not set (non-persistent buffers too)."""
        return {}

    def untrained(self, layer) -> set:
        """Names of ``layer``'s own weights that training does not set (Keras' non-trainable variables): state
        the model computes itself, such as rotary frequencies."""
        return set()

    def read(self, layer, slots) -> dict:
        """slot -> numpy array, for the given layout slot names."""
        raise NotImplementedError

    def shapes(self, layer, slots) -> dict:
        raise NotImplementedError

    def dtypes(self, layer, slots) -> dict:
        raise NotImplementedError

    def write(self, layer, arrays: dict) -> None:
        """Assign slot -> array into ``layer`` in place (shapes already checked)."""
        raise NotImplementedError

    def destinations(self, layer, slots) -> dict:
        """slot -> the tensor holding that weight (torch, or numpy), where copying into it in place is exactly
        assigning it; {} where the framework replaces values instead (jax) or computes them (weight_norm)."""
        return {}

    def fresh(self, layer, slots) -> dict:
        """slot -> (shape, dtype) of weights ``layer`` takes as new arrays it keeps without copying (``adopt``):
        one copy into a fresh buffer is then the whole move. {} where it copies what it is given."""
        return {}

    def adopt(self, layer, arrays: dict) -> None:
        """Make the fresh buffers ``arrays`` (slot -> array, from ``fresh``'s specs) ``layer``'s weights."""
        raise NotImplementedError

    def activation_after(self, siblings, index: int):
        """The activation applied right after ``siblings[index]`` by the next sibling, where this framework
        spells activations as layers of their own (torch's nn.GELU after a Linear); None otherwise."""
        return None

    def count_weights(self, layer):
        """How many tensors ``layer`` holds, its sub-layers' included; None where unknown."""
        return None

    def file_names(self, model, path: str):
        """``names(node, slot)``: what a file at ``path`` calls each tensor of ``model``, where this
        framework names them its own way; None for the layout's usual ``<layer path><separator><slot>``."""
        return None

    def model_json(self, model):
        """Text that rebuilds ``model`` (its class and config, not its weights), for a file written from it to
        record, so that a refusal needing the file's own model can print the line that builds it; None where
        this framework has no such text."""
        return None

    def reparametrized(self, layer) -> dict:
        """slot -> how ``layer`` computes that weight from others it stores (torch's ``weight_norm``): read,
        it is folded into one tensor; written, split back. {} for most layers."""
        return {}

    def builtin(self, layer) -> bool:
        """Whether ``layer``'s class is the framework's own: one no rule accepted (a Keras EinsumDense with an
        equation no rule reads) is never guessed from its weights, which could fit a rule of another kind."""
        return type(layer).__module__.split(".")[0] == self.package

    def weight_ids(self, layer) -> set:
        """Identities of the tensor objects ``layer`` holds, sub-layers' included, to see weights two layers
        share (a tied output head); empty where a framework keeps no shared objects."""
        return set()

    def tensor_aliases(self, model) -> dict:
        """name -> the other names of the same tensor object in ``model`` (a tied head's weight is the token
        table): a file that stores a shared tensor once, under one of its names, holds it for all. {} where a
        framework keeps no shared objects."""
        return {}

    def saved_names(self, model) -> dict:
        """{name: the name a file the model's library saves gives that tensor}, where the two differ
        (transformers 5 writes its legacy keys); {} where a framework saves tensors under their own names."""
        return {}

    def has_graph(self, layer) -> bool:
        """Whether the model records what feeds this layer (Keras: a symbolic graph; others: n/a)."""
        return True

    def is_frozen(self, layer):
        """True/False, or None where the layer has nothing to freeze."""
        return None

    def set_frozen(self, layer, frozen: bool) -> None:
        pass

    def display_name(self, layer) -> str:
        return type(layer).__name__

    def run(self, model, inputs):
        """Forward pass in inference mode; outputs as numpy (nested like the model's)."""
        raise NotImplementedError

    def trace(self, model, refs, inputs, capture: bool = False):
        """The ``Flow`` of one run of ``model`` on ``inputs`` among ``refs`` (its rule-bearing layers), or None
        where this framework cannot follow tensors. ``capture`` keeps each layer's first output."""
        return None

    def sample_inputs(self, model, refs) -> list:
        """Small inputs ``model`` may accept, for tracing, built from what its first layer reads; [] if unknown.

        A loose tensor reads no input (a masked-LM head's bias may be declared before the encoder); where the
        first layer declared is not the first to run, an input table's ids are tried next."""
        layers = [r for r in refs if not getattr(r, "loose", False)]
        tables = [r for r in layers if r.candidates[0][0].reads_inputs]
        found = []
        for ref in layers[:1] + [t for t in tables[:1] if t is not layers[0]]:
            rule, hp = ref.candidates[0]
            found += rule.sample_inputs(self.layout, hp, ref.canonical_shapes(rule, hp))
        return found

    def finish(self, model):
        """The object a port returns as ``report.target`` (functional frameworks copy)."""
        return model

    def layer_nodes(self, model):
        """(refs, unmapped) for a model whose layers are not objects with classes, else None (walk() finds them).

        Flax Linen variables are plain nested dicts: their adapter recognises
        layers from tensor names and shapes, as checkpoints are.
        """
        return None


class ArrayFields(Framework):
    """An adapter that finds a layer's arrays by slot (``_arrays``): reading, shapes and dtypes follow from it."""

    def _arrays(self, layer, slots) -> dict:
        """slot -> the array held now, for the slots the layer has."""
        raise NotImplementedError

    def read(self, layer, slots) -> dict:
        from ..arrays import to_numpy

        return {s: to_numpy(a) for s, a in self._arrays(layer, slots).items()}

    def shapes(self, layer, slots) -> dict:
        return {s: tuple(a.shape) for s, a in self._arrays(layer, slots).items()}

    def dtypes(self, layer, slots) -> dict:
        import numpy as np

        return {s: np.dtype(a.dtype) for s, a in self._arrays(layer, slots).items()}


_adapters: list = []


def adapters() -> list:
    if not _adapters:
        for name in ADAPTER_MODULES:
            try:
                mod = importlib.import_module(f"{__name__}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{name}":
                    raise
                continue
            _adapters.append(mod.ADAPTER)
    return _adapters


def adapter_for(obj) -> Framework | None:
    """The adapter owning a live object, or None (checks never import a framework)."""
    for fw in adapters():
        if fw.owns(obj):
            return fw
    return None


def require_adapter(obj, role: str = "object") -> Framework:
    fw = adapter_for(obj)
    if fw is None:
        raise UsageError(
            f"the {role} is a {type(obj).__module__}.{type(obj).__name__}, which weightport cannot read: "
            "pass a Keras layer/model, a torch.nn.Module, a Flax module or variables dict, an Equinox module, "
            "a state dict, or a checkpoint path")
    return fw


from .layers import LayerRef, LooseRef, Unmapped, configured, join, walk  # noqa: E402,F401 - re-exported
