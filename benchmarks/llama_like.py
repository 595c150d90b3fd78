"""A Llama-shaped PyTorch model, used by convert_large.py as the structure of its checkpoint.

``torch_structure()`` builds it on the meta device: every name, shape and
hyperparameter is there, no weight is allocated.
"""
import torch
from torch import nn

HIDDEN, INTER, VOCAB, LAYERS, HEADS = 2048, 5504, 32000, 7, 16  # ~485M parameters, ~1.94 GB in float32


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.num_heads = HEADS
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(HIDDEN, HIDDEN, bias=False) for _ in range(4))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_proj = nn.Linear(HIDDEN, INTER, bias=False)
        self.up_proj = nn.Linear(HIDDEN, INTER, bias=False)
        self.down_proj = nn.Linear(INTER, HIDDEN, bias=False)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(HIDDEN, eps=1e-6)
        self.self_attn = Attention()
        self.post_attention_layernorm = nn.RMSNorm(HIDDEN, eps=1e-6)
        self.mlp = MLP()


class Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = nn.RMSNorm(HIDDEN, eps=1e-6)


class LlamaLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = Body()
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)


def torch_structure():
    with torch.device("meta"):
        return LlamaLike()


def keras_structure():
    """The same model as Keras layers (zero-initialised, so building it is quick); allocates its weights."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    class KerasLlamaLike(keras.Model):
        def __init__(self):
            super().__init__()
            L = keras.layers
            self.embed_tokens = L.Embedding(VOCAB, HIDDEN, embeddings_initializer="zeros")
            self.blocks = []
            for i in range(LAYERS):
                block = [L.RMSNormalization(epsilon=1e-6, name=f"block{i}_input_layernorm"),
                         L.MultiHeadAttention(HEADS, HIDDEN // HEADS, use_bias=False, kernel_initializer="zeros",
                                              name=f"block{i}_self_attn"),
                         L.RMSNormalization(epsilon=1e-6, name=f"block{i}_post_attention_layernorm")]
                # named as the torch model names them: look-alikes, and no forward pass to trace
                block += [L.Dense(n, use_bias=False, kernel_initializer="zeros", name=f"block{i}_{role}")
                          for n, role in ((INTER, "gate_proj"), (INTER, "up_proj"), (HIDDEN, "down_proj"))]
                self.blocks.append(block)
            self.norm = L.RMSNormalization(epsilon=1e-6)
            self.lm_head = L.Dense(VOCAB, use_bias=False, kernel_initializer="zeros")

    model = KerasLlamaLike()
    model.embed_tokens.build((None,))
    for norm1, attn, norm2, gate, up, down in model.blocks:
        norm1.build((None, HIDDEN))
        attn.build((None, 1, HIDDEN), (None, 1, HIDDEN))
        norm2.build((None, HIDDEN))
        gate.build((None, HIDDEN))
        up.build((None, HIDDEN))
        down.build((None, INTER))
    model.norm.build((None, HIDDEN))
    model.lm_head.build((None, HIDDEN))
    return model
