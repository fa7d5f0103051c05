"""Cross-check against PyTorch (skipped when torch is not installed; CI installs it).

Outputs and all three gradients (PyTorch's through autograd) of ``F.batch_norm`` (2-D, 4-D
NCHW and 4-D channels_last against our NHWC layout), ``F.layer_norm`` and ``F.group_norm``, in
train and eval modes, float64 and float32, for both backends.

Running statistics follow different conventions, converted in :func:`_torch_running`:

- momentum: PyTorch updates ``running = (1 - m_t) * running + m_t * batch``; fastbn (cs231n)
  ``running = m * running + (1 - m) * batch``. So ``m_t = 1 - m``.
- variance: PyTorch's running_var is updated with the *unbiased* batch variance
  (``sum((x - mean)**2) / (n - 1)``), fastbn's with the *biased* one (``/ n``), n the values per
  channel. The test recovers PyTorch's batch variance from its update and rescales it by
  ``(n - 1) / n``.
"""
import numpy as np
import pytest

import fastbn

torch = pytest.importorskip("torch")
F = torch.nn.functional

BACKENDS = fastbn.available_backends()
DTYPES = {"float64": (np.float64, torch.float64, 1e-10), "float32": (np.float32, torch.float32, 1e-4)}
EPS = 1e-5
MOMENTUM = 0.8  # fastbn's; PyTorch's is 1 - 0.8


def _data(shape, C, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = (2.0 + 3.0 * rng.standard_normal(shape)).astype(dtype)
    gamma = (1.0 + 0.5 * rng.standard_normal(C)).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    running_mean = (0.5 * rng.standard_normal(C)).astype(dtype)
    running_var = (1.0 + rng.random(C)).astype(dtype)
    return x, gamma, beta, dout, running_mean, running_var


def _torch_grads(fn, x, gamma, beta, dout, memory_format=torch.contiguous_format):
    """fn's output and the autograd gradients for x, weight and bias."""
    xt = torch.from_numpy(x).to(memory_format=memory_format).requires_grad_()
    wt = torch.from_numpy(gamma).requires_grad_()
    bt = torch.from_numpy(beta).requires_grad_()
    out = fn(xt, wt, bt)
    out.backward(torch.from_numpy(dout).to(memory_format=memory_format))
    return [t.detach().numpy() for t in (out, xt.grad, wt.grad, bt.grad)]


def _close(actual, desired, rtol, what, scale=0.0):
    assert actual.dtype == desired.dtype, what
    assert actual.shape == desired.shape, what
    scale = max(float(np.max(np.abs(desired))), scale)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * scale, err_msg=what)


def _compare(ours, theirs, rtol, gamma, invstd, dout):
    names = ("out", "dx", "dgamma", "dbeta")
    # dx is a cancellation of terms of size |gamma * invstd * dout|; dgamma and dbeta are sums
    # of |dout| * O(1) terms (a constant row with D = 1 has dgamma = 0 up to rounding)
    scales = {"out": 0.0, "dx": float(np.max(np.abs(gamma)) * np.max(invstd) * np.max(np.abs(dout))),
              "dgamma": float(np.abs(dout).sum()) / gamma.size, "dbeta": 0.0}
    for name, a, b in zip(names, ours, theirs):
        _close(a, b, rtol, name, scale=scales[name])


def _torch_running(rm0, rv0, rm_t, rv_t, n):
    """fastbn's running statistics after one train step, from PyTorch's after the same step."""
    m_t = 1.0 - MOMENTUM
    batch_mean = (rm_t - (1 - m_t) * rm0) / m_t
    batch_var_unbiased = (rv_t - (1 - m_t) * rv0) / m_t
    batch_var = batch_var_unbiased * (n - 1) / n
    return MOMENTUM * rm0 + (1 - MOMENTUM) * batch_mean, MOMENTUM * rv0 + (1 - MOMENTUM) * batch_var


BN_CASES = [
    ("2d", (64, 17), None),
    ("4d-nchw", (6, 5, 7, 3), "NCHW"),
    ("4d-channels_last", (6, 5, 7, 3), "NHWC"),
]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", BN_CASES, ids=[c[0] for c in BN_CASES])
def test_batch_norm_matches_torch(case, backend, dtype_name, mode):
    _, shape, layout = case
    dtype, torch_dtype, rtol = DTYPES[dtype_name]
    C = shape[1]
    x, gamma, beta, dout, rm0, rv0 = _data(shape, C, dtype)
    training = mode == "train"

    # PyTorch: NCHW tensor, optionally in channels_last memory format.
    rm_t, rv_t = torch.from_numpy(rm0.copy()), torch.from_numpy(rv0.copy())
    memory_format = torch.channels_last if layout == "NHWC" else torch.contiguous_format
    theirs = _torch_grads(
        lambda xt, wt, bt: F.batch_norm(xt, rm_t, rv_t, wt, bt, training=training,
                                        momentum=1.0 - MOMENTUM, eps=EPS),
        x, gamma, beta, dout, memory_format)

    # fastbn: (N, D), NCHW, or the same values laid out as NHWC.
    param = {"mode": "train" if training else "test", "eps": EPS, "momentum": MOMENTUM,
             "running_mean": rm0.copy(), "running_var": rv0.copy()}
    if layout == "NHWC":
        to_ours = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))  # noqa: E731
        from_ours = lambda a: a.transpose(0, 3, 1, 2)  # noqa: E731
    else:
        to_ours = from_ours = lambda a: a  # noqa: E731
    if layout:
        param["layout"] = layout
        forward, backward = fastbn.spatial_batchnorm_forward, fastbn.spatial_batchnorm_backward
    else:
        forward, backward = fastbn.batchnorm_forward, fastbn.batchnorm_backward
    out, cache = forward(to_ours(x), gamma, beta, param, backend=backend)
    dx, dgamma, dbeta = backward(to_ours(dout), cache, backend=backend)
    _compare((from_ours(out), from_ours(dx), dgamma, dbeta), theirs, rtol, gamma, cache.invstd, dout)

    if training:
        n = x.size // C
        expected_mean, expected_var = _torch_running(rm0, rv0, rm_t.numpy(), rv_t.numpy(), n)
        _close(param["running_mean"], expected_mean, rtol, "running_mean")
        _close(param["running_var"], expected_var, rtol, "running_var")
    else:  # eval mode leaves both untouched
        np.testing.assert_array_equal(rv_t.numpy(), rv0)
        np.testing.assert_array_equal(param["running_var"], rv0)


LN_SHAPES = [(32, 50), (4, 6, 33), (7, 1)]


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", LN_SHAPES, ids=["x".join(map(str, s)) for s in LN_SHAPES])
def test_layer_norm_matches_torch(shape, backend, dtype_name):
    dtype, _, rtol = DTYPES[dtype_name]
    D = shape[-1]
    x, gamma, beta, dout, _, _ = _data(shape, D, dtype, seed=1)
    theirs = _torch_grads(lambda xt, wt, bt: F.layer_norm(xt, (D,), wt, bt, eps=EPS), x, gamma, beta, dout)
    out, cache = fastbn.layernorm_forward(x, gamma, beta, {"eps": EPS}, backend=backend)
    dx, dgamma, dbeta = fastbn.layernorm_backward(dout, cache, backend=backend)
    _compare((out, dx, dgamma, dbeta), theirs, rtol, gamma, cache.invstd, dout)


GN_CASES = [("G1", (4, 6, 5, 5), 1), ("G3", (4, 6, 5, 5), 3), ("G=C-instance", (3, 6, 4, 7), 6),
            ("1x1-planes", (5, 8, 1, 1), 2)]


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", GN_CASES, ids=[c[0] for c in GN_CASES])
def test_group_norm_matches_torch(case, backend, dtype_name):
    _, shape, G = case
    dtype, _, rtol = DTYPES[dtype_name]
    C = shape[1]
    x, gamma, beta, dout, _, _ = _data(shape, C, dtype, seed=2)
    theirs = _torch_grads(lambda xt, wt, bt: F.group_norm(xt, G, wt, bt, eps=EPS), x, gamma, beta, dout)
    out, cache = fastbn.spatial_groupnorm_forward(x, gamma, beta, G, {"eps": EPS}, backend=backend)
    dx, dgamma, dbeta = fastbn.spatial_groupnorm_backward(dout, cache, backend=backend)
    _compare((out, dx, dgamma, dbeta), theirs, rtol, gamma, cache.invstd, dout)


RMS_SHAPES = [(32, 50), (4, 6, 33), (7, 1), (300, 256), (40, 128), (3, 20000)]


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", RMS_SHAPES, ids=["x".join(map(str, s)) for s in RMS_SHAPES])
def test_rms_norm_matches_torch(shape, backend, dtype_name):
    """F.rms_norm over the last axis, with a weight and an explicit eps."""
    dtype, _, rtol = DTYPES[dtype_name]
    D = shape[-1]
    x, gamma, _, dout, _, _ = _data(shape, D, dtype, seed=3)
    xt = torch.from_numpy(x).requires_grad_()
    wt = torch.from_numpy(gamma).requires_grad_()
    out_t = F.rms_norm(xt, (D,), wt, eps=EPS)
    out_t.backward(torch.from_numpy(dout))
    out, cache = fastbn.rmsnorm_forward(x, gamma, {"eps": EPS}, backend=backend)
    dx, dgamma = fastbn.rmsnorm_backward(dout, cache, backend=backend)
    scale = float(np.max(np.abs(gamma)) * np.max(cache.invstd) * np.max(np.abs(dout)))
    _close(out, out_t.detach().numpy(), rtol, "out")
    _close(dx, xt.grad.numpy(), rtol, "dx", scale=scale)
    _close(dgamma, wt.grad.numpy(), rtol, "dgamma", scale=float(np.max(np.abs(dout))) * x.size / D)


# ------------------------------------------------------------------------------------------
# Any rank, trailing axes, optional affine (issue 16)
# ------------------------------------------------------------------------------------------

def _channels_last(a):
    """(N, C, *spatial) -> (N, *spatial, C), C-contiguous."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def _torch_out_grads(fn, x, params, dout):
    """fn(x, *params)'s output and the gradients of x and of every parameter that is not None."""
    xt = torch.from_numpy(x).requires_grad_()
    pts = [None if p is None else torch.from_numpy(p).requires_grad_() for p in params]
    out = fn(xt, *pts)
    out.backward(torch.from_numpy(dout))
    return out.detach().numpy(), xt.grad.numpy(), [None if p is None else p.grad.numpy() for p in pts]


def _close_grads(ours, theirs, rtol, what):
    for name, a, b in zip(("dgamma", "dbeta"), ours, theirs):
        assert (a is None) == (b is None), f"{what} {name}: {a} vs {b}"
        if a is not None:
            _close(a, b, rtol, f"{what} {name}", scale=float(np.abs(b).max()) + 1.0)


AFFINE = {"affine": (True, True), "no-affine": (False, False), "no-beta": (True, False)}
RANK_SHAPES = {2: (40, 3), 3: (6, 3, 7), 4: (4, 3, 5, 6), 5: (3, 3, 4, 2, 5)}


RANK_LAYOUTS = [(rank, layout) for rank in RANK_SHAPES for layout in ("NCHW", "NHWC")
                if rank > 2 or layout == "NCHW"]  # (N, C) has one layout


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rank, layout", RANK_LAYOUTS, ids=[f"rank{r}-{lay}" for r, lay in RANK_LAYOUTS])
def test_batch_norm_of_any_rank_matches_torch(rank, layout, backend, affine):
    """F.batch_norm on (N, C, *spatial) of ranks 2-5 (BatchNorm1d/2d/3d), channels first or last,
    with and without weight and bias: outputs and gradients (rank 2 is batchnorm_forward)."""
    shape = RANK_SHAPES[rank]
    C = shape[1]
    x, gamma, beta, dout, _, _ = _data(shape, C, np.float64, seed=rank)
    use_gamma, use_beta = AFFINE[affine]
    gamma, beta = (gamma if use_gamma else None), (beta if use_beta else None)
    out_t, dx_t, grads_t = _torch_out_grads(
        lambda xt, wt, bt: F.batch_norm(xt, None, None, wt, bt, training=True, eps=EPS),
        x, (gamma, beta), dout)
    to_ours = _channels_last if layout == "NHWC" else (lambda a: a)
    param = {"mode": "train", "eps": EPS, "layout": "channels_last" if layout == "NHWC" else "NCHW"}
    if rank == 2:
        del param["layout"]
        forward, backward = fastbn.batchnorm_forward, fastbn.batchnorm_backward
    else:
        forward, backward = fastbn.spatial_batchnorm_forward, fastbn.spatial_batchnorm_backward
    out, cache = forward(to_ours(x), gamma, beta, param, backend=backend)
    dx, dgamma, dbeta = backward(to_ours(dout), cache, backend=backend)
    _close(out, to_ours(out_t), 1e-10, "out")
    _close(dx, to_ours(dx_t), 1e-10, "dx", scale=float(np.max(cache.invstd) * np.abs(dout).max()) * 2)
    _close_grads((dgamma, dbeta), grads_t, 1e-10, "batch_norm")


GN_RANK_CASES = {2: ((6, 8), 4), 3: ((4, 6, 7), 3), 5: ((2, 4, 3, 2, 5), 2)}


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rank", GN_RANK_CASES)
def test_group_norm_of_any_rank_matches_torch(rank, backend, affine):
    shape, G = GN_RANK_CASES[rank]
    C = shape[1]
    x, gamma, beta, dout, _, _ = _data(shape, C, np.float64, seed=10 + rank)
    use_gamma, use_beta = AFFINE[affine]
    gamma, beta = (gamma if use_gamma else None), (beta if use_beta else None)
    out_t, dx_t, grads_t = _torch_out_grads(
        lambda xt, wt, bt: F.group_norm(xt, G, wt, bt, eps=EPS), x, (gamma, beta), dout)
    out, cache = fastbn.spatial_groupnorm_forward(x, gamma, beta, G, {"eps": EPS}, backend=backend)
    dx, dgamma, dbeta = fastbn.spatial_groupnorm_backward(dout, cache, backend=backend)
    _close(out, out_t, 1e-10, "out")
    _close(dx, dx_t, 1e-10, "dx", scale=float(np.max(cache.invstd) * np.abs(dout).max()) * 2)
    _close_grads((dgamma, dbeta), grads_t, 1e-10, "group_norm")


LN_AXIS_CASES = [((5, 12), -1), ((5, 12), 0), ((3, 4, 5), -2), ((3, 4, 5), 1), ((2, 3, 4, 5), 1),
                 ((2, 3, 4, 5), -3), ((2, 3, 2, 3, 4), 2), ((2, 3, 2, 3, 4), -1)]


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", LN_AXIS_CASES, ids=[f"{'x'.join(map(str, s))}-axis{a}" for s, a in LN_AXIS_CASES])
def test_layer_norm_over_trailing_axes_matches_torch(case, backend, affine):
    """F.layer_norm(x, normalized_shape=x.shape[axis:]) == layernorm_forward with ln_param['axis'],
    gamma and beta of shape x.shape[axis:] (or None)."""
    shape, axis = case
    normalized = shape[axis:]
    x, _, _, dout, _, _ = _data(shape, 1, np.float64, seed=20)
    rng = np.random.default_rng(21)
    use_gamma, use_beta = AFFINE[affine]
    gamma = 1.0 + 0.5 * rng.standard_normal(normalized) if use_gamma else None
    beta = rng.standard_normal(normalized) if use_beta else None
    out_t, dx_t, grads_t = _torch_out_grads(
        lambda xt, wt, bt: F.layer_norm(xt, normalized, wt, bt, eps=EPS), x, (gamma, beta), dout)
    out, cache = fastbn.layernorm_forward(x, gamma, beta, {"eps": EPS, "axis": axis}, backend=backend)
    dx, dgamma, dbeta = fastbn.layernorm_backward(dout, cache, backend=backend)
    assert cache.mean.shape == cache.invstd.shape == shape[:axis % len(shape)]
    _close(out, out_t, 1e-10, "out")
    _close(dx, dx_t, 1e-10, "dx", scale=float(np.max(cache.invstd) * np.abs(dout).max()) * 2)
    _close_grads((dgamma, dbeta), grads_t, 1e-10, "layer_norm")


@pytest.mark.parametrize("use_gamma", [True, False], ids=["weight", "no-weight"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", LN_AXIS_CASES, ids=[f"{'x'.join(map(str, s))}-axis{a}" for s, a in LN_AXIS_CASES])
def test_rms_norm_over_trailing_axes_matches_torch(case, backend, use_gamma):
    shape, axis = case
    normalized = shape[axis:]
    x, _, _, dout, _, _ = _data(shape, 1, np.float64, seed=30)
    gamma = 1.0 + 0.5 * np.random.default_rng(31).standard_normal(normalized) if use_gamma else None
    out_t, dx_t, grads_t = _torch_out_grads(
        lambda xt, wt: F.rms_norm(xt, normalized, wt, eps=EPS), x, (gamma,), dout)
    out, cache = fastbn.rmsnorm_forward(x, gamma, {"eps": EPS, "axis": axis}, backend=backend)
    dx, dgamma = fastbn.rmsnorm_backward(dout, cache, backend=backend)
    _close(out, out_t, 1e-10, "out")
    _close(dx, dx_t, 1e-10, "dx", scale=float(np.max(cache.invstd) * np.abs(dout).max()) * 2)
    _close_grads((dgamma,), grads_t, 1e-10, "rms_norm")


# ------------------------------------------------------------------------------------------
# Running statistics under PyTorch's conventions, over several train steps
# ------------------------------------------------------------------------------------------

TORCH_MODULES = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}


@pytest.mark.parametrize("momentum", [0.1, 0.3, None], ids=["m0.1", "m0.3", "cumulative"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("rank", RANK_SHAPES)
def test_running_statistics_follow_torch_over_train_steps(rank, dtype_name, backend, momentum):
    """A torch.nn.BatchNormNd and fastbn with ``momentum = 1 - m`` (or None), ``unbiased=True``
    and ``num_batches_tracked`` keep the same running statistics over four train steps of
    differently distributed batches, then give the same eval-mode output."""
    dtype, torch_dtype, rtol = DTYPES[dtype_name]
    shape = RANK_SHAPES[rank]
    C = shape[1]
    module = getattr(torch.nn, TORCH_MODULES[rank])(C, eps=EPS, momentum=momentum, dtype=torch_dtype)
    module.train()
    param = {"mode": "train", "eps": EPS, "unbiased": True, "num_batches_tracked": 0,
             "momentum": None if momentum is None else 1.0 - momentum,
             "running_mean": np.zeros(C, dtype), "running_var": np.ones(C, dtype)}
    forward = fastbn.batchnorm_forward if rank == 2 else fastbn.spatial_batchnorm_forward
    rng = np.random.default_rng(rank)
    for step in range(4):
        x = (step - 1.5 + (step + 1) * rng.standard_normal(shape)).astype(dtype)
        with torch.no_grad():
            out_t = module(torch.from_numpy(x)).numpy()
        out, _ = forward(x, module.weight.detach().numpy(), module.bias.detach().numpy(), param,
                         backend=backend)
        _close(out, out_t, rtol, f"step {step} out")
        _close(param["running_mean"], module.running_mean.numpy(), rtol, f"step {step} running_mean")
        _close(param["running_var"], module.running_var.numpy(), rtol, f"step {step} running_var")
        assert param["num_batches_tracked"] == int(module.num_batches_tracked) == step + 1
    module.eval()
    x = rng.standard_normal(shape).astype(dtype)
    with torch.no_grad():
        out_t = module(torch.from_numpy(x)).numpy()
    param["mode"] = "test"
    out, _ = forward(x, None, None, param, backend=backend)
    _close(out, out_t, rtol, "eval out")
    assert param["num_batches_tracked"] == 4  # test mode counts nothing
