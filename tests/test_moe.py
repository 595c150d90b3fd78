"""Mixture-of-experts blocks: transformers' Mixtral (experts stacked, gate and up packed, torch's (out, in)) against
keras-hub's (three kernels stacked, Keras' (in, out)). The router feeds transformers' experts but is applied after
keras-hub's: the two runs wire every block alike but differently from each other, which must not block the pairing
by block numbers, and must not let it pair blocks the dataflow says are not each other's."""
import ast
import warnings

import numpy as np
import pytest

import weightport as wp
from test_real_models import randomized

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, MLP, EXPERTS, TOP_K = 101, 48, 2, 4, 2, 40, 5, 2
IDS = np.random.default_rng(9).integers(0, VOCAB, (2, 7))


def hf_mixtral(seed):
    config = transformers.MixtralConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, num_local_experts=EXPERTS,
        num_experts_per_tok=TOP_K, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False)
    return randomized(transformers.MixtralForCausalLM(config), seed)


def keras_mixtral():
    return keras_hub.models.MixtralBackbone(
        vocabulary_size=VOCAB, num_layers=LAYERS, num_query_heads=HEADS, num_key_value_heads=KV_HEADS,
        hidden_dim=HIDDEN, intermediate_dim=MLP, num_experts=EXPERTS, top_k=TOP_K, layer_norm_epsilon=1e-5,
        rope_max_wavelength=1_000_000, tie_word_embeddings=False)


def outputs(hf, kh):
    with torch.no_grad():
        a = hf.model(input_ids=torch.from_numpy(IDS)).last_hidden_state.numpy()
    return a, keras.ops.convert_to_numpy(kh({"token_ids": IDS, "padding_mask": np.ones_like(IDS)}))


def port_with_the_suggested_hints(source, target):
    with pytest.raises(wp.AmbiguityError, match="hints=") as refused:
        wp.port(source, target)
    hints = ast.literal_eval(str(refused.value).rsplit("hints=", 1)[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        return wp.port(source, target, hints=hints), hints


def quietly_ported(source, target, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        return wp.port(source, target, **kwargs)


def test_expert_banks_port_both_ways_live_with_no_hints():
    hf, kh = hf_mixtral(31), keras_mixtral()
    report = quietly_ported(hf, kh)
    banks = {s.source: s.target for s in report.steps if s.rule == "expert_bank"}
    assert banks and all(k.split(".")[2] in v for k, v in banks.items())  # block i with block i
    np.testing.assert_allclose(*outputs(hf, kh), atol=1e-4, rtol=1e-4)
    back = hf_mixtral(32)
    quietly_ported(kh, back)
    np.testing.assert_allclose(*outputs(back, kh), atol=1e-4, rtol=1e-4)


class RunsBackwards(torch.nn.ModuleList):
    """A decoder stack run last block first, its blocks keeping their names: numbers then say nothing."""

    def __getitem__(self, index):
        found = super().__getitem__(index)
        return RunsBackwards(list(found)[::-1]) if isinstance(index, slice) else found


def test_negative_control_blocks_numbered_alike_but_run_in_another_order_are_not_paired_by_number():
    hf, kh = hf_mixtral(31), keras_mixtral()
    hf.model.layers = RunsBackwards(list(hf.model.layers))
    try:
        quietly_ported(hf, kh)
    except wp.AmbiguityError as refused:
        assert "experts" in str(refused) and "hints=" in str(refused)
    else:  # paired by what each block computes: then the outputs agree
        np.testing.assert_allclose(*outputs(hf, kh), atol=1e-4, rtol=1e-4)


def test_the_hint_line_a_refusal_prints_ports_exactly(monkeypatch):
    from weightport.converter import evidence
    monkeypatch.setattr(evidence.Pairing, "differ_alike", lambda self, mine, theirs: False)
    hf, kh = hf_mixtral(31), keras_mixtral()
    port_with_the_suggested_hints(hf, kh)
    np.testing.assert_allclose(*outputs(hf, kh), atol=1e-4, rtol=1e-4)


def test_negative_control_gate_and_up_unpacked_the_other_way_round_differ(monkeypatch):
    from weightport.mappings import experts
    from weightport.mappings.transforms import Chain, Concat, Each, ReorderBlocks

    def up_first(self, hp):
        units = hp["units"]
        swapped = Chain(Each(2, experts.PER_EXPERT_TRANSPOSE), Concat(1, (units, units)), ReorderBlocks(1, (1, 0)))
        return [experts.link(("gate", "up"), "gate_up_proj", swapped),
                experts.link("down", "down_proj", experts.PER_EXPERT_TRANSPOSE)]

    monkeypatch.setattr(experts.ExpertBankRule, "links_torch", up_first)
    hf, kh = hf_mixtral(31), keras_mixtral()
    quietly_ported(hf, kh)
    a, b = outputs(hf, kh)
    assert np.abs(a - b).max() > 1e-2


def test_a_file_keeping_each_expert_apart_loads_what_keras_hubs_own_converter_loads(tmp_path):
    """transformers writes Mixtral's experts one by one (``experts.3.w1.weight``), as the released checkpoints
    are; keras-hub's converter reads that form, and so does the bank's rule, with no model."""
    hf = hf_mixtral(33)
    hf.save_pretrained(tmp_path)
    assert any(".experts.0.w1." in n for n in wp.load(tmp_path / "model.safetensors"))
    kh = keras_mixtral()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        report = wp.port(tmp_path / "model.safetensors", kh)
    assert any(s.rule == "expert_bank" for s in report.steps)
    np.testing.assert_allclose(*outputs(hf, kh), atol=1e-4, rtol=1e-4)
    reference = keras_hub.models.MixtralBackbone.from_preset(str(tmp_path))
    assert len(kh.weights) == len(reference.weights)
    for ours, theirs in zip(kh.weights, reference.weights):  # paths carry Keras' global name counters: by order
        a, b = keras.ops.convert_to_numpy(ours.value), keras.ops.convert_to_numpy(theirs.value)
        assert a.shape == b.shape and np.array_equal(a, b), theirs.path


def hf_qwen3_moe(seed):
    config = transformers.Qwen3MoeConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, moe_intermediate_size=MLP,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=16,
        num_experts=EXPERTS, num_experts_per_tok=TOP_K, norm_topk_prob=True, max_position_embeddings=64,
        rms_norm_eps=1e-6, tie_word_embeddings=False)
    return randomized(transformers.Qwen3MoeForCausalLM(config), seed)


def keras_qwen3_moe():
    return keras_hub.models.Qwen3MoeBackbone(
        vocabulary_size=VOCAB, num_layers=LAYERS, num_query_heads=HEADS, num_key_value_heads=KV_HEADS,
        hidden_dim=HIDDEN, intermediate_dim=64, moe_intermediate_dim=MLP, num_experts=EXPERTS, head_dim=16,
        top_k=TOP_K, norm_top_k_prob=True, rope_max_wavelength=10000)


@pytest.mark.parametrize("swap", [False, True], ids=["gate_first", "negative_control_up_first"])
def test_keras_hubs_qwen_moe_packs_gate_and_up_its_own_way_and_loads_from_the_per_expert_file(tmp_path, swap,
                                                                                             monkeypatch):
    """keras-hub's Qwen3 MoE keeps gate and up side by side in one (experts, hidden, 2 * units) kernel; the file
    keeps ``experts.N.gate_proj/up_proj/down_proj``."""
    from weightport.mappings import experts
    from weightport.mappings.transforms import Chain, Concat, ReorderBlocks

    if swap:
        def up_first(self, hp):
            units = hp["units"]
            return [experts.link(("gate", "up"), "gate", Chain(Concat(2, (units, units)), ReorderBlocks(2, (1, 0)))),
                    experts.link("down", "down")]
        monkeypatch.setattr(experts.ExpertBankRule, "links_keras", up_first)
    hf = hf_qwen3_moe(34)
    hf.save_pretrained(tmp_path)
    kh = keras_qwen3_moe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.port(tmp_path / "model.safetensors", kh)
    a, b = outputs(hf, kh)
    if swap:
        assert np.abs(a - b).max() > 1e-2
    else:
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_negative_control_per_expert_weights_not_transposed_are_refused_or_differ(tmp_path, monkeypatch):
    """Each expert's (out, in) weights taken as they are (no per-expert transpose): never a silent port."""
    from weightport.mappings import experts
    from weightport.mappings.transforms import Chain, Unstack

    def untransposed(self, hp):
        if not hp.get("per_expert"):
            return original(self, hp)
        apart, n = hp["per_expert"], hp["experts"]
        return [experts.link(k, tuple(f"{e}.{apart[k]}.weight" for e in range(n)), Chain(Unstack(n)))
                for k in ("gate", "up", "down")]

    original = experts.ExpertBankRule.links_torch
    monkeypatch.setattr(experts.ExpertBankRule, "links_torch", untransposed)
    hf = hf_mixtral(35)
    hf.save_pretrained(tmp_path)
    kh = keras_mixtral()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", wp.WeightportWarning)
            wp.port(tmp_path / "model.safetensors", kh)
    except wp.WeightportError:
        return  # refused: the shapes no longer fit, as good as differing
    a, b = outputs(hf, kh)
    assert np.abs(a - b).max() > 1e-2
