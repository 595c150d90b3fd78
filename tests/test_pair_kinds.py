"""Speed-ups that must not change what pairs: checkpoint groups tried once per kind when look-alikes are
regrouped (``pairs.fitting``), and copies walked over the fewest axes (``direct.merged``)."""
import warnings

import numpy as np
import pytest
import torch
import transformers

import weightport as wp
from weightport.converter import direct, sides
from weightport.converter.pairs import fitting, pair
from weightport.converter.structure import hp_key

keras_hub = pytest.importorskip("keras_hub")


def bert_file(tmp_path):
    """A small BERT (hidden 24, 3 layers, 2 heads, intermediate 40) with random weights, saved as HF does."""
    torch.manual_seed(4)
    model = transformers.BertModel(transformers.BertConfig(
        vocab_size=53, hidden_size=24, num_hidden_layers=3, num_attention_heads=2, intermediate_size=40,
        max_position_embeddings=17, type_vocab_size=2))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.02)
    model.save_pretrained(tmp_path)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=53, num_layers=3, num_heads=2, hidden_dim=24,
                                             intermediate_dim=40, max_sequence_length=17, num_segments=2)
    return tmp_path / "model.safetensors", backbone


def nodes(path, backbone):
    src, _ = sides.source_nodes(sides.resolve(str(path), False), model=None, strict=False)
    _, tgt, _ = sides.live_nodes(backbone, "target", False)
    return src, tgt + [part for b in tgt for part in b.parts]  # the attention's projections, as the matcher does


def brute_force(src, tgt) -> set:
    return {(id(a), id(b)) for a in src for b in tgt if (p := pair(a, b)) is not None and p.shapes_agree}


def test_fitting_tried_once_per_kind_finds_what_every_pair_tried_finds(tmp_path):
    src, tgt = nodes(*bert_file(tmp_path))
    found = fitting(src, tgt)
    assert found == brute_force(src, tgt)
    projections = [a for a in src if a.path.endswith(("query", "key", "value", "attention.output.dense"))]
    assert len(projections) == 12 and len({a.pairing_kind() for a in projections}) == 1  # 12 tried as one
    # negative control: the (40, 24) intermediate Linear is another kind, and fits none of the 24x24 kernels
    up = next(a for a in src if a.path.endswith("0.intermediate.dense"))
    assert up.pairing_kind() != projections[0].pairing_kind()
    query = next(b for b in tgt if b.path.endswith("0/self_attention_layer/query"))
    assert (id(projections[0]), id(query)) in found and (id(up), id(query)) not in found


def test_a_kind_tells_apart_what_pairing_reads():
    assert hp_key({"units": 3, "use_bias": True}) == hp_key({"use_bias": True, "units": 3})
    assert hp_key({"units": 3}) != hp_key({"units": 3.0}) != hp_key({"units": True})
    assert hp_key({"shape": (1, 2)}) != hp_key({"shape": (True, 2)})
    assert hp_key({"rope": {"head_dim": 4}}) is None and hp_key({"shape": ((1, 2),)}) is None


def test_the_bert_file_port_is_still_bitwise_what_keras_hub_loads(tmp_path):
    path, ours = bert_file(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.port(str(path), ours, quiet=True)
    theirs = keras_hub.models.BertBackbone.from_preset(str(tmp_path))
    for a, b in zip(ours.weights, theirs.weights):
        x, y = (np.asarray(wp.converter.arrays.to_numpy(v.value)) for v in (a, b))
        assert a.path == b.path and x.tobytes() == y.tobytes(), a.path


def test_merged_axes_are_the_fewest_a_copy_walks():
    w = np.arange(24 * 24, dtype=np.float32).reshape(24, 24)
    q = w.T.reshape(24, 2, 12)  # an EinsumDense kernel filled from a transposed Linear weight
    out = np.empty(q.shape, np.float32)
    assert direct.merged(q.shape, out.strides, q.strides) == ((24, 24), ((96, 4), (4, 96)))
    o = w.T.reshape(2, 12, 24)
    assert direct.merged(o.shape, np.empty(o.shape, np.float32).strides, o.strides) == ((24, 24), ((96, 4), (4, 96)))
    # negative control: the first 5 of each row of 8 cannot merge with the rows; size-1 axes are dropped
    x = np.arange(2 * 3 * 8.0).reshape(2, 1, 3, 8)[..., :5]
    assert direct.merged(x.shape, np.empty(x.shape).strides, x.strides) == ((6, 5), ((40, 8), (64, 8)))
    assert direct.merged((4, 5), (-20, 4), (20, 4)) == ((4, 5), ((-20, 4), (20, 4)))


@pytest.mark.parametrize("into", ["numpy", "torch"])
def test_copies_over_merged_axes_and_split_across_threads_are_exact(into):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((1536, 1024)).astype(np.float32)  # 6 MiB: split across threads without torch
    for view in (w.T.reshape(1024, 12, 128), w.T.reshape(8, 128, 1536), w.T, w[:, ::2], w[3]):
        dst = np.zeros(view.shape, np.float32) if into == "numpy" else torch.zeros(view.shape)
        direct.copy_into(dst, view)
        got = dst if into == "numpy" else dst.numpy()
        assert got.tobytes() == np.ascontiguousarray(view).tobytes()
    big, half = np.zeros((1024, 1536), np.float32), w.T
    direct.split_copy(big, half)
    assert np.array_equal(big, w.T)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int8"])
def test_a_transposing_copy_without_torch_moves_every_bit(dtype):
    """A 2-D transpose goes through fast_transpose by bands of rows (uneven sizes, NaN payloads kept)."""
    rng = np.random.default_rng(5)
    for shape in ((1536, 1030), (37, 1001), (1001, 53)):
        a = rng.integers(0, 255, shape[0] * shape[1] * np.dtype(dtype).itemsize, dtype=np.uint8).view(dtype)
        a = a.reshape(shape)
        assert direct.transposed_matrix(np.empty(shape[::-1], dtype), a.T) is not None
        dst = np.zeros(shape[::-1], dtype)
        direct.split_copy(dst, a.T)
        assert dst.tobytes() == np.ascontiguousarray(a.T).tobytes()
    # negative controls: a plain copy, or a matrix whose rows are not contiguous, is not read as a transpose
    assert direct.transposed_matrix(np.empty((4, 6)), np.ones((4, 6))) is None
    assert direct.transposed_matrix(np.empty((4, 6)), np.ones((6, 8))[:, ::2].T) is None
