"""Live ports layer by layer, and the direct copy into a target's own memory: taken exactly where the move is a
plain transpose/reshape/copy into a tensor of the same dtype, and bitwise equal to the general path."""
import keras
import numpy as np
import pytest
import torch

import weightport as wp
from weightport.converter import assign, direct
from weightport.converter.frameworks import Framework
from weightport.errors import CastOverflowError, ShapeMismatchError
from weightport.mappings.transforms import Chain, Reshape, Transpose
from util import keras_weights, randomize_keras, randomize_torch

ON_TORCH = keras.backend.backend() == "torch"


@pytest.fixture
def routes(monkeypatch):
    """The routes each ``run_into_live`` took, one list per port."""
    taken = []
    original = assign.run_into_live

    def spy(*args, **kwargs):
        found = original(*args, **kwargs)
        taken.append(found)
        return found
    monkeypatch.setattr(assign, "run_into_live", spy)
    return taken


def general_only(monkeypatch):
    """Every framework declines to offer its memory or adopt fresh buffers: every pair takes the general path."""
    for cls in {type(a) for a in wp.converter.frameworks.adapters()}:
        monkeypatch.setattr(cls, "destinations", Framework.destinations)
        monkeypatch.setattr(cls, "fresh", Framework.fresh)


def bits(arrays) -> list:
    return [np.ascontiguousarray(a).view(np.uint8).tobytes() for a in arrays]


def torch_mlp():
    m = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    randomize_torch(m, seed=3)
    return m


def keras_mlp(dtype=None):
    return keras.Sequential([keras.Input((7,)), keras.layers.Dense(5, activation="relu", dtype=dtype),
                             keras.layers.Dense(3, dtype=dtype)])


def test_plain_steps_read_only_exact_view_transforms():
    assert direct.plain_steps(Transpose(1, 0)) == [("transpose", (1, 0))]
    chain = Chain(Reshape((-1, 3, 2), (-1, 6)), Transpose(1, 0))
    assert direct.plain_steps(chain) == [("reshape", (-1, 6)), ("transpose", (1, 0))]
    assert direct.plain_steps(chain, inverse=True) == [("transpose", (1, 0)), ("reshape", (-1, 3, 2))]

    class Sneaky(Transpose):  # a subclass may compute anything: never read as a plain transpose
        pass
    assert direct.plain_steps(Sneaky(1, 0)) is None
    a = np.arange(30.0).reshape(5, 6)
    assert np.array_equal(direct.viewed(a, direct.plain_steps(chain, inverse=True)),
                          chain.inverse((a,))[0])


def test_torch_to_keras_is_direct_exactly_where_it_should_be_and_bitwise_equal(routes, monkeypatch):
    src, fast, slow = torch_mlp(), keras_mlp(), keras_mlp()
    wp.port(src, fast)
    taken = routes[-1]
    # torch: into the variables' own tensors; jax (CPU): into fresh buffers the variables adopt
    assert [sorted(r.slots) for r in taken] == [["bias", "kernel"], ["bias", "kernel"]]
    assert taken[0].slots["kernel"] == ("weight", [("transpose", (1, 0))])
    assert bool(taken[0].destinations) == ON_TORCH and bool(taken[0].fresh) != ON_TORCH
    general_only(monkeypatch)
    wp.port(src, slow)
    assert all(r.slots is None for r in routes[-1])
    assert bits(keras_weights(fast)) == bits(keras_weights(slow))
    assert np.array_equal(keras_weights(fast)[0], src[0].weight.detach().numpy().T)


def test_keras_to_torch_is_direct_and_bitwise_equal(routes, monkeypatch):
    k = keras_mlp()
    randomize_keras(k, seed=5)
    fast, slow = torch_mlp(), torch_mlp()
    wp.port(k, fast)
    assert all(r.slots is not None for r in routes[-1])
    general_only(monkeypatch)
    wp.port(k, slow)
    assert bits(t.detach().numpy() for t in fast.state_dict().values()) == \
        bits(t.detach().numpy() for t in slow.state_dict().values())
    assert np.array_equal(fast[2].weight.detach().numpy(), k.layers[1].get_weights()[0].T)


def test_a_cast_takes_the_general_path_and_still_rounds_and_refuses_overflow(routes):
    src = torch_mlp().double()
    target = keras_mlp(dtype="float16")
    report = wp.port(src, target)
    assert all(r.slots is None for r in routes[-1])
    assert not report.steps[0].exact and "cast" in report.steps[0].transform
    with torch.no_grad():
        src[2].weight[1, 2] = 1e6  # past float16's range, in the last layer
    before = bits(keras_weights(target))
    with pytest.raises(CastOverflowError):
        wp.port(src, target)
    assert bits(keras_weights(target)) == before  # the first layer was not assigned either


def test_a_non_plain_transform_takes_the_general_path(routes):
    """LSTM gates are reordered and torch's two biases summed: no view of one source tensor, never direct."""
    src = torch.nn.LSTM(3, 4, batch_first=True)
    randomize_torch(src)
    target = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4, return_sequences=True)])
    wp.port(src, target)
    assert all(r.slots is None for r in routes[-1])
    x = np.random.rand(2, 5, 3).astype("float32")
    assert wp.verify(src, target, x, output=(0, None)).ok


def test_a_flatten_permutation_goes_direct_through_a_reshape_that_copies(routes, monkeypatch):
    """A Dense after a Flatten permutes rows: reshape, transpose, reshape; the last reshape cannot be a view
    (numpy copies it), and the result is still the general path's, bit for bit."""
    src = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 5 * 7, 2))
    randomize_torch(src)

    def model():
        return keras.Sequential([keras.Input((7, 9, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                                 keras.layers.Flatten(), keras.layers.Dense(2)])
    fast, slow = model(), model()
    wp.port(src, fast)
    conv, dense = routes[-1]
    assert dense.slots is not None and conv.slots is not None  # jax: into buffers the variables adopt
    x = np.random.rand(2, 3, 7, 9).astype("float32")
    assert wp.verify(src, fast, (x, x.transpose(0, 2, 3, 1))).ok
    general_only(monkeypatch)
    wp.port(src, slow)
    assert bits(keras_weights(fast)) == bits(keras_weights(slow))


def test_a_shape_refusal_in_the_last_layer_leaves_the_first_untouched():
    src = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4))
    target = keras_mlp()
    before = bits(keras_weights(target))
    with pytest.raises(ShapeMismatchError):
        wp.port(src, target, strict=False, hints={"0": target.layers[0].name, "2": target.layers[1].name})
    assert bits(keras_weights(target)) == before


def test_bfloat16_goes_direct_bit_for_bit(routes):
    src = torch_mlp().to(torch.bfloat16)
    target = torch_mlp().to(torch.bfloat16)
    with torch.no_grad():
        for t in target.parameters():
            t.zero_()
    wp.port(src, target)
    assert all(r.slots is not None for r in routes[-1])
    for a, b in zip(src.parameters(), target.parameters()):
        assert torch.equal(a.view(torch.int16), b.view(torch.int16))


def test_tied_weights_stay_tied_and_equal_to_the_general_path(monkeypatch):
    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = torch.nn.Embedding(11, 7)
            self.lm_head = torch.nn.Linear(7, 11, bias=False)
            self.lm_head.weight = self.embed_tokens.weight

    src, fast, slow = LM(), LM(), LM()
    randomize_torch(src, seed=2)
    wp.port(src, fast, strict=False)
    general_only(monkeypatch)
    wp.port(src, slow, strict=False)
    assert fast.lm_head.weight is fast.embed_tokens.weight
    assert torch.equal(fast.embed_tokens.weight, src.embed_tokens.weight)
    assert torch.equal(fast.embed_tokens.weight, slow.embed_tokens.weight)


def test_layers_swapped_within_one_model_read_the_old_values(routes):
    """A model ported into itself with two layers swapped: layer by layer would read a value already replaced."""
    m = torch.nn.ModuleList([torch.nn.Linear(7, 5), torch.nn.Linear(7, 5)])
    randomize_torch(m, seed=4)
    old = [layer.weight.detach().clone() for layer in m]
    wp.port(m, m, hints={"0": "1", "1": "0"})
    assert all(r.slots is None for r in routes[-1])  # everything converted before anything assigned
    assert torch.equal(m[0].weight, old[1]) and torch.equal(m[1].weight, old[0])


def test_check_restores_after_a_direct_port():
    src, target = torch_mlp(), keras_mlp()
    before = bits(keras_weights(target))
    src_wrong = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    src_wrong.load_state_dict(src.state_dict())
    with pytest.raises(wp.WeightportError):
        wp.port(src_wrong, target, check=np.random.rand(3, 7).astype("float32"))
    assert bits(keras_weights(target)) == before


def test_memory_stays_one_layer_the_general_path_converts_as_it_assigns(monkeypatch):
    """The general path converts each layer just before assigning it: never two layers' arrays at once."""
    alive, peak = [0], [0]
    original = assign.general_arrays

    def counted(p, watch):
        arrays = original(p, watch)
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        return arrays
    original_finish = assign.finish_pair

    def finish(p, arrays, progress, written=False):
        original_finish(p, arrays, progress, written)
        alive[0] -= not written
    monkeypatch.setattr(assign, "general_arrays", counted)
    monkeypatch.setattr(assign, "finish_pair", finish)
    general_only(monkeypatch)
    wp.port(torch_mlp(), keras_mlp())
    assert peak[0] == 1
