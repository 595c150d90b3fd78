"""Outputs that are not arrays of numbers (a transformers cache object) are refused by name, never crash, and a
port's check= puts the target back when it meets one."""
import numpy as np
import pytest

import weightport as wp
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.keras_free
IDS = torch.tensor([[3, 11, 5, 7, 2], [9, 4, 13, 6, 8]])


def llama(seed):
    config = transformers.LlamaConfig(vocab_size=17, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    model = transformers.LlamaModel(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # parameters only: the rotary buffer is computed, and a state dict does not carry it
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def test_a_cache_among_the_outputs_is_named_not_a_type_error():
    a, b = llama(1), llama(2)
    b.load_state_dict(a.state_dict())  # same function, two objects
    with pytest.raises(wp.UsageError, match=r"\(cache\) of the first model is DynamicCache.*output=") as refused:
        wp.verify(a, b, {"input_ids": IDS, "use_cache": True})
    assert "use_cache=False" in str(refused.value)
    # the way out it names works, and still tells equal from different outputs (negative control)
    assert wp.verify(a, b, {"input_ids": IDS, "use_cache": True}, output="last_hidden_state").ok
    c = llama(3)
    assert not wp.verify(a, c, {"input_ids": IDS, "use_cache": True}, output="last_hidden_state").ok


def test_check_meeting_a_cache_restores_the_target():
    """check= that cannot compare must not leave a port it could not verify in place (it did: a TypeError
    escaped before the restore)."""
    source, target = llama(4), llama(5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(wp.UsageError, match="DynamicCache"):
        wp.port(source, target, check={"input_ids": IDS, "use_cache": True}, quiet=True)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    wp.port(source, target, check={"input_ids": IDS, "use_cache": False}, quiet=True)  # the pasted way out
    assert all(torch.equal(source.state_dict()[k], v) for k, v in target.state_dict().items())


def test_outputs_that_cannot_pair_name_both_keys():
    a = llama(6)
    with pytest.raises(wp.UsageError, match=r"\(last_hidden_state and last_hidden_state\).*output="):
        wp.verify(a, a, ({"input_ids": IDS, "use_cache": False}, {"input_ids": IDS[:, :3], "use_cache": False}))
    np.testing.assert_equal(wp.verify(a, a, {"input_ids": IDS, "use_cache": False}).max_abs_diff, 0.0)
