"""Property tests: for random shapes, strides, dtypes and values, the compiled backend agrees
with the reference, or both raise the same exception type.

Values are finite (non-finite values have their own tests in test_numerics.py); shapes include
empty and one-value-per-feature batches; dtypes include integers, bool, float16, non-native
byte order and complex (a TypeError from both); arrays come C-ordered, Fortran-ordered,
strided or reversed.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastbn
import fastbn._ops
from registry import OPS, RTOL

pytestmark = pytest.mark.skipif("cython" not in fastbn.available_backends(),
                                reason="compiled kernels are not built")

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

DTYPES = [np.float64, np.float32, np.float16, np.int32, np.uint8, np.bool_, ">f8", "<f4", np.complex64]
VIEWS = ["c", "fortran", "strided", "reversed"]


def _dims(ndim):
    return st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim).map(tuple)


@st.composite
def arrays_in_layout(draw, shape, dtype):
    """An array of `shape` with values in a moderate range, in one of several memory layouts."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        elements = st.booleans()
    elif dtype.kind == "c":
        elements = st.complex_numbers(max_magnitude=100, allow_nan=False, allow_infinity=False, width=64)
    elif dtype.kind in "iu":
        elements = st.integers(0 if dtype.kind == "u" else -50, 50)
    else:
        elements = st.floats(-100, 100, width=min(8 * dtype.itemsize, 64), allow_subnormal=False)
    view = draw(st.sampled_from(VIEWS))
    if view == "strided":
        base = draw(hnp.arrays(dtype, shape[:-1] + (2 * shape[-1],), elements=elements))
        return base[..., ::2]
    a = draw(hnp.arrays(dtype, shape, elements=elements))
    if view == "fortran":
        return np.asfortranarray(a)
    if view == "reversed":
        return np.flip(np.flip(a, axis=0).copy(), axis=0)
    return a


@st.composite
def cases(draw):
    op = draw(st.sampled_from(OPS))
    low, high = op.spec.ndim_range(op.layout)
    shape = draw(st.integers(low, high or low + 2).flatmap(_dims))
    dtype = draw(st.sampled_from(DTYPES))
    x = draw(arrays_in_layout(shape, dtype))
    C = op.channels(shape)
    pshape = op.param_shape(shape)
    floats = st.floats(-3, 3, width=32, allow_subnormal=False)  # normal in float32 too
    gamma = draw(hnp.arrays(np.float64, pshape, elements=floats))
    beta = draw(hnp.arrays(np.float64, pshape, elements=floats))
    param = {"mode": op.mode, "eps": draw(st.sampled_from([1e-5, 1e-3, 0.5]))}
    if len(op.spec.layouts) > 1:
        param["layout"] = op.layout
    if op.uses_running_stats:
        param["momentum"] = draw(st.floats(0, 1, width=32))
        if op.mode == "test" or draw(st.booleans()):
            param["running_mean"] = draw(hnp.arrays(np.float64, C, elements=floats))
            param["running_var"] = draw(hnp.arrays(np.float64, C, elements=st.floats(0.01, 10)))
    G = draw(st.sampled_from([g for g in range(1, 7) if C % g == 0] or [1])) if op.spec.grouped else None
    dout = draw(arrays_in_layout(shape, np.float64))
    return op, x, gamma, beta, G, param, dout


def _call(op, x, gamma, beta, G, param, dout, backend):
    param = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in param.items()}
    forward = getattr(fastbn, op.forward_name)
    try:
        out, cache = forward(*op.spec.forward_args(x, gamma, beta, param, G), backend=backend)
        grads = op.backward(dout, cache, backend=backend)
    except (ValueError, TypeError) as exc:
        return type(exc), None
    running = [param.get("running_mean"), param.get("running_var")] if op.uses_running_stats else []
    return None, (out, cache, grads, running)


def _assert_agree(a, b, dtype, what, scale=0.0):
    assert a.dtype == b.dtype and a.shape == b.shape, what
    if b.size == 0:
        return
    rtol = RTOL[np.dtype(np.float32 if dtype == np.float16 else dtype)]
    if dtype == np.float16:
        rtol = 2.0**-9  # both round the same float32 result to float16; one step apart at most
    b64 = b.astype(np.float64)
    # float16 results may overflow to inf (in both backends): the scale is that of finite values
    scale = max(float(np.max(np.abs(b64[np.isfinite(b64)]), initial=0)), scale)
    # results in the subnormal range have absolute, not relative, precision
    floor = 4 * float(np.finfo(np.float32 if dtype == np.float16 else dtype).smallest_subnormal)
    np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=rtol,
                               atol=rtol * scale + floor, err_msg=what)


@SETTINGS
@given(cases())
def test_compiled_equals_reference_or_both_raise(case):
    op, x, gamma, beta, G, param, dout = case
    error_c, result_c = _call(op, x, gamma, beta, G, param, dout, "cython")
    error_r, result_r = _call(op, x, gamma, beta, G, param, dout, "numpy")
    assert error_c is error_r
    event(f"both raise {error_c.__name__}" if error_c else "results agree")
    if error_c is not None:
        return
    (out_c, cache_c, grads_c, running_c), (out_r, cache_r, grads_r, running_r) = result_c, result_r
    out_dtype = out_r.dtype
    # out and dx are differences of terms as large as |gamma * invstd * x| and |gamma * invstd * dout|
    gamma_invstd = float(np.max(np.abs(gamma), initial=0) * np.max(cache_r.invstd, initial=0))
    x_max = float(np.max(np.abs(cache_r.x), initial=0))
    _assert_agree(out_c, out_r, out_dtype, "out", scale=gamma_invstd * x_max)
    _assert_agree(cache_c.mean, cache_r.mean, cache_r.x.dtype, "mean")
    _assert_agree(cache_c.invstd, cache_r.invstd, cache_r.x.dtype, "invstd")
    dx_scale = gamma_invstd * float(np.max(np.abs(dout), initial=0))
    _assert_agree(grads_c[0], grads_r[0], out_dtype, "dx", scale=dx_scale)
    # dgamma and dbeta are sums of `count` terms as large as |dout * (x - mean) * invstd|, where
    # x - mean carries the rounding of x: |dout| * |x| * invstd
    count = x.size // max(op.channels(x.shape), 1)
    dout_sum = float(np.max(np.abs(dout), initial=0)) * count
    invstd_max = float(np.max(cache_r.invstd, initial=0))
    _assert_agree(grads_c[1], grads_r[1], out_dtype, "dgamma",
                  scale=dout_sum * max(1.0, invstd_max * x_max))
    assert len(grads_c) == len(grads_r)
    if op.spec.beta:
        _assert_agree(grads_c[2], grads_r[2], out_dtype, "dbeta", scale=dout_sum)
    for a, b in zip(running_c, running_r):
        if b is not None:
            _assert_agree(a, b, b.dtype, "running statistic")
