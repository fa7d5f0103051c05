"""The fused batchnorm + (residual add) + ReLU ops and batchnorm folding, beyond the registry's suites.

The registry (tests/registry.py) runs the fused ops through every parametrized suite (compiled ==
reference, thread counts, dtypes, layouts, errors, numeric gradients). Here: what is particular
to them -- the packed mask's layout, ties at exactly 0, the cache's memory, every kernel path,
PyTorch's ``relu(batch_norm(x) + residual)`` -- and :func:`fastbn.fold_batchnorm` against PyTorch's
``fuse_linear_bn_weights`` / ``fuse_conv_bn_weights``.
"""
import gc
import tracemalloc

import numpy as np
import pytest

import fastbn
from fastbn import _planner

BACKENDS = fastbn.available_backends()
needs_compiled = pytest.mark.skipif("cython" not in BACKENDS, reason="compiled kernels are not built")

# (op, layout, NCHW shape): layouts of the fused ops
LAYOUTS = [("batchnorm_relu", "NC", (64, 33)), ("spatial_batchnorm_relu", "NCHW", (6, 5, 7, 3)),
           ("spatial_batchnorm_relu", "NHWC", (6, 5, 7, 3))]
LAYOUT_IDS = [layout for _, layout, _ in LAYOUTS]


def _functions(op):
    spec = fastbn._ops.OPS[op]
    return getattr(fastbn, spec.forward), getattr(fastbn, spec.backward[0])


def _unpack(cache):
    return np.unpackbits(cache.mask, count=cache.x.size, bitorder="little").reshape(cache.x.shape)


def _param(layout, mode="train", **kw):
    return {"mode": mode, **({"layout": layout} if layout != "NC" else {}), **kw}


def _nhwc(shape, layout):
    return (shape[0], shape[2], shape[3], shape[1]) if layout == "NHWC" else shape


# ---------------------------------------------------------------------------------------------
# The ReLU and its mask
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op, layout, shape", LAYOUTS, ids=LAYOUT_IDS)
def test_ties_at_zero_have_zero_gradient_as_in_pytorch(op, layout, shape, backend):
    """Values that normalise to exactly 0 (x equal to its feature's exact mean, beta = 0, no
    residual; or a residual of exactly -beta): ReLU(0) = 0, its mask bit is 0 and no gradient
    passes, as torch.relu's backward (gradient 0 at 0)."""
    forward, backward = _functions(op)
    shape = _nhwc(shape, layout)
    C = shape[-1] if layout != "NCHW" else shape[1]
    x = np.zeros(shape)
    axis = 1 if layout == "NCHW" else x.ndim - 1
    flat = np.moveaxis(x, axis, -1).reshape(-1, C)  # a view: one row per value of each channel
    flat[0::3], flat[1::3] = -1.0, 1.0  # the rest are 0, the exact mean of (-1, 1, 0) x k
    flat[-1 - (flat.shape[0] % 3 == 1):] = 0.0  # complete pairs only: the mean stays 0
    assert np.all(x.mean(axis=tuple(a for a in range(x.ndim) if a != axis)) == 0)
    gamma, beta = np.linspace(0.5, 2.0, C), np.full(C, 0.25)
    for residual in (None, np.full(shape, -0.25)):  # x = 0 gives y = 0.25 - 0.25 = 0 exactly
        b = beta if residual is not None else np.zeros(C)
        out, cache = forward(x, gamma, b, _param(layout), residual=residual, backend=backend)
        zero = x == 0
        assert np.all(out[zero] == 0) and not np.any(np.signbit(out[zero]))
        assert not np.any(_unpack(cache)[zero])
        grads = backward(np.ones(shape), cache, backend=backend)
        if residual is not None:
            assert np.all(grads[3][zero] == 0) and np.all(grads[3][~zero & (out > 0)] == 1)
        np.testing.assert_array_equal(grads[2], (out > 0).sum(axis=tuple(
            a for a in range(x.ndim) if a != axis)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_passes_forward_and_no_gradient_back(backend):
    """A NaN output stays NaN (as np.maximum and torch.relu) with mask bit 0: no gradient
    flows back through it (torch: grad * (out > 0)); it poisons its own feature only."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6))
    x[3, 2] = np.nan
    out, cache = fastbn.batchnorm_relu_forward(x, np.ones(6), np.zeros(6), {"mode": "train"},
                                               backend=backend)
    assert np.all(np.isnan(out[:, 2]))
    assert not np.any(_unpack(cache)[:, 2])
    dx, dgamma, dbeta = fastbn.batchnorm_relu_backward(np.ones_like(x), cache, backend=backend)
    assert dbeta[2] == 0 and np.all(np.isfinite(np.delete(dx, 2, axis=1)))
    expected, _ = fastbn.batchnorm_forward(np.delete(x, 2, axis=1), np.ones(5), np.zeros(5),
                                           {"mode": "train"}, backend=backend)
    np.testing.assert_allclose(np.delete(out, 2, axis=1), np.maximum(expected, 0), rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("op, layout, shape", LAYOUTS, ids=LAYOUT_IDS)
def test_fused_equals_batchnorm_then_relu(op, layout, shape, dtype, backend):
    """out = max(batchnorm(x) + residual, 0), running statistics as the unfused op's, and the
    gradients those of the unfused op at dout * (out > 0)."""
    forward, backward = _functions(op)
    unfused = fastbn._ops.OPS[op].unfused
    bn_forward, bn_backward = _functions(unfused)
    shape = _nhwc(shape, layout)
    rng = np.random.default_rng(1)
    x, residual, dout = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    C = shape[1] if layout == "NCHW" else shape[-1]
    gamma, beta = rng.uniform(0.5, 1.5, C).astype(dtype), rng.uniform(-0.5, 0.5, C).astype(dtype)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for mode in ("train", "test"):
        p_fused, p_bn = _param(layout, mode), _param(layout, mode)
        if mode == "test":
            for p in (p_fused, p_bn):
                p.update(running_mean=np.full(C, 0.1, dtype), running_var=np.full(C, 0.9, dtype))
        out, cache = forward(x, gamma, beta, p_fused, residual=residual, backend=backend)
        bn, bn_cache = bn_forward(x, gamma, beta, p_bn, backend=backend)
        np.testing.assert_allclose(out, np.maximum(bn + residual, 0), rtol=rtol, atol=rtol)
        for key in ("running_mean", "running_var"):
            np.testing.assert_array_equal(p_fused[key], p_bn[key])
        masked = np.where(_unpack(cache).astype(bool), dout, 0).astype(dtype)
        dx, dgamma, dbeta, dres = backward(dout, cache, backend=backend)
        np.testing.assert_array_equal(dres, masked)
        for got, want in zip((dx, dgamma, dbeta), bn_backward(masked, bn_cache, backend=backend)):
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(np.max(np.abs(want))))


# Every path of the kernels (forced by name), on shapes whose rows or planes are not whole bytes
# of the mask (37, 203 values; 15 x 15 and 13 x 13 planes) and some that are: the mask is exactly
# np.packbits(out > 0, bitorder='little') of the output, and the results those of the reference.
PATH_CASES = [
    ("batchnorm_relu", "NC", (3001, 37), {"cols_path": "grid"}),
    ("batchnorm_relu", "NC", (1001, 203), {"cols_path": "grid"}),
    ("batchnorm_relu", "NC", (1001, 203), {"cols_path": "blocked"}),
    ("batchnorm_relu", "NC", (512, 256), {"cols_path": "blocked"}),
    ("batchnorm_relu", "NC", (512, 256), {"cols_path": "shared_blocks"}),
    ("batchnorm_relu", "NC", (2048, 2048), {}),
    ("batchnorm_relu", "NC", (2051, 24), {"stream_path": "always"}),
    ("spatial_batchnorm_relu", "NCHW", (16, 24, 15, 15), {"planes_path": "channels"}),
    ("spatial_batchnorm_relu", "NCHW", (16, 24, 15, 15), {"planes_path": "chunks"}),
    ("spatial_batchnorm_relu", "NCHW", (64, 3, 13, 13), {"stream_path": "always"}),
    ("spatial_batchnorm_relu", "NCHW", (8, 16, 16, 16), {"planes_path": "channels"}),
    ("spatial_batchnorm_relu", "NHWC", (8, 12, 9, 9), {}),
]


@needs_compiled
@pytest.mark.parametrize("mode", ["train", "test"])
@pytest.mark.parametrize("op, layout, shape, paths", PATH_CASES,
                         ids=[f"{c[1]}-{'x'.join(map(str, c[2]))}-{'-'.join(c[3].values()) or 'auto'}"
                              for c in PATH_CASES])
def test_every_path_writes_the_mask_of_its_output(op, layout, shape, paths, mode):
    forward, backward = _functions(op)
    shape = _nhwc(shape, layout)
    C = shape[1] if layout == "NCHW" else shape[-1]
    rng = np.random.default_rng(2)
    x, residual, dout = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    gamma = np.ones(C, np.float32)
    beta = np.zeros(C, np.float32)
    stats = {"running_mean": np.zeros(C, np.float32), "running_var": np.ones(C, np.float32)}

    def run(backend, cache=None):
        if cache is None:
            out, cache = forward(x, gamma, beta, _param(layout, mode, **stats), residual=residual,
                                 backend=backend)
            return out, cache
        return backward(dout, cache, backend=backend)

    with _planner.override(**paths):
        out, cache = run("cython")
        np.testing.assert_array_equal(cache.mask, np.packbits(out.reshape(-1) > 0, bitorder="little"))
        grads = run("cython", cache)
    out_r, _ = run("numpy")
    np.testing.assert_allclose(out, out_r, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(out_r))))
    for got, want in zip(grads, run("numpy", cache)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(want))))


@needs_compiled
@pytest.mark.parametrize("paths", [{}, {"cols_path": "blocked"}], ids=["auto", "blocked"])
@pytest.mark.parametrize("shape", [(1000, 200), (300, 1001)], ids=["1000x200", "300x1001"])
def test_mask_and_bits_do_not_depend_on_the_output_address(shape, paths):
    """out= buffers at every element offset within a cache line (streamed stores start on a
    line, so runs and blocks move with the address; mask bytes must not): the same output, mask
    and gradients."""
    rng = np.random.default_rng(5)
    x, residual = rng.standard_normal(shape, np.float32), rng.standard_normal(shape, np.float32)
    g, b = np.ones(shape[1], np.float32), np.zeros(shape[1], np.float32)
    with _planner.override(stream_path="always", **paths):
        out, cache = fastbn.batchnorm_relu_forward(x, g, b, {"mode": "train"}, residual=residual)
        buf = np.empty(x.size + 32, np.float32)
        start = (-buf.ctypes.data % 64) // 4
        for offset in range(16):
            view = buf[start + offset:start + offset + x.size].reshape(shape)
            _, c = fastbn.batchnorm_relu_forward(x, g, b, {"mode": "train"}, residual=residual,
                                                 out=view)
            np.testing.assert_array_equal(view, out)
            np.testing.assert_array_equal(c.mask, cache.mask)
    np.testing.assert_array_equal(cache.mask, np.packbits(out.reshape(-1) > 0, bitorder="little"))


# ---------------------------------------------------------------------------------------------
# The cache: the mask, packed, and nothing x-sized beyond the unfused op's
# ---------------------------------------------------------------------------------------------

def _retained(f):
    """Bytes allocated by f() and still held by what it returns, and that result."""
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        result = f()
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return held - start, result


@pytest.mark.parametrize("residual", [False, True], ids=["relu", "residual-relu"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op, layout, shape", [("batchnorm_relu", "NC", (4096, 256)),
                                               ("spatial_batchnorm_relu", "NCHW", (16, 64, 28, 28)),
                                               ("spatial_batchnorm_relu", "NHWC", (16, 64, 28, 28))],
                         ids=LAYOUT_IDS)
def test_cache_holds_at_most_one_bit_per_element_more_than_batchnorm(op, layout, shape, backend,
                                                                     residual):
    """Measured with tracemalloc: the fused forward's output and cache hold at most x.size / 8
    bytes + O(C) more than the unfused batchnorm's output and cache (the output itself is the
    same size): the mask, not the output nor the pre-activation."""
    forward, _ = _functions(op)
    bn_forward, _ = _functions(fastbn._ops.OPS[op].unfused)
    shape = _nhwc(shape, layout)
    C = shape[1] if layout == "NCHW" else shape[-1]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    gamma, beta = np.ones(C, np.float32), np.zeros(C, np.float32)
    kw = {"residual": np.ones(shape, np.float32)} if residual else {}
    # warm-up calls: the kernels keep a per-thread scratch buffer for later calls (tracemalloc
    # counts the mask whether or not its memory comes from the buffer cache)
    forward(x, gamma, beta, _param(layout), backend=backend, **kw)
    bn_forward(x, gamma, beta, _param(layout), backend=backend)
    fused_bytes, (out, cache) = _retained(
        lambda: forward(x, gamma, beta, _param(layout), backend=backend, **kw))
    bn_bytes, _ = _retained(lambda: bn_forward(x, gamma, beta, _param(layout), backend=backend))
    extra = fused_bytes - bn_bytes
    print(f"{op} {layout} {shape}: output + cache {fused_bytes} bytes, batchnorm's {bn_bytes}, "
          f"extra {extra} = x.size / 8 + {extra - x.size // 8}")
    assert cache.mask.nbytes == x.size // 8
    assert extra <= x.size // 8 + 64 * C + 4096
    for name, value in cache._asdict().items():
        if isinstance(value, np.ndarray) and name not in ("x", "mask"):
            assert value.nbytes <= 8 * C, name
    assert cache.x is x  # x itself (C-contiguous, float32), not a copy


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("residual, error, message", [
    (np.zeros((5, 3)), ValueError, r"residual must have the shape of x, \(6, 3\), got shape \(5, 3\)"),
    ([[0.0] * 3] * 6, TypeError, "residual must be a numpy.ndarray, got list"),
    (np.zeros((6, 3), complex), TypeError, "residual must have a real floating"),
], ids=["shape", "list", "complex"])
def test_bad_residual_raises_and_changes_nothing(backend, residual, error, message):
    x = np.random.default_rng(0).standard_normal((6, 3))
    param = {"mode": "train"}
    with pytest.raises(error, match=message):
        fastbn.batchnorm_relu_forward(x, np.ones(3), np.zeros(3), param, residual=residual,
                                      backend=backend)
    assert param == {"mode": "train"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_with_a_bad_mask_is_rejected(backend):
    x = np.random.default_rng(0).standard_normal((6, 3))
    _, cache = fastbn.batchnorm_relu_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    for mask in (cache.mask[:-1], cache.mask.astype(np.int16), None):
        with pytest.raises(ValueError, match="cache.mask must be a C-contiguous uint8 array"):
            fastbn.batchnorm_relu_backward(np.ones_like(x), cache._replace(mask=mask), backend=backend)
    with pytest.raises(ValueError, match="cache comes from batchnorm_relu_forward"):
        fastbn.batchnorm_backward(np.ones_like(x), cache, backend=backend)


# ---------------------------------------------------------------------------------------------
# PyTorch: relu(batch_norm(x) + residual)
# ---------------------------------------------------------------------------------------------

TORCH_DTYPES = {"float64": (np.float64, 1e-10), "float32": (np.float32, 1e-4)}


@pytest.mark.parametrize("residual", [False, True], ids=["relu", "residual-relu"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("dtype_name", TORCH_DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op, layout, shape", LAYOUTS, ids=LAYOUT_IDS)
def test_matches_torch_relu_of_batch_norm_plus_residual(op, layout, shape, backend, dtype_name,
                                                        mode, residual):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    dtype, rtol = TORCH_DTYPES[dtype_name]
    C = shape[1]
    rng = np.random.default_rng(3)
    x, res, dout = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    gamma, beta = rng.uniform(0.5, 1.5, C).astype(dtype), rng.uniform(-0.5, 0.5, C).astype(dtype)
    rm, rv = (0.2 * rng.standard_normal(C)).astype(dtype), rng.uniform(0.5, 1.5, C).astype(dtype)
    memory_format = torch.channels_last if layout == "NHWC" else torch.contiguous_format
    xt = torch.from_numpy(x).to(memory_format=memory_format).requires_grad_()
    rt = torch.from_numpy(res).requires_grad_()
    wt, bt = torch.from_numpy(gamma).requires_grad_(), torch.from_numpy(beta).requires_grad_()
    y = F.batch_norm(xt, torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy()), wt, bt,
                     training=mode == "train", momentum=0.1, eps=1e-5)
    yt = F.relu(y + rt if residual else y)
    yt.backward(torch.from_numpy(dout))
    theirs = [yt.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()]
    if residual:
        theirs.append(rt.grad.numpy())

    to_ours = (lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))) if layout == "NHWC" else (
        lambda a: a)
    from_ours = (lambda a: a.transpose(0, 3, 1, 2)) if layout == "NHWC" else (lambda a: a)
    forward, backward = _functions(op)
    param = _param(layout, "train" if mode == "train" else "test", running_mean=rm.copy(),
                   running_var=rv.copy())
    out, cache = forward(to_ours(x), gamma, beta, param, backend=backend,
                         residual=to_ours(res) if residual else None)
    grads = backward(to_ours(dout), cache, backend=backend)
    ours = [from_ours(out), from_ours(grads[0]), grads[1], grads[2]]
    if residual:
        ours.append(from_ours(grads[3]))
    dx_scale = float(np.max(gamma) * np.max(cache.invstd) * np.max(np.abs(dout)))
    for name, a, b in zip(("out", "dx", "dgamma", "dbeta", "dresidual"), ours, theirs):
        scale = max(float(np.max(np.abs(b))), dx_scale if name == "dx" else 0.0)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale, err_msg=name)


# ---------------------------------------------------------------------------------------------
# fold_batchnorm
# ---------------------------------------------------------------------------------------------

FOLD_CASES = [  # (name, weight shape, channel_axis, the layer as a function of (x, w, b))
    ("linear", (6, 5), 0, (7, 5), lambda x, w, b: x @ w.T + b),
    ("cs231n-affine", (5, 6), -1, (7, 5), lambda x, w, b: x @ w + b),
    ("conv", (6, 3, 2, 2), 0, (2, 3, 5, 5), None),
    ("conv-transpose", (3, 6, 2, 2), 1, (2, 3, 5, 5), None),
]


def _conv(torch, name):
    F = torch.nn.functional
    if name == "conv":
        return lambda x, w, b: F.conv2d(x, w, b)
    return lambda x, w, b: F.conv_transpose2d(x, w, b)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("dtype_name", TORCH_DTYPES)
@pytest.mark.parametrize("case", FOLD_CASES, ids=[c[0] for c in FOLD_CASES])
def test_fold_batchnorm_equals_torch_fusion_and_the_unfolded_pair(case, dtype_name, bias):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

    name, w_shape, axis, x_shape, layer = case
    dtype = TORCH_DTYPES[dtype_name][0]
    rtol = 1e-12 if dtype == np.float64 else 1e-6
    rng = np.random.default_rng(4)
    w = rng.standard_normal(w_shape).astype(dtype)
    C = w_shape[axis]
    b = rng.standard_normal(C).astype(dtype) if bias else None
    gamma, beta = rng.uniform(0.5, 1.5, C).astype(dtype), rng.standard_normal(C).astype(dtype)
    bn_param = {"mode": "test", "eps": 1e-3, "running_mean": rng.standard_normal(C).astype(dtype),
                "running_var": rng.uniform(0.5, 2.0, C).astype(dtype)}
    w2, b2 = fastbn.fold_batchnorm(w, b, gamma, beta, bn_param, channel_axis=axis)
    assert w2.dtype == b2.dtype == dtype and w2.shape == w.shape and b2.shape == (C,)

    t = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
    args = (t(bn_param["running_mean"]), t(bn_param["running_var"]), 1e-3, t(gamma), t(beta))
    if name == "linear":
        tw, tb = fuse_linear_bn_weights(t(w), t(b) if bias else torch.zeros(C, dtype=t(w).dtype),
                                        *args)
    elif name == "cs231n-affine":  # (D, M): PyTorch's Linear weight is its transpose
        tw, tb = fuse_linear_bn_weights(t(np.ascontiguousarray(w.T)),
                                        t(b) if bias else torch.zeros(C, dtype=t(w).dtype), *args)
        tw = tw.T
    else:
        tw, tb = fuse_conv_bn_weights(t(w), t(b), *args, transpose=name == "conv-transpose")
    for ours, theirs in ((w2, tw), (b2, tb)):
        theirs = theirs.detach().numpy()
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * float(np.max(np.abs(theirs))))

    # The folded layer equals the layer followed by test-mode batchnorm (channels on axis 1).
    x = rng.standard_normal(x_shape).astype(dtype)
    if layer is None:
        conv = _conv(torch, name)
        layer = lambda x, w, b: conv(t(x), t(w), t(b)).numpy()  # noqa: E731
    y = layer(x, w, np.zeros(C, dtype) if b is None else b)
    bn = fastbn.batchnorm_forward if y.ndim == 2 else fastbn.spatial_batchnorm_forward
    expected, _ = bn(y, gamma, beta, bn_param)
    got = layer(x, w2, b2)
    np.testing.assert_allclose(got, expected, rtol=10 * rtol, atol=10 * rtol * float(np.max(np.abs(expected))))


@pytest.mark.parametrize("kwargs, bn_param, error, message", [
    ({"channel_axis": 2}, None, ValueError, r"channel_axis must be in \[-2, 1\]"),
    ({"channel_axis": 0.0}, None, TypeError, "channel_axis must be an integer"),
    ({}, {"mode": "test"}, ValueError, r"bn_param\['running_mean'\] is missing"),
    ({}, {"running_mean": np.zeros(4), "running_var": np.ones(3)}, ValueError,
     r"bn_param\['running_mean'\] must hold one value per output channel \(3"),
    ({}, {"running_mean": np.zeros(3), "running_var": np.ones(3), "eps": -1.0}, ValueError,
     r"bn_param\['eps'\] must be a real number"),
], ids=["axis", "axis-type", "no-running-stats", "running-shape", "eps"])
def test_fold_batchnorm_rejects_bad_input(kwargs, bn_param, error, message):
    bn_param = bn_param or {"running_mean": np.zeros(3), "running_var": np.ones(3)}
    with pytest.raises(error, match=message):
        fastbn.fold_batchnorm(np.ones((3, 4)), None, np.ones(3), np.zeros(3), bn_param, **kwargs)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_fold_batchnorm_of_an_ndarray_subclass_weight_scales_per_channel():
    """np.matrix multiplies as a matrix product; the fold scales per channel all the same."""
    param = {"running_mean": np.zeros(3), "running_var": np.array([1.0, 4.0, 9.0]), "eps": 0.0}
    w = np.arange(12.0).reshape(3, 4) + 1
    expected, _ = fastbn.fold_batchnorm(w, None, None, None, param)
    folded, _ = fastbn.fold_batchnorm(np.asmatrix(w), None, None, None, param)
    assert type(folded) is np.ndarray
    np.testing.assert_array_equal(folded, expected)
    np.testing.assert_allclose(expected, w / np.array([[1.0], [2.0], [3.0]]), rtol=1e-15)
