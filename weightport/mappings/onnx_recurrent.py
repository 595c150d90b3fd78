"""ONNX LSTM, GRU and RNN nodes in the recurrent rules' vocabulary: what a node says, and how its W, R, B move.

ONNX keeps, per direction d (a leading axis of 1, or 2 when bidirectional):
``W[d] (G*u, in)``, ``R[d] (G*u, u)`` and ``B[d] (2*G*u) = [Wb; Rb]``, gates
LSTM i, o, f, c; GRU z, r, h; RNN one. Keras keeps ``kernel (in, G*u)``,
``recurrent_kernel (u, G*u)`` (LSTM i, f, c, o; GRU z, r, h) and one bias:
the sum Wb + Rb for LSTM and SimpleRNN (function-preserving, not bitwise), and
for a GRU with ``reset_after=True`` both, as (2, 3u). A GRU's
``linear_before_reset=1`` is Keras' ``reset_after=True`` (torch's only form);
``linear_before_reset=0`` applies the reset gate before the recurrent matmul,
Keras' ``reset_after=False`` (its one bias the sum of Wb and Rb), which torch
cannot compute (refused by the GRU rule when paired so).

``direction="reverse"`` reads the sequence last to first: Keras'
``go_backwards=True`` (which returns the outputs reversed), which torch has
not. The ``layout`` attribute (batch-first data) moves no weight. What no
Keras or torch layer computes is refused naming the node: ``clip``,
``input_forget``, activations other than Keras' (or with parameters), a
non-zero peephole ``P`` or initial state held as a constant.
"""
from __future__ import annotations

import numpy as np

from .onnx_ops import refuse
from .rule import Declined, link
from .samples import weights
from .transforms import Concat, Each, ReorderBlocks, Reshape, Stack, SumSplit, Transpose

ACTIVATIONS = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Relu": "relu"}
DEFAULTS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def _activations(node, per_direction: int) -> tuple:
    """(activation, recurrent_activation) in Keras' words; refused where Keras has no such pair."""
    a = node.attrs
    default = DEFAULTS[node.op_type]
    given = tuple(str(x) for x in a.get("activations", default * per_direction))
    if "activation_alpha" in a or "activation_beta" in a:
        refuse(node, "uses activations with parameters (activation_alpha/beta)", "Use the default activations.")
    halves = {given[i:i + len(default)] for i in range(0, len(given), len(default))}
    if len(given) != len(default) * per_direction or len(halves) != 1:
        refuse(node, f"uses activations {list(given)} (the two directions differ, or the count is wrong)",
                "Use one set of activations for both directions.")
    names = [ACTIVATIONS.get(x, f"onnx {x}") for x in given[:len(default)]]
    if node.op_type == "LSTM" and names[1] != names[2]:
        refuse(node, f"uses {given[1]} for the cell input but {given[2]} for the output", "Keras' and torch's "
                "LSTM use one activation for both.")
    if node.op_type == "RNN":
        return names[0], None
    return names[1], names[0]


def _zero_constant(node, slot: str, what: str) -> None:
    if slot in node.slots and np.any(np.asarray(node.value(slot)) != 0):
        refuse(node, f"holds a non-zero {what} ({slot})", "Keras and torch keep no such weight: export the "
                "model without it.")


def config(node, gates: int) -> dict:
    """A node's hyperparameters in the recurrent rules' words (units, use_bias, activations, directions...)."""
    a, slots = node.attrs, node.slots
    if "W" not in slots or "R" not in slots or "X" in slots:
        raise Declined("the input weights or recurrent weights are not constants")
    direction = str(a.get("direction", "forward"))
    dirs, (n, rows, units) = DIRECTIONS.get(direction), tuple(slots["R"].shape)
    if dirs is None or n != dirs or rows != gates * units or int(a.get("hidden_size", units)) != units:
        refuse(node, f"has direction={direction!r}, hidden_size={a.get('hidden_size')} and R of shape "
                f"{tuple(slots['R'].shape)}, which do not agree", "Check the exported graph.")
    if "clip" in a:
        refuse(node, f"clips its cell inputs at {a['clip']}", "Export the model without clip.")
    if int(a.get("input_forget", 0)):
        refuse(node, "couples its input and forget gates (input_forget=1)", "Export the model without it.")
    _zero_constant(node, "P", "peephole weight")
    for slot in ("initial_h", "initial_c"):
        _zero_constant(node, slot, "initial state")
    activation, recurrent_activation = _activations(node, dirs)
    hp = {"units": units, "use_bias": "B" in slots, "activation": activation, "bidirectional": dirs == 2,
          "name": node.name, "onnx_node": True}
    if recurrent_activation is not None:
        hp["recurrent_activation"] = recurrent_activation
    if dirs == 1:
        hp["go_backwards"] = direction == "reverse"
    if node.op_type == "GRU":
        hp["reset_after"] = bool(int(a.get("linear_before_reset", 0)))
    return hp


def reset_refusal(name) -> str:
    """Why an ONNX GRU with linear_before_reset=0 is not ported into a GRU that applies the reset gate after."""
    return (f"ONNX GRU node {name!r} has linear_before_reset=0: it applies the reset gate before the recurrent "
            "matmul, but the layer it is paired with applies it after (torch's nn.GRU and Flax's GRUCell always "
            "do, as does Keras' GRU with reset_after=True). The two compute different functions, so no weights were "
            "ported. Port it into a Keras GRU(reset_after=False), which computes what the node does, or export the "
            "model with linear_before_reset=1")


def links(rule, hp) -> list:
    """W, R, B from the canonical kernels and biases of each direction (see the module docstring)."""
    units, gates = hp["units"], rule.gates
    kernel = Transpose(1, 0)
    if rule.onnx_gate_order:
        kernel = kernel >> ReorderBlocks(0, rule.onnx_gate_order)
    if hp.get("reset_after"):  # GRU (2, 3u): input and recurrent biases, gates as ONNX's
        bias = Reshape((2, -1), (-1,))
    else:
        pair = Each(2, ReorderBlocks(0, rule.onnx_gate_order)) if rule.onnx_gate_order else None
        width = gates * units
        bias = SumSplit(2) >> pair >> Concat(0, (width, width)) if pair else SumSplit(2) >> Concat(0, (width, width))
    prefixes = ("forward/", "backward/") if hp.get("bidirectional") else ("",)
    n = len(prefixes)
    return [link(tuple(p + name for p in prefixes), slot, Each(n, move) >> Stack(n))
            for name, slot, move in (("kernel", "W", kernel), ("recurrent_kernel", "R", kernel), ("bias", "B", bias))]


def examples(rule, hp: dict, rng, inputs: int) -> list:
    """One layer per form ONNX writes: forward, reverse, bidirectional; for a GRU also reset_after=False."""
    u, g = hp["units"], rule.gates

    def one(bias=None):
        return weights(rng, (inputs, g * u), (u, g * u), bias or rule.bias_shape(u))
    out = [(hp, one()), ({**hp, "go_backwards": True}, one()), ({**hp, "bidirectional": True}, one() + one())]
    if "reset_after" in hp:
        out.append(({**hp, "reset_after": False}, one((g * u,))))
    return out
