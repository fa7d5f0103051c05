"""fastbn._arrays: each C-level check and allocation of the compiled glue answers as its NumPy
spelling does, for arrays of every kind the public functions can meet."""
import numpy as np
import pytest

from fastbn import _validation

_arrays = pytest.importorskip("fastbn._arrays", reason="compiled kernels are not built")


class Sub(np.ndarray):
    pass


def _unaligned(n, dtype=np.float64):
    itemsize = np.dtype(dtype).itemsize
    return np.frombuffer(np.zeros(n * itemsize + 1, np.uint8).data, dtype=dtype, count=n, offset=1)


def _read_only(a):
    a.flags.writeable = False
    return a


CANDIDATES = {
    "f64 (5,)": np.ones(5),
    "f32 (5,)": np.ones(5, np.float32),
    "f16 (5,)": np.ones(5, np.float16),
    "int (5,)": np.ones(5, np.int64),
    "big-endian f64 (5,)": np.ones(5, ">f8"),
    "f64 (4,)": np.ones(4),
    "f64 (0,)": np.ones(0),
    "f64 (1, 5)": np.ones((1, 5)),
    "f64 ()": np.array(1.0),
    "strided f64 (5,)": np.ones(10)[::2],
    "unaligned f64 (5,)": _unaligned(5),
    "read-only f64 (5,)": _read_only(np.ones(5)),
    "subclass f64 (5,)": np.ones(5).view(Sub),
    "list": [1.0] * 5,
    "None": None,
}
DTYPES = [np.dtype(np.float64), np.dtype(np.float32)]  # computation dtypes: native byte order
IDS = list(CANDIDATES)


@pytest.mark.parametrize("name", IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_is_flat_is_a_flat_contiguous_aligned_array_of_the_dtype(name, dtype):
    a = CANDIDATES[name]
    expected = (isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype == dtype
                and a.flags.c_contiguous and a.flags.aligned)
    assert _arrays.is_flat(a, dtype) == expected


@pytest.mark.parametrize("name", IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_as_flat_is_a_view_of_a_contiguous_aligned_array_of_the_dtype(name, dtype):
    a = CANDIDATES[name]
    result = _arrays.as_flat(a, dtype)
    if not (isinstance(a, np.ndarray) and a.dtype == dtype and a.flags.c_contiguous
            and a.flags.aligned):
        assert result is None
        return
    assert result.ndim == 1 and np.shares_memory(result, a) or a.size == 0
    assert np.array_equal(result, a.reshape(-1))
    assert (result is a) == (a.ndim == 1)


@pytest.mark.parametrize("name", IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [5, 4])
def test_is_vector_agrees_with_its_numpy_version(name, dtype, n):
    a = CANDIDATES[name]
    assert _arrays.is_vector(a, dtype, n) == _validation._numpy_is_vector(a, dtype, n)


@pytest.mark.parametrize("name", IDS)
@pytest.mark.parametrize("writeable", [True, False])
@pytest.mark.parametrize("n", [5, 4])
def test_is_running_agrees_with_its_numpy_version(name, writeable, n):
    a = CANDIDATES[name]
    assert _arrays.is_running(a, n, writeable) == _validation._numpy_is_running(a, n, writeable)


def test_the_numpy_versions_say_yes_to_the_usual_case():
    """Both sides of the comparisons above are not always False."""
    assert _validation._numpy_is_vector(np.ones(5), np.dtype(np.float64), 5)
    assert _validation._numpy_is_running(np.ones(5, np.float32), 5, True)
    assert not _validation._numpy_is_running(_read_only(np.ones(5)), 5, True)


def test_disjoint_flat_is_two_flat_arrays_that_do_not_share_memory():
    base = np.zeros(10)
    f64 = np.dtype(np.float64)
    pairs = [(np.zeros(5), np.zeros(5)), (base, base), (base[:6], base[4:]), (base[:5], base[5:]),
             (base[5:], base[:5]), (base[:5], np.zeros((1, 5))), (np.zeros(5), _unaligned(5)),
             (np.zeros(5, np.float32), np.zeros(5)), (None, np.zeros(5)), (base[:0], base[:0])]
    for a, b in pairs:
        expected = (_arrays.is_flat(a, f64) and _arrays.is_flat(b, f64)
                    and not np.may_share_memory(a, b))
        assert _arrays.disjoint_flat(a, b, f64) == expected, (a, b)
    assert _arrays.disjoint_flat(base[:5], base[5:], f64)
    assert not _arrays.disjoint_flat(base[:6], base[4:], f64)


@pytest.mark.parametrize("name", ["f64 (5,)", "unaligned f64 (5,)", "strided f64 (5,)",
                                  "read-only f64 (5,)"])
def test_aligned_copies_only_what_is_not_aligned(name):
    a = CANDIDATES[name]
    result = _arrays.aligned(a)
    assert result.flags.aligned and np.array_equal(result, a)
    assert (result is a) == a.flags.aligned


@pytest.mark.parametrize("shape", [(5,), (1, 5), (5, 1), (-1,)])
@pytest.mark.parametrize("name", ["f64 (5,)", "unaligned f64 (5,)"])
def test_aligned_as_is_aligned_then_reshaped(name, shape):
    a = CANDIDATES[name]
    result = _arrays.aligned_as(a, shape)
    assert result.flags.aligned and np.array_equal(result, a.reshape(shape))
    assert (result is a) == (a.flags.aligned and a.shape == shape)


@pytest.mark.parametrize("shape", [(2, 3), (3, 2), (6,), (1, 2, 3), (2, -1)])
def test_shaped_is_reshape_and_the_array_itself_when_nothing_changes(shape):
    a = np.arange(6.0).reshape(2, 3)
    result = _arrays.shaped(a, shape)
    assert np.array_equal(result, a.reshape(shape)) and result.shape == a.reshape(shape).shape
    assert (result is a) == (shape == (2, 3))
    with pytest.raises(ValueError):
        _arrays.shaped(a, (4,))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8], ids=str)
@pytest.mark.parametrize("n", [0, 1, 7])
def test_empty_vector_is_np_empty(dtype, n):
    a = _arrays.empty_vector(n, np.dtype(dtype))
    assert type(a) is np.ndarray and a.shape == (n,) and a.dtype == dtype
    assert a.flags.c_contiguous and a.flags.aligned and a.flags.writeable and a.flags.owndata
