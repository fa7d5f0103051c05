"""The batchnorm kernels' per-column constants have the bits of their formulas.

Around their sweeps over the data, the compiled (M, D) and (N, C, L) kernels derive constants per
column (feature or channel): the statistics' last step (mean and sum of squared deviations from
sums shifted by the first row), the forward's folded constants (variance, invstd = 1/sqrt(var +
eps), gamma * invstd), test mode's constants from the running statistics, the backward's dgamma,
dbeta and dx coefficients, and the update of the running statistics. Those loops take eight
columns per vector and the rest one at a time (fastbn/_src/loops_template.c). Every result must
be the IEEE value of its formula, computed here in NumPy with the same operations in the same
precisions: for column counts of whole vectors, tails and both, for special values (a sum of
squared deviations below 0 from rounding, NaN, inf, 0, eps = 0), and on every instruction set.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbn

pytestmark = pytest.mark.skipif("cython" not in fastbn.available_backends(),
                                reason="compiled kernels are not built")

COLUMNS = [1, 7, 8, 9, 16, 17, 37, 1027]  # a tail only, a vector, both, several of each
DTYPES = [np.float32, np.float64]
F64 = np.float64


def every_width(test):
    """The test for every column count of COLUMNS, in float32 and float64."""
    test = pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])(test)
    return pytest.mark.parametrize("C", COLUMNS)(test)


def _kernels():
    return fastbn._backends.kernels()


def _assert_bits(actual, expected):
    """Equal values, NaN where NaN, and the same sign of every zero and infinity."""
    np.testing.assert_array_equal(actual, expected, strict=True)
    np.testing.assert_array_equal(np.signbit(actual), np.signbit(expected))


def _special_m2(C, rng):
    """Sums of squared deviations of C columns: ordinary ones, and where there is room a value
    below 0 (rounding), 0, -0, NaN and inf."""
    m2 = rng.uniform(0.0, 50.0, C)
    for j, value in enumerate((-1e-12, 0.0, -0.0, np.nan, np.inf)):
        if 2 * j + 1 < C:
            m2[2 * j + 1] = value
    return m2


@pytest.mark.parametrize("eps", [1e-5, 0.0])
@every_width
def test_forward_constants_are_the_formulas_bits(C, dtype, eps):
    rng = np.random.default_rng(C)
    mean = rng.standard_normal(C) * 100
    m2 = _special_m2(C, rng)
    count = rng.integers(1, 50, C).astype(F64)  # a count per column, as merged moments have
    gamma = rng.standard_normal(C).astype(dtype)
    mean_out, invstd_out, scale = (np.empty(C, dtype) for _ in range(3))
    var = np.empty(C)
    _kernels().fold_moments(count, np.stack([mean, m2]), gamma, eps, mean_out, invstd_out, scale,
                            var)
    with np.errstate(all="ignore"):
        want_var = np.where(m2 <= 0, 0.0, m2) / count  # -0 too: +0
        invstd = 1.0 / np.sqrt(want_var + eps)
    _assert_bits(var, want_var)
    _assert_bits(mean_out, mean.astype(dtype))
    _assert_bits(invstd_out, invstd.astype(dtype))
    _assert_bits(scale, (gamma.astype(F64) * invstd).astype(dtype))


@pytest.mark.parametrize("eps", [1e-5, 0.0])
@every_width
def test_test_mode_constants_are_the_formulas_bits(C, dtype, eps):
    rng = np.random.default_rng(C)
    running_mean = rng.standard_normal(C).astype(dtype)
    running_var = rng.uniform(0.0, 3.0, C).astype(dtype)
    running_var[::5] = 0.0  # eps = 0: invstd inf
    if C > 3:
        running_var[3] = np.nan
    gamma = rng.standard_normal(C).astype(dtype)
    mean, invstd_out, scale = (np.empty(C, dtype) for _ in range(3))
    _kernels().test_coefficients(running_mean, running_var, gamma, eps, mean, invstd_out, scale)
    with np.errstate(all="ignore"):
        invstd = (1.0 / np.sqrt(running_var.astype(F64) + eps)).astype(dtype)
        _assert_bits(scale, gamma * invstd)  # in the dtype
    _assert_bits(mean, running_mean)
    _assert_bits(invstd_out, invstd)


@every_width
def test_statistics_last_step_and_running_update_are_the_formulas_bits(C, dtype):
    # three rows: the sums shifted by the first row add the other two rows' terms in order,
    # s1 = (0 + t1) + t2 and s2 = (0 + t1 * t1) + t2 * t2, with t = x - x0 in double
    rng = np.random.default_rng(C)
    x = (rng.standard_normal((3, C)) * 3 + 1000).astype(dtype)
    x[:, 0] = 7.0  # a constant column
    moments = np.zeros((2, C))
    _kernels().cols_moments(x, moments, 1)
    x0, t1, t2 = x[0].astype(F64), x[1] - x[0].astype(F64), x[2] - x[0].astype(F64)
    s1, s2 = (0.0 + t1) + t2, (0.0 + t1 * t1) + t2 * t2
    _assert_bits(moments[0], x0 + s1 / 3.0)
    _assert_bits(moments[1], s2 - s1 * s1 / 3.0)
    # the forward's running statistics: momentum * running + (1 - momentum) * batch, the mean's
    # terms in the dtype, the variance's (the variance is float64) in double
    gamma, beta = np.ones(C, dtype), np.zeros(C, dtype)
    out, mean, invstd = np.empty_like(x), np.empty(C, dtype), np.empty(C, dtype)
    var = np.empty(C)
    running_mean = rng.standard_normal(C).astype(dtype)
    running_var = rng.uniform(0.5, 2.0, C).astype(dtype)
    rm, rv = running_mean.copy(), running_var.copy()
    _kernels().cols_forward_train(x, gamma, beta, 1e-5, out, mean, invstd, var, rm, rv, 0.9, 1)
    m, rest = dtype(0.9), dtype(1.0 - 0.9)
    _assert_bits(rm, m * running_mean + rest * mean)
    _assert_bits(rv, ((m * running_var).astype(F64) + (1.0 - 0.9) * var).astype(dtype))


@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
@every_width
def test_backward_constants_are_the_formulas_bits(C, dtype, train):
    # one row, with given gradient sums: dgamma, dbeta, and dx from the coefficients k_dy, k_b,
    # k_g computed in double and rounded to the dtype
    rng = np.random.default_rng(C)
    x, dy = (rng.standard_normal((1, C)).astype(dtype) for _ in range(2))
    mean = rng.standard_normal(C).astype(dtype)
    invstd = rng.uniform(0.1, 10.0, C).astype(dtype)
    gamma = rng.standard_normal(C).astype(dtype)
    sums = rng.standard_normal((2, C)) * 10
    count = 37.0
    dx, dgamma, dbeta = np.empty_like(x), np.empty(C, dtype), np.empty(C, dtype)
    _kernels().cols_backward_given(x, dy, mean, invstd, gamma, train, sums, count, dx, dgamma,
                                   dbeta, 1)
    dg = sums[1] * invstd.astype(F64)
    _assert_bits(dgamma, dg.astype(dtype))
    _assert_bits(dbeta, sums[0].astype(dtype))
    k_dy = (gamma.astype(F64) * invstd.astype(F64)).astype(dtype)
    if train:
        k_b, k_g = (sums[0] / count).astype(dtype), (dg / count).astype(dtype)
        _assert_bits(dx[0], k_dy * (dy[0] - k_b - (x[0] - mean) * invstd * k_g))
    else:
        _assert_bits(dx[0], k_dy * dy[0])


def test_the_kernels_use_the_instruction_set_asked_for():
    # (checked in the runs below, which ask for one)
    simd = _kernels().simd()
    if os.environ.get("FASTBN_DISABLE_AVX2") == "1":
        assert simd == "baseline"
    elif os.environ.get("FASTBN_DISABLE_AVX512") == "1":
        assert simd in ("avx2", "baseline")


@pytest.mark.parametrize("switch", ["FASTBN_DISABLE_AVX512", "FASTBN_DISABLE_AVX2"])
def test_every_instruction_set_gives_the_formulas_bits(switch):
    # the tests above, in a fresh interpreter whose kernels stop at AVX2 or at the baseline, and
    # which imports this fastbn (not another one installed)
    env = dict(os.environ, **{switch: "1"})
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(fastbn.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([package_dir, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.abspath(__file__),
         "-k", "not every_instruction_set"],
        env=env, capture_output=True, text=True, cwd=package_dir,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
