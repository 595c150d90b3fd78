"""PyTorch modules: parameters and buffers by dotted name, frozen state, inference runs."""
from __future__ import annotations

import sys
from collections import Counter

import numpy as np

from ..arrays import numpy_to_torch, to_numpy
from . import Framework
from .hf_names import saved_keys


class TorchFramework(Framework):
    layout = "torch"
    package = "torch"
    sep = "."

    def owns(self, obj) -> bool:
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(obj, torch.nn.Module)

    def children(self, layer) -> list:
        return list(layer.named_children())

    def activation_after(self, siblings, index: int):
        """The activation module that follows ``siblings[index]`` (dropout aside), in Keras' words; else None."""
        for _, module in siblings[index + 1:]:
            name = type(module).__name__
            if name.startswith("Dropout") or name == "Identity":
                continue
            if name == "GELU":
                return "gelu" if getattr(module, "approximate", "none") == "none" else "gelu_tanh"
            return ACTIVATIONS.get(name)
        return None

    def own_weights(self, layer) -> list:
        return ([n for n, _ in layer.named_parameters(recurse=False)]
                + [n for n, _ in layer.named_buffers(recurse=False) if n not in layer._non_persistent_buffers_set])

    def constants(self, model) -> dict:
        return {n: to_numpy(b) for n, b in model.named_buffers()}

    def untrained(self, layer) -> set:
        return {n for n, _ in layer.named_buffers(recurse=False)}

    def count_weights(self, layer):
        return len(layer.state_dict())

    def weight_ids(self, layer) -> set:
        return {id(p) for p in layer.parameters()}

    def saved_names(self, model) -> dict:
        return saved_keys(model)

    def tensor_aliases(self, model) -> dict:
        names: dict = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), []).append(name)
        return {n: [m for m in group if m != n] for group in names.values() if len(group) > 1 for n in group}

    @staticmethod
    def _tensors(layer) -> dict:
        state = layer.state_dict(keep_vars=True)
        for name, compute in _reparametrized(layer).items():
            state[name] = compute()
        return state

    def reparametrized(self, layer) -> dict:
        return {name: "weight_norm" for name in _reparametrized(layer)}

    def read(self, layer, slots) -> dict:
        state = self._tensors(layer)
        return {s: to_numpy(state[s]) for s in slots if s in state}

    def shapes(self, layer, slots) -> dict:
        state = self._tensors(layer)
        return {s: tuple(state[s].shape) for s in slots if s in state}

    def dtypes(self, layer, slots) -> dict:
        state = self._tensors(layer)
        return {s: to_numpy(state[s][:0] if state[s].dim() else state[s]).dtype for s in slots if s in state}

    def destinations(self, layer, slots) -> dict:
        state, derived = self._tensors(layer), _reparametrized(layer)
        return {s: state[s] for s in slots if s in state and s not in derived}

    def write(self, layer, arrays: dict) -> None:
        import torch

        state, derived = self._tensors(layer), _reparametrized(layer)
        with torch.no_grad():
            for slot, value in arrays.items():
                if slot in derived:
                    _assign_reparametrized(layer, slot, numpy_to_torch(np.asarray(value)).to(state[slot].dtype))
                elif slot in state:
                    state[slot].copy_(numpy_to_torch(np.asarray(value)))

    def is_frozen(self, layer):
        params = list(layer.parameters())
        return None if not params else not any(p.requires_grad for p in params)

    def set_frozen(self, layer, frozen: bool) -> None:
        for p in layer.parameters():
            if p.is_floating_point() or p.is_complex():
                p.requires_grad_(not frozen)

    def run(self, model, inputs):
        return _to_numpy_tree(self._call(model, inputs))

    def _call(self, model, inputs):
        """``model`` on ``inputs`` (one array, a list of positional ones or a dict of keyword ones), in eval mode."""
        import torch

        first = next(iter(model.parameters()), None)

        def to_tensor(x):
            if isinstance(x, torch.Tensor):
                return x
            t = numpy_to_torch(np.asarray(x))
            if first is not None:
                dtype = first.dtype if t.is_floating_point() else t.dtype
                t = t.to(device=first.device, dtype=dtype)
            return t

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if isinstance(inputs, (list, tuple)):
                    return model(*[to_tensor(x) for x in inputs])
                if isinstance(inputs, dict):
                    return model(**{k: to_tensor(v) for k, v in inputs.items()})
                return model(to_tensor(inputs))
        finally:
            model.train(was_training)

    def sample_inputs(self, model, refs) -> list:
        """What the first layer reads, positionally; each followed by a keyword call that also fills the other
        inputs ``forward`` declares (an encoder-decoder reads the decoder's token ids too), tried where the
        first fails."""
        ids = _token_ids(self.layout, refs)
        out = []
        for x in super().sample_inputs(model, refs):
            out.append(x)
            keywords = _keyword_inputs(model, x, ids)
            if keywords is not None:
                out.append(keywords)
        return out

    def trace(self, model, refs, inputs, capture: bool = False):
        """Flow of one run on ``inputs``: hooks mark each layer's outputs, torch's function mode follows them."""
        import torch

        from ..flow import Provenance, torch_operations

        prov = Provenance(lambda x: isinstance(x, torch.Tensor), sees_all_operations=True,
                          capture=to_numpy if capture else None)
        parts: dict = {}
        for ref in refs:
            parts.setdefault(id(ref.obj), (ref.obj, []))[1].append(ref.path)
        # a tied tensor (T5's shared table, read by modules that are not refs) is read by design outside its ref
        shared = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
        prov.hold({paths[0]: [p for p in module.parameters() if shared[id(p)] == 1]
                   for module, paths in parts.values() if isinstance(module, torch.nn.Module)})
        hooks = []
        for module, paths in parts.values():
            hooks.append(module.register_forward_pre_hook(
                lambda m, args, kwargs, p=paths: prov.enter(p, (args, kwargs)), with_kwargs=True))
            hooks.append(module.register_forward_hook(
                lambda m, args, kwargs, out, p=paths: prov.leave(p, out), with_kwargs=True))
        try:
            with torch_operations(prov):
                prov.tap(self._call(model, inputs), returned=True)
        finally:
            for h in hooks:
                h.remove()
        return prov.flow


def _token_ids(layout: str, refs):
    """Token ids the model's first input table reads, each below every table's row count (a decoder's position
    table may be the smallest); None where it has no table."""
    tables = [(ref, *ref.candidates[0]) for ref in refs
              if not getattr(ref, "loose", False) and ref.candidates[0][0].reads_inputs]
    shapes = [ref.canonical_shapes(rule, hp) for ref, rule, hp in tables]
    rows = [found[0][0] for found in shapes if found]
    if not rows:
        return None
    _, rule, hp = tables[0]
    sample = rule.sample_inputs(layout, hp, shapes[0])
    return sample[0] % min(rows) if sample else None


def _keyword_inputs(model, first, ids):
    """``forward``'s inputs by name: ``first`` for its first parameter, and for each other one that names an
    input (required, or ``*input*`` but not embeddings: ``decoder_input_ids``) token ``ids`` where its name says
    ids, else an array like ``first``. None where ``forward`` declares no second input."""
    import inspect

    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except (TypeError, ValueError):
        return None
    if not params or params[0].kind is params[0].POSITIONAL_ONLY:
        return None
    found = {params[0].name: first}
    for p in params[1:]:
        words = set(p.name.lower().split("_"))
        if p.default is p.empty or (words & {"input", "inputs"} and not words & {"embeds", "embeddings", "mask"}):
            if "ids" in words and ids is None:
                return None
            found[p.name] = ids if "ids" in words else first
    return found if len(found) > 1 else None


def _to_numpy_tree(out):
    if isinstance(out, (list, tuple)):
        return type(out)(_to_numpy_tree(o) for o in out) if not hasattr(out, "_fields") else [_to_numpy_tree(o) for o in out]
    if isinstance(out, dict):
        return {k: _to_numpy_tree(v) for k, v in out.items()}
    return to_numpy(out)


ACTIVATIONS = {"ReLU": "relu", "ReLU6": "relu6", "SiLU": "silu", "Tanh": "tanh", "Sigmoid": "sigmoid",
               "ELU": "elu", "SELU": "selu", "Softplus": "softplus", "Mish": "mish", "Hardswish": "hard_silu",
               "LeakyReLU": "leaky_relu"}

ADAPTER = TorchFramework()


def _weight_norms(layer) -> dict:
    """name -> the deprecated ``torch.nn.utils.weight_norm`` hook computing that weight from ``name_g``, ``name_v``."""
    hooks = getattr(layer, "_forward_pre_hooks", {}).values()
    return {h.name: h for h in hooks if type(h).__name__ == "WeightNorm" and hasattr(h, "compute_weight")}


def _reparametrized(layer) -> dict:
    """name -> a function computing a weight the module stores in other tensors: a ``parametrizations`` entry
    (``weight_norm``'s magnitude and direction) or the older weight-norm hook's ``weight_g`` and ``weight_v``."""
    found = {name: (lambda name=name: getattr(layer, name))
             for name in getattr(getattr(layer, "parametrizations", None), "keys", lambda: ())()}
    found.update({name: (lambda hook=hook: hook.compute_weight(layer)) for name, hook in _weight_norms(layer).items()})
    return found


def _assign_reparametrized(layer, name, value) -> None:
    """Store ``value`` as the weight ``name`` computes to: a parametrization's own inverse, or for the older
    hook the direction as it is and its norm as the magnitude (so ``g * v / |v|`` gives ``value`` back)."""
    import torch

    hook = _weight_norms(layer).get(name)
    if hook is None:
        setattr(layer, name, value)
        return
    getattr(layer, f"{name}_v").copy_(value)
    getattr(layer, f"{name}_g").copy_(torch.norm_except_dim(value, 2, hook.dim))
