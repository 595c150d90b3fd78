"""SimpleRNN, LSTM and GRU <-> torch's nn.RNN, nn.LSTM and nn.GRU (Bidirectional and stacked too).

Keras keeps ``kernel (in, G*u)``, ``recurrent_kernel (u, G*u)`` and one
``bias (G*u)``; torch keeps ``weight_ih_l{k} (G*u, in)``, ``weight_hh_l{k}
(G*u, u)`` and two biases, ``bias_ih`` and ``bias_hh``, which it adds. So:

- kernels are transposed, and for the GRU the gate blocks reordered (Keras
  z, r, h; torch r, z, n). LSTM gates are i, f, c, o on both sides.
- LSTM and SimpleRNN: torch's two biases are summed into Keras' one; back,
  the sum goes to ``bias_ih`` and zeros to ``bias_hh``. Keras -> torch -> Keras
  is bitwise, torch -> Keras -> torch only function-preserving (reported so).
- GRU with ``reset_after=True`` (Keras 3's default) keeps both biases as a
  ``(2, 3u)`` bias, so it maps exactly. ``reset_after=False`` applies the reset
  gate before the recurrent matmul, which torch cannot compute: refused.
- ``Bidirectional(layer)`` <-> ``bidirectional=True``: the forward layer's
  weights are the ``_l{k}`` slots, the backward layer's ``_l{k}_reverse``.
- A torch ``num_layers=N`` module stands for N stacked Keras layers (``expand``).
- torch ``proj_size > 0`` (LSTM projections) has no Keras counterpart: refused.

Configuration the weights cannot carry is compared: activation and
recurrent_activation (torch's are fixed: tanh and sigmoid; nn.RNN's
nonlinearity is tanh or relu), use_bias, bidirectional, Bidirectional
merge_mode (torch always concatenates). Not compared: dropout and
recurrent_dropout (inactive at inference), unit_forget_bias (an initializer),
batch_first (an input layout: feed each side its own), and go_backwards,
return_sequences, return_state, stateful, which decide what a layer computes
or returns but are not visible from torch's side; make them agree by hand.
"""
import re

from ..errors import ConfigMismatchError, UnsupportedLayerError
from .rule import Rule, link, register
from .transforms import Each, ReorderBlocks, SumSplit, Transpose, Unstack

_TORCH_NAME = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?$")
_DIRECTIONS = (("forward/", ""), ("backward/", "_reverse"))


def _has_class(obj, names) -> bool:
    return any(cls.__name__ in names for cls in type(obj).__mro__)


def _fn_name(fn) -> str:
    return getattr(fn, "__name__", repr(fn))


class RecurrentRule(Rule):
    """Shared by the three kinds; subclasses set the gate count and what differs."""

    gates = 1
    keras_cells: tuple = ()
    # torch gate block k is Keras gate block torch_gate_order[k]; None: same order
    torch_gate_order = None
    # activations torch computes with, whatever the module says (Keras vocabulary)
    torch_activations: dict = {}
    checks = {"activation": "error", "recurrent_activation": "error", "use_bias": "error",
              "bidirectional": "error", "merge_mode": "warning"}
    check_hints = {
        "activation": "torch's LSTM and GRU always use tanh; build the Keras layer with activation='tanh'",
        "recurrent_activation": "torch's LSTM and GRU gates always use sigmoid; build the Keras layer with "
                                "recurrent_activation='sigmoid'",
        "bidirectional": "wrap the Keras layer in Bidirectional, or set bidirectional= on the torch module",
        "merge_mode": "torch concatenates both directions; the weights are ported, but the outputs are combined "
                      "differently",
    }

    # -- recognising ------------------------------------------------------
    def matches(self, layout, layer):
        if layout != "keras":
            return super().matches(layout, layer)
        layers = _directions(layer) or [layer]
        return all(_has_class(getattr(each, "cell", None), self.keras_cells) for each in layers)

    def expand(self, layout, hp):
        return [dict(hp, layer=k) for k in range(hp.get("num_layers", 1))] if layout == "torch" else [hp]

    # -- hyperparameters ----------------------------------------------------
    def cell_config(self, cell) -> dict:
        hp = {"units": cell.units, "use_bias": cell.use_bias, "activation": _fn_name(cell.activation)}
        if hasattr(cell, "recurrent_activation"):
            hp["recurrent_activation"] = _fn_name(cell.recurrent_activation)
        return hp

    def config_keras(self, layer):
        pair = _directions(layer)
        if not pair:
            return {**self.cell_config(layer.cell), "bidirectional": False, "name": layer.name}
        fwd, bwd = (self.cell_config(each.cell) for each in pair)
        # a key the two directions disagree on becomes a pair, so any check on it fails loudly
        hp = {key: fwd[key] if fwd[key] == bwd.get(key) else (fwd[key], bwd.get(key)) for key in fwd}
        return {**hp, "bidirectional": True, "merge_mode": layer.merge_mode, "name": layer.name}

    def config_torch(self, module):
        if getattr(module, "proj_size", 0):
            raise UnsupportedLayerError(
                f"torch {module!r} uses proj_size={module.proj_size} (LSTM projections of the hidden state "
                "at every step); Keras has no such LSTM, so this layer cannot be ported. Build the torch "
                "LSTM with proj_size=0")
        return self._torch_hp(module.hidden_size, module.bias, module.bidirectional, module.num_layers,
                              self.torch_activations or {"activation": module.nonlinearity})

    def _torch_hp(self, units, use_bias, bidirectional, num_layers, activations):
        hp = {"units": units, "use_bias": bool(use_bias), **activations, "bidirectional": bool(bidirectional),
              "num_layers": num_layers, "layer": 0}
        if bidirectional:
            hp["merge_mode"] = "concat"
        return hp

    # -- bare checkpoint groups -------------------------------------------------
    def infer_torch(self, shapes):
        found = {}
        for name in shapes:
            m = _TORCH_NAME.match(name)
            if not m:
                return None
            found[(m.group(1), int(m.group(2)), m.group(3) or "")] = tuple(shapes[name])
        hh = found.get(("weight_hh", 0, ""))
        if hh is None or len(hh) != 2 or hh[0] != self.gates * hh[1]:
            return None
        units, rows = hh[1], hh[0]
        layers = 1 + max(k for _, k, _ in found)
        bidirectional = any(sfx for _, _, sfx in found)
        use_bias = ("bias_ih", 0, "") in found
        expected = {}
        for k in range(layers):
            for _, sfx in _DIRECTIONS[:1 + bidirectional]:
                expected[("weight_hh", k, sfx)] = (rows, units)
                expected[("weight_ih", k, sfx)] = found.get(("weight_ih", k, sfx))
                if use_bias:
                    expected.update({("bias_ih", k, sfx): (rows,), ("bias_hh", k, sfx): (rows,)})
        ih_ok = all(s is not None and len(s) == 2 and s[0] == rows
                    for (kind, _, _), s in expected.items() if kind == "weight_ih")
        if expected != found or not ih_ok:
            return None
        activations = self.torch_activations  # nn.RNN's nonlinearity does not show in its weights
        return self._torch_hp(units, use_bias, bidirectional, layers, activations)

    def infer_keras(self, shapes):
        k, rk, b = shapes.get("kernel"), shapes.get("recurrent_kernel"), shapes.get("bias")
        if set(shapes) - {"kernel", "recurrent_kernel", "bias"} or k is None or rk is None:
            return None
        if len(k) != 2 or len(rk) != 2 or rk[1] != self.gates * rk[0] or k[1] != rk[1]:
            return None
        told = self.keras_bias_hp(tuple(b), rk[1]) if b is not None else {}
        if told is None:
            return None
        return {"units": rk[0], "use_bias": b is not None, "bidirectional": False, **told}

    def keras_bias_hp(self, bias_shape, width):
        """The hyperparameters a Keras bias shape tells ({} if none), or None when it does not fit."""
        return {} if bias_shape == (width,) else None

    # -- slots ------------------------------------------------------------
    def canonical(self, hp):
        names = ["kernel", "recurrent_kernel"] + (["bias"] if hp.get("use_bias", True) else [])
        if not hp.get("bidirectional"):
            return names
        return [prefix + n for prefix, _ in _DIRECTIONS for n in names]

    def kernel_transform(self):
        t = Transpose(1, 0)
        return t >> ReorderBlocks(0, self.torch_gate_order) if self.torch_gate_order else t

    def bias_transform(self):
        """Keras' one bias -> torch's (bias_ih, bias_hh)."""
        return SumSplit(2)

    def links_torch(self, hp):
        k = hp.get("layer", 0)
        directions = _DIRECTIONS if hp.get("bidirectional") else (("", ""),)
        return [lk for prefix, sfx in directions for lk in (
            link(prefix + "kernel", f"weight_ih_l{k}{sfx}", self.kernel_transform()),
            link(prefix + "recurrent_kernel", f"weight_hh_l{k}{sfx}", self.kernel_transform()),
            link(prefix + "bias", (f"bias_ih_l{k}{sfx}", f"bias_hh_l{k}{sfx}"), self.bias_transform()),
        )]


def _directions(layer):
    """[forward layer, backward layer] of a Keras Bidirectional, else None."""
    if _has_class(layer, ("Bidirectional",)):
        return [layer.forward_layer, layer.backward_layer]
    return None


@register
class SimpleRNNRule(RecurrentRule):
    name = "simple_rnn"
    classes = {"keras": ("SimpleRNN", "Bidirectional"), "torch": ("RNN",)}
    keras_cells = ("SimpleRNNCell",)
    check_hints = {**RecurrentRule.check_hints,
                   "activation": "torch's nn.RNN computes with its nonlinearity ('tanh' or 'relu'); "
                                 "make it the Keras layer's activation"}


@register
class LSTMRule(RecurrentRule):
    name = "lstm"
    gates = 4
    classes = {"keras": ("LSTM", "Bidirectional"), "torch": ("LSTM",)}
    keras_cells = ("LSTMCell",)
    torch_activations = {"activation": "tanh", "recurrent_activation": "sigmoid"}


@register
class GRURule(RecurrentRule):
    name = "gru"
    gates = 3
    classes = {"keras": ("GRU", "Bidirectional"), "torch": ("GRU",)}
    keras_cells = ("GRUCell",)
    torch_gate_order = (1, 0, 2)  # torch r, z, n = Keras blocks 1 (r), 0 (z), 2 (h)
    torch_activations = {"activation": "tanh", "recurrent_activation": "sigmoid"}

    def cell_config(self, cell):
        return {**super().cell_config(cell), "reset_after": bool(cell.reset_after)}

    def _torch_hp(self, *args):
        return {**super()._torch_hp(*args), "reset_after": True}

    def keras_bias_hp(self, bias_shape, width):
        if bias_shape == (2, width):
            return {"reset_after": True}
        return {"reset_after": False} if bias_shape == (width,) else None

    def bias_transform(self):
        # Keras (2, 3u) = [input bias; recurrent bias], each in z, r, h order
        return Unstack(2) >> Each(2, ReorderBlocks(0, self.torch_gate_order))

    def share(self, source_hp, target_hp):
        a, b = source_hp.get("reset_after", True), target_hp.get("reset_after", True)
        if a != b:
            old = source_hp if not a else target_hp
            raise ConfigMismatchError(
                f"GRU layer {old.get('name', '(unnamed)')!r} has reset_after=False, but the layer it is paired "
                "with computes reset_after=True (torch's nn.GRU always does: it applies the reset gate after "
                "the recurrent matmul and keeps two biases). The two compute different functions, so no weights "
                "were ported. Rebuild the Keras GRU with reset_after=True (the Keras 3 default) and train or "
                "port from that")
        return super().share(source_hp, target_hp)
