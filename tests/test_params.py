"""bn_param / ln_param / gn_param semantics: modes, running statistics, defaults, eps."""
from dataclasses import replace

import numpy as np
import pytest

import fastbn
from registry import OPS, assert_close, copy_param

BACKENDS = fastbn.available_backends()
BATCH_OPS = [op for op in OPS if op.uses_running_stats and op.mode == "train" and not op.param_broadcast]
BATCH_IDS = [op.id for op in BATCH_OPS]


def _batch_stats(op, x):
    """Biased batch mean and variance per feature/channel, float64."""
    channel_axis = x.ndim - 1 if op.layout == "NHWC" else 1
    axes = tuple(a for a in range(x.ndim) if a != channel_axis)
    return x.mean(axis=axes, dtype=np.float64), x.var(axis=axes, dtype=np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", BATCH_OPS, ids=BATCH_IDS)
def test_first_train_call_creates_running_stats_from_zeros(op, backend):
    shape = op.shapes[2]
    x, gamma, beta, param = op.make(shape)
    param["momentum"] = 0.75
    op.forward(x, gamma, beta, param, backend=backend)
    mean, var = _batch_stats(op, x)
    C = op.channels(shape)
    for key, stat in (("running_mean", mean), ("running_var", var)):
        assert param[key].shape == (C,) and param[key].dtype == x.dtype
        np.testing.assert_allclose(param[key], 0.25 * stat, rtol=1e-12)


@pytest.mark.parametrize("running_shape", ["flat", "row", "broadcast"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", BATCH_OPS, ids=BATCH_IDS)
def test_supplied_running_stats_are_updated_in_place_keeping_shape(op, backend, running_shape):
    shape = op.shapes[2]
    x, gamma, beta, param = op.make(shape)
    C = op.channels(shape)
    rshape = {"flat": (C,), "row": (1, C),
              "broadcast": replace(op, param_broadcast=True).param_shape(shape)}[running_shape]
    rng = np.random.default_rng(7)
    running_mean = rng.standard_normal(rshape)
    running_var = rng.random(rshape)
    before = running_mean.copy(), running_var.copy()
    param.update(running_mean=running_mean, running_var=running_var, momentum=0.9)
    op.forward(x, gamma, beta, param, backend=backend)
    assert param["running_mean"] is running_mean and param["running_var"] is running_var
    assert running_mean.shape == rshape
    mean, var = _batch_stats(op, x)
    np.testing.assert_allclose(running_mean, 0.9 * before[0] + 0.1 * mean.reshape(rshape), rtol=1e-12)
    np.testing.assert_allclose(running_var, 0.9 * before[1] + 0.1 * var.reshape(rshape), rtol=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 1.0])
@pytest.mark.parametrize("backend", BACKENDS)
def test_momentum_bounds(backend, momentum):
    op = BATCH_OPS[0]
    x, gamma, beta, param = op.make((50, 4))
    param.update(momentum=momentum, running_mean=np.full(4, 7.0), running_var=np.full(4, 3.0))
    op.forward(x, gamma, beta, param, backend=backend)
    mean, var = _batch_stats(op, x)
    expected = (np.full(4, 7.0), np.full(4, 3.0)) if momentum == 1.0 else (mean, var)
    np.testing.assert_allclose(param["running_mean"], expected[0], rtol=1e-12)
    np.testing.assert_allclose(param["running_var"], expected[1], rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", BATCH_OPS, ids=BATCH_IDS)
def test_train_then_test_uses_running_stats(op, backend):
    shape = op.shapes[2]
    x, gamma, beta, param = op.make(shape)
    param["momentum"] = 0.0  # running stats become exactly the batch stats
    train_out, _ = op.forward(x, gamma, beta, param, backend=backend)
    param["mode"] = "test"
    test_out, cache = op.forward(x, gamma, beta, param, backend=backend)
    assert cache.mode == "test"
    assert_close(test_out, train_out, np.float64)
    # A second batch in test mode is normalised with the first batch's statistics.
    x2 = x * 2.0
    out2, _ = op.forward(x2, gamma, beta, param, backend=backend)
    scale_shape = (1, -1, 1, 1) if op.layout == "NCHW" else (-1,)
    expected = (x2 - x) * (gamma * cache.invstd).reshape(scale_shape)
    if op.spec.relu:  # linear where both outputs are > 0
        both = (out2 > 0) & (test_out > 0)
        assert both.mean() > 0.2
        assert_close((out2 - test_out)[both], expected[both], np.float64)
    else:
        assert_close(out2 - test_out, expected, np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_test_mode_does_not_touch_running_stats(backend):
    op = next(op for op in OPS if op.uses_running_stats and op.mode == "test")
    x, gamma, beta, param = op.make((20, 3))
    before = copy_param(param)
    op.forward(x, gamma, beta, param, backend=backend)
    for key in ("running_mean", "running_var"):
        np.testing.assert_array_equal(param[key], before[key])


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_running_stats_with_float32_input_keep_their_dtype(backend):
    op = BATCH_OPS[0]
    x, gamma, beta, param = op.make((30, 5), np.float32)
    param.update(running_mean=np.zeros(5), running_var=np.ones(5))
    op.forward(x, gamma, beta, param, backend=backend)
    assert param["running_mean"].dtype == np.float64 and param["running_var"].dtype == np.float64


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", [op for op in OPS if op.mode == "train" and not op.param_broadcast],
                         ids=[op.id for op in OPS if op.mode == "train" and not op.param_broadcast])
def test_eps_default_and_value(op, backend):
    shape = op.shapes[2]
    x, gamma, beta, param = op.make(shape)
    _, cache_default = op.forward(x, gamma, beta, copy_param(param), backend=backend)
    _, cache_explicit = op.forward(x, gamma, beta, dict(copy_param(param), eps=1e-5), backend=backend)
    _, cache_large = op.forward(x, gamma, beta, dict(copy_param(param), eps=0.5), backend=backend)
    assert cache_default.eps == 1e-5
    np.testing.assert_array_equal(cache_default.invstd, cache_explicit.invstd)
    var = 1.0 / cache_default.invstd.astype(np.float64) ** 2 - 1e-5
    np.testing.assert_allclose(cache_large.invstd, 1.0 / np.sqrt(var + 0.5), rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_keys_are_ignored(backend):
    x = np.random.default_rng(0).standard_normal((4, 6))
    out1, _ = fastbn.layernorm_forward(x, np.ones(6), np.zeros(6), {"mode": "train", "foo": 1},
                                       backend=backend)
    out2, _ = fastbn.layernorm_forward(x, np.ones(6), np.zeros(6), {}, backend=backend)
    np.testing.assert_array_equal(out1, out2)


def test_cs231n_session():
    """The issue's one-liner: train-mode forward then backward of a (200, 500) batch."""
    x = np.random.default_rng(0).standard_normal((200, 500))
    out, cache = fastbn.batchnorm_forward(x, np.ones(500), np.zeros(500), {"mode": "train"})
    dx, dgamma, dbeta = fastbn.batchnorm_backward(np.ones_like(x), cache)
    np.testing.assert_allclose(dgamma, 0.0, atol=1e-10)  # sum of xhat over the batch is zero
    np.testing.assert_allclose(dbeta, 200.0)
    np.testing.assert_allclose(dx, 0.0, atol=1e-12)



@pytest.mark.skipif("cython" not in BACKENDS, reason="needs the compiled kernels")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("family", ["cols", "planes"])
def test_kernel_running_update_has_the_bits_of_the_numpy_update(family, dtype):
    """Running statistics in the computation dtype are updated inside the kernel; the bits are
    those of the NumPy update (fastbn._results.update_running, used for other dtypes and
    layouts) applied to the same batch statistics."""
    from types import SimpleNamespace

    from fastbn import _kernels, _results

    rng = np.random.default_rng(3)
    shape = (37, 11) if family == "cols" else (5, 11, 13)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    C = shape[1]
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    train = _kernels.cols_forward_train if family == "cols" else _kernels.planes_forward_train

    def run(running_mean, running_var):
        out, mean, invstd, var = np.empty_like(x), np.empty(C, dtype), np.empty(C, dtype), np.empty(C)
        train(x, gamma, beta, 1e-5, out, mean, invstd, var, running_mean, running_var, 0.7, 1)
        return mean, var

    running_mean, running_var = rng.standard_normal(C).astype(dtype), rng.random(C).astype(dtype)
    expected_mean, expected_var = running_mean.copy(), running_var.copy()
    before = running_mean.copy()
    mean, var = run(running_mean, running_var)
    np.testing.assert_array_equal(run(None, None)[1], var)
    p = SimpleNamespace(momentum=0.7, running_mean=expected_mean, running_var=expected_var,
                        x=x, param={})
    _results.update_running(p, mean, var)
    np.testing.assert_array_equal(running_mean, expected_mean)
    np.testing.assert_array_equal(running_var, expected_var)
    assert not np.array_equal(running_mean, before)  # (the kernel did update it)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_array_as_both_running_statistics_gets_the_variance_update_of_its_old_values(backend):
    """Both updates are computed from the values before the call, then written (mean first): the
    array ends as momentum * old + (1 - momentum) * batch variance, on both backends."""
    op = BATCH_OPS[0]
    x, gamma, beta, param = op.make((30, 5))
    shared = np.linspace(0.5, 1.5, 5)
    old = shared.copy()
    param.update(running_mean=shared, running_var=shared, momentum=0.75)
    op.forward(x, gamma, beta, param, backend=backend)
    _, var = _batch_stats(op, x)
    np.testing.assert_allclose(shared, 0.75 * old + 0.25 * var, rtol=1e-12)


@pytest.mark.parametrize("running", ["float16", "strided"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_running_stats_outside_the_kernel_dtype_or_layout_are_updated_too(backend, running):
    """Running arrays the kernel cannot update in place (another dtype, not contiguous) are
    updated by NumPy after it, with the same result as contiguous float64 ones up to their
    precision."""
    op = BATCH_OPS[0]
    x, gamma, beta, param = op.make((30, 5))
    start = np.linspace(-1, 1, 5)
    if running == "float16":
        rm, rv = start.astype(np.float16), (start + 2).astype(np.float16)
    else:
        rm, rv = np.repeat(start, 2)[::2], np.repeat(start + 2, 2)[::2]
    param.update(running_mean=rm, running_var=rv)
    reference = dict(param, running_mean=rm.astype(np.float64), running_var=rv.astype(np.float64))
    op.forward(x, gamma, beta, param, backend=backend)
    op.forward(x, gamma, beta, reference, backend=backend)
    assert param["running_mean"] is rm and param["running_var"] is rv
    tol = 1e-3 if running == "float16" else 0
    np.testing.assert_allclose(rm, reference["running_mean"], rtol=tol, atol=tol)
    np.testing.assert_allclose(rv, reference["running_var"], rtol=tol, atol=tol)
