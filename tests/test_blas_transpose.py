"""The BLAS transpose (numpy's own OpenBLAS ``?omatcopy``): the same bits as numpy's copy, NaN payloads included."""
import numpy as np
import pytest

from weightport.mappings import blas_transpose, fast_transpose

pytestmark = pytest.mark.keras_free

SIGNALLING_NAN = {np.float32: np.uint32(0x7F800001), np.float64: np.uint64(0x7FF0000000000001)}


def needs_kernel(dtype):
    if not blas_transpose.available(dtype):
        pytest.skip("this numpy ships no OpenBLAS omatcopy (the exact numpy copy is used)")


def random_bits(shape, dtype, seed=0):
    """Every finite value's bits are possible: denormals, signed zeros, the extremes."""
    unsigned = np.dtype(f"u{np.dtype(dtype).itemsize}")
    bits = np.random.default_rng(seed).integers(0, np.iinfo(unsigned).max, shape, dtype=unsigned, endpoint=True)
    values = bits.view(dtype)
    values[~np.isfinite(values)] = -0.0
    return values


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_copies_every_finite_value_bit_for_bit_and_sub_blocks_by_their_strides(dtype):
    needs_kernel(dtype)
    a = random_bits((37, 53), dtype)
    out = np.full((53, 37), 7, dtype)
    assert blas_transpose.transpose_into(a, out, verify=False)  # their sum may overflow: verifying would decline
    assert out.tobytes() == np.ascontiguousarray(a.T).tobytes()
    a = np.where(np.abs(a) < 1e30, a, 1.5).astype(dtype)
    assert blas_transpose.transpose_into(a, out)
    assert out.tobytes() == np.ascontiguousarray(a.T).tobytes()
    # a block of rows 10:31 of a.T, columns 5:29 of it, inside a larger buffer: strides, not copies
    block = np.full((21, 37), 7, dtype)
    assert blas_transpose.transpose_into(a[5:29, 10:31], block[:, 5:29])
    assert block[:, 5:29].tobytes() == np.ascontiguousarray(a[5:29, 10:31].T).tobytes()
    assert (block[:, :5] == 7).all() and (block[:, 29:] == 7).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_signalling_nan_keeps_its_bits_through_every_fill(dtype):
    needs_kernel(dtype)
    a = random_bits((48, 70), dtype, seed=1)
    unsigned = np.dtype(f"u{np.dtype(dtype).itemsize}")
    a.view(unsigned)[3, 40] = SIGNALLING_NAN[dtype]
    expected = np.ascontiguousarray(a.T).tobytes()
    # negative control: the kernel alone quiets the NaN, so the guard is what keeps the bits
    raw = np.empty((70, 48), dtype)
    assert blas_transpose.transpose_into(a, raw, verify=False)
    assert raw.tobytes() != expected
    assert not blas_transpose.transpose_into(a, raw)  # the verifying call refuses its result
    out = np.empty((70, 48), dtype)
    assert fast_transpose.fill_transposed(a, 0, out).tobytes() == expected
    parts = {}
    found = fast_transpose.transposed_parts(a, lambda offset, part: parts.__setitem__(offset, part.copy()), rows=16,
                                            check=lambda part: bool(np.isfinite(part).all()))
    assert b"".join(parts[k].tobytes() for k in sorted(parts)) == expected
    assert sorted(found) == [False, True, True, True, True]  # the part holding the NaN is reported
    blocks = [block.copy() for block, _ in fast_transpose.threaded_blocks(
        a, rows=16, check=lambda part: bool(np.isfinite(part).all()))]
    assert np.concatenate(blocks).tobytes() == expected


def test_the_same_bytes_with_and_without_the_kernel(monkeypatch):
    a = np.random.default_rng(2).standard_normal((300, 517)).astype(np.float32)
    with_kernel = fast_transpose.fill_transposed(a, 0, np.empty((517, 300), np.float32))
    monkeypatch.setattr(blas_transpose, "enabled", False)
    assert not blas_transpose.transpose_into(a, np.empty((517, 300), np.float32))
    without = fast_transpose.fill_transposed(a, 0, np.empty((517, 300), np.float32))
    assert with_kernel.tobytes() == without.tobytes() == np.ascontiguousarray(a.T).tobytes()


def test_other_dtypes_and_layouts_are_declined():
    a16 = np.ones((20, 30), np.float16)
    assert not blas_transpose.transpose_into(a16, np.empty((30, 20), np.float16))
    a = np.ones((20, 30), np.float32)
    assert not blas_transpose.transpose_into(a[:, ::2], np.empty((15, 20), np.float32))  # strided columns
    assert not blas_transpose.transpose_into(a.astype(">f4"), np.empty((30, 20), ">f4"))  # byte-swapped
    assert not blas_transpose.transpose_into(a, np.empty((20, 30), np.float32))  # not the transposed shape
