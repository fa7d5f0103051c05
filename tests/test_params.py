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
                        x=x, param={}, unbiased=False, batches=None)
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


# ------------------------------------------------------------------------------------------
# Parameter shapes, optional affine, running-statistics conventions
# ------------------------------------------------------------------------------------------

# gamma/beta shapes each op accepts besides (C,): of C values broadcasting against x (C = 3
# for the spatial ops on (4, 3, 5, 2), 10 for layernorm over the last two axes of (4, 2, 5)),
# or one value for every channel.
PARAM_SHAPE_CASES = [
    ("spatial_batchnorm", {}, (4, 3, 5, 2), (3, 1, 1)),
    ("spatial_batchnorm", {}, (4, 3, 5, 2), (1, 3, 1, 1)),
    ("spatial_batchnorm", {}, (4, 3, 5, 2), (1,)),
    ("spatial_batchnorm", {}, (4, 3, 5, 2), ()),
    ("spatial_batchnorm", {"layout": "channels_last"}, (4, 5, 2, 3), (1, 3)),
    ("spatial_batchnorm", {}, (4, 3, 7), (3, 1)),
    ("batchnorm", {}, (6, 3), (1, 3)),
    ("batchnorm", {}, (6, 3), (1, 1)),
    ("groupnorm", {}, (2, 4, 5), (4, 1)),
    ("groupnorm", {}, (2, 4, 3, 3), (1, 1, 1, 1)),
    ("layernorm", {"axis": -2}, (4, 2, 5), (2, 5)),
    ("layernorm", {"axis": -2}, (4, 2, 5), (1, 2, 5)),
    ("layernorm", {"axis": 1}, (4, 2, 5), (1,)),
    ("rmsnorm", {"axis": 1}, (4, 2, 5), (1, 2, 5)),
]


def _run(name, x, gamma, beta, param, backend):
    spec = fastbn._ops.OPS[name]
    forward = getattr(fastbn, spec.forward)
    out, cache = forward(*spec.forward_args(x, gamma, beta, dict(param), 2), backend=backend)
    grads = getattr(fastbn, spec.backward[0])(np.cos(x), cache, backend=backend)
    return out, grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, extra, shape, pshape", PARAM_SHAPE_CASES,
                         ids=[f"{c[0]}-{'x'.join(map(str, c[2]))}-param{c[3]}" for c in PARAM_SHAPE_CASES])
def test_broadcastable_parameters_equal_their_flat_values(name, extra, shape, pshape, backend):
    """A gamma/beta of another broadcastable shape gives the output of its values spread to one
    per channel, (C,); its gradient comes back in its shape (summed over channels for one value)."""
    spec = fastbn._ops.OPS[name]
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape)
    param = {"mode": "train", **extra}
    axis = extra.get("axis")
    layout = spec.layout(param)
    C = spec.channels(shape, layout, None if axis is None else axis % len(shape))
    gamma, beta = np.asarray(1 + rng.random(pshape)), np.asarray(rng.standard_normal(pshape))
    flat_gamma, flat_beta = (np.broadcast_to(a.reshape(-1), (C,)).copy() for a in (gamma, beta))
    out, grads = _run(name, x, gamma, beta, param, backend)
    flat_out, flat_grads = _run(name, x, flat_gamma, flat_beta, param, backend)
    assert_close(out, flat_out, np.float64, "out")
    for grad, flat_grad, given in zip(grads[1:], flat_grads[1:], (gamma, beta)):
        assert grad.shape == given.shape
        expected = flat_grad.reshape(given.shape) if given.size == C else flat_grad.sum().reshape(given.shape)
        assert_close(grad, expected, np.float64, "dparam", scale=1.0)


NONE_CASES = [(op, missing) for op in OPS if op.mode == "train" and not op.param_broadcast
              for missing in ("gamma", "beta", "both") if op.spec.beta or missing == "gamma"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op, missing", NONE_CASES, ids=[f"{op.id}-no-{m}" for op, m in NONE_CASES])
def test_missing_parameters_mean_scale_one_shift_zero(op, missing, backend):
    """gamma=None is ones, beta=None is zeros; the backward returns None for their gradients."""
    x, gamma, beta, param = op.make(op.shapes[2])
    drop_gamma, drop_beta = missing in ("gamma", "both"), missing in ("beta", "both")
    given = (None if drop_gamma else gamma, None if drop_beta else beta)
    filled = (np.ones_like(gamma) if drop_gamma else gamma, np.zeros_like(beta) if drop_beta else beta)
    out, cache = op.forward(x, *given, copy_param(param), backend=backend)
    expected_out, expected_cache = op.forward(x, *filled, copy_param(param), backend=backend)
    np.testing.assert_array_equal(out, expected_out)
    dout = np.sin(x)
    grads = op.grads(op.backward(dout, cache, backend=backend))
    expected = op.grads(op.backward(dout, expected_cache, backend=backend))
    np.testing.assert_array_equal(grads["dx"], expected["dx"])
    assert (grads["dgamma"] is None) == drop_gamma
    if op.spec.beta:
        assert (grads["dbeta"] is None) == drop_beta


def _spatial(backend, x, param):
    return fastbn.spatial_batchnorm_forward(x, None, None, param, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unbiased_updates_running_var_with_the_unbiased_batch_variance(backend):
    x = np.random.default_rng(8).normal(2.0, 3.0, size=(3, 4, 5))
    M = 3 * 5
    param = {"mode": "train", "momentum": 0.6, "unbiased": True,
             "running_mean": np.ones(4), "running_var": np.ones(4)}
    out, _ = _spatial(backend, x, param)
    biased_out, _ = _spatial(backend, x, {"mode": "train"})
    np.testing.assert_array_equal(out, biased_out)  # the output uses the biased variance
    var = x.var(axis=(0, 2))
    np.testing.assert_allclose(param["running_var"], 0.6 + 0.4 * var * M / (M - 1), rtol=1e-13)
    np.testing.assert_allclose(param["running_mean"], 0.6 + 0.4 * x.mean(axis=(0, 2)), rtol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_momentum_none_keeps_the_average_of_all_batches(backend):
    """momentum=None: after n batches the running statistics are the plain average of the n
    batch statistics, and num_batches_tracked is n (created at 0)."""
    rng = np.random.default_rng(9)
    batches = [rng.normal(k, 1 + k, size=(6, 3, 4)) for k in range(5)]
    param = {"mode": "train", "momentum": None}
    for x in batches:
        _spatial(backend, x, param)
    assert param["num_batches_tracked"] == 5
    np.testing.assert_allclose(param["running_mean"], np.mean([x.mean(axis=(0, 2)) for x in batches], axis=0),
                               rtol=1e-12)
    np.testing.assert_allclose(param["running_var"], np.mean([x.var(axis=(0, 2)) for x in batches], axis=0),
                               rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("given", [0, 7, np.int64(7), np.array(7)], ids=["int0", "int7", "np-int", "0d-array"])
def test_num_batches_tracked_is_counted_when_present(backend, given):
    """A present count (an int, NumPy integer or a state_dict's 0-D array) is counted by train
    calls with any momentum, and left alone by test calls."""
    x = np.random.default_rng(10).normal(size=(4, 3, 5))
    param = {"mode": "train", "num_batches_tracked": given}
    _spatial(backend, x, param)
    assert param["num_batches_tracked"] == int(given) + 1
    param["mode"] = "test"
    _spatial(backend, x, param)
    assert param["num_batches_tracked"] == int(given) + 1
