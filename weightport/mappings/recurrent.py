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

from ..errors import ConfigMismatchError
from . import onnx_recurrent
from .recurrent_base import RecurrentRule, flax_form_of
from .rule import link, register
from .transforms import Each, FoldRecurrentBias, PackGates, ReorderBlocks, Split, Unstack


@register
class SimpleRNNRule(RecurrentRule):
    name = "simple_rnn"
    classes = {"keras": ("SimpleRNN", "Bidirectional"), "torch": ("RNN",), "flax": ("SimpleCell",), "onnx": ("RNN",)}
    keras_cells = ("SimpleRNNCell",)
    checks = {**RecurrentRule.checks, "residual": "error"}
    check_hints = {**RecurrentRule.check_hints,
                   "activation": "torch's nn.RNN computes with its nonlinearity ('tanh' or 'relu'); "
                                 "make it the Keras layer's activation",
                   "residual": "a Flax SimpleCell with residual=True adds the previous state, which Keras' "
                               "SimpleRNN does not; build the cell with residual=False"}

    example_hp = {"residual": False}

    def cell_config(self, cell):
        return {**super().cell_config(cell), "residual": False}

    def config_flax(self, cell):
        return {**super().config_flax(cell), "residual": bool(getattr(cell, "residual", False))}

    def links_flax(self, hp):
        if flax_form_of(hp) == "packed":
            return [link("kernel", "dense_i/kernel"), link("recurrent_kernel", "dense_h/kernel"),
                    link("bias", "dense_i/bias")]
        return [link("kernel", "i/kernel"), link("recurrent_kernel", "h/kernel"), link("bias", "i/bias")]


@register
class LSTMRule(RecurrentRule):
    name = "lstm"
    gates = 4
    classes = {"keras": ("LSTM", "Bidirectional"), "torch": ("LSTM",), "flax": ("LSTMCell", "OptimizedLSTMCell"),
               "equinox": ("LSTMCell",), "onnx": ("LSTM",)}
    onnx_gate_order = (0, 3, 1, 2)  # ONNX i, o, f, c = Keras blocks 0 (i), 3 (o), 1 (f), 2 (c)
    keras_cells = ("LSTMCell",)
    torch_activations = {"activation": "tanh", "recurrent_activation": "sigmoid"}
    flax_forms = ("gates", "gates_nnx", "packed")

    def links_flax(self, hp):
        if flax_form_of(hp) == "packed":
            return [link("kernel", "dense_i/kernel"), link("recurrent_kernel", "dense_h/kernel"),
                    link("bias", "dense_h/bias")]
        u = hp["units"]
        inputs = ("ii", "if_" if flax_form_of(hp) == "gates_nnx" else "if", "ig", "io")
        states = ("hi", "hf", "hg", "ho")
        return [link("kernel", tuple(f"{g}/kernel" for g in inputs), Split(1, (u,) * 4)),
                link("recurrent_kernel", tuple(f"{g}/kernel" for g in states), Split(1, (u,) * 4)),
                link("bias", tuple(f"{g}/bias" for g in states), Split(0, (u,) * 4))]


@register
class GRURule(RecurrentRule):
    name = "gru"
    gates = 3
    classes = {"keras": ("GRU", "Bidirectional"), "torch": ("GRU",), "flax": ("GRUCell",),
               "equinox": ("GRUCell",), "onnx": ("GRU",)}
    keras_cells = ("GRUCell",)
    torch_gate_order = (1, 0, 2)  # torch r, z, n = Keras blocks 1 (r), 0 (z), 2 (h)
    torch_activations = {"activation": "tanh", "recurrent_activation": "sigmoid"}

    example_hp = {"reset_after": True}

    def bias_shape(self, units):
        return (2, 3 * units)  # reset_after=True: input and recurrent biases, each z, r, h

    def flax_example(self, form, canonical):
        if form == "packed":  # NNX's GRUCell keeps no recurrent candidate bias: it must be zero
            canonical[2][1, 2 * canonical[1].shape[0]:] = 0
        return canonical

    def cell_config(self, cell):
        return {**super().cell_config(cell), "reset_after": bool(cell.reset_after)}

    def _torch_hp(self, *args):
        return {**super()._torch_hp(*args), "reset_after": True}

    def _flax_hp(self, units, form):
        return {**super()._flax_hp(units, form), "reset_after": True}

    def links_flax(self, hp):
        u, order = hp["units"], self.torch_gate_order  # NNX packs r, z, n like torch
        if flax_form_of(hp) == "packed":
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
            if old.get("onnx_node"):
                raise ConfigMismatchError(onnx_recurrent.reset_refusal(old.get("name")))
            raise ConfigMismatchError(
                f"GRU layer {old.get('name', '(unnamed)')!r} has reset_after=False, but the layer it is paired "
                "with computes reset_after=True (torch's nn.GRU and Flax's GRUCell always do: they apply the reset "
                "gate after the recurrent matmul). The two compute different functions, so no weights "
                "were ported. Rebuild the Keras GRU with reset_after=True (the Keras 3 default) and train or "
                "port from that")
        return super().share(source_hp, target_hp)
