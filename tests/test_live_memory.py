"""Live ports without extra copies: NaN/Inf counted on the copy just made (still said), the jax backend's
variables adopting the one buffer each is copied into, and a refused port leaving the target untouched."""
import sys
import warnings

import keras
import numpy as np
import pytest
import torch

import weightport as wp
from weightport.converter import direct
from weightport.errors import ShapeMismatchError, WeightportWarning
from util import keras_weights, randomize_torch

ON_JAX = keras.backend.backend() == "jax"


def pair(out=3):
    src = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, out))
    randomize_torch(src, seed=5)
    target = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(3)])
    return src, target


@pytest.mark.parametrize("bad, said", [(float("nan"), r"^0: source tensor\(s\) 'weight' \(1 NaN\)"),
                                       (float("inf"), r"^0: source tensor\(s\) 'weight' \(1 Inf\)")])
def test_nan_and_inf_are_still_said_when_counted_on_the_copy(bad, said):
    src, target = pair()
    with torch.no_grad():
        src[0].weight[3, 4] = bad
    with pytest.warns(WeightportWarning, match=said):
        wp.port(src, target)
    kernel = keras_weights(target)[0]
    assert kernel.shape == (7, 5) and np.isnan(kernel[4, 3]) == np.isnan(bad)
    assert np.array_equal(kernel, src[0].weight.detach().numpy().T, equal_nan=True)


def test_finite_weights_are_not_warned_about():
    src, target = pair()
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeightportWarning)
        wp.port(src, target)  # negative control for the two above


def test_nonfinite_in_counts_torch_and_numpy_and_float8():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    a[0, 1], a[2, 2], a[1, 3] = np.nan, np.inf, -np.inf
    assert direct.nonfinite_in(a) == (1, 2)
    assert direct.nonfinite_in(torch.from_numpy(a)) == (1, 2)
    assert direct.nonfinite_in(torch.from_numpy(a).to(torch.bfloat16)) == (1, 2)
    assert direct.nonfinite_in(torch.from_numpy(a).to(torch.float8_e5m2)) == (1, 2)
    huge = np.full((4, 3), 3e38, np.float32)  # the sum overflows although every value is finite
    assert direct.nonfinite_in(huge) == (0, 0)
    assert direct.nonfinite_in(np.arange(5)) == (0, 0)


def test_a_refused_port_leaves_the_target_untouched_on_this_backend():
    src, target = pair(out=4)
    before = [np.array(w, copy=True) for w in keras_weights(target)]
    with pytest.raises(ShapeMismatchError):
        wp.port(src, target, strict=False, hints={"0": target.layers[0].name, "2": target.layers[1].name})
    assert all(np.array_equal(a, b) for a, b in zip(before, keras_weights(target)))


def test_empty_aligned_is_aligned_fresh_and_shaped():
    for shape, dtype in [((3, 5), np.float32), ((), np.float16), ((0, 4), np.float64), ((7,), np.int8)]:
        a = direct.empty_aligned(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
        assert a.size == 0 or a.ctypes.data % 64 == 0


def minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def mapped_at(address: int) -> bool:
    """Whether ``address`` lies in one of this process's mappings."""
    with open("/proc/self/maps") as f:
        spans = (line.split(" ", 1)[0].split("-") for line in f)
        return any(int(lo, 16) <= address < int(hi, 16) for lo, hi in spans)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MAP_POPULATE is Linux's")
def test_a_large_fresh_buffer_is_present_before_it_is_written():
    import mmap

    shape = (1000, 1537)  # 5.9 MiB of float32, not a whole number of pages
    a = direct.empty_aligned(shape, np.float32)
    assert a.shape == shape and a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % 4096 == 0
    pages = a.nbytes // 4096
    before = minor_faults()
    a[:] = 3.0
    assert minor_faults() - before < pages // 16 and a[-1, -1] == 3.0
    plain = mmap.mmap(-1, a.nbytes)  # negative control: the same memory mapped without populating it
    plain.madvise(mmap.MADV_NOHUGEPAGE)
    b = np.frombuffer(plain, np.float32).reshape(shape)
    before = minor_faults()
    b[:] = 3.0
    assert minor_faults() - before >= pages // 2
    small = direct.empty_aligned((7, 5), np.float32)  # below MAPPED_BYTES: from the heap, 64-byte aligned
    assert small.ctypes.data % 64 == 0 and small.shape == (7, 5)


@pytest.mark.skipif(not ON_JAX, reason="jax backend only")
def test_jax_adopts_a_large_mapped_buffer_and_releases_it_with_the_array():
    import gc

    import jax.numpy as jnp

    like = jnp.zeros((1024, 1024), jnp.float32)
    buf = direct.empty_aligned((1024, 1024), np.float32)
    buf[:] = np.arange(1024, dtype=np.float32)
    address = buf.ctypes.data
    adopted = direct.adopted_by_jax(buf, like)
    assert adopted is not None and adopted.unsafe_buffer_pointer() == address
    del buf
    gc.collect()
    assert mapped_at(address) and float(adopted[5, 7]) == 7.0  # jax keeps the mapping alive while it uses it
    del adopted
    gc.collect()
    assert not mapped_at(address)  # and it is given back to the system with the array: no leak


@pytest.mark.skipif(not ON_JAX, reason="jax backend only")
def test_jax_variables_adopt_the_buffer_they_are_copied_into_and_own_it():
    src, target = pair()
    wp.port(src, target)
    var = target.layers[0].kernel
    value = var.value
    data = np.asarray(value)
    assert np.array_equal(data, src[0].weight.detach().numpy().T)
    # the variable's memory is neither the source's nor shared with anything weightport kept
    weight = src[0].weight.detach().numpy()
    before = weight.copy()
    assert not np.shares_memory(data, weight)
    with torch.no_grad():
        src[0].weight.add_(1)  # the source changing later must not show in the target
    assert np.array_equal(np.asarray(var.value), before.T)
    out = target(np.ones((2, 7), np.float32))
    assert out.shape == (2, 3)


@pytest.mark.skipif(not ON_JAX, reason="jax backend only")
def test_jax_adoption_needs_one_cpu_device_and_alignment():
    import jax.numpy as jnp

    like = jnp.zeros((4, 3), jnp.float32)
    buf = direct.empty_aligned((4, 3), np.float32)
    buf[:] = 2
    adopted = direct.adopted_by_jax(buf, like)
    assert adopted is not None and adopted.unsafe_buffer_pointer() == buf.ctypes.data
    raw = np.empty(4 * 3 * 4 + 64, np.uint8)
    off = (-raw.ctypes.data) % 64 + 4
    skewed = raw[off:off + 48].view(np.float32).reshape(4, 3)
    assert direct.adopted_by_jax(skewed, like) is None  # negative control: unaligned is copied instead



def test_sums_finite_sees_every_nan_and_inf_wherever_it_lies():
    from weightport.converter.arrays import sums_finite

    for dtype in (np.float32, np.float64, np.float16, ">f4"):
        for shape in [(3, 5), (1000, 7)]:
            base = np.linspace(-2, 3, np.prod(shape)).astype(dtype).reshape(shape)
            assert sums_finite(base) and sums_finite(base[:, 1:4])  # contiguous and strided: finite
            for bad in (np.nan, np.inf, -np.inf):
                for at in [(0, 0), (shape[0] // 2, 2), (shape[0] - 1, shape[1] - 1)]:
                    damaged = base.copy()
                    damaged[at] = bad
                    assert not sums_finite(damaged), (dtype, shape, bad, at)
                    assert not sums_finite(damaged[:, 1:4]) or at[1] not in (1, 2, 3)
    assert not sums_finite(np.full(8, 2e19, np.float32))  # squares overflow: unsure, the exact scan decides
    assert direct.nonfinite_in(np.full(8, 2e19, np.float32)) == (0, 0)
