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

Flax keeps a step function (a cell, run over time by ``nn.RNN``), and the
cell is what pairs with the Keras layer. Its dense layers hold (in, out)
kernels like Keras, in one of two forms: one dense per gate (Linen's cells,
NNX's LSTMCell: ``ii, if, ig, io`` on the input and ``hi, hf, hg, ho`` on the
state for LSTM; ``ir, iz, in, hr, hz, hn`` for GRU; ``i, h`` for SimpleCell),
or the gates packed in ``dense_i``/``dense_h`` (NNX's OptimizedLSTMCell,
GRUCell, SimpleCell). Only one side of each gate has a bias:

- LSTM: the state side (``h*``), so Keras' one bias splits into it exactly;
  gates are i, f, g, o in both.
- GRU: the input side, plus ``hn`` (Linen only) inside the reset product,
  like Keras ``reset_after=True``. Keras' recurrent z and r biases are
  folded into the input ones (same function; back in Keras they come out
  folded, so Keras -> Flax -> Keras is only function-preserving). NNX's
  GRUCell (gates r, z, n, packed) has no ``hn`` bias at all: a layer whose
  recurrent candidate bias is not zero cannot be ported into it (refused).

Equinox keeps cells too (``LSTMCell``, ``GRUCell``: one step, run over time
by the user's code), with torch's (G*u, in) and (G*u, u) matrices in torch's
gate order and one input-side ``bias``. LSTM: i, f, g, o and one bias, as
Keras: exact. GRU: r, z, n, the recurrent r and z biases folded into
``bias`` as for Flax, the recurrent candidate bias kept as ``bias_n``.
"""
import re

import numpy as np

from ..errors import ConfigMismatchError, UnsupportedLayerError, UsageError
from .rule import Rule, link, register
from .transforms import Each, ReorderBlocks, Split, SumSplit, Transform, Transpose, Unstack

_TORCH_NAME = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?$")
_DIRECTIONS = (("forward/", ""), ("backward/", "_reverse"))


def _has_class(obj, names) -> bool:
    return any(cls.__name__ in names for cls in type(obj).__mro__)


def _fn_name(fn) -> str:
    return getattr(fn, "__name__", repr(fn))


def _flax_form_of(hp) -> str:
    """Which of Flax's cell layouts a flax-side hp stands for; only a Flax cell can say."""
    form = hp.get("flax_form")
    if form is None:
        raise UsageError("a Flax recurrent cell keeps its gates in one of several layouts (Linen per-gate "
                         "dense layers, NNX packed...); write flax layout for it with like= (the Flax model or "
                         "(module, variables)) so the layout is known")
    return form


def _flax_form(cell) -> str:
    """How a live Flax cell holds its gates: "packed" (dense_i/dense_h), "gates_nnx" (NNX's ``if_``) or "gates"."""
    if hasattr(cell, "dense_h"):
        return "packed"
    return "gates_nnx" if hasattr(cell, "if_") else "gates"


class FoldRecurrentBias(Transform):
    """Keras GRU (2, 3u) bias [input z, r, h; recurrent z, r, h] <-> Flax's input-side biases.

    The recurrent z and r biases are added to the input ones (they meet in
    the same sum before the sigmoid). With ``keep_candidate`` the recurrent h
    bias is kept (Linen's ``hn`` bias): out are z, r, h input biases and it.
    Without (NNX GRUCell), one (3u,) input bias comes out, and a non-zero
    recurrent h bias is refused, since no Flax weight can hold it. Back, the
    recurrent z and r biases are zeros: lossy in the canonical -> Flax direction.
    """

    n_in = 1
    exact = False

    def __init__(self, units: int, keep_candidate: bool):
        self.units, self.keep_candidate = units, keep_candidate
        self.n_out = 4 if keep_candidate else 1

    def forward(self, arrays):
        b = arrays[0]
        u = b.shape[-1] // 3
        folded = b[0].astype(np.float64)
        folded[:2 * u] += b[1, :2 * u]
        folded = folded.astype(b.dtype)
        candidate = np.ascontiguousarray(b[1, 2 * u:])
        if self.keep_candidate:
            return folded[:u], folded[u:2 * u], folded[2 * u:], candidate
        if np.any(candidate != 0):
            raise UnsupportedLayerError(
                f"this GRU's recurrent bias of the candidate gate (bias[1, {2 * u}:{3 * u}] in Keras, b_hn in "
                f"torch) is not zero (largest magnitude {float(np.max(np.abs(candidate.astype(np.float64)))):g}), "
                "but flax.nnx.GRUCell keeps no such bias: it computes n = tanh(x W_in + b_in + r * (h W_hn)), "
                "so no weights reproduce this layer. Nothing was changed; port into a flax.linen.GRUCell "
                "(which keeps it as hn/bias) or a Keras/torch GRU instead")
        return (folded,)

    def inverse(self, arrays):
        if self.keep_candidate:
            z, r, h, candidate = arrays
            inputs, recurrent = np.concatenate([z, r, h]), np.concatenate([np.zeros_like(z), np.zeros_like(r),
                                                                           candidate])
        else:
            inputs = arrays[0]
            recurrent = np.zeros_like(inputs)
        return (np.stack([inputs, recurrent]),)

    def forward_shapes(self, shapes):
        (two, width), = [tuple(s) for s in shapes]
        if two != 2 or width % 3:
            raise ValueError(f"a GRU bias with reset_after=True is (2, 3*units), got {(two, width)}")
        return ((width // 3,),) * 4 if self.keep_candidate else ((width,),)

    def inverse_shapes(self, shapes):
        width = sum(s[0] for s in shapes[:3]) if self.keep_candidate else shapes[0][0]
        return ((2, width),)

    def describe(self):
        kept = " and hn" if self.keep_candidate else ""
        return f"fold recurrent z,r biases into the input ones{kept} (lossy)"


class PackGates(Transform):
    """(z, r, h, candidate) gate biases -> (one bias with the blocks in ``order``, candidate): Equinox's GRU bias."""

    n_in, n_out = 4, 2

    def __init__(self, order):
        self.order = tuple(order)

    def forward(self, arrays):
        *gates, candidate = arrays
        return np.concatenate([gates[k] for k in self.order]), candidate

    def inverse(self, arrays):
        packed, candidate = arrays
        blocks = np.split(packed, len(self.order))
        gates = [None] * len(self.order)
        for block, k in zip(blocks, self.order):
            gates[k] = np.ascontiguousarray(block)
        return (*gates, candidate)

    def forward_shapes(self, shapes):
        return (sum(s[0] for s in shapes[:-1]),), tuple(shapes[-1])

    def inverse_shapes(self, shapes):
        width = shapes[0][0] // len(self.order)
        return ((width,),) * len(self.order) + (tuple(shapes[1]),)

    def describe(self):
        return "pack gate biases " + str(self.order).replace(" ", "")


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

    # -- Flax cells -------------------------------------------------------------
    flax_forms = ("gates", "packed")

    def config_flax(self, cell):
        hp = self._flax_hp(int(cell.hidden_features), _flax_form(cell))
        hp["activation"] = _fn_name(cell.activation_fn)
        if hasattr(cell, "gate_fn"):
            hp["recurrent_activation"] = _fn_name(cell.gate_fn)
        return hp

    def _flax_hp(self, units, form):
        return {"units": units, "use_bias": True, "bidirectional": False, "flax_form": form}

    # -- Equinox cells ----------------------------------------------------------
    def config_equinox(self, cell):
        return {"units": int(cell.hidden_size), "use_bias": bool(cell.use_bias), **self.torch_activations,
                "bidirectional": False}

    def links_equinox(self, hp):
        return [link("kernel", "weight_ih", self.kernel_transform()),
                link("recurrent_kernel", "weight_hh", self.kernel_transform()),
                link("bias", "bias")]

    def infer_flax(self, shapes):
        for form in self.flax_forms:
            names = self.links("flax", self._flax_hp(0, form))
            hidden = next(lk.native[0] for lk in names if lk.canonical == ("recurrent_kernel",))
            if hidden not in shapes or len(shapes[hidden]) != 2:
                continue
            hp = self._flax_hp(shapes[hidden][0], form)
            if set(shapes) != set(self.native_slots("flax", hp)):
                continue
            try:
                canonical = self.canonical_shapes("flax", hp, shapes)
            except (KeyError, ValueError):
                continue
            keras = self.infer_keras(dict(zip(self.canonical(hp), canonical)))
            if keras is not None and keras["units"] == hp["units"]:
                return hp
        return None

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

    def sample_inputs(self, layout, hp, shapes):
        if not shapes:
            return []
        features = shapes[0][0]  # kernel (in, gates * units)
        # torch reads (time, batch, features) unless batch_first: one batch row fits either
        shape = (5, 1, features) if layout == "torch" else (1, 5, features)
        return [np.full(shape, 0.5, "float32")]

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
    classes = {"keras": ("SimpleRNN", "Bidirectional"), "torch": ("RNN",), "flax": ("SimpleCell",)}
    keras_cells = ("SimpleRNNCell",)
    checks = {**RecurrentRule.checks, "residual": "error"}
    check_hints = {**RecurrentRule.check_hints,
                   "activation": "torch's nn.RNN computes with its nonlinearity ('tanh' or 'relu'); "
                                 "make it the Keras layer's activation",
                   "residual": "a Flax SimpleCell with residual=True adds the previous state, which Keras' "
                               "SimpleRNN does not; build the cell with residual=False"}

    def cell_config(self, cell):
        return {**super().cell_config(cell), "residual": False}

    def config_flax(self, cell):
        return {**super().config_flax(cell), "residual": bool(getattr(cell, "residual", False))}

    def links_flax(self, hp):
        if _flax_form_of(hp) == "packed":
            return [link("kernel", "dense_i/kernel"), link("recurrent_kernel", "dense_h/kernel"),
                    link("bias", "dense_i/bias")]
        return [link("kernel", "i/kernel"), link("recurrent_kernel", "h/kernel"), link("bias", "i/bias")]


@register
class LSTMRule(RecurrentRule):
    name = "lstm"
    gates = 4
    classes = {"keras": ("LSTM", "Bidirectional"), "torch": ("LSTM",), "flax": ("LSTMCell", "OptimizedLSTMCell"),
               "equinox": ("LSTMCell",)}
    keras_cells = ("LSTMCell",)
    torch_activations = {"activation": "tanh", "recurrent_activation": "sigmoid"}
    flax_forms = ("gates", "gates_nnx", "packed")

    def links_flax(self, hp):
        if _flax_form_of(hp) == "packed":
            return [link("kernel", "dense_i/kernel"), link("recurrent_kernel", "dense_h/kernel"),
                    link("bias", "dense_h/bias")]
        u = hp["units"]
        inputs = ("ii", "if_" if _flax_form_of(hp) == "gates_nnx" else "if", "ig", "io")
        states = ("hi", "hf", "hg", "ho")
        return [link("kernel", tuple(f"{g}/kernel" for g in inputs), Split(1, (u,) * 4)),
                link("recurrent_kernel", tuple(f"{g}/kernel" for g in states), Split(1, (u,) * 4)),
                link("bias", tuple(f"{g}/bias" for g in states), Split(0, (u,) * 4))]


@register
class GRURule(RecurrentRule):
    name = "gru"
    gates = 3
    classes = {"keras": ("GRU", "Bidirectional"), "torch": ("GRU",), "flax": ("GRUCell",),
               "equinox": ("GRUCell",)}
    keras_cells = ("GRUCell",)
    torch_gate_order = (1, 0, 2)  # torch r, z, n = Keras blocks 1 (r), 0 (z), 2 (h)
    torch_activations = {"activation": "tanh", "recurrent_activation": "sigmoid"}

    def cell_config(self, cell):
        return {**super().cell_config(cell), "reset_after": bool(cell.reset_after)}

    def _torch_hp(self, *args):
        return {**super()._torch_hp(*args), "reset_after": True}

    def _flax_hp(self, units, form):
        return {**super()._flax_hp(units, form), "reset_after": True}

    def links_flax(self, hp):
        u, order = hp["units"], self.torch_gate_order  # NNX packs r, z, n like torch
        if _flax_form_of(hp) == "packed":
            return [link("kernel", "dense_i/kernel", ReorderBlocks(1, order)),
                    link("recurrent_kernel", "dense_h/kernel", ReorderBlocks(1, order)),
                    link("bias", "dense_i/bias", FoldRecurrentBias(u, keep_candidate=False) >> ReorderBlocks(0, order))]
        return [link("kernel", ("iz/kernel", "ir/kernel", "in/kernel"), Split(1, (u,) * 3)),
                link("recurrent_kernel", ("hz/kernel", "hr/kernel", "hn/kernel"), Split(1, (u,) * 3)),
                link("bias", ("iz/bias", "ir/bias", "in/bias", "hn/bias"), FoldRecurrentBias(u, keep_candidate=True))]

    def config_equinox(self, cell):
        return {**super().config_equinox(cell), "reset_after": True}

    def links_equinox(self, hp):
        folded = FoldRecurrentBias(hp["units"], keep_candidate=True) >> PackGates(self.torch_gate_order)
        return super().links_equinox(hp)[:2] + [link("bias", ("bias", "bias_n"), folded)]

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
                "with computes reset_after=True (torch's nn.GRU and Flax's GRUCell always do: they apply the reset "
                "gate after the recurrent matmul). The two compute different functions, so no weights "
                "were ported. Rebuild the Keras GRU with reset_after=True (the Keras 3 default) and train or "
                "port from that")
        return super().share(source_hp, target_hp)
