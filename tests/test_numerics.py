"""Numerics at the edges, each against a float64 oracle whose sums are exact (``math.fsum``).

Large mean offsets, constant features (eps > 0 and eps = 0), huge and subnormal magnitudes,
NaN/Inf confined to the feature, row or group they are in, and float16 input; both backends.
"""
import math

import numpy as np
import pytest

import fastbn
from fastbn import _planner
from registry import OPS, assert_close, copy_param

BACKENDS = fastbn.available_backends()

# One op per statistics family, train mode: batch statistics per feature/channel, per row, per
# group; centred ops (mean and variance; RMSNorm's statistics are tested at the end of this file).
# The fused batchnorm + ReLU ops run their unfused op's statistics loops; their epilogue's edge
# cases (NaN, ties at 0) are in test_fused.py.
TRAIN_OPS = [op for op in OPS if op.mode == "train" and not op.param_broadcast and op.spec.center
             and not op.spec.relu]
TRAIN_IDS = [op.id for op in TRAIN_OPS]


def _shape(op):
    return op.shape("numerics")


def _fsum_mean(a, axes):
    """Exactly rounded mean of float64 `a` over `axes` (kept as size-1 axes)."""
    lead = [n for i, n in enumerate(a.shape) if i not in axes]
    rows = np.moveaxis(a, axes, range(a.ndim - len(axes), a.ndim)).reshape(int(np.prod(lead)), -1)
    means = np.array([math.fsum(row) / row.size for row in rows]).reshape(lead)
    return np.expand_dims(means, axes)


def _units(op, x):
    """x viewed so that each normalisation unit (feature, channel, row or group) is one slice
    over `axes`; and the axes dgamma/dbeta sum over in x itself."""
    if op.name == "groupnorm":
        N, C, H, W = x.shape
        G = op.G(x.shape)
        return x.reshape(N, G, C // G, H, W), (2, 3, 4), (0, 2, 3)
    if op.name == "layernorm":  # over the last axis, or the trailing axes from op.axis
        first = x.ndim - 1 if op.axis is None else op.feature_axis(x.shape)
        return x, tuple(range(first, x.ndim)), tuple(range(first))
    channel = x.ndim - 1 if op.layout == "NHWC" else 1
    axes = tuple(a for a in range(x.ndim) if a != channel)
    return x, axes, axes


def _param_shape(op, x):
    return op.spec.param_shape(x.shape, op.layout, op.feature_axis(x.shape))


def oracle(op, x, gamma, beta, dout, eps=1e-5):
    """Train-mode forward and backward in float64 with exactly rounded means."""
    x = x.astype(np.float64)
    units, axes, param_axes = _units(op, x)
    mean = _fsum_mean(units, axes)
    var = _fsum_mean((units - mean) ** 2, axes)
    with np.errstate(divide="ignore", invalid="ignore"):
        invstd = 1.0 / np.sqrt(var + eps)
        xhat = ((units - mean) * invstd).reshape(x.shape)
        pshape = _param_shape(op, x)
        g = gamma.astype(np.float64).reshape(pshape)
        out = g * xhat + beta.astype(np.float64).reshape(pshape)
        dout = dout.astype(np.float64)
        gy = (dout * g).reshape(units.shape)
        xh = xhat.reshape(units.shape)
        M = units.size // mean.size
        dx = invstd / M * (M * gy - gy.sum(axis=axes, keepdims=True)
                           - xh * (gy * xh).sum(axis=axes, keepdims=True))
    return {
        "out": out, "mean": mean.reshape(-1), "var": var.reshape(-1), "invstd": invstd.reshape(-1),
        "dx": dx.reshape(x.shape), "dgamma": (dout * xhat).sum(axis=param_axes).reshape(-1),
        "dbeta": dout.sum(axis=param_axes).reshape(-1),
    }


# The unit made constant or poisoned in the tests below: feature/channel 1, row 1, or group 1 of
# sample 0. It is also entry 1 of cache.mean, cache.invstd and the running statistics.
K = 1


def _unit_index(op, shape, k=K):
    """Index of normalisation unit k (a feature, channel, row or group) in x."""
    if op.name == "groupnorm":
        Cg = shape[1] // op.G(shape)
        return (0, slice(k * Cg, (k + 1) * Cg))
    if op.name == "layernorm":
        return (k,)
    if op.layout == "NHWC":
        return (Ellipsis, k)
    return (slice(None), k)


def _unit_mask(op, shape, k=K):
    mask = np.zeros(shape, dtype=bool)
    mask[_unit_index(op, shape, k)] = True
    return mask


def _run(op, x, gamma, beta, param, dout, backend):
    out, cache = op.forward(x, gamma, beta, param, backend=backend)
    dx, dgamma, dbeta = op.backward(dout, cache, backend=backend)
    return {"out": out, "mean": cache.mean.reshape(-1), "invstd": cache.invstd.reshape(-1),
            "dx": dx, "dgamma": dgamma.reshape(-1), "dbeta": dbeta.reshape(-1)}


def _inputs(op, dtype, offset, scale, seed=0):
    shape = _shape(op)
    x, gamma, beta, param = op.make(shape, np.float64, seed=seed, offset=0.0, scale=1.0)
    x = (offset + scale * x).astype(dtype)
    dout = np.random.default_rng(seed + 1).standard_normal(shape).astype(dtype)
    return x, gamma.astype(dtype), beta.astype(dtype), param, dout


def _close(actual, desired, rtol, what, atol=0.0):
    actual = np.asarray(actual, dtype=np.float64)
    scale = float(np.max(np.abs(desired))) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol + rtol * scale, err_msg=what)


# ---------------------------------------------------------------------------------------------
# Magnitudes
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", TRAIN_OPS, ids=TRAIN_IDS)
def test_float32_mean_offset_1e6_keeps_the_variance(op, backend):
    """x = 1e6 + N(0, 1) in float32: E[x^2] - E[x]^2 would lose every digit of the variance."""
    x, gamma, beta, param, dout = _inputs(op, np.float32, 1e6, 1.0)
    got = _run(op, x, gamma, beta, param, dout, backend)
    want = oracle(op, x, gamma, beta, dout)
    var = 1.0 / got["invstd"].astype(np.float64) ** 2 - 1e-5
    np.testing.assert_allclose(var, want["var"], rtol=1e-3)
    # the mean is exact to float32 rounding
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=0, atol=np.spacing(np.float32(1e6)))
    if op.uses_running_stats:
        np.testing.assert_allclose(param["running_var"], 0.1 * want["var"], rtol=1e-3)
    # The output is as exact as float32 allows: x - mean is exact, the float32 mean is off by at
    # most half a unit in the last place of 1e6, scaled by gamma * invstd.
    atol = float(np.max(np.abs(gamma)) * np.max(want["invstd"])) * np.spacing(np.float32(1e6))
    _close(got["out"], want["out"], 1e-5, "out", atol=atol)
    _close(got["dbeta"], want["dbeta"], 1e-5, "dbeta")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_long_layernorm_rows_with_offset_and_outliers_keep_their_statistics(backend, dtype):
    """Rows of 20000 values (longer than 64 KiB: the compiled kernels take them in segments,
    each summed shifted by its first value) at a 1e6 offset, with an outlier every 1024 values
    (at every segment's start): the statistics stay those of exact arithmetic."""
    op = next(op for op in TRAIN_OPS if op.name == "layernorm")
    rng = np.random.default_rng(3)
    x = 1e6 + rng.standard_normal((3, 20000))
    x[:, ::1024] += 1e3
    x = x.astype(dtype)
    gamma, beta = rng.standard_normal(20000).astype(dtype), rng.standard_normal(20000).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    got = _run(op, x, gamma, beta, {}, dout, backend)
    want = oracle(op, x, gamma, beta, dout)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    var = 1.0 / got["invstd"].astype(np.float64) ** 2 - 1e-5
    np.testing.assert_allclose(var, want["var"], rtol=rtol)
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=0, atol=np.spacing(dtype(1e6)))
    # out to within the rounding of the mean to dtype (as in the 1e6 offset test above)
    atol = float(np.max(np.abs(gamma)) * np.max(want["invstd"])) * np.spacing(dtype(1e6))
    _close(got["out"], want["out"], 10 * rtol, "out", atol=atol)
    if dtype == np.float64:  # float32 gradients carry that rounding too, summed over the rows
        for name in ("dx", "dgamma", "dbeta"):
            _close(got[name], want[name], 10 * rtol, name)


HUGE = [("spread-1e30", 0.0, 1e30), ("offset-1e30", 1e30, 1e28)]


@pytest.mark.parametrize("case", HUGE, ids=[c[0] for c in HUGE])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", TRAIN_OPS, ids=TRAIN_IDS)
def test_float32_values_up_to_1e30_do_not_overflow_the_statistics(op, backend, case):
    """x**2 overflows float32 above 1.8e19; statistics must be accumulated wider."""
    _, offset, scale = case
    x, gamma, beta, param, dout = _inputs(op, np.float32, offset, scale)
    assert np.max(np.abs(x)) > 1e29
    if op.uses_running_stats:  # float64 running statistics can hold a variance of 1e60
        C = op.channels(x.shape)
        param.update(running_mean=np.zeros(C), running_var=np.zeros(C))
    got = _run(op, x, gamma, beta, param, dout, backend)
    want = oracle(op, x, gamma, beta, dout)
    for key, value in got.items():
        assert np.isfinite(value).all(), key
    _close(got["mean"], want["mean"], 1e-6, "mean")
    _close(got["invstd"], want["invstd"], 1e-5, "invstd")
    _close(got["out"], want["out"], 1e-5, "out")
    _close(got["dx"], want["dx"], 1e-4, "dx")
    _close(got["dgamma"], want["dgamma"], 1e-4, "dgamma")
    if op.uses_running_stats:
        _close(param["running_var"], 0.1 * want["var"], 1e-5, "running_var")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", TRAIN_OPS, ids=TRAIN_IDS)
def test_subnormal_float32_input_is_not_flushed_to_zero(op, backend):
    """Values around 1e-38 (most are float32 subnormals): the statistics keep them (no
    flush-to-zero)."""
    x, gamma, beta, param, dout = _inputs(op, np.float32, 0.0, 1e-38)
    assert np.mean(np.abs(x) < np.finfo(np.float32).tiny) > 0.5
    got = _run(op, x, gamma, beta, param, dout, backend)
    want = oracle(op, x, gamma, beta, dout)
    smallest = np.finfo(np.float32).smallest_subnormal
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=0, atol=smallest)
    assert np.any(got["mean"] != 0)
    _close(got["out"], want["out"], 1e-5, "out")
    _close(got["dx"], want["dx"], 1e-5, "dx")
    _close(got["dgamma"], want["dgamma"], 1e-4, "dgamma")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", TRAIN_OPS, ids=TRAIN_IDS)
def test_subnormal_float32_input_with_eps_zero_is_standardised(op, backend):
    """With eps = 0 a subnormal batch is normalised to unit variance: invstd ~ 1e38 (and
    gamma * invstd < 3.4e38 stays a float32 number)."""
    x, gamma, beta, param, dout = _inputs(op, np.float32, 0.0, 1e-38)
    gamma = np.linspace(0.5, 1.5, gamma.size, dtype=np.float32).reshape(gamma.shape)
    param["eps"] = 0.0
    out, cache = op.forward(x, gamma, beta, param, backend=backend)
    want = oracle(op, x, gamma, beta, dout, eps=0.0)
    _close(cache.invstd.reshape(-1), want["invstd"], 1e-5, "invstd")
    _close(out, want["out"], 1e-5, "out")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", TRAIN_OPS, ids=TRAIN_IDS)
def test_tiny_variance_with_eps_zero_gives_finite_float32_gradients(op, backend):
    """std 1e-21, eps = 0: invstd ~ 1e21 and dx ~ 1e21 are float32 numbers; no intermediate
    (invstd**2 ~ 1e42, invstd**3) may overflow."""
    x, gamma, beta, param, dout = _inputs(op, np.float32, 0.0, 1e-21)
    param["eps"] = 0.0
    got = _run(op, x, gamma, beta, param, dout, backend)
    want = oracle(op, x, gamma, beta, dout, eps=0.0)
    assert np.isfinite(got["dx"]).all()
    _close(got["dx"], want["dx"], 1e-4, "dx")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", TRAIN_OPS, ids=TRAIN_IDS)
def test_float16_input_is_computed_in_float32(op, backend):
    """float16 in, float16 out; values up to 6e4 (x**2 overflows float16) are fine."""
    x, gamma, beta, param, dout = _inputs(op, np.float16, 3e4, 1e4)
    assert np.max(np.abs(x)) > 5e4
    out, cache = op.forward(x, gamma, beta, param, backend=backend)
    dx, dgamma, dbeta = op.backward(dout, cache, backend=backend)
    want = oracle(op, x, gamma, beta, dout)
    assert out.dtype == dx.dtype == dgamma.dtype == np.float16
    assert np.isfinite(out).all() and np.isfinite(dx).all()
    # float16 has a 2**-11 relative rounding step; allow two of them
    _close(out, want["out"], 2.0**-10, "out")
    _close(dx, want["dx"], 2.0**-10, "dx")
    _close(dgamma.reshape(-1), want["dgamma"], 2.0**-10, "dgamma")
    _close(dbeta.reshape(-1), want["dbeta"], 2.0**-10, "dbeta")


# ---------------------------------------------------------------------------------------------
# Constant features
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", TRAIN_OPS, ids=TRAIN_IDS)
def test_constant_unit_outputs_beta_with_finite_gradients(op, backend, dtype):
    x, gamma, beta, param, dout = _inputs(op, dtype, 3.0, 2.0)
    index = _unit_index(op, x.shape)
    x[index] = dtype(7.1)
    got = _run(op, x, gamma, beta, param, dout, backend)
    want = oracle(op, x, gamma, beta, dout)
    assert want["var"][K] == 0.0
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    beta_full = np.broadcast_to(beta.reshape(_param_shape(op, x)), x.shape)
    # beta up to the rounding of a sum of M equal values (M ulps of 7.1), times gamma * invstd
    M = x.size // want["mean"].size
    mean_rounding = M * np.spacing(dtype(7.1)) * float(np.max(np.abs(gamma)) * want["invstd"][K])
    _close(got["out"][index], beta_full[index], rtol, "out = beta", atol=mean_rounding)
    for key in ("dx", "dgamma", "dbeta"):
        assert np.isfinite(got[key]).all(), key
    dx_scale = float(np.max(np.abs(dout)) * np.max(np.abs(gamma)) * np.max(want["invstd"]))
    _close(got["dx"], want["dx"], rtol, "dx", atol=rtol * dx_scale)
    _close(got["dgamma"], want["dgamma"], rtol, "dgamma", atol=rtol * np.abs(dout).sum())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", TRAIN_OPS, ids=TRAIN_IDS)
def test_constant_unit_with_eps_1e_300_has_finite_gradients(op, backend):
    """eps > 0 keeps a constant unit's gradients finite even when invstd is 1e150, whose cube
    overflows float64: the backward multiplies invstd in one factor at a time."""
    x, gamma, beta, param, dout = _inputs(op, np.float64, 3.0, 2.0)
    index = _unit_index(op, x.shape)
    x[index] = 2.5
    param["eps"] = 1e-300
    got = _run(op, x, gamma, beta, param, dout, backend)
    want = oracle(op, x, gamma, beta, dout, eps=1e-300)
    assert want["invstd"][K] == 1e150
    for key in ("out", "dx", "dgamma", "dbeta"):
        assert np.isfinite(got[key]).all(), key
    _close(got["dx"][index], want["dx"][index], 1e-12, "dx of the constant unit")
    mask = _unit_mask(op, x.shape)
    _close(got["dx"][~mask], want["dx"][~mask], 1e-12, "dx")


@pytest.mark.parametrize("scale, eps", [(1e110, 1e-5), (1e-110, 0.0)], ids=["1e110", "1e-110"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", TRAIN_OPS, ids=TRAIN_IDS)
def test_float64_units_of_std_1e110_and_1e_110_match_exact_arithmetic(op, backend, scale, eps):
    """invstd ** 3 underflows float64 for a std above about 1e103 and overflows below about
    1e-103; the backward's results stay those of exact arithmetic to 1e-12 there."""
    x, gamma, beta, param, dout = _inputs(op, np.float64, 0.0, scale)
    param["eps"] = eps
    if op.uses_running_stats:
        C = op.channels(x.shape)
        param.update(running_mean=np.zeros(C), running_var=np.zeros(C))
    got = _run(op, x, gamma, beta, param, dout, backend)
    want = oracle(op, x, gamma, beta, dout, eps=eps)
    for key in ("out", "dx", "dgamma", "dbeta"):
        _close(got[key], want[key], 1e-12, key)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", TRAIN_OPS, ids=TRAIN_IDS)
def test_eps_zero_constant_unit_is_nan_and_others_are_exact(op, backend):
    """eps = 0: a constant feature/row/group has invstd = inf and NaN output and dx (as in
    PyTorch); every other unit is normalised as usual. 7.1 is not a dyadic fraction: its mean
    is exact only if computed exactly (shifted by a value of the unit), not by a plain sum."""
    x, gamma, beta, param, dout = _inputs(op, np.float64, 3.0, 2.0)
    mask = _unit_mask(op, x.shape)
    x[mask] = 7.1
    param["eps"] = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        got = _run(op, x, gamma, beta, param, dout, backend)
    want = oracle(op, x, gamma, beta, dout, eps=0.0)
    k = K
    assert got["invstd"][k] == np.inf
    assert np.isnan(got["out"][mask]).all()
    assert np.isnan(got["dx"][mask]).all()
    _close(got["out"][~mask], want["out"][~mask], 1e-12, "out")
    _close(np.delete(got["invstd"], k), np.delete(want["invstd"], k), 1e-12, "invstd")
    dx_scale = float(np.max(np.abs(dout)) * np.max(np.abs(gamma)) * np.max(np.delete(want["invstd"], k)))
    _close(got["dx"][~mask], want["dx"][~mask], 1e-12, "dx", atol=1e-12 * dx_scale)


# ---------------------------------------------------------------------------------------------
# NaN and Inf stay where they are
# ---------------------------------------------------------------------------------------------

NONFINITE = [np.nan, np.inf, -np.inf]
NONFINITE_IDS = ["nan", "inf", "-inf"]


def _poisoned(op, dtype, value):
    x, gamma, beta, param, dout = _inputs(op, dtype, 3.0, 2.0)
    bad = x.copy()
    position = tuple(np.argwhere(_unit_mask(op, x.shape))[3])
    bad[position] = value
    return x, bad, gamma, beta, param, dout


def _param_units(op, shape):
    """Channels whose dgamma/dbeta sum over the poisoned unit."""
    C = op.channels(shape)
    touched = np.zeros(C, dtype=bool)
    if op.name == "layernorm":
        touched[:] = True
    elif op.name == "groupnorm":
        Cg = C // op.G(shape)
        touched[Cg:2 * Cg] = True
    else:
        touched[1] = True
    return touched


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("value", NONFINITE, ids=NONFINITE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", TRAIN_OPS, ids=TRAIN_IDS)
def test_nonfinite_value_stays_in_its_unit(op, backend, value, dtype):
    """Every result outside the poisoned feature/row/group is bit for bit the clean result."""
    x, bad, gamma, beta, param, dout = _poisoned(op, dtype, value)
    clean = _run(op, x, gamma, beta, copy_param(param), dout, backend)
    bad_param = copy_param(param)
    with np.errstate(invalid="ignore", over="ignore"):
        got = _run(op, bad, gamma, beta, bad_param, dout, backend)
    mask = _unit_mask(op, x.shape)
    k = K
    for key in ("out", "dx"):
        np.testing.assert_array_equal(got[key][~mask], clean[key][~mask], err_msg=key)
    for key in ("mean", "invstd"):
        np.testing.assert_array_equal(np.delete(got[key], k), np.delete(clean[key], k), err_msg=key)
    touched = _param_units(op, x.shape)
    np.testing.assert_array_equal(got["dgamma"][~touched], clean["dgamma"][~touched])
    np.testing.assert_array_equal(got["dbeta"][~touched], clean["dbeta"][~touched])
    if op.uses_running_stats:
        clean_param = copy_param(param)
        op.forward(x, gamma, beta, clean_param, backend=backend)
        for key in ("running_mean", "running_var"):
            others = np.delete(bad_param[key], 1)
            assert np.isfinite(others).all()
            np.testing.assert_array_equal(others, np.delete(clean_param[key], 1))


@pytest.mark.parametrize("value", NONFINITE, ids=NONFINITE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", TRAIN_OPS, ids=TRAIN_IDS)
def test_nonfinite_value_shows_in_its_own_statistics(op, backend, value):
    """A NaN/Inf feature must not report clean-looking statistics: its variance is NaN, so its
    invstd and running variance are NaN (as in the reference and PyTorch), not 1/sqrt(eps) and 0."""
    _, bad, gamma, beta, param, dout = _poisoned(op, np.float64, value)
    with np.errstate(invalid="ignore", over="ignore"):
        got = _run(op, bad, gamma, beta, param, dout, backend)
    k = K
    assert not np.isfinite(got["mean"][k])
    assert np.isnan(got["invstd"][k]), f"invstd of the poisoned unit is {got['invstd'][k]}"
    assert not np.isfinite(got["out"][_unit_mask(op, bad.shape)]).any()
    if op.uses_running_stats:
        assert not np.isfinite(param["running_mean"][1])
        assert np.isnan(param["running_var"][1]), f"running_var is {param['running_var'][1]}"


TEST_MODE_OPS = [op for op in OPS if op.mode == "test" and not op.param_broadcast
                 and not op.spec.relu]  # (through a ReLU, dx depends on x)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("value", NONFINITE, ids=NONFINITE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", TEST_MODE_OPS, ids=[op.id for op in TEST_MODE_OPS])
def test_test_mode_dx_does_not_depend_on_x(op, backend, value, dtype):
    """In test mode the statistics are constants: dx = dout * gamma * invstd, finite even where
    x is NaN or Inf (only dgamma of the poisoned channel sees the bad value)."""
    shape = op.shapes[2]
    x, gamma, beta, param = op.make(shape, dtype)
    x[(1,) * x.ndim] = value
    _, cache = op.forward(x, gamma, beta, param, backend=backend)
    dout = np.random.default_rng(2).standard_normal(shape).astype(dtype)
    dx, dgamma, dbeta = op.backward(dout, cache, backend=backend)
    scale_shape = (1, -1, 1, 1) if op.layout == "NCHW" else (-1,)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dbeta))
    assert_close(dx, dout * (gamma * cache.invstd).reshape(scale_shape), dtype, "dx")
    assert np.sum(~np.isfinite(dgamma)) == 1


# ---------------------------------------------------------------------------------------------
# RMSNorm: the mean square in double precision
# ---------------------------------------------------------------------------------------------
RMS_OP = next(op for op in OPS if op.name == "rmsnorm" and not op.param_broadcast)


def rms_oracle(x, gamma, dout, eps=1e-5):
    """RMSNorm forward and backward in float64 with exactly rounded mean squares."""
    x = x.astype(np.float64).reshape(-1, x.shape[-1])
    ms = np.array([math.fsum(v * v for v in row) / row.size for row in x])[:, None]
    invstd = 1.0 / np.sqrt(ms + eps)
    xhat = x * invstd
    g = dout.astype(np.float64).reshape(x.shape) * gamma.astype(np.float64)
    dx = invstd * (g - xhat * (g * xhat).mean(axis=1, keepdims=True))
    return {"out": xhat * gamma, "invstd": invstd.reshape(-1), "dx": dx,
            "dgamma": (dout.astype(np.float64).reshape(x.shape) * xhat).sum(axis=0)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(48, 40), (9, 20000), (300, 256), (40, 128)],
                         ids=["short", "long", "four-rows", "registers"])
@pytest.mark.parametrize("offset, scale, dtype", [
    (1e6, 1.0, np.float32), (0.0, 1e30, np.float32), (0.0, 1e-30, np.float32), (3.0, 2.0, np.float64),
    (0.0, 1e110, np.float64), (0.0, 1e-110, np.float64),
], ids=["offset-1e6-float32", "1e30-float32", "1e-30-float32", "float64", "1e110-float64",
        "1e-110-float64"])
def test_rmsnorm_statistics_are_those_of_exact_arithmetic(backend, shape, offset, scale, dtype):
    """Mean squares are accumulated in double: float32 values of 1e30 (whose squares overflow
    float32) or 1e-30 (whose squares underflow it), or at a 1e6 offset, give the exactly rounded
    statistics; float64 within 1e-12, also at 1e+-110, where invstd ** 3 would under/overflow."""
    rng = np.random.default_rng(7)
    x = (offset + scale * rng.standard_normal(shape)).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, shape[-1]).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    eps = 0.0 if scale < 1 else 1e-5
    out, cache = fastbn.rmsnorm_forward(x, gamma, {"eps": eps}, backend=backend)
    dx, dgamma = fastbn.rmsnorm_backward(dout, cache, backend=backend)
    want = rms_oracle(x, gamma, dout, eps)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(cache.invstd.reshape(-1), want["invstd"], rtol=rtol)
    assert np.all(cache.mean == 0)
    _close(out.reshape(want["out"].shape), want["out"], rtol, "out")
    _close(dx.reshape(want["dx"].shape), want["dx"], 10 * rtol, "dx")
    _close(dgamma, want["dgamma"], 10 * rtol, "dgamma")


@pytest.mark.parametrize("backend", BACKENDS)
def test_rmsnorm_of_a_zero_row(backend):
    """A zero row has mean square 0: with eps > 0 its output and dx are 0; with eps = 0 its invstd
    is inf and its output NaN (as in PyTorch). Other rows are not affected."""
    x, gamma, _, _ = RMS_OP.make((4, 6))
    x[1] = 0.0
    out, cache = fastbn.rmsnorm_forward(x, gamma, {}, backend=backend)
    dx, _ = fastbn.rmsnorm_backward(np.ones_like(x), cache, backend=backend)
    assert np.all(out[1] == 0) and np.all(np.isfinite(dx))
    with np.errstate(divide="ignore", invalid="ignore"):
        out0, cache0 = fastbn.rmsnorm_forward(x, gamma, {"eps": 0.0}, backend=backend)
    assert np.isinf(cache0.invstd[1]) and np.all(np.isnan(out0[1]))
    np.testing.assert_array_equal(np.delete(out0, 1, axis=0) == 0, False)


def _exact_moments(units):
    """Mean and 1/sqrt(var + 1e-5) of each row of `units` (float64), from exactly rounded sums."""
    means, invstds = [], []
    for u in units:
        mean = math.fsum(u) / u.size
        d = u - mean
        d = d - math.fsum(d) / u.size  # the rounding of the mean, taken out
        invstds.append(1.0 / math.sqrt(math.fsum(d * d) / u.size + 1e-5))
        means.append(mean)
    return np.array(means), np.array(invstds)


OFFSET_CASES = [  # op, shape, layout or groups, forced path
    *[("batchnorm", (4096, 64), None, {"cols_path": p}) for p in ("blocked", "shared_blocks", "grid")],
    *[("batchnorm", (1000, 3), None, {"cols_path": p}) for p in ("blocked", "grid")],
    *[("spatial_batchnorm", (64, 8, 1, 1), "NCHW", {"planes_path": p}) for p in ("channels", "chunks")],
    *[("spatial_batchnorm", (33, 5, 3, 3), "NCHW", {"planes_path": p}) for p in ("channels", "chunks")],
    *[("spatial_batchnorm", (64, 7, 7, 16), "NHWC", {"cols_path": p}) for p in ("blocked", "grid")],
    *[("layernorm", (4, 70000), None, {"rows_forward_path": p}) for p in ("segments", "per_row")],
    ("groupnorm", (2, 8, 50, 50), 2, {}),
]


@pytest.mark.skipif("cython" not in BACKENDS, reason="the kernels' paths: compiled kernels not built")
@pytest.mark.parametrize("op, shape, extra, path", OFFSET_CASES,
                         ids=[f"{c[0]}-{'x'.join(map(str, c[1]))}-{'-'.join(c[3].values()) or 'auto'}"
                              for c in OFFSET_CASES])
def test_float64_statistics_at_an_offset_of_2e5_deviations_are_exact_to_ulps(op, shape, extra, path):
    """x = 1e4 + N(0, 0.05^2) in float64, on every path of the kernels: the mean within an ulp
    or two of 1e4 and invstd within 1e-14 of exactly rounded arithmetic. Paths that merge the
    moments of chunks, planes or segments took the differences of their means at the offset's
    magnitude, and lost 3-5 digits of invstd (1e-11 for planes of one value); they now merge
    means less a value of the unit (a longer fuzz run found it)."""
    x = 1e4 + 0.05 * np.random.default_rng(5).standard_normal(shape)
    if op == "layernorm":
        units = x
        forward = lambda: fastbn.layernorm_forward(x, np.ones(shape[1]), np.zeros(shape[1]), {})
    elif op == "groupnorm":
        units = x.reshape(shape[0] * extra, -1)
        forward = lambda: fastbn.spatial_groupnorm_forward(x, np.ones(shape[1]), np.zeros(shape[1]),
                                                           extra, {})
    else:
        axis = 1 if extra == "NCHW" else x.ndim - 1
        units = np.moveaxis(x, axis, 0).reshape(shape[axis], -1)
        C = shape[axis]
        param = {"mode": "train"} if extra is None else {"mode": "train", "layout": extra}
        function = fastbn.batchnorm_forward if extra is None else fastbn.spatial_batchnorm_forward
        forward = lambda: function(x, np.ones(C), np.zeros(C), param)
    with _planner.override(**path):
        _, cache = forward()
    mean, invstd = _exact_moments(units)
    np.testing.assert_allclose(cache.mean.reshape(-1), mean, rtol=0, atol=2 * np.spacing(1e4))
    np.testing.assert_allclose(cache.invstd.reshape(-1), invstd, rtol=1e-14)


@pytest.mark.parametrize("shape, axes", [
    ((400001, 3), (0,)), ((3, 400001), (1,)), ((64, 3, 79, 79), (0, 2, 3)),
    ((64, 79, 79, 3), (0, 1, 2)), ((2, 200001, 3), (1,)), ((0, 3), (0,)), ((3, 0), (1,)),
    ((2, 0, 3), (0, 2)),
], ids=["leading", "trailing", "NCHW", "NHWC", "middle", "empty-leading", "empty-trailing",
        "empty-channels"])
def test_reference_sums_are_exact_to_a_few_ulps(shape, axes):
    """The reference's float64 sums over any axes (trailing ones as contiguous runs, leading ones
    by halving, others through a copy) of 2e5-4e5 values each stay within 16 ulps of the exactly
    rounded sum; NumPy's strided reduction, one value after another, was hundreds off."""
    from fastbn import reference

    x = 1.0 + 0.5 * np.random.default_rng(3).random(shape)
    got = reference._sum64(x, axes)
    kept = [k for k in range(x.ndim) if k not in axes]
    count = math.prod(shape[k] for k in axes)
    runs = np.moveaxis(x, kept, range(len(kept))).reshape(math.prod(shape[k] for k in kept), count)
    want = np.array([math.fsum(run) for run in runs]).reshape(got.shape)
    assert got.shape == tuple(1 if k in axes else n for k, n in enumerate(shape))
    np.testing.assert_allclose(got, want, rtol=16 * np.finfo(np.float64).eps, atol=0)
