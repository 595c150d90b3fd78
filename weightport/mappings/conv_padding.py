"""Padding compared as the zeros each side actually adds to a convolution's input.

Padding is spoken differently ('valid'/'same'/'causal' against integers or
(low, high) pairs), so it is compared as zeros added, and only where that is
fixed by the configuration: Keras 'same' with a stride > 1 pads by an amount
that depends on the input size, and is then left unjudged (or explained, for
the sizes where it differs).
"""
from __future__ import annotations

PADDING_HINT = "the layers pad differently, so outputs differ"


def _effective(hp) -> list:
    kernel = hp["kernel_size"]
    return [d * (k - 1) + 1 for k, d in zip(kernel, hp.get("dilation_rate") or (1,) * len(kernel))]


def conv_pads(hp):
    """(left, right) zeros per spatial axis of a convolution's input, or None where not fixed by hp."""
    if "padding" not in hp or "kernel_size" not in hp:
        return None
    padding, spans = hp["padding"], _effective(hp)
    strides = hp.get("strides") or (1,) * len(spans)
    if isinstance(padding, str):
        padding = padding.lower()
        if padding == "valid" or all(e == 1 for e in spans):
            pads = [(0, 0)] * len(spans)
        elif padding == "same":
            if any(s > 1 and e > 1 for s, e in zip(strides, spans)):
                return None  # depends on the input size
            pads = [((e - 1) // 2, (e - 1) - (e - 1) // 2) for e in spans]
        elif padding == "causal":
            pads = [(e - 1, 0) for e in spans]
        else:
            return None
    else:  # per axis: one int for both sides (torch), or a (low, high) pair (Flax)
        pads = [tuple(int(x) for x in p) if isinstance(p, (tuple, list)) else (int(p), int(p)) for p in padding]
    fed = hp.get("input_pads")  # a separate zero pad just before the conv (``ConvFamily.with_input_pad``)
    if fed is not None and len(fed) == len(pads):
        pads = [(a + c, b + d) for (a, b), (c, d) in zip(pads, fed)]
    mode = hp.get("padding_mode", "zeros")
    if mode != "zeros" and any(a or b for a, b in pads):
        return (mode,) + tuple(pads)  # not zeros at all: differs from every Keras padding
    return tuple(pads)


def same_pads(hp, size: int, axis: int):
    """(left, right) zeros Keras/TF "same" adds on one axis of this input size (it depends on the size
    once the stride exceeds 1: the odd zero goes right)."""
    e, s = _effective(hp)[axis], (hp.get("strides") or (1,) * len(hp["kernel_size"]))[axis]
    total = max((-(-size // s) - 1) * s + e - size, 0)
    return total // 2, total - total // 2


def strided_same_hint(hp_same, hp_other):
    """Where one side pads "same" at a stride > 1 and the other a fixed amount: which input sizes (per axis,
    among 8..15) they differ at and what to use instead; None where they always agree."""
    fixed = conv_pads(hp_other)
    if fixed is None or isinstance(fixed[0], str) or len(fixed) != len(hp_same["kernel_size"]):
        return None
    # a fixed side whose zeros a traced run saw is known at that size only (a hand-written "same" pad varies)
    known = hp_other.get("input_pads_at") or hp_same.get("input_size") or ()
    sizes = [[known[axis]] if axis < len(known) and known[axis] else range(8, 16) for axis in range(len(fixed))]
    differ = {axis: [n for n in sizes[axis] if same_pads(hp_same, n, axis) != fixed[axis]]
              for axis in range(len(fixed))}
    differ = {axis: sizes for axis, sizes in differ.items() if sizes}
    if not differ:
        return None
    where = "; ".join(f"axis {axis}: sizes {sizes}" for axis, sizes in differ.items())
    return (f"Keras 'same' at strides {tuple(hp_same['strides'])} pads by an amount that depends on the input "
            f"size, putting the odd zero last, while the other side always pads (left, right) {fixed}: outputs "
            f"differ for input {where}. Use a ZeroPadding layer with padding='valid' in Keras (as keras-hub "
            "does), or pad asymmetrically on the other side")


def transpose_pads(hp):
    """(left, right) zeros per axis of a transposed convolution's stretched input, or None."""
    if "stretched_pads" in hp:  # worked out by the layer's own framework
        return hp["stretched_pads"]
    if "padding" not in hp or "kernel_size" not in hp:
        return None
    padding, spans = hp["padding"], _effective(hp)
    strides = hp.get("strides") or (1,) * len(spans)
    extra = hp.get("output_padding")
    if not isinstance(padding, str):  # torch: crop `padding` both sides, then add output_padding on the right
        extra = extra or (0,) * len(spans)
        return tuple((e - 1 - p, e - 1 - p + o) for e, p, o in zip(spans, padding, extra))
    pads = []
    for i, (e, s) in enumerate(zip(spans, strides)):  # Keras, as its backends define it
        o = None if extra is None else extra[i]
        if padding.lower() == "valid":
            o = max(e, s) - e if o is None else o
            pads.append((e - 1, e - 1 + o))
        elif padding.lower() == "same":
            total = s + e - 2 if o is None else e + e % 2 - 2 + o
            left = min(total // 2 + total % 2, e - 1)
            pads.append((left, total - left))
        else:
            return None
    return tuple(pads)


def padding_text(hp) -> str:
    """The padding as its side spells it, with the torch mode and transposed output_padding when they matter."""
    text = str(hp["padding"])
    if hp.get("padding_mode", "zeros") != "zeros":
        text += f" ({hp['padding_mode']})"
    if hp.get("input_pads") is not None:
        seen = tuple(hp["input_pads_at"])
        text += f" after a separate zero pad {tuple(hp['input_pads'])} (seen at input size {seen})"
    if "output_padding" in hp:
        extra = hp["output_padding"]
        text += f", output_padding {'default' if extra is None else tuple(extra)}"
    return text

