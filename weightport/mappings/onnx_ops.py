"""What ONNX ops say, in the rules' shared vocabulary (Keras words): the ``config_onnx`` readers.

An ONNX layer (see ``converter/frameworks/onnx_graph.py``, read here by plain
attribute access) has ``op_type``, ``attrs`` (the node's attributes),
``slots`` (its constant inputs by the schema's names, each with ``shape``),
``input_shape`` and ``flattened`` (the shape a Flatten/Reshape flattened just
before it). A node whose form no Keras or torch layer computes is refused
here, naming the node and what to do, rather than ported into something else.
"""
from __future__ import annotations

from ..errors import UnsupportedLayerError
from .rule import ConfigIssue, Declined


def _refuse(node, what: str, fix: str):
    raise UnsupportedLayerError(f"ONNX node {node.name!r} ({node.op_type}) {what}, which no Keras or torch layer "
                                f"computes; nothing was changed. {fix}")


def dense(node) -> dict:
    """Gemm (``Y = A @ B' + C``, B' = B or B.T) or MatMul with a constant B (+ an Add of a bias, slot C)."""
    a, slots = node.attrs, node.slots
    if "B" not in slots or len(slots["B"].shape) != 2:
        raise Declined("the constant operand is not B, or not a matrix")
    trans_b = False
    if node.op_type == "Gemm":
        if a.get("transA", 0):
            _refuse(node, "has transA=1 (it multiplies the transposed input)", "Re-export the model without it.")
        for key in ("alpha", "beta"):
            if float(a.get(key, 1.0)) != 1.0:
                _refuse(node, f"scales by {key}={a[key]}", "Fold the factor into the weights (or let the exporter "
                        "do it) and export again.")
        trans_b = bool(a.get("transB", 0))
    b = slots["B"].shape
    units = b[0] if trans_b else b[1]
    if "C" in slots and tuple(slots["C"].shape) != (units,):
        _refuse(node, f"adds a bias of shape {tuple(slots['C'].shape)} (a Dense bias is ({units},))",
                "Export the bias as a vector.")
    hp = {"units": units, "use_bias": "C" in slots, "trans_b": trans_b}
    if node.flattened:
        hp["flattened"] = tuple(node.flattened)
    return hp


def flatten_issues(source_hp: dict, target_hp: dict) -> list:
    """Where a Keras Dense reads a flattened map (``flatten_from``, shared with its ONNX pair): the ONNX graph
    must flatten that map channels-first, as the rows are then permuted; refused where it shows otherwise."""
    issues = []
    for hp in (source_hp, target_hp):
        fm = hp.get("flatten_from")
        if "trans_b" not in hp or not fm:
            continue
        flat = hp.get("flattened")
        channels_first = (fm[-1], *fm[:-1])
        if flat is None:
            issues.append(ConfigIssue("flatten", None, None, "warning",
                                      "the Keras Dense reads a flattened feature map but the ONNX graph shows no "
                                      "Flatten/Reshape of a known shape before this node; the rows were permuted "
                                      "as for a channels-first flatten: check the outputs with wp.verify"))
        elif tuple(flat) != channels_first:
            issues.append(ConfigIssue("flatten", fm, tuple(flat), "error",
                                      f"the ONNX graph flattens a {tuple(flat)} map, not the channels-first "
                                      f"{channels_first} the Keras map {tuple(fm)} becomes; the rows cannot be "
                                      "matched"))
    return issues


def _per_axis(a, key, rank, default=1) -> tuple:
    return tuple(int(v) for v in a.get(key, (default,) * rank))


def conv(node, kernel: str = "W") -> dict:
    """Conv / ConvTranspose: kernel, strides, dilations, pads as (begin, end) per axis, groups, bias."""
    a, slots = node.attrs, node.slots
    if kernel not in slots or "X" in slots:
        raise Declined("the kernel is not a constant, or the input is")
    w = tuple(slots[kernel].shape)
    rank = len(w) - 2
    auto = str(a.get("auto_pad", "NOTSET"))
    if auto in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        padding = {"SAME_UPPER": "same", "VALID": "valid"}.get(auto, "same_lower")
    else:
        pads = _per_axis(a, "pads", 2 * rank, 0)
        padding = tuple((pads[i], pads[i + rank]) for i in range(rank))
    return {"kernel_size": w[2:], "strides": _per_axis(a, "strides", rank),
            "dilation_rate": _per_axis(a, "dilations", rank), "padding": padding, "groups": int(a.get("group", 1)),
            "use_bias": "B" in slots}


def batch_norm(node) -> dict:
    slots = node.slots
    if not {"scale", "B", "input_mean", "input_var"} <= set(slots):
        raise Declined("a BatchNormalization whose statistics are not constants")
    if node.attrs.get("training_mode", 0):
        _refuse(node, "runs in training mode (batch statistics)", "Export the model in eval mode.")
    return {"epsilon": float(node.attrs.get("epsilon", 1e-5)), "momentum": float(node.attrs.get("momentum", 0.9)),
            "center": True, "scale": True, "track_running_stats": True, "channels": slots["scale"].shape[0]}


def layer_norm(node) -> dict:
    slots = node.slots
    if "Scale" not in slots:
        raise Declined("a LayerNormalization whose scale is not a constant")
    n = len(slots["Scale"].shape)
    axis = int(node.attrs.get("axis", -1))
    rank = len(node.input_shape) if node.input_shape is not None else None
    if (axis < 0 and -axis != n) or (axis >= 0 and rank is not None and rank - axis != n):
        _refuse(node, f"normalises from axis {axis} with a scale of shape {slots['Scale'].shape}",
                "Normalise over the axes the scale spans.")
    return {"epsilon": float(node.attrs.get("epsilon", 1e-5)), "center": "B" in slots, "scale": True,
            "rms_scaling": False, "axis": tuple(range(-n, 0))}


def gather_table(node) -> dict:
    """Gather of rows from a constant (vocab, dim) table by data-dependent indices."""
    slots = node.slots
    if "data" not in slots or "indices" in slots or len(slots["data"].shape) != 2 or node.attrs.get("axis", 0):
        raise Declined("not a lookup of rows of a constant table")
    vocab, dim = slots["data"].shape
    return {"input_dim": int(vocab), "output_dim": int(dim), "max_norm": None}
