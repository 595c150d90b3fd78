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


def refuse(node, what: str, fix: str):
    raise UnsupportedLayerError(f"ONNX node {node.name!r} ({node.op_type}) {what}, which no Keras or torch layer "
                                f"computes; nothing was changed. {fix}")


def dense(node) -> dict:
    """Gemm (``Y = alpha * A @ B' + beta * C``, B' = B or B.T) or MatMul with a constant B (+ an Add of a bias,
    slot C). alpha and beta other than 1 are folded into the kernel and bias (``Scale``)."""
    a, slots = node.attrs, node.slots
    if "B" not in slots or len(slots["B"].shape) != 2:
        raise Declined("the constant operand is not B, or not a matrix")
    hp = {"trans_b": False}
    if node.op_type == "Gemm":
        if a.get("transA", 0):
            refuse(node, "has transA=1 (it multiplies the transposed input, A' @ B, so the batch is not the "
                    "first axis)", "Re-export the model without it, or insert a Transpose before the Gemm.")
        hp["trans_b"] = bool(a.get("transB", 0))
        for key in ("alpha", "beta"):
            factor = float(a.get(key, 1.0))
            if key == "beta" and "C" not in slots:
                continue  # no bias for beta to scale
            if factor == 0.0 or factor != factor or factor in (float("inf"), float("-inf")):
                refuse(node, f"scales by {key}={factor}, which cannot be folded into the weights (it drops or "
                        "swamps the term)", "Remove the term from the graph and export again.")
            if factor != 1.0:
                hp[key] = factor
    b = slots["B"].shape
    units = b[0] if hp["trans_b"] else b[1]
    if "C" in slots and tuple(slots["C"].shape) != (units,):
        refuse(node, f"adds a bias of shape {tuple(slots['C'].shape)} (a Dense bias is ({units},))",
                "Export the bias as a vector.")
    hp.update(units=units, use_bias="C" in slots)
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
        refuse(node, "runs in training mode (batch statistics)", "Export the model in eval mode.")
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
        refuse(node, f"normalises from axis {axis} with a scale of shape {slots['Scale'].shape}",
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


def conv_transpose(node) -> dict:
    """ConvTranspose: W (in, out/group, *k) as torch's; the zeros its stretched input is padded with, as
    ``stretched_pads``, so the padding check compares them with Keras' (what Keras cannot pad is reported)."""
    hp = conv(node)
    w, a = node.slots["W"].shape, node.attrs
    rank = len(w) - 2
    extra = _per_axis(a, "output_padding", rank, 0)
    hp.update(filters=int(w[1]) * hp["groups"], output_padding=extra)
    if "output_shape" in a:
        hp["padding_unknown"] = "output_shape"
    elif hp["padding"] == "valid":
        hp["padding"] = ((0, 0),) * rank
    elif isinstance(hp["padding"], str):
        hp["padding_unknown"] = f"auto_pad={a.get('auto_pad')}"
    if isinstance(hp["padding"], tuple):
        spans = [d * (k - 1) + 1 for k, d in zip(hp["kernel_size"], hp["dilation_rate"])]
        hp["stretched_pads"] = tuple((e - 1 - lo, e - 1 - hi + o)
                                     for e, (lo, hi), o in zip(spans, hp["padding"], extra))
        if any(lo < 0 or hi < 0 for lo, hi in hp["stretched_pads"]):
            hp["padding_unknown"] = f"pads {hp['padding']}, larger than the kernel"
    if "padding_unknown" in hp:  # nothing to compare with the other side's padding
        hp.pop("padding", None)
        hp.pop("stretched_pads", None)
    return hp


def padding_unknown_issues(source_hp: dict, target_hp: dict) -> list:
    """A caveat where an ONNX ConvTranspose pads by an amount its attributes do not fix (output_shape, auto_pad)."""
    return [ConfigIssue("padding", None, None, "warning",
                        f"the ONNX ConvTranspose pads by {hp['padding_unknown']}, which depends on the input size, so "
                        "whether it pads as the other layer does cannot be checked here: check the outputs with "
                        "wp.verify") for hp in (source_hp, target_hp) if hp.get("padding_unknown")]


def slopes(node) -> dict:
    """PRelu: the slope broadcast against the input (N, C, ...). It may vary along one axis (the channels), or
    none; ``slope_shape`` is its shape with that axis as -1, ``alpha_default`` (C,) as torch's PReLU keeps it
    (the Keras side's own ``alpha_shape``, (1, 1, C) for an image, replaces it when paired)."""
    if "slope" not in node.slots or "X" in node.slots:
        raise Declined("the slope is not a constant, or the input is")
    shape = tuple(node.slots["slope"].shape)
    rank = len(node.input_shape) if node.input_shape is not None else len(shape) + 1
    if len(shape) > rank:
        refuse(node, f"has a slope of shape {shape} for a rank-{rank} input", "Export the slope per channel.")
    padded = (1,) * (rank - len(shape)) + shape
    varying = [i for i, d in enumerate(padded) if d != 1]
    if len(varying) > 1 or (varying and varying[0] == 0):
        refuse(node, f"has a slope of shape {shape}, varying along axes {varying} of its input", "Keras and "
                "torch keep one slope per channel (or one in all): export a per-channel PReLU.")
    axis = varying[0] if varying else rank - 1
    native = tuple(-1 if i == axis - (rank - len(shape)) else d for i, d in enumerate(shape)) if shape else (-1,)
    return {"slope_shape": native, "alpha_default": (padded[axis],)}


def group_norm(node) -> dict:
    """GroupNormalization (the op, opset 21: per-channel scale and bias) or what torch exporters write for
    GroupNorm (InstanceNormalization of the grouped channels, then Mul and Add per channel), which the
    graph reader merges into one layer of this class (``num_groups``, ``instance_affine`` in its attrs)."""
    slots, a = node.slots, node.attrs
    if "scale" not in slots or "bias" not in slots or "X" in slots:
        raise Declined("a GroupNormalization whose scale or bias is not a constant")
    groups = int(a.get("num_groups", 0))
    scale = tuple(slots["scale"].shape)
    channels = max(scale) if scale else 1
    if a.get("instance_affine") is False:
        refuse(node, "normalises with an InstanceNormalization whose own scale and bias are not ones and zeros",
                "Fold them into the per-channel Mul and Add, or export the GroupNorm again.")
    if sum(d != 1 for d in scale) > 1 or tuple(slots["bias"].shape) != scale:
        refuse(node, f"has scale {scale} and bias {tuple(slots['bias'].shape)}, not one value per channel",
                "Export the GroupNorm with per-channel affine weights.")
    if node.input_shape is not None and len(node.input_shape) > 1 and node.input_shape[1] not in (None, channels):
        refuse(node, f"has {channels} scales for {node.input_shape[1]} channels (an opset-18 GroupNormalization "
                "scales per group)", "Export at opset 21 or later, where scale and bias are per channel.")
    if groups <= 0 or channels % groups:
        refuse(node, f"splits {channels} channels into {groups} groups", "Check the exported graph.")
    return {"groups": groups, "epsilon": float(a.get("epsilon", 1e-5)), "center": True, "scale": True,
            "channels": channels, "onnx_shape": tuple(-1 if d != 1 else 1 for d in scale) if scale else (-1,)}
