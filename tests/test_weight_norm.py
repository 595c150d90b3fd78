"""torch weight normalisation: a weight stored as a magnitude g and a direction v, folded and split back."""
import warnings

import numpy as np
import pytest
from util import assert_forward_differs, assert_forward_equal, randomize_torch

import weightport as wp
from weightport.converter import weight_norm
from weightport.converter.checkpoint import Checkpoint, as_sources

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
from torch.nn.utils.parametrizations import weight_norm as parametrized_weight_norm  # noqa: E402

X = np.random.default_rng(3).standard_normal((2, 6, 11)).astype("float32")  # (batch, channels, steps)


def torch_net(old_style=False, dim=0):
    conv = torch.nn.Conv1d(6, 10, 3)
    if old_style:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            conv = torch.nn.utils.weight_norm(conv, dim=dim)
    else:
        conv = parametrized_weight_norm(conv, dim=dim)
    net = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Conv1d(10, 4, 1))
    randomize_torch(net, 5)
    return net.eval()


def keras_net():
    return keras.Sequential([keras.Input((11, 6)), keras.layers.Conv1D(10, 3, activation="relu"),
                             keras.layers.Conv1D(4, 1)])


def ports(source, target):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = wp.port(source, target)
    return report, [str(w.message) for w in caught if issubclass(w.category, wp.WeightportWarning)]


@pytest.mark.parametrize("old_style", [False, True], ids=["parametrizations", "weight_norm_hook"])
@pytest.mark.parametrize("dim", [0, 2])
def test_a_weight_normalised_conv_ports_both_ways_and_says_it_folds(old_style, dim):
    net, kn = torch_net(old_style, dim), keras_net()
    report, said = ports(net, kn)
    assert_forward_equal(net, kn, X, X.transpose(0, 2, 1), atol=1e-5)
    assert any("weight_norm" in s and "g*v/|v|" in s for s in said)
    assert not report.steps[0].exact and report.steps[1].exact
    back = torch_net(old_style, dim)
    randomize_torch(back, 9)
    _, said = ports(kn, back)
    assert_forward_equal(back, kn, X, X.transpose(0, 2, 1), atol=1e-5)
    assert any("g=|W|" in s for s in said)
    stored = back.state_dict()
    assert "0.weight" not in stored and any(n.endswith(("original0", "weight_g")) for n in stored)  # still split


def test_negative_control_the_direction_alone_is_not_the_weight(monkeypatch):
    """Reading v as the weight (skipping the fold) must change the function."""
    from weightport.converter.frameworks import torch as torch_adapter

    net, kn = torch_net(), keras_net()
    monkeypatch.setattr(torch_adapter, "_reparametrized", lambda layer: {
        name: (lambda name=name: getattr(layer.parametrizations, name).original1)
        for name in getattr(getattr(layer, "parametrizations", None), "keys", lambda: ())()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.port(net, kn)
    assert_forward_differs(net, kn, X, X.transpose(0, 2, 1), atol=1e-5)


@pytest.mark.parametrize("old_style", [False, True], ids=["parametrizations", "weight_norm_hook"])
def test_a_weight_normalised_state_dict_file_is_folded_on_read(tmp_path, old_style):
    from safetensors.torch import save_file

    net = torch_net(old_style, dim=2)
    path = tmp_path / "wn.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    kn = keras_net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.port(path, kn)
        assert_forward_equal(net, kn, X, X.transpose(0, 2, 1), atol=1e-5)
        report = wp.convert(path, tmp_path / "k.safetensors", to="keras")
    assert any("weight_norm" in issue for issue in report.warnings)
    out = wp.load(tmp_path / "k.safetensors")
    assert sorted(out) == ["0/bias", "0/kernel", "2/bias", "2/kernel"]
    with torch.no_grad():
        effective = net[0].weight.numpy()
    np.testing.assert_allclose(out["0/kernel"], effective.transpose(2, 1, 0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dim", [0, 1, 2, None])
def test_fold_computes_what_torch_computes(dim):
    v = torch.randn(5, 3, 7)
    g = torch.norm_except_dim(v, 2, -1 if dim is None else dim) * torch.rand(1) + 0.5
    if dim is None:
        g = g.reshape(())
    expected = torch._weight_norm(v, g, -1 if dim is None else dim).numpy()
    np.testing.assert_allclose(weight_norm.fold(g.numpy(), v.numpy()), expected, rtol=1e-6, atol=1e-7)
    if dim is not None:  # negative control: the norm over the wrong axes is another weight
        wrong = np.moveaxis(g.numpy(), dim, (dim + 1) % 3)
        if wrong.shape != g.shape:
            with pytest.raises((AssertionError, ValueError)):
                np.testing.assert_allclose(weight_norm.fold(wrong, v.numpy()), expected, rtol=1e-6)


def test_names_that_only_look_like_a_pair_are_left_alone():
    """``x_g``/``x_v`` whose shapes cannot be a magnitude and its direction are two tensors, not one weight."""
    ckpt = Checkpoint(None, "memory", as_sources({"a.b_g": np.ones((4, 3), "float32"), "a.b_v": np.ones((4, 3), "float32"),
                    "c.weight_g": np.ones((5, 2), "float32"), "c.weight_v": np.ones((4, 3), "float32")}))
    assert weight_norm.pairs(ckpt) == {}


def test_a_stored_pair_reads_as_one_weight():
    ckpt = Checkpoint(None, "memory", as_sources({"0.weight_g": np.ones((10, 1, 1), "float32"),
                                                  "0.weight_v": np.ones((10, 6, 3), "float32")}), layout="torch")
    assert set(weight_norm.pairs(ckpt)) == {"0.weight"}
    view, found = weight_norm.folded(ckpt)
    assert list(view) == ["0.weight"] and found == {"0.weight": ("0.weight_g", "0.weight_v")}


# -- written back: a torch file like= a weight-normalised model ----------------------------------------------


def keras_filled(seed=4):
    kn = keras_net()
    rng = np.random.default_rng(seed)
    for w in kn.weights:
        w.assign(rng.standard_normal(w.shape).astype("float32") * 0.5)
    return kn


def saved_like(kn, net, path, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = wp.save(kn, path, layout="torch", like=net, overwrite=True, **kw)
    return report, [str(w.message) for w in caught if issubclass(w.category, wp.WeightportWarning)]


@pytest.mark.parametrize("old_style", [False, True], ids=["parametrizations", "weight_norm_hook"])
@pytest.mark.parametrize("dim", [0, 1, 2, None, -2])
def test_a_torch_file_written_like_a_weight_normalised_model_loads_and_computes_the_same(tmp_path, old_style, dim):
    from safetensors.torch import load_file

    kn, net = keras_filled(), torch_net(old_style, dim)
    report, said = saved_like(kn, net, tmp_path / "wn.safetensors")
    stored = load_file(tmp_path / "wn.safetensors")
    g_name, v_name = (("0.weight_g", "0.weight_v") if old_style else
                      ("0.parametrizations.weight.original0", "0.parametrizations.weight.original1"))
    assert sorted(stored) == sorted([g_name, v_name, "0.bias", "2.weight", "2.bias"])
    assert not net.load_state_dict(stored).missing_keys  # strict: every key taken, none left over
    assert_forward_equal(net, kn, X, X.transpose(0, 2, 1), atol=1e-5)
    # v is the kernel in torch's axis order, g its norm over every axis but dim (torch's own norm_except_dim)
    kernel = keras.ops.convert_to_numpy(kn.layers[0].kernel).transpose(2, 1, 0)
    np.testing.assert_array_equal(stored[v_name].numpy(), kernel)
    torch_dim = -1 if dim is None else dim
    np.testing.assert_allclose(stored[g_name].numpy(), torch.norm_except_dim(torch.from_numpy(kernel), 2,
                                                                             torch_dim).reshape(stored[g_name].shape),
                               rtol=1e-6)
    step = report.steps[0]
    assert not step.exact and "weight_norm split" in step.transform and report.steps[1].exact
    assert any("g=|W|" in s for s in said)


def test_convert_like_and_a_saved_plan_write_g_and_v(tmp_path):
    from safetensors.torch import load_file

    kn, net = keras_filled(), torch_net(old_style=False, dim=0)
    kn.save_weights(tmp_path / "k.weights.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        dry = wp.convert(tmp_path / "k.weights.h5", tmp_path / "t.safetensors", model=kn, like=net, dry_run=True)
        (tmp_path / "plan.json").write_text(dry.to_json())
        wp.convert(tmp_path / "k.weights.h5", tmp_path / "t.safetensors", plan=tmp_path / "plan.json")
    net.load_state_dict(load_file(tmp_path / "t.safetensors"))
    assert_forward_equal(net, kn, X, X.transpose(0, 2, 1), atol=1e-5)
    back = keras_net()  # read back, the file's g and v fold into the kernel again
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wp.WeightportWarning)
        wp.port(tmp_path / "t.safetensors", back)
    assert_forward_equal(net, back, X, X.transpose(0, 2, 1), atol=1e-5)


def test_negative_control_the_weight_alone_does_not_load(tmp_path, monkeypatch):
    """Without the split the file holds ``0.weight``, which a weight-normalised model does not take."""
    from safetensors.torch import load_file

    from weightport.converter import porting

    monkeypatch.setattr(porting.weight_norm, "split_on_write", lambda plan, pairs: None)
    kn, net = keras_filled(), torch_net(old_style=True, dim=0)
    saved_like(kn, net, tmp_path / "wn.safetensors")
    with pytest.raises(RuntimeError, match="weight_g"):
        net.load_state_dict(load_file(tmp_path / "wn.safetensors"))


def test_negative_control_a_wrong_magnitude_computes_another_function(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from weightport.mappings import transforms_values

    split = transforms_values.WeightNormSplit.forward
    monkeypatch.setattr(transforms_values.WeightNormSplit, "forward",
                        lambda self, arrays: (lambda g, v: (g * 1.5, v))(*split(self, arrays)))
    kn, net = keras_filled(), torch_net(old_style=False, dim=1)
    saved_like(kn, net, tmp_path / "wn.safetensors")
    net.load_state_dict(load_file(tmp_path / "wn.safetensors"))
    assert_forward_differs(net, kn, X, X.transpose(0, 2, 1), atol=1e-5)


def test_another_parametrization_is_refused_on_write(tmp_path):
    from torch.nn.utils import parametrize

    class Doubled(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    net = torch.nn.Sequential(torch.nn.Conv1d(6, 10, 3), torch.nn.ReLU(), torch.nn.Conv1d(10, 4, 1))
    parametrize.register_parametrization(net[0], "weight", Doubled())
    with pytest.raises(wp.UsageError, match="Doubled"):
        saved_like(keras_filled(), net, tmp_path / "p.safetensors")
    assert not (tmp_path / "p.safetensors").exists()
