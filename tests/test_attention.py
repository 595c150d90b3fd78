"""MultiHeadAttention <-> nn.MultiheadAttention / four Linear projections, and EinsumDense <-> Linear."""
import numpy as np
import pytest

import weightport as wp
from util import (_Naive, assert_forward_differs, assert_forward_equal, assert_keras_roundtrip, randomize_keras,
                  randomize_torch, skip_transforms)
from weightport.mappings import transforms as T
from weightport.mappings.rule import Link, registry

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

D, HEADS, HEAD_DIM, SEQ, KV_SEQ, KDIM, VDIM, FF = 12, 3, 4, 6, 5, 7, 5, 11


class TorchMHA(torch.nn.Module):
    """nn.MultiheadAttention returning only the output, like Keras' MultiHeadAttention."""

    def __init__(self, kdim=None, vdim=None, bias=True, **kwargs):
        super().__init__()
        self.mha = torch.nn.MultiheadAttention(D, HEADS, bias=bias, kdim=kdim, vdim=vdim, batch_first=True, **kwargs)

    def forward(self, q, k, v):
        return self.mha(q, k, v, need_weights=False)[0]


def keras_mha(kdim=D, vdim=D, use_bias=True):
    q, k, v = keras.Input((SEQ, D)), keras.Input((KV_SEQ, kdim)), keras.Input((KV_SEQ, vdim))
    out = keras.layers.MultiHeadAttention(HEADS, HEAD_DIM, use_bias=use_bias)(q, v, key=k)
    return keras.Model([q, k, v], out)


def qkv(kdim=D, vdim=D, batch=2):
    rng = np.random.default_rng(3)
    return [rng.standard_normal(s).astype("float32") for s in ((batch, SEQ, D), (batch, KV_SEQ, kdim),
                                                                (batch, KV_SEQ, vdim))]


CASES = {"packed": dict(), "separate": dict(kdim=KDIM, vdim=VDIM), "no_bias": dict(use_bias=False)}


def mha_pair(case):
    kw = CASES[case]
    kdim, vdim, bias = kw.get("kdim", D), kw.get("vdim", D), kw.get("use_bias", True)
    t = TorchMHA(kdim=kw.get("kdim"), vdim=kw.get("vdim"), bias=bias)
    return t, keras_mha(kdim, vdim, bias), qkv(kdim, vdim)


@pytest.mark.parametrize("case", list(CASES))
def test_mha_torch_to_keras_forward(case):
    t, k, x = mha_pair(case)
    assert t.mha._qkv_same_embed_dim == (case != "separate")
    randomize_torch(t)
    report = wp.port(t, k)
    assert [s.rule for s in report.steps] == ["multi_head_attention"]
    assert_forward_equal(t, k, x)


@pytest.mark.parametrize("case", list(CASES))
def test_mha_keras_to_torch_forward(case):
    t, k, x = mha_pair(case)
    randomize_keras(k)
    wp.port(k, t)
    assert_forward_equal(t, k, x)


@pytest.mark.parametrize("case", list(CASES))
def test_mha_keras_torch_keras_bitwise(case):
    t, k, _ = mha_pair(case)
    assert_keras_roundtrip(k, t)


def _without_transposes(t):
    """``t`` with every Transpose inside it replaced by a plain reshape."""
    if isinstance(t, T.Chain):
        return T.Chain(*(_without_transposes(p) for p in t.parts))
    if isinstance(t, T.Each):
        return T.Each(t.n_in, _without_transposes(t.t))
    return _Naive(t) if isinstance(t, T.Transpose) else t


@pytest.mark.parametrize("case", ["packed", "separate"])
def test_mha_negative_control_without_qkv_transposes(monkeypatch, case):
    # only the q/k/v projections lose their transposes; the output projection stays right
    rule = registry.get("multi_head_attention")
    original = rule.links_torch

    def links(hp):
        return [Link(lk.canonical, lk.native, _without_transposes(lk.transform))
                if any(c.endswith("/kernel") and not c.startswith("attention_output") for c in lk.canonical) else lk
                for lk in original(hp)]

    t, k, x = mha_pair(case)
    randomize_torch(t)
    monkeypatch.setattr(rule, "links_torch", links)
    wp.port(t, k)
    assert_forward_differs(t, k, x)


def test_mha_negative_control_skip_transforms(monkeypatch):
    t, k, x = mha_pair("separate")
    randomize_torch(t)
    skip_transforms(monkeypatch, "multi_head_attention")
    wp.port(t, k)
    assert_forward_differs(t, k, x)


def test_mha_get_weights_is_keras_order_and_layout():
    t = TorchMHA()
    randomize_torch(t)
    w = wp.get_weights(t.mha)
    assert [a.shape for a in w] == [(D, HEADS, HEAD_DIM), (HEADS, HEAD_DIM)] * 3 + [(HEADS, HEAD_DIM, D), (D,)]
    wq = t.mha.in_proj_weight.detach().numpy()[:D]  # rows: head 0's dims, then head 1's...
    np.testing.assert_array_equal(w[0][:, 1, 2], wq[1 * HEAD_DIM + 2])
    np.testing.assert_array_equal(w[6][2, 3], t.mha.out_proj.weight.detach().numpy()[:, 2 * HEAD_DIM + 3])


@pytest.mark.parametrize("kwargs, word", [({"add_bias_kv": True}, "add_bias_kv"), ({"add_zero_attn": True}, "add_")])
def test_mha_torch_extras_are_refused(kwargs, word):
    t = TorchMHA(**kwargs)
    k = keras_mha()
    with pytest.raises(wp.UnsupportedLayerError, match=word):
        wp.port(t, k)
    with pytest.raises(wp.UnsupportedLayerError, match="no Keras"):
        wp.get_weights(t.mha)


def test_unbuilt_keras_mha_is_refused():
    layer = keras.layers.MultiHeadAttention(HEADS, HEAD_DIM)
    with pytest.raises(wp.UsageError, match="not built.*call it once"):
        wp.port(TorchMHA(), layer)


def test_keras_gate_is_refused():
    q = keras.Input((SEQ, D))
    layer = keras.layers.MultiHeadAttention(HEADS, HEAD_DIM, use_gate=True)
    layer(q, q)
    with pytest.raises(wp.UnsupportedLayerError, match="use_gate"):
        wp.get_weights(layer)


def test_mha_config_mismatches_are_refused():
    rule = registry.get("multi_head_attention")
    issues = rule.check(rule.config("torch", TorchMHA(bias=False).mha), rule.config("keras", keras_mha().layers[-1]))
    assert [(i.key, i.severity) for i in issues] == [("use_bias", "error")]
    with pytest.raises(wp.ShapeMismatchError):
        wp.port(TorchMHA(bias=False), keras_mha())
    # 4 heads of 3 vs 3 heads of 4: same total size, different split
    t = torch.nn.Module()
    t.mha = torch.nn.MultiheadAttention(D, 4, batch_first=True)
    with pytest.raises(wp.ShapeMismatchError, match="12x3x4"):
        wp.port(t, keras_mha())


def test_mha_over_two_axes_is_refused():
    x = keras.Input((4, 3, D))  # Keras attends over both axes; torch over one sequence
    k = keras.Model(x, keras.layers.MultiHeadAttention(HEADS, HEAD_DIM)(x, x))
    with pytest.raises(wp.ConfigMismatchError, match="attention_axes"):
        wp.port(TorchMHA(), k)


def test_mha_dropout_is_recorded_not_compared():
    t = TorchMHA(dropout=0.3)
    k = keras_mha()
    randomize_torch(t)
    report = wp.port(t, k)
    assert report.steps[0].source_hp["dropout"] == pytest.approx(0.3) and not report.plan.issues


def test_mha_checkpoint_groups_are_inferred():
    rule = registry.get("multi_head_attention")
    layer = keras_mha(KDIM, VDIM).layers[-1]
    prefix = layer.name + "/"
    shapes = {v.path.removeprefix(prefix): tuple(v.shape) for v in layer.weights}
    hp = rule.infer("keras", shapes)
    assert hp == {"num_heads": HEADS, "num_kv_heads": HEADS, "key_dim": HEAD_DIM, "value_dim": HEAD_DIM,
                  "use_bias": True, "packed": False}
    assert rule.infer("keras", {**shapes, "extra": (3,)}) is None
    assert registry.get("attention_projections").infer("keras", shapes) is None  # one claimant only
    for t in (TorchMHA(), TorchMHA(kdim=KDIM, vdim=VDIM)):
        torch_shapes = {n: tuple(p.shape) for n, p in t.mha.state_dict().items()}
        bare = rule.infer("torch", torch_shapes)  # claimed, but heads cannot be read off torch shapes
        assert "num_heads" not in bare and bare["packed"] == t.mha._qkv_same_embed_dim
        with pytest.raises(wp.UsageError, match="heads is unknown.*model="):
            rule.canonical_shapes("torch", bare, torch_shapes)
        assert rule.infer("torch", {**torch_shapes, "extra": (3,)}) is None
        hp = rule.infer_torch(torch_shapes, num_heads=HEADS)
        assert hp["packed"] == t.mha._qkv_same_embed_dim
        assert rule.canonical_shapes("torch", hp, torch_shapes) == [tuple(a.shape) for a in wp.get_weights(t.mha)]
        assert rule.infer_torch(torch_shapes, num_heads=5) is None  # 12 does not split into 5 heads


@pytest.mark.parametrize("case", ["packed", "separate"])
def test_mha_bare_torch_checkpoint_takes_heads_from_keras(case):
    t, k, x = mha_pair(case)
    randomize_torch(t)
    report = wp.port({n: p.detach().numpy() for n, p in t.state_dict().items()}, k)
    assert report.steps[0].source_hp["num_heads"] == HEADS
    assert_forward_equal(t, k, x)


# -- four Linear projections (Hugging Face style) ----------------------------------------------------------
class Projections(torch.nn.Module):
    """Self-attention written with four Linear layers, as Hugging Face models do."""

    def __init__(self, heads=HEADS, names=("q_proj", "k_proj", "v_proj", "o_proj")):
        super().__init__()
        if heads is not None:
            self.num_heads = heads
        self.names = names
        for name in names:
            self.add_module(name, torch.nn.Linear(D, D))
        self.dropout = torch.nn.Dropout(0.1)

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = (getattr(self, n)(x).view(b, s, HEADS, HEAD_DIM).transpose(1, 2) for n in self.names[:3])
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return getattr(self, self.names[3])(out.transpose(1, 2).reshape(b, s, D))


def keras_self_attention():
    x = keras.Input((SEQ, D))
    return keras.Model(x, keras.layers.MultiHeadAttention(HEADS, HEAD_DIM)(x, x))


def test_projections_both_directions_and_bitwise():
    x = qkv()[0]
    t, k = Projections(), keras_self_attention()
    randomize_torch(t)
    report = wp.port(t, k)
    assert [s.rule for s in report.steps] == ["attention_projections"]
    assert_forward_equal(t, k, x)
    randomize_keras(k, seed=4)
    wp.port(k, t)
    assert_forward_equal(t, k, x)
    assert_keras_roundtrip(k, t)


def test_projections_negative_control(monkeypatch):
    t, k = Projections(), keras_self_attention()
    randomize_torch(t)
    skip_transforms(monkeypatch, "attention_projections")
    wp.port(t, k)
    assert_forward_differs(t, k, qkv()[0])


def test_projections_heads_come_from_the_keras_side_or_an_attribute():
    t, k = Projections(heads=None), keras_self_attention()
    randomize_torch(t)
    wp.port(t, k)  # the Keras layer knows the heads
    assert_forward_equal(t, k, qkv()[0])
    with pytest.raises(wp.UsageError, match=r"heads is unknown.*module.num_heads"):
        wp.get_weights(t)
    t.num_attention_heads = HEADS
    assert [a.shape for a in wp.get_weights(t)][:2] == [(D, HEADS, HEAD_DIM), (HEADS, HEAD_DIM)]


@pytest.mark.parametrize("names", [
    ("q_proj", "k_proj", "v_proj", "out_proj"), ("query", "key", "value", "output.dense"),
    ("q_lin", "k_lin", "v_lin", "out_lin"), ("to_q", "to_k", "to_v", "to_out.0"),
])
def test_projection_names_are_recognised(names):
    root = torch.nn.Module()
    for name in names:
        *parents, leaf = name.split(".")
        owner = root
        for p in parents:
            if not hasattr(owner, p):
                owner.add_module(p, torch.nn.ModuleList() if leaf.isdigit() else torch.nn.Module())
            owner = getattr(owner, p)
        if isinstance(owner, torch.nn.ModuleList):
            owner.append(torch.nn.Linear(D, D))
        else:
            owner.add_module(leaf, torch.nn.Linear(D, D))
    root.n_heads = HEADS
    hp = registry.get("attention_projections").config("torch", root)
    assert hp["projections"] == names and hp["num_heads"] == HEADS


def test_projection_lookalikes_are_not_claimed():
    rule = registry.get("attention_projections")
    three = Projections(names=("q_proj", "k_proj", "v_proj", "o_proj"))
    del three.o_proj
    normed = Projections()
    normed.norm = torch.nn.LayerNorm(D)
    fused = torch.nn.Module()
    fused.query_key_value, fused.dense = torch.nn.Linear(D, 3 * D), torch.nn.Linear(D, D)
    mixed = Projections()
    mixed.k_proj = torch.nn.Linear(D, D, bias=False)
    for module in (three, normed, fused, mixed, torch.nn.Linear(D, D), TorchMHA().mha):
        assert not rule.matches("torch", module)
    assert [r.name for r in registry.candidates("torch", normed.q_proj)] == ["dense", "einsum_dense"]


# -- EinsumDense <-> Linear -------------------------------------------------------------------------------
class LinearThenSplit(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(KDIM, HEADS * HEAD_DIM)
        self.out = torch.nn.Linear(HEADS * HEAD_DIM, VDIM)

    def forward(self, x):
        y = self.proj(x).view(*x.shape[:-1], HEADS, HEAD_DIM)  # "abc,cde->abde"
        return self.out(y.flatten(-2))  # "abcd,cde->abe"


def einsum_pair():
    x = keras.Input((KV_SEQ, KDIM))
    y = keras.layers.EinsumDense("abc,cde->abde", (None, HEADS, HEAD_DIM), bias_axes="de")(x)
    y = keras.layers.EinsumDense("...cd,cde->...e", VDIM, bias_axes="e")(y)
    return LinearThenSplit(), keras.Model(x, y)


def test_einsum_dense_both_directions_and_bitwise():
    t, k = einsum_pair()
    x = qkv(kdim=KDIM)[1]
    randomize_torch(t)
    report = wp.port(t, k)
    assert [s.rule for s in report.steps] == ["einsum_dense", "einsum_dense"]
    assert_forward_equal(t, k, x)
    randomize_keras(k, seed=5)
    wp.port(k, t)
    assert_forward_equal(t, k, x)
    assert_keras_roundtrip(k, t)
    assert [a.shape for a in wp.get_weights(t.proj)] == [(KDIM, HEADS * HEAD_DIM), (HEADS * HEAD_DIM,)]  # a Dense


def test_einsum_dense_negative_control(monkeypatch):
    t, k = einsum_pair()
    randomize_torch(t)
    skip_transforms(monkeypatch, "einsum_dense")
    wp.port(t, k)
    assert_forward_differs(t, k, qkv(kdim=KDIM)[1])


@pytest.mark.parametrize("equation, bias_axes, expected", [
    ("abc,cde->abde", "de", ((0, 1, 2), 1)), ("ab,bc->ac", None, ((0, 1), 1)), ("abcd,cde->abe", "e", ((0, 1, 2), 2)),
    ("...b,bc->...c", "c", ((0, 1), 1)), ("abc,ce->abe", None, ((0, 1), 1)),
    ("btd,ndh->btnh", "nh", ((1, 0, 2), 1)),  # keras-hub Gemma's query: the contracted axis in the middle
    ("abc,ced->abde", None, ((0, 2, 1), 1)),  # produced axes in another order than the output's
    ("abcd,dce->abe", None, ((1, 0, 2), 2)),  # contracted axes in another order than the input's
    ("abc,cde->abde", "e", None),  # a bias over one output axis is not a Linear bias
    ("ab,bc->ca", None, None), ("ab...,bc->ac...", None, None), ("abc,bcd->ad", None, ((0, 1, 2), 2)),
    ("abc,acd->abd", None, None),  # a kernel axis shared with the batch is not a Linear
])
def test_einsum_equations(equation, bias_axes, expected):
    from weightport.mappings.einsum_dense import linear_form

    assert linear_form(equation, bias_axes) == expected


# -- a transformer block: attention, LayerNorm, feed-forward, residuals --------------------------------------
class TorchBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = torch.nn.MultiheadAttention(D, HEADS, dropout=0.1, batch_first=True)
        self.ln1 = torch.nn.LayerNorm(D)
        self.ff1, self.ff2 = torch.nn.Linear(D, FF), torch.nn.Linear(FF, D)
        self.ln2 = torch.nn.LayerNorm(D)

    def forward(self, x):
        h = self.ln1(x + self.mha(x, x, x, need_weights=False)[0])
        return self.ln2(h + self.ff2(torch.relu(self.ff1(h))))


def keras_block():
    x = keras.Input((SEQ, D))
    h = keras.layers.LayerNormalization(epsilon=1e-5)(x + keras.layers.MultiHeadAttention(HEADS, HEAD_DIM)(x, x))
    f = keras.layers.Dense(D)(keras.layers.Dense(FF, activation="relu")(h))
    return keras.Model(x, keras.layers.LayerNormalization(epsilon=1e-5)(h + f))


def test_attention_block_both_directions_and_bitwise():
    t, k, x = TorchBlock(), keras_block(), qkv()[0]
    randomize_torch(t)
    report = wp.port(t, k)
    assert [s.rule for s in report.steps] == ["multi_head_attention", "layer_normalization", "dense", "dense",
                                              "layer_normalization"]
    assert_forward_equal(t, k, x)
    randomize_keras(k, seed=6)
    wp.port(k, t)
    assert_forward_equal(t, k, x)
    assert_keras_roundtrip(k, t)


def test_attention_block_negative_control(monkeypatch):
    t, k = TorchBlock(), keras_block()
    randomize_torch(t)
    skip_transforms(monkeypatch, "multi_head_attention")
    wp.port(t, k)
    assert_forward_differs(t, k, qkv()[0])


def test_a_linear_of_transposed_size_does_not_slip_into_an_einsum_kernel_of_the_same_size():
    """(13, 11) and (11, 13) hold as many values: a reshape alone would take either; the shapes must agree."""
    t = torch.nn.Sequential(torch.nn.Linear(11, 13, bias=False))
    x = keras.Input((13,))
    k = keras.Model(x, keras.layers.EinsumDense("ab,bc->ac", output_shape=11)(x))
    with pytest.raises(wp.WeightportError):
        wp.port(t, k, hints={"0": k.layers[-1].name})
