"""Dataflow among a model's rule-bearing layers: which layer's output reaches which layer's input.

Two implementations of one architecture may declare, name and even run
look-alike layers (same kind, same shapes) in different orders: timm runs a
residual block's shortcut BatchNorm last, keras-hub builds it first. What
they cannot change is what feeds what. Adapters record it by running the
model once on a small input and following every tensor from the layer that
made it (``Provenance``), through weightless operations, to the layers that
read it. The matcher then pairs look-alikes by the already-paired layers
they follow and feed.

A flow is sound but may be incomplete: where a tensor's origin was lost (an
operation the adapter cannot see), the reading layer's inputs are marked
``UNKNOWN`` and give no evidence, rather than wrong evidence.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

UNKNOWN = "<unknown>"
# elementwise nonlinearities (torch function and jax primitive names): a value that passed one on its way from
# one layer to another marks that edge "activated", which tells gelu(gate(x)) * up(x)'s two projections apart
ACTIVATIONS = frozenset({"gelu", "gelu_", "silu", "silu_", "relu", "relu_", "relu6", "sigmoid", "sigmoid_",
                         "tanh", "tanh_", "softplus", "elu", "selu", "celu", "leaky_relu", "mish", "hardswish",
                         "hardsigmoid", "hardtanh", "erf", "erfc", "logistic"})


@dataclass
class Flow:
    """What one traced run showed: per layer path, the layer paths feeding it, and the order layers ran in."""

    feeds: dict = field(default_factory=dict)  # path -> set of paths (UNKNOWN where an origin was lost)
    order: list = field(default_factory=list)  # paths, in the order they first ran
    outputs: dict = field(default_factory=dict)  # path -> numpy output of its first call (when captured)
    # path -> the paths whose output reached it through an activation (see ACTIVATIONS); kept where
    # ``sees_activations``
    activated: dict = field(default_factory=dict)
    sees_activations: bool = False
    # path -> how operations read that layer's very output: (operation, output shape, offset into it) for
    # each piece they made (a slice, a chunk, a view), where the backend can say; kept where ``sees_activations``
    cuts: dict = field(default_factory=dict)
    # path -> the (offset, size) pieces of its output, cut along the last axis, that passed an activation
    activated_cuts: dict = field(default_factory=dict)
    # the paths whose very output something other than a rule-bearing layer reads (an operation between layers)
    # or the model returns; kept where ``sees_activations``: then a layer not here is read by its readers alone
    tapped: set = field(default_factory=set)
    # path -> (the (low, high) zeros per axis that a constant zero pad added to the layer's input just before the
    # layer read it, the input's shape before it): padding written as an operation of its own, not the layer's
    padded: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when no layer's inputs were lost, so each layer's readers are all known too."""
        return not any(UNKNOWN in f for f in self.feeds.values())

    @functools.cached_property
    def activated_readers(self) -> dict:
        """path -> the paths its output reaches through an activation."""
        return self._inverted(self.activated)

    @functools.cached_property
    def readers(self) -> dict:
        """path -> the paths whose inputs it feeds (asked for once the run is over, so kept)."""
        return self._inverted(self.feeds)

    def degrees(self, node) -> tuple:
        """(how many layers feed ``node``, how many read it): what a complete run shows of its place."""
        return len(self.feeds.get(node.path, ())), len(self.readers.get(node.path, ()))

    def _inverted(self, fed_by: dict) -> dict:
        """path -> the layers that ``fed_by`` says it feeds."""
        out = {p: set() for p in self.feeds}
        for path, feeds in fed_by.items():
            for f in feeds:
                if f in out:
                    out[f].add(path)
        return out


class Provenance:
    """The rule-bearing layers each live tensor comes from, keyed by object identity.

    Every tensor seen is kept alive until the trace ends, so an id is never
    reused for another tensor while it is looked up.
    """

    def __init__(self, is_tensor, sees_all_operations: bool, capture=None):
        self.is_tensor = is_tensor
        # with every operation seen (torch's function mode), a tensor never seen is a constant (a weight,
        # a buffer); otherwise it may be the result of an unseen operation, whose origin is unknown
        self.sees_all = sees_all_operations
        self.capture = capture  # tensor -> numpy, to keep each layer's output; None to keep nothing
        self.flow = Flow(sees_activations=sees_all_operations)
        self._of: dict = {}
        self._through: dict = {}  # id -> the origins whose values reached this tensor through an activation
        self._kept: list = []
        self._outputs: dict = {}  # id -> the path of the layer whose very output this tensor is
        self._pieces: dict = {}  # id -> (path, offset, size): a piece cut from a layer's output along its last axis
        self._inside = 0  # how many rule-bearing layers are running (an operation outside all of them taps)
        self._holders: dict = {}  # id of a rule-bearing layer's weight -> the paths of the layers holding it
        self._running: dict = {}  # path -> how many of its calls are under way
        self._padded: dict = {}  # id -> (zeros per axis, shape before) of a constant zero pad's result

    def hold(self, weights_of: dict) -> None:
        """``weights_of``: path -> the weight tensors that layer holds. A weight read while none of its layers
        runs (keras-hub's Gemma 4 multiplies by its MLP layers' kernels without calling them) stands for a
        layer the run never entered: what it makes has an unknown origin, not the origins of its other input."""
        for path, weights in weights_of.items():
            for w in weights:
                self._holders.setdefault(id(w), set()).add(path)
                self._kept.append(w)

    def tensors(self, tree):
        if self.is_tensor(tree):
            yield tree
        elif isinstance(tree, dict):
            for v in tree.values():
                yield from self.tensors(v)
        elif isinstance(tree, (list, tuple)):
            for v in tree:
                yield from self.tensors(v)

    def of(self, tree) -> set:
        found = set()
        for t in self.tensors(tree):
            if id(t) in self._of:
                found |= self._of[id(t)]
            elif not self.sees_all or (id(t) in self._holders
                                       and not any(self._running.get(p) for p in self._holders[id(t)])):
                found.add(UNKNOWN)
        return found

    def mark(self, tree, origins: set, how: str = "replace", through: set = frozenset()) -> None:
        """Record where the tensors in ``tree`` come from: ``replace``, ``add`` to, or only where ``unseen``;
        ``through``: those of the origins whose values passed an activation on the way."""
        for t in self.tensors(tree):
            seen = id(t) in self._of
            if how == "replace" or not seen:
                self._of[id(t)], self._through[id(t)] = set(origins), set(through)
            elif how == "add":
                self._of[id(t)] = self._of[id(t)] | set(origins)
                self._through[id(t)] = self._through.get(id(t), set()) | set(through)
            self._kept.append(t)

    def through(self, tree) -> set:
        return set().union(*(self._through.get(id(t), ()) for t in self.tensors(tree)))

    def propagate(self, inputs, outputs, activates: bool = False) -> None:
        """An operation's outputs come from wherever its inputs came from (through an activation, if it is one)."""
        origins = self.of(inputs)
        self.mark(outputs, origins, how="add", through=self.through(inputs) | (origins if activates else set()))

    def enter(self, paths, inputs) -> None:
        """A rule-bearing layer (standing for ``paths``: a stacked RNN is several) starts reading ``inputs``."""
        self._inside += 1
        origins = self.of(inputs)
        first = next(self.tensors(inputs), None)
        if first is not None and id(first) in self._padded:
            self.flow.padded.setdefault(paths[0], self._padded[id(first)])
        self.flow.activated.setdefault(paths[0], set()).update(self.through(inputs))
        for i, path in enumerate(paths):
            self._running[path] = self._running.get(path, 0) + 1
            self.flow.feeds.setdefault(path, set()).update(origins if i == 0 else {paths[i - 1]})
            if path not in self.flow.order:
                self.flow.order.append(path)

    def leave(self, paths, outputs, activates: bool = False) -> None:
        """The layer's outputs come from it (through an activation where it applies one itself)."""
        for path in paths:
            self._running[path] = max(self._running.get(path, 0) - 1, 0)
        self.mark(outputs, {paths[-1]}, through={paths[-1]} if activates else set())
        first = next(self.tensors(outputs), None)
        if first is not None:
            self._outputs[id(first)] = paths[-1]
        if self.capture is not None and paths[-1] not in self.flow.outputs:
            first = next(self.tensors(outputs), None)
            if first is not None:
                self.flow.outputs[paths[-1]] = self.capture(first)  # its operations are no reader's
        self._inside = max(self._inside - 1, 0)

    def pad(self, output, widths, shape) -> None:
        """``output`` is its input (of ``shape``) with ``widths`` zeros added per axis: where a layer reads it,
        ``Flow.padded`` says so."""
        self._padded[id(output)] = (tuple(widths), tuple(shape))
        self._kept.append(output)

    def tap(self, tree, returned: bool = False) -> None:
        """An operation reads ``tree`` (or the model returns it): a layer's very output read outside every
        rule-bearing layer is marked in ``Flow.tapped``."""
        if self._inside and not returned:
            return
        for t in self.tensors(tree):
            if id(t) in self._outputs:
                self.flow.tapped.add(self._outputs[id(t)])

    def cut(self, name: str, inputs, outputs, offset_of) -> None:
        """Record how an operation reads a layer's very output (``Flow.cuts``); ``offset_of(piece, whole)`` is
        where a piece starts in the whole's memory, or None where it is not a view of it."""
        whole = next(self.tensors(inputs), None)
        path = self._outputs.get(id(whole)) if whole is not None else None
        if path is None:
            return
        for piece in self.tensors(outputs):
            offset = offset_of(piece, whole)
            self.flow.cuts.setdefault(path, []).append((name, tuple(piece.shape), offset))
            if offset is not None and tuple(piece.shape[:-1]) == tuple(whole.shape[:-1]):
                self._pieces[id(piece)] = (path, offset, int(piece.shape[-1]))

    def activate(self, inputs) -> None:
        """An activation reads ``inputs``: a piece of a layer's output among them is marked (``activated_cuts``)."""
        for t in self.tensors(inputs):
            if id(t) in self._pieces:
                path, offset, size = self._pieces[id(t)]
                self.flow.activated_cuts.setdefault(path, set()).add((offset, size))


def _offset(piece, whole):
    """Where torch tensor ``piece`` starts inside ``whole``'s memory (elements), if it is a view of it."""
    try:
        if piece.untyped_storage().data_ptr() != whole.untyped_storage().data_ptr():
            return None
        return int(piece.storage_offset() - whole.storage_offset())
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):  # no storage to compare (a subclass)
        return None


@contextlib.contextmanager
def torch_operations(prov: Provenance):
    """Follow tensors through every torch operation while the block runs (torch's function mode)."""
    from torch.overrides import TorchFunctionMode

    class Follow(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            prov.tap((args, kwargs))
            out = func(*args, **kwargs)
            name = getattr(func, "__name__", "")
            prov.propagate((args, kwargs), out, name in ACTIVATIONS)
            prov.cut(name, args, out, _offset)
            if name in ACTIVATIONS:
                prov.activate(args)
            if name == "pad":
                _zero_pad(prov, args, kwargs, out)
            return out

    with Follow():
        yield


def _zero_pad(prov: Provenance, args, kwargs, out) -> None:
    """Record a ``torch.nn.functional.pad`` that adds zeros (and crops nothing): (low, high) per axis, the
    last axis first in torch's spelling."""
    x, pads = (list(args) + [None, None])[:2]
    pads = kwargs.get("pad", pads)
    mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
    value = kwargs.get("value", args[3] if len(args) > 3 else None)
    if x is None or pads is None or mode != "constant" or value not in (None, 0) or not hasattr(x, "shape"):
        return
    pads = [int(p) for p in pads]
    if len(pads) % 2 or len(pads) > 2 * x.dim() or min(pads, default=0) < 0:
        return
    widths = [(0, 0)] * x.dim()
    for i in range(len(pads) // 2):
        widths[x.dim() - 1 - i] = (pads[2 * i], pads[2 * i + 1])
    prov.pad(out, widths, x.shape)
