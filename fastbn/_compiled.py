"""The compiled backend: run validated input through the kernels of :mod:`fastbn._kernels`.

The op's row of the op table (:mod:`fastbn._ops`) says which kernel family takes x, in which
free reshape (``OpSpec.view``), and whether rows are centred.
"""

import functools

import numpy as np

from fastbn import _backends, _memory, _planner
from fastbn._moments import Moments
from fastbn._ops import OPS
from fastbn._results import finish_backward, finish_forward, test_statistics
from fastbn._threads import threads_for

try:  # built with the kernels, and used only when they are
    from fastbn._arrays import (aligned, aligned_as, as_flat, disjoint_flat, empty_vector, is_flat,
                                shaped)
except ImportError:
    pass

_FLOAT64, _UINT8 = np.dtype(np.float64), np.dtype(np.uint8)


def _buffer(out, like, shape, page_shift=0):
    """Where a kernel writes its output of like's shape (it gets ``shaped(result, like.shape)``),
    in the caller's `shape`: the caller's ``out=`` array when the kernel can write into it (same
    dtype, aligned), else a new array, which owns its data, from the buffer cache, `page_shift`
    bytes past like's offset in a page (finish_* then copy it into `out`)."""
    if out is not None and out.dtype == like.dtype and out.flags.aligned:
        return out
    return _memory.empty_like(like, page_shift, shape)


@functools.lru_cache(maxsize=8)
def _zeros(n, dtype):
    """A read-only vector of n zeros in `dtype`: the shift the kernels add for an op without beta
    (RMSNorm), made once per size."""
    zeros = np.zeros(n, dtype)
    zeros.flags.writeable = False
    return zeros


def _new_mask(n):
    """A uint8 array of n bytes for a packed ReLU mask (from the buffer cache when it is large),
    its last byte zeroed (the bits past the last element stay 0; the kernels write every other
    bit)."""
    mask = _memory.empty((n,), _UINT8)
    if n:
        mask[n - 1] = 0
    return mask


def forward(p, moments=None):
    """Forward pass of any operation on a :class:`~fastbn._validation.Prepared` input; a
    train-mode batchnorm normalises with given `moments` (a checked Moments) when there are."""
    kernels = _backends.kernels()
    spec = OPS[p.op]
    family, view_shape, dtype = p.shapes.family, p.shapes.view_shape, p.x.dtype
    x = aligned_as(p.x, view_shape)
    gamma = aligned(p.gamma)
    beta = aligned(p.beta) if spec.beta else _zeros(gamma.size, dtype)
    result = _buffer(p.out, x, p.x.shape)
    out = shaped(result, view_shape)
    n_threads = threads_for(x.size)
    if family == "rows":
        R = view_shape[0]
        mean = empty_vector(R, dtype)
        invstd = empty_vector(R, dtype)
        kernels.rows_forward_train(x, gamma, beta, p.groups, p.eps, spec.center, out, mean,
                                   invstd, n_threads)
        stat_shape = p.shapes.stat_shape
        return finish_forward(p, result, shaped(mean, stat_shape),
                              shaped(invstd, stat_shape))
    C = gamma.size
    residual = mask = None
    if spec.relu:  # the fused ReLU: its packed mask (the last byte's unused bits are 0)
        mask = _new_mask((x.size + 7) // 8)
        residual = None if p.residual is None else aligned_as(p.residual, view_shape)
    affine = kernels.cols_affine if family == "cols" else kernels.planes_affine
    if p.mode == "test":
        mean, invstd, scale = _test_coefficients(p, gamma, dtype)
        affine(x, mean, scale, beta, out, n_threads, residual, mask)
        return finish_forward(p, result, mean, invstd, None, False, mask)
    mean = empty_vector(C, dtype)
    invstd = empty_vector(C, dtype)
    batch_var = empty_vector(C, _FLOAT64)
    count = None  # x's own values per channel
    if moments is not None:
        count = moments.count
        scale = empty_vector(C, dtype)
        kernels.fold_moments(moments.count, np.stack([moments.mean, moments.m2]), gamma, p.eps,
                             mean, invstd, scale, batch_var)
        affine(x, mean, scale, beta, out, n_threads, residual, mask)
        updated = False
    else:
        running_mean, running_var = _in_place(p, dtype)
        train = kernels.cols_forward_train if family == "cols" else kernels.planes_forward_train
        train(x, gamma, beta, p.eps, out, mean, invstd, batch_var, running_mean, running_var,
              p.momentum, n_threads, residual, mask)
        updated = running_mean is not None
    return finish_forward(p, result, mean, invstd, batch_var, updated, mask, count)


def _test_coefficients(p, gamma, dtype):
    """mean, invstd and scale = gamma * invstd of a test-mode forward: from the kernels when the
    running statistics are flat arrays in the computation dtype (the bits of the NumPy
    test_statistics, computed without its temporaries), else from test_statistics."""
    rm, rv = p.running_mean, p.running_var
    if is_flat(rm, dtype) and is_flat(rv, dtype):
        C = gamma.size
        mean = empty_vector(C, dtype)
        invstd = empty_vector(C, dtype)
        scale = empty_vector(C, dtype)
        _backends.kernels().test_coefficients(rm, rv, gamma, p.eps, mean, invstd, scale)
        return mean, invstd, scale
    mean, invstd = test_statistics(p)
    return mean, invstd, gamma * invstd


def _in_place(p, dtype):
    """The running statistics for the kernel to update in place (the same bits as the NumPy
    update, see _kernels._update_running), or (None, None): then finish_forward updates them.
    The kernel takes them only when both exist (a first call creates them, in finish_forward,
    after the kernel succeeded), are flat, C-contiguous and aligned, in the computation dtype,
    and apart in memory (one array passed as both must get the update of its old values), and
    the variance is the biased one (``bn_param['unbiased']`` is false)."""
    rm, rv = p.running_mean, p.running_var
    if p.unbiased or not disjoint_flat(rm, rv, dtype):
        return None, None
    return rm, rv


def _flat(a, dtype):
    """`a` as a flat, aligned, C-contiguous array of `dtype`: `a` itself when it is one, else
    a view or a copy."""
    flat = as_flat(a, dtype)
    return flat if flat is not None else aligned(np.ascontiguousarray(a, dtype=dtype)).reshape(-1)


def backward(dout, cache, out=None):
    """dx, dgamma, dbeta for a checked dout (C-contiguous, computation dtype) and its cache;
    dx is written into `out` when given."""
    kernels = _backends.kernels()
    spec = OPS[cache.op]
    shapes = spec.shapes(cache.x.shape, cache.layout, cache.groups, cache.axis)
    x = aligned_as(cache.x, shapes.view_shape)
    dy = aligned_as(dout, shapes.view_shape)
    result = _buffer(out, x, cache.x.shape, _planner.current().dx_page_shift)
    dx = shaped(result, shapes.view_shape)
    gamma = aligned(cache.gamma)
    dgamma = empty_vector(gamma.size, x.dtype)
    dbeta = empty_vector(gamma.size, x.dtype)
    mean = _flat(cache.mean, x.dtype)
    invstd = _flat(cache.invstd, x.dtype)
    n_threads = threads_for(x.size)
    if shapes.family == "rows":
        kernels.rows_backward(x, dy, mean, invstd, gamma, cache.groups, spec.center, dx, dgamma,
                              dbeta, n_threads)
        return finish_backward(cache, result, dgamma, dbeta, out)
    run = kernels.cols_backward if shapes.family == "cols" else kernels.planes_backward
    if not spec.relu:
        run(x, dy, mean, invstd, gamma, cache.mode == "train", dx, dgamma, dbeta, n_threads)
        return finish_backward(cache, result, dgamma, dbeta, out)
    # the fused ReLU: dy read through its mask; dresidual = dy * mask
    dresidual = (_memory.empty_like(x, _planner.current().dx_page_shift, cache.x.shape)
                 if cache.residual else None)
    run(x, dy, mean, invstd, gamma, cache.mode == "train", dx, dgamma, dbeta, n_threads,
        mask=cache.mask, dresidual=None if dresidual is None else shaped(dresidual, x.shape))
    return finish_backward(cache, result, dgamma, dbeta, out, dresidual)


def moments(spec, x, layout):
    """The :class:`~fastbn._moments.Moments` of a checked x (C-contiguous, computation dtype) of
    batchnorm op `spec` in `layout`: the statistics pass of its forward, x read once."""
    kernels = _backends.kernels()
    family, view_shape = spec.view(x.shape, layout)
    C = spec.channels(x.shape, layout)
    result = np.zeros((2, C))  # mean and m2 stay 0 when there are no values
    run = kernels.cols_moments if family == "cols" else kernels.planes_moments
    run(aligned_as(x, view_shape), result, threads_for(x.size))
    return Moments(np.full(C, float(spec.per_channel(x.shape, layout))), result[0], result[1])


def grad_sums(dout, cache):
    """The (2, C) float64 sums ``sum(dout)``, ``sum(dout * (x - mean))`` of a batchnorm backward
    (its reduction pass alone) for a checked dout and its cache."""
    kernels = _backends.kernels()
    spec = OPS[cache.op]
    family, view_shape = spec.view(cache.x.shape, cache.layout)
    sums = np.zeros((2, cache.gamma.size))
    run = kernels.cols_grad_sums if family == "cols" else kernels.planes_grad_sums
    run(aligned_as(cache.x, view_shape), aligned_as(dout, view_shape),
        _flat(cache.mean, cache.x.dtype), sums, threads_for(cache.x.size))
    return sums


def backward_given(dout, cache, sums, count, out=None):
    """The batchnorm backward of a part of a batch of `count` values per channel whose
    :func:`grad_sums`, added over the parts, are `sums`: its dx sweep (dx of this part) and the
    whole batch's dgamma and dbeta."""
    kernels = _backends.kernels()
    spec = OPS[cache.op]
    family, view_shape = spec.view(cache.x.shape, cache.layout)
    x = aligned_as(cache.x, view_shape)
    result = _buffer(out, x, cache.x.shape, _planner.current().dx_page_shift)
    dx = shaped(result, view_shape)
    C = cache.gamma.size
    dgamma = empty_vector(C, x.dtype)
    dbeta = empty_vector(C, x.dtype)
    run = kernels.cols_backward_given if family == "cols" else kernels.planes_backward_given
    run(x, aligned_as(dout, view_shape), _flat(cache.mean, x.dtype),
        _flat(cache.invstd, x.dtype), aligned(cache.gamma), cache.mode == "train",
        np.ascontiguousarray(sums, dtype=np.float64), float(count), dx, dgamma, dbeta,
        threads_for(x.size))
    return finish_backward(cache, result, dgamma, dbeta, out)
