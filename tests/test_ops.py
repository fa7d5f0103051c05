"""Every op: compiled == reference, numeric gradients, dtypes, layouts, thread determinism."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastbn
from registry import (DTYPES, OPS, ROLE_SHAPES, RTOL, VALID_CASE_IDS, VALID_CASES, assert_close,
                      copy_param)

needs_compiled = pytest.mark.skipif(
    "cython" not in fastbn.available_backends(), reason="compiled kernels are not built"
)

DTYPE_IDS = [np.dtype(d).name for d in DTYPES]


def test_every_op_of_the_table_is_registered():
    """A row added to the op table (fastbn._ops) gets test shapes and cases in the registry."""
    assert {op.name for op in OPS} == set(fastbn._ops.OPS) == set(ROLE_SHAPES)


def _run(op, x, gamma, beta, param, backend, dout_seed=1, which=0):
    out, cache = op.forward(x, gamma, beta, param, backend=backend)
    dout = np.random.default_rng(dout_seed).standard_normal(x.shape).astype(x.dtype)
    grads = op.backward(dout, cache, backend=backend, which=which)
    return out, cache, grads


@needs_compiled
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op, shape", VALID_CASES, ids=VALID_CASE_IDS)
def test_compiled_matches_reference(op, shape, dtype):
    x, gamma, beta, param_c = op.make(shape, dtype)
    _, _, _, param_r = op.make(shape, dtype)
    out_c, cache_c, grads_c = _run(op, x, gamma, beta, param_c, "cython")
    out_r, cache_r, grads_r = _run(op, x, gamma, beta, param_r, "numpy")
    assert_close(out_c, out_r, dtype, "out")
    assert_close(cache_c.mean, cache_r.mean, dtype, "mean")
    assert_close(cache_c.invstd, cache_r.invstd, dtype, "invstd")
    dout = np.random.default_rng(1).standard_normal(shape)
    dx_scale = float(np.max(np.abs(dout)) * np.max(np.abs(gamma)) * np.max(cache_r.invstd))
    assert len(grads_c) == len(grads_r) == op.n_grads
    if op.spec.relu:
        # An output within rounding of 0 may be masked by one backend and not by the other: the
        # masks agree wherever the outputs are clearly not 0, and the gradients are compared on
        # the same cache (the same mask).
        _assert_masks_agree(out_c, cache_c, out_r, cache_r, dtype)
        grads_r = op.backward(dout.astype(dtype), cache_c, backend="numpy")
    for name, got in op.grads(grads_c).items():
        assert_close(got, op.grads(grads_r)[name], dtype, name,
                     scale=dx_scale if name == "dx" else 0.0)
    if op.uses_running_stats:
        for key in ("running_mean", "running_var"):
            assert_close(param_c[key], param_r[key], param_r[key].dtype, key)


def _assert_masks_agree(out_c, cache_c, out_r, cache_r, dtype):
    unpack = lambda c: np.unpackbits(c.mask, count=c.x.size, bitorder="little").reshape(c.x.shape)
    np.testing.assert_array_equal(unpack(cache_r), out_r > 0)  # the mask is np.packbits' of out > 0
    np.testing.assert_array_equal(unpack(cache_c), out_c > 0)
    assert cache_c.mask.shape == cache_r.mask.shape == ((out_c.size + 7) // 8,)
    differ = unpack(cache_c) != unpack(cache_r)
    tiny = 10 * RTOL[np.dtype(dtype)] * max(float(np.max(np.abs(out_r), initial=0.0)), 1.0)
    assert np.all(np.maximum(out_c, out_r)[differ] <= tiny)


# (M, D) arrays with enough columns: the compiled kernels work by blocks of columns over all rows
# (statistics, then the elementwise sweep, while a block is in cache). Arrays of 8 MiB or more:
# (2048, 2048); (1500, 1104), last block narrower than the others; (1024, 2064), forward
# unblocked and backward blocked; (3, 1048592), three rows; (4100, 528), blocks of rows of 448
# bytes, whose backward the threads share (uneven chunks of rows). Smaller ones: (300, 1001), rows
# not a whole number of cache lines (masked partial vectors).
BLOCKED_CASES = [(2048, 2048, np.float32), (1500, 1104, np.float64), (1024, 2064, np.float32),
                 (3, 1048592, np.float32), (4100, 528, np.float32), (4100, 528, np.float64),
                 (300, 1001, np.float32)]


@needs_compiled
@pytest.mark.parametrize("mode", ["train", "test"])
@pytest.mark.parametrize("M, D, dtype", BLOCKED_CASES,
                         ids=[f"{m}x{d}-{np.dtype(t).name}" for m, d, t in BLOCKED_CASES])
def test_column_blocked_batchnorm_matches_reference(M, D, dtype, mode):
    op = next(op for op in OPS if op.name == "batchnorm" and op.mode == mode)
    test_compiled_matches_reference(op, (M, D), dtype)


@needs_compiled
@pytest.mark.parametrize("running_dtype", [np.float32, np.float64, np.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name, shape, layout", [("batchnorm", (40, 37), None),
                                                 ("spatial_batchnorm", (3, 5, 4, 7), "NCHW"),
                                                 ("spatial_batchnorm", (3, 4, 7, 5), "NHWC")])
def test_test_mode_statistics_have_the_reference_bits(name, shape, layout, dtype, running_dtype):
    # the compiled forward derives mean, invstd and gamma * invstd in one kernel call when the
    # running statistics are in the computation dtype, else as the reference does
    rng = np.random.default_rng(7)
    C = shape[-1] if layout != "NCHW" else shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    running_mean = rng.standard_normal(C).astype(running_dtype)
    running_var = rng.uniform(0.1, 3.0, C).astype(running_dtype)
    results = {}
    for backend in ("cython", "numpy"):
        param = {"mode": "test", "eps": 1e-3, **({"layout": layout} if layout else {}),
                 "running_mean": running_mean.copy(), "running_var": running_var.copy()}
        _, cache = getattr(fastbn, f"{name}_forward")(x, gamma, beta, param, backend=backend)
        results[backend] = (cache.mean, cache.invstd)
    for a, b in zip(results["cython"], results["numpy"]):
        np.testing.assert_array_equal(a, b)
    if running_dtype == dtype:  # the kernel's scale: gamma * invstd in the dtype
        mean, invstd, scale = (np.empty(C, dtype) for _ in range(3))
        fastbn._backends.kernels().test_coefficients(running_mean, running_var, gamma, 1e-3, mean,
                                                     invstd, scale)
        np.testing.assert_array_equal(scale, gamma * results["numpy"][1])


@needs_compiled
@pytest.mark.parametrize("backend_fwd", ["cython", "numpy"])
@pytest.mark.parametrize("op", OPS, ids=[op.id for op in OPS])
def test_cache_is_accepted_by_either_backend(op, backend_fwd):
    shape = op.shapes[2]
    x, gamma, beta, param = op.make(shape)
    _, cache = op.forward(x, gamma, beta, param, backend=backend_fwd)
    dout = np.random.default_rng(3).standard_normal(shape)
    for a, b in zip(op.backward(dout, cache, backend="cython"), op.backward(dout, cache, backend="numpy")):
        assert_close(a, b, np.float64)


@pytest.mark.parametrize("op", [op for op in OPS if len(op.backward_names) > 1],
                         ids=[op.id for op in OPS if len(op.backward_names) > 1])
@pytest.mark.parametrize("backend", fastbn.available_backends())
def test_backward_alt_matches_backward(op, backend):
    x, gamma, beta, param = op.make((64, 33))
    _, cache = op.forward(x, gamma, beta, param, backend=backend)
    dout = np.random.default_rng(3).standard_normal(x.shape)
    for a, b in zip(op.backward(dout, cache, backend=backend, which=0),
                    op.backward(dout, cache, backend=backend, which=1)):
        assert_close(a, b, np.float64)


# ---------------------------------------------------------------------------------------------
# Numeric gradient checks (centred differences, float64)
# ---------------------------------------------------------------------------------------------



def _numeric_grad(f, a, h=1e-5):
    """Centred-difference gradient of the scalar f() with respect to array a (modified in place)."""
    grad = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + h
        fp = f()
        a[i] = old - h
        fm = f()
        a[i] = old
        grad[i] = (fp - fm) / (2 * h)
    return grad


def _rel_error(a, b):
    return np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b)))


GRAD_CASES = [(op, which) for op in OPS for which in range(len(op.backward_names))]


@pytest.mark.parametrize("backend", fastbn.available_backends())
@pytest.mark.parametrize("op, which", GRAD_CASES,
                         ids=[f"{op.id}-{op.backward_names[w]}" for op, w in GRAD_CASES])
def test_numeric_gradient(op, which, backend):
    shape = op.shape("grad")
    _check_numeric_gradient(op, which, backend, shape, np.random.default_rng(5).standard_normal(shape))


BN_GRAD_CASES = [(op, which) for op, which in GRAD_CASES if op.name == "batchnorm"]


@pytest.mark.parametrize("backend", fastbn.available_backends())
@pytest.mark.parametrize("op, which", BN_GRAD_CASES,
                         ids=[f"{op.id}-{op.backward_names[w]}" for op, w in BN_GRAD_CASES])
def test_numeric_gradient_column_blocks(op, which, backend):
    """(5, 36) has enough columns for the compiled kernels' column blocks (two or three, after
    the output's first cache-line boundary). dout is non-zero in three columns only, the first,
    one near the middle and the last, which lie in different blocks: a loss over all 36 columns
    is too large for centred differences to resolve 1e-8 (the NumPy reference misses it too), and
    a column's gradient involves only that column."""
    shape = (5, 36)
    dout = np.zeros(shape)
    dout[:, [0, 17, 35]] = np.random.default_rng(5).standard_normal((5, 3))
    _check_numeric_gradient(op, which, backend, shape, dout)


# Ranks other than the role shapes' 4: (N, C, L) and (N, C, D, H, W) for the spatial ops in both
# layouts, (N, C) for groupnorm (G = 4: groups of several values).
RANK_SHAPES = {"spatial_batchnorm": ((4, 2, 3), (2, 2, 3, 1, 2)),
               "groupnorm": ((3, 4, 5), (3, 16), (2, 4, 2, 1, 3))}
RANK_GRAD_CASES = [(op, shape) for op in OPS if op.mode == "train" and not op.param_broadcast
                   and op.name in RANK_SHAPES for shape in RANK_SHAPES[op.name]]


@pytest.mark.parametrize("backend", fastbn.available_backends())
@pytest.mark.parametrize("op, shape", RANK_GRAD_CASES,
                         ids=[f"{op.id}-{'x'.join(map(str, s))}" for op, s in RANK_GRAD_CASES])
def test_numeric_gradient_of_other_ranks(op, shape, backend):
    """Centred differences agree to 1e-7 of the largest gradient (entries near 0 make the
    elementwise relative error of _check_numeric_gradient meaningless on these small shapes)."""
    x, gamma, beta, param = op.make(shape, seed=4)
    dout = np.random.default_rng(6).standard_normal(shape)

    def loss():
        out, _ = op.forward(x, gamma, beta, copy_param(param), backend=backend)
        return float(np.sum(out * dout))

    _, cache = op.forward(x, gamma, beta, copy_param(param), backend=backend)
    for grad, wrt in zip(op.backward(dout, cache, backend=backend), (x, gamma, beta)):
        numeric = _numeric_grad(loss, wrt)
        np.testing.assert_allclose(grad, numeric, rtol=0, atol=1e-7 * np.max(np.abs(numeric)))


def _check_numeric_gradient(op, which, backend, shape, dout):
    x, gamma, beta, param = op.make(shape, seed=4)
    kw = {"residual": op.residual_for(x)} if op.residual else {}

    def loss():
        out, _ = op.forward(x, gamma, beta, copy_param(param), backend=backend, **kw)
        return float(np.sum(out * dout))

    out, cache = op.forward(x, gamma, beta, copy_param(param), backend=backend, **kw)
    if op.spec.relu:  # the ReLU's kink: no output within the differences' reach of 0
        assert np.min(np.abs(out[out != 0]), initial=1.0) > 1e-3 and np.mean(out == 0) > 0.1
    grads = op.grads(op.backward(dout, cache, backend=backend, which=which))
    assert len(grads) == op.n_grads
    # (the ReLU zeroes some terms of dx: smaller entries, relatively noisier differences)
    assert _rel_error(grads["dx"], _numeric_grad(loss, x)) < (1e-7 if op.spec.relu else 1e-8)
    assert _rel_error(grads["dgamma"], _numeric_grad(loss, gamma)) < 1e-9
    if op.spec.beta:
        assert _rel_error(grads["dbeta"], _numeric_grad(loss, beta)) < 1e-9
    if op.residual:
        assert _rel_error(grads["dresidual"], _numeric_grad(loss, kw["residual"])) < 1e-9


# ---------------------------------------------------------------------------------------------
# dtypes, layouts, inputs untouched, threads
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", fastbn.available_backends())
@pytest.mark.parametrize("in_dtype, out_dtype", [
    (np.float16, np.float16), (np.float32, np.float32), (np.float64, np.float64),
    (np.int32, np.float64), (np.int64, np.float64), (np.uint8, np.float64), (np.bool_, np.float64),
], ids=["float16", "float32", "float64", "int32", "int64", "uint8", "bool"])
@pytest.mark.parametrize("op", OPS, ids=[op.id for op in OPS])
def test_dtype_rules(op, backend, in_dtype, out_dtype):
    shape = op.shapes[2]
    x, gamma, beta, param = op.make(shape)
    x = (x > 3) if in_dtype is np.bool_ else (x * 10).astype(in_dtype)
    out, cache = op.forward(x, gamma, beta, param, backend=backend)
    grads = op.backward(np.ones(shape, dtype=in_dtype), cache, backend=backend)
    assert {a.dtype for a in (out, *grads)} == {np.dtype(out_dtype)}
    compute = np.float32 if in_dtype is np.float16 else out_dtype
    assert cache.x.dtype == np.dtype(compute)
    # Same as computing on the input converted to the computation dtype, then casting.
    x_c, gamma_c, beta_c, param_c = op.make(shape)
    expected, _ = op.forward(x.astype(compute), gamma_c.astype(compute), beta_c.astype(compute),
                             param_c, backend=backend)
    np.testing.assert_array_equal(out, expected.astype(out_dtype))


def _layouts(x):
    """The same values in other memory layouts."""
    yield "fortran", np.asfortranarray(x)
    flipped = np.flip(x.copy(), axis=0)
    yield "negative-stride", np.flip(flipped, axis=0)
    wide = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
    wide[..., ::2] = x
    yield "strided", wide[..., ::2]
    ro = x.copy()
    ro.flags.writeable = False
    yield "read-only", ro


@pytest.mark.parametrize("backend", fastbn.available_backends())
@pytest.mark.parametrize("op", OPS, ids=[op.id for op in OPS])
def test_memory_layouts_give_same_result(op, backend):
    shape = op.shapes[2]
    x, gamma, beta, param = op.make(shape)
    expected, _ = op.forward(x, gamma, beta, copy_param(param), backend=backend)
    for name, x_l in _layouts(x):
        out, cache = op.forward(x_l, gamma, beta, copy_param(param), backend=backend)
        np.testing.assert_array_equal(out, expected, err_msg=name)
        dout = np.asfortranarray(np.ones_like(x))
        op.backward(dout, cache, backend=backend)


def _param_variants(a, row_ok):
    """gamma, beta or a running statistic as other arrays holding the same values: validation takes
    a fast path for the usual C-contiguous (C,) array in the computation dtype, not for these."""
    yield from _layouts(a)
    if row_ok:
        yield "row", a.reshape(1, -1)
    yield "float32", a.astype(np.float32)


@pytest.mark.parametrize("backend", fastbn.available_backends())
@pytest.mark.parametrize("op", OPS, ids=[op.id for op in OPS])
def test_parameter_layouts_give_same_result(op, backend):
    shape = op.shapes[2]
    x, gamma, beta, param = op.make(shape, np.float64)
    exact = lambda a: a.astype(np.float32).astype(np.float64)  # values float32 holds exactly
    gamma, beta = exact(gamma), exact(beta)
    for key in ("running_mean", "running_var"):
        if key in param:
            param[key] = exact(param[key])
    dout = np.random.default_rng(3).standard_normal(shape)
    expected, cache = op.forward(x, gamma, beta, copy_param(param), backend=backend)
    expected_grads = op.backward(dout, cache, backend=backend)
    row_ok = gamma.ndim == 1 and op.layout in ("NC", "ND") and x.ndim == 2
    for (name, g), (_, b) in zip(_param_variants(gamma, row_ok), _param_variants(beta, row_ok)):
        out, cache = op.forward(x, g, b, copy_param(param), backend=backend)
        np.testing.assert_array_equal(out, expected, err_msg=name)
        for got, want in zip(op.backward(dout, cache, backend=backend), expected_grads):
            np.testing.assert_array_equal(np.reshape(got, np.shape(want)), want, err_msg=name)
    if op.uses_running_stats and op.mode == "test":  # (train mode: test_params checks updates)
        for key in ("running_mean", "running_var"):
            for name, r in _param_variants(param[key], row_ok=True):
                out, _ = op.forward(x, gamma, beta, {**param, key: r}, backend=backend)
                np.testing.assert_array_equal(out, expected, err_msg=f"{key}: {name}")


@pytest.mark.parametrize("backend", fastbn.available_backends())
@pytest.mark.parametrize("op", OPS, ids=[op.id for op in OPS])
def test_inputs_are_not_modified(op, backend):
    shape = op.shapes[2]
    x, gamma, beta, param = op.make(shape)
    copies = [a.copy() for a in (x, gamma, beta)]
    out, cache = op.forward(x, gamma, beta, param, backend=backend)
    dout = np.random.default_rng(1).standard_normal(shape)
    dout_copy = dout.copy()
    grads = op.backward(dout, cache, backend=backend)
    for a, c in zip((x, gamma, beta, dout), copies + [dout_copy]):
        np.testing.assert_array_equal(a, c)
    for result in (out, *grads):
        for given in (x, gamma, beta, dout):
            assert not np.shares_memory(result, given)


THREAD_CASES = [(op, shape) for op in OPS for shape in op.role_shapes("bits")]


@needs_compiled
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op, shape", THREAD_CASES,
                         ids=[f"{op.id}-{'x'.join(map(str, shape))}" for op, shape in THREAD_CASES])
def test_thread_count_does_not_change_bits(op, shape, dtype):
    results = []
    for n in (1, 2):
        x, gamma, beta, param = op.make(shape, dtype)
        with threadpool_limits(n, user_api="openmp"):
            assert fastbn.get_num_threads() <= n
            out, cache, grads = _run(op, x, gamma, beta, param, "cython")
        results.append((out, cache.mean, cache.invstd, *grads,
                        *((cache.mask,) if cache.mask is not None else ())))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16], ids=["float64", "float32", "float16"])
@pytest.mark.parametrize("backend", fastbn.available_backends())
@pytest.mark.parametrize("op", OPS, ids=[op.id for op in OPS])
def test_out_buffers_are_filled_and_returned(op, backend, dtype):
    shape = op.shapes[2]
    x, gamma, beta, param = op.make(shape, dtype)
    expected, cache = op.forward(x, gamma, beta, copy_param(param), backend=backend)
    dout = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    expected_dx = op.backward(dout, cache, backend=backend)[0]
    out = np.full(shape, np.nan, dtype=dtype)
    result, cache = op.forward(x, gamma, beta, copy_param(param), backend=backend, out=out)
    assert result is out
    np.testing.assert_array_equal(out, expected)
    dx_out = np.full(shape, np.nan, dtype=dtype)
    dx = getattr(fastbn, op.backward_names[0])(dout, cache, backend=backend, out=dx_out)[0]
    assert dx is dx_out
    np.testing.assert_array_equal(dx_out, expected_dx)


@pytest.mark.parametrize("bad_out, message", [
    (lambda x: np.empty(x.shape[:-1] + (x.shape[-1] + 1,), x.dtype), "shape"),
    (lambda x: np.empty(x.shape, np.float32), "dtype"),
    (lambda x: np.empty(x.shape[::-1], x.dtype).T, "C-contiguous"),
    (lambda x: x, "share memory"),
    (lambda x: [0.0] * x.shape[0], "numpy.ndarray"),
], ids=["shape", "dtype", "fortran", "aliases-x", "list"])
@pytest.mark.parametrize("backend", fastbn.available_backends())
def test_bad_out_buffer_raises(backend, bad_out, message):
    op = OPS[0]
    x, gamma, beta, param = op.make((6, 5))
    with pytest.raises((ValueError, TypeError), match=message):
        fastbn.batchnorm_forward(x, gamma, beta, param, backend=backend, out=bad_out(x))
    assert "running_mean" not in param  # nothing was updated by the failing call


def _inside(buffer, a):
    """A copy of `a` placed at the start of `buffer` (a view of it, a's shape and values)."""
    view = np.frombuffer(buffer, a.dtype, a.size).reshape(a.shape)
    view[...] = a
    return view


@pytest.mark.parametrize("backend", fastbn.available_backends())
@pytest.mark.parametrize("op", OPS, ids=[op.id for op in OPS])
def test_out_sharing_memory_with_what_the_call_reads_raises(op, backend):
    """out= over gamma, beta or a running statistic (forward), or over the cache's gamma, mean,
    invstd or mask (backward): the kernels would overwrite values they still read (a layernorm
    dx written over the cache's gamma came out 22 off, and gamma was changed). Both backends
    refuse such an out, and the failing call changes nothing."""
    shape = op.shapes[2]
    x, gamma, beta, param = op.make(shape)
    param = copy_param(param)
    _, cache = op.forward(x, gamma, beta, param, backend=backend)  # train mode: running stats now
    inputs = {"gamma": gamma, "beta": beta if op.spec.beta else None,
              "running_mean": param.get("running_mean"), "running_var": param.get("running_var")}
    for name, value in inputs.items():
        if value is None:
            continue
        buffer = bytearray(x.nbytes)
        args, p = {"gamma": gamma, "beta": beta}, copy_param(param)
        placed = _inside(buffer, value)
        if name in args:
            args[name] = placed
        else:
            p[name] = placed
        before = copy_param(p)
        out = np.frombuffer(buffer, x.dtype).reshape(x.shape)
        with pytest.raises(ValueError, match="out must not share memory with the inputs"):
            op.forward(x, args["gamma"], args["beta"], p, backend=backend, out=out)
        np.testing.assert_array_equal(placed, value)
        assert p.keys() == before.keys()
        for key in ("running_mean", "running_var"):
            if key in p:
                np.testing.assert_array_equal(p[key], before[key])
    dout = np.random.default_rng(1).standard_normal(shape)
    backward = getattr(fastbn, op.backward_names[0])
    for name in ("gamma", "mean", "invstd", "mask"):
        value = getattr(cache, name)
        if value is None:
            continue
        buffer = bytearray(x.nbytes)
        edited = cache._replace(**{name: _inside(buffer, value)})
        with pytest.raises(ValueError, match="out must not share memory with the inputs"):
            backward(dout, edited, backend=backend, out=np.frombuffer(buffer, x.dtype).reshape(x.shape))
        np.testing.assert_array_equal(getattr(edited, name), value)


@pytest.mark.parametrize("backend", fastbn.available_backends())
@pytest.mark.parametrize("op", OPS, ids=[op.id for op in OPS])
def test_big_endian_input_gives_native_outputs_and_a_cache_its_backward_takes(op, backend):
    """x of any byte order: the output in the native dtype of the same kind and size (float16
    included), and the forward's cache goes through the backward."""
    x, gamma, beta, param = op.make(op.shape("small"), np.float16, seed=2)
    swapped = x.astype(x.dtype.newbyteorder(">"))
    out, cache = op.forward(swapped, gamma, beta, copy_param(param), backend=backend)
    native, _ = op.forward(x, gamma, beta, copy_param(param), backend=backend)
    assert out.dtype == np.dtype(np.float16) and out.dtype.isnative
    np.testing.assert_array_equal(out, native)
    grads = op.backward(np.ones_like(x), cache, backend=backend)
    assert grads[0].dtype == np.dtype(np.float16)
