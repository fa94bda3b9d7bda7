import numpy as np
import pytest

from clipes.store.halfcast import to_float16, to_float32


def _all_float16() -> np.ndarray:
    return np.arange(2 ** 16, dtype=np.uint32).astype(np.uint16).view(np.float16)


def test_float32_to_float16_gives_numpys_bits_on_random_patterns_and_ties():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2 ** 32, size=2_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    values = values[np.isfinite(values)]
    halves = np.unique(_all_float16()[np.isfinite(_all_float16())].astype(np.float64))
    midpoints = ((halves[1:] + halves[:-1]) / 2).astype(np.float32)  # exact ties: round to even
    near = np.concatenate([midpoints, np.nextafter(midpoints, np.float32(np.inf)),
                           np.nextafter(midpoints, np.float32(-np.inf)), np.float32([1e-9, -0.0, 7e4, -7e4])])
    for array in (values, near):
        ours = to_float16(array)
        assert ours.dtype == np.float16 and ours.shape == array.shape and array.size > 0
        with np.errstate(over="ignore"):
            assert np.array_equal(ours.view(np.uint16), array.astype(np.float16).view(np.uint16))


def test_float16_to_float32_is_exact_for_every_half():
    halves = _all_float16()
    ours = to_float32(halves)
    assert ours.dtype == np.float32
    assert np.array_equal(ours, halves.astype(np.float32), equal_nan=True)


@pytest.mark.parametrize("make", [
    lambda a: a[:, ::-1],  # negative strides
    lambda a: a.astype(a.dtype.newbyteorder(">")),  # big-endian storage
    lambda a: np.lib.stride_tricks.as_strided(a, a.shape, a.strides, writeable=False),  # read-only
])
def test_odd_layouts_are_cast_like_numpy(make):
    rng = np.random.default_rng(1)
    base = rng.random((5, 7)).astype(np.float32)
    array = make(base)
    assert np.array_equal(to_float16(array), array.astype(np.float16))
    half = make(base.astype(np.float16))
    assert np.array_equal(to_float32(half), half.astype(np.float32))


def test_same_dtype_is_returned_as_is_and_float64_rounds_once():
    half = np.float16([0.1, 0.2])
    single = np.float32([0.1, 0.2])
    assert to_float16(half) is half and to_float32(single) is single
    double = np.array([1 + 2 ** -11 + 2 ** -30], dtype=np.float64)  # just above a tie: one rounding goes up
    assert to_float16(double)[0] == double.astype(np.float16)[0] == np.float16(1 + 2 ** -10)
