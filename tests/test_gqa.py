"""Grouped-query attention: fewer key/value heads than query heads, taken from the shapes, not assumed equal."""
import numpy as np
import pytest

import weightport as wp
from util import assert_forward_differs, assert_forward_equal, randomize_keras, randomize_torch, skip_transforms

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

D_MODEL, HEADS, KV_HEADS, HEAD_DIM, SEQ = 11, 4, 2, 6, 5


class TorchGQA(torch.nn.Module):
    """Hugging Face style: four Linear projections, each key/value head serving HEADS // KV_HEADS query heads."""

    def __init__(self):
        super().__init__()
        self.num_heads = HEADS
        self.q_proj = torch.nn.Linear(D_MODEL, HEADS * HEAD_DIM)
        self.k_proj = torch.nn.Linear(D_MODEL, KV_HEADS * HEAD_DIM)
        self.v_proj = torch.nn.Linear(D_MODEL, KV_HEADS * HEAD_DIM)
        self.o_proj = torch.nn.Linear(HEADS * HEAD_DIM, D_MODEL)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, HEADS, HEAD_DIM).transpose(1, 2)
        k = self.k_proj(x).view(b, t, KV_HEADS, HEAD_DIM).transpose(1, 2).repeat_interleave(HEADS // KV_HEADS, 1)
        v = self.v_proj(x).view(b, t, KV_HEADS, HEAD_DIM).transpose(1, 2).repeat_interleave(HEADS // KV_HEADS, 1)
        weights = torch.softmax(q @ k.transpose(-1, -2) / HEAD_DIM ** 0.5, dim=-1)
        return self.o_proj((weights @ v).transpose(1, 2).reshape(b, t, HEADS * HEAD_DIM))


def keras_gqa():
    x = keras.Input((SEQ, D_MODEL))
    layer = keras.layers.GroupQueryAttention(head_dim=HEAD_DIM, num_query_heads=HEADS, num_key_value_heads=KV_HEADS)
    return keras.Model(x, layer(x, x))


X = np.random.default_rng(2).standard_normal((3, SEQ, D_MODEL)).astype("float32")


def test_gqa_ports_both_ways_with_its_key_value_heads():
    t, k = TorchGQA(), keras_gqa()
    randomize_torch(t)
    report = wp.port(t, k)
    assert report.steps[0].target_hp["num_kv_heads"] == KV_HEADS
    assert report.steps[0].shapes[2] == (D_MODEL, KV_HEADS, HEAD_DIM)  # key kernel: 2 heads, not 4
    assert_forward_equal(t, k, X)
    randomize_keras(k, seed=4)
    wp.port(k, t)
    assert_forward_equal(t, k, X)


def test_gqa_negative_control(monkeypatch):
    t, k = TorchGQA(), keras_gqa()
    randomize_torch(t)
    skip_transforms(monkeypatch, "attention_projections")
    wp.port(t, k)
    assert_forward_differs(t, k, X)
