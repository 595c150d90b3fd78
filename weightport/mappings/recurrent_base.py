"""What SimpleRNN, LSTM and GRU share: slots and links per direction and stacked layer, configuration, inference.

Subclasses (``recurrent``) set the gate count, the gate order torch uses, and
their Flax forms; see ``recurrent`` for what each framework keeps.
"""
import re

import numpy as np

from ..errors import UnsupportedLayerError, UsageError
from . import onnx_recurrent
from .introspect import fn_name, has_class
from .rule import Rule, link
from .samples import sizes, weights
from .transforms import ReorderBlocks, SumSplit, Transpose

_TORCH_NAME = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?$")
_DIRECTIONS = (("forward/", ""), ("backward/", "_reverse"))


def flax_form_of(hp) -> str:
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


class RecurrentRule(Rule):
    """Shared by the three kinds; subclasses set the gate count and what differs."""

    gates = 1
    keras_cells: tuple = ()
    slot_patterns = {"torch": (r"(weight|bias)_(ih|hh)_l\d+(_reverse)?",)}
    # torch gate block k is Keras gate block torch_gate_order[k]; None: same order
    torch_gate_order = None
    # activations torch computes with, whatever the module says (Keras vocabulary)
    torch_activations: dict = {}
    # ONNX block k is Keras block onnx_gate_order[k]; None: same order
    onnx_gate_order = None
    checks = {"activation": "error", "recurrent_activation": "error", "use_bias": "error",
              "bidirectional": "error", "merge_mode": "warning", "go_backwards": "error"}
    check_hints = {
        "activation": "torch's LSTM and GRU always use tanh; build the Keras layer with activation='tanh'",
        "recurrent_activation": "torch's LSTM and GRU gates always use sigmoid; build the Keras layer with "
                                "recurrent_activation='sigmoid'",
        "bidirectional": "wrap the Keras layer in Bidirectional, or set bidirectional= on the torch module",
        "merge_mode": "torch concatenates both directions; the weights are ported, but the outputs are combined "
                      "differently",
        "go_backwards": "one layer reads the sequence last to first (Keras go_backwards=True, ONNX "
                        "direction='reverse'), the other first to last; torch has no such layer: make them agree",
    }

    # -- recognising ------------------------------------------------------
    def matches(self, layout, layer):
        if layout != "keras":
            return super().matches(layout, layer)
        layers = _directions(layer) or [layer]
        return all(has_class(getattr(each, "cell", None), *self.keras_cells) for each in layers)

    def expand(self, layout, hp):
        return [dict(hp, layer=k) for k in range(hp.get("num_layers", 1))] if layout == "torch" else [hp]

    # -- hyperparameters ----------------------------------------------------
    def cell_config(self, cell) -> dict:
        hp = {"units": cell.units, "use_bias": cell.use_bias, "activation": fn_name(cell.activation)}
        if hasattr(cell, "recurrent_activation"):
            hp["recurrent_activation"] = fn_name(cell.recurrent_activation)
        return hp

    def config_keras(self, layer):
        pair = _directions(layer)
        if not pair:
            return {**self.cell_config(layer.cell), "bidirectional": False, "name": layer.name,
                    "go_backwards": bool(getattr(layer, "go_backwards", False))}
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
        else:
            hp["go_backwards"] = False
        return hp

    # -- Flax cells -------------------------------------------------------------
    flax_forms = ("gates", "packed")

    def config_flax(self, cell):
        hp = self._flax_hp(int(cell.hidden_features), _flax_form(cell))
        hp["activation"] = fn_name(cell.activation_fn)
        if hasattr(cell, "gate_fn"):
            hp["recurrent_activation"] = fn_name(cell.gate_fn)
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
    example_hp: dict = {}  # what a subclass's examples need beyond units, bias and directions

    def bias_shape(self, units: int) -> tuple:
        """The shape of Keras' bias for ``units`` (of the form every layout can link)."""
        return (self.gates * units,)

    def flax_example(self, form: str, canonical: list) -> list:
        """Canonical weights made fit for a Flax form (as they are, by default)."""
        return canonical

    def examples(self, layout, rng):
        """One layer per Flax form; for torch also a bidirectional one, second in a stack."""
        i, u = sizes(rng, 2)
        hp = {"units": u, "use_bias": True, "bidirectional": False, **self.example_hp}

        def one():
            return weights(rng, (i, self.gates * u), (u, self.gates * u), self.bias_shape(u))
        if layout == "flax":
            return [({**hp, "flax_form": form}, self.flax_example(form, one())) for form in self.flax_forms]
        if layout == "torch":
            return [(hp, one()), ({**hp, "bidirectional": True, "layer": 1}, one() + one())]
        if layout == "onnx":
            return onnx_recurrent.examples(self, hp, rng, i)
        return [(hp, one())]

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

    def config_onnx(self, node):
        return onnx_recurrent.config(node, self.gates)

    def links_onnx(self, hp):
        return onnx_recurrent.links(self, hp)


def _directions(layer):
    """[forward layer, backward layer] of a Keras Bidirectional, else None."""
    if has_class(layer, "Bidirectional"):
        return [layer.forward_layer, layer.backward_layer]
    return None
