"""The norm right after a word table is named for it on both sides, in different words (Bloom's
``word_embeddings_layernorm``, keras-hub's ``embeddings_layer_norm``): from a file, which cannot be run, the
names alone must pair it, and the final norm with the final norm."""
import numpy as np
import pytest

import weightport as wp

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

VOCAB, H, T = 13, 6, 5


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.word_embeddings = torch.nn.Embedding(VOCAB, H)
        self.word_embeddings_layernorm = torch.nn.LayerNorm(H)
        self.fc = torch.nn.Linear(H, H)
        self.ln_f = torch.nn.LayerNorm(H)

    def forward(self, ids):
        return self.ln_f(self.fc(self.word_embeddings_layernorm(self.word_embeddings(ids))))


def keras_tiny():
    L = keras.layers
    ids = keras.Input((T,), dtype="int32")
    x = L.LayerNormalization(epsilon=1e-5, name="embeddings_layer_norm")(L.Embedding(VOCAB, H, name="token_embedding")(ids))
    return keras.Model(ids, L.LayerNormalization(epsilon=1e-5, name="layer_norm")(L.Dense(H, name="dense")(x)))


def saved(tmp_path):
    t = Tiny().eval()
    with torch.no_grad():
        for p in t.parameters():
            p.copy_(torch.randn_like(p))
    save_file({n: p.contiguous() for n, p in t.state_dict().items()}, tmp_path / "tiny.safetensors")
    return t, tmp_path / "tiny.safetensors"


def test_the_word_tables_norm_pairs_by_name_from_an_alphabetical_file(tmp_path):
    t, path = saved(tmp_path)
    k = keras_tiny()
    report = wp.port(path, k)
    assert {(s.source, s.target) for s in report.steps} >= {("word_embeddings_layernorm", "embeddings_layer_norm"),
                                                             ("ln_f", "layer_norm")}
    ids = np.random.default_rng(1).integers(0, VOCAB, (2, T))
    with torch.no_grad():
        want = t(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(k(ids)), want, atol=1e-5)


def test_negative_control_without_the_embedding_words_agreeing_the_file_is_refused(tmp_path, monkeypatch):
    from weightport.converter import naming
    monkeypatch.setattr(naming, "EMBEDDINGS", frozenset())
    _, path = saved(tmp_path)
    with pytest.raises(wp.AmbiguityError, match="ln_f"):
        wp.port(path, keras_tiny())
