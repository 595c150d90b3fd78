"""The keys a transformers model's ``save_pretrained`` writes, where they are not its ``state_dict`` names.

transformers 5 renames modules (SegFormer's ``encoder.block.0.1`` became
``stages.0.blocks.1``, Swin's ``attention.self.query`` became
``attention.q_proj``) and keeps a table that renames the keys back on save, so
that files on the Hub stay as they were. A file it saved therefore names its
tensors otherwise than the model it came from. The model itself says how:
asking its own table is exact where matching the words of two names is a guess.
Keys that a conversion reshapes or merges on save (stacked experts) are left out:
those are not renamings, and the matcher reads them by shape as before.
"""
from __future__ import annotations

import sys


def saved_keys(model) -> dict:
    """{state_dict key: the key ``save_pretrained`` writes it under}, for the keys it renames; {} for a model
    that is not a transformers one, renames nothing, or whose tables this transformers version lays out
    otherwise (the port then falls back on matching names, as before)."""
    transformers = sys.modules.get("transformers")
    if transformers is None or not isinstance(model, getattr(transformers, "PreTrainedModel", ())):
        return {}
    try:
        renamings, converters = _reverse_tables(model)
        from transformers.core_model_loading import apply_converters, apply_renamings
    except (ImportError, AttributeError, TypeError):
        return {}
    if not renamings:
        return {}
    found = {}
    for key in model.state_dict():
        if converters and apply_converters(key, converters)[1] is not None:
            continue  # reshaped or merged on save, not only renamed
        saved = apply_renamings(key, renamings)
        if saved != key:
            found[key] = saved
    return found


def _reverse_tables(model) -> tuple:
    """(renamings, converters) that ``save_pretrained`` applies to ``model``'s keys, in the order it does
    (transformers' ``revert_weight_conversion``)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import PrefixChange, WeightConverter, WeightRenaming

    conversions = getattr(model, "_weight_conversions", None)
    if conversions is None:  # built, not loaded: the default table, with no legacy renames or prefix changes
        conversions = [c for c in get_model_conversion_mapping(model, add_legacy=False)
                       if not isinstance(c, PrefixChange)]
    reverse = [c.reverse_transform() for c in conversions[::-1]]
    return ([r for r in reverse if isinstance(r, WeightRenaming)],
            [r for r in reverse if isinstance(r, WeightConverter)])
