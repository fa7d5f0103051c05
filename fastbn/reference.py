"""Pure NumPy reference implementations of every fastbn operation: the oracle of the tests.

The functions mirror the public API by name and signature (without ``backend=``) and are written
to be read: each follows the textbook formulas, stage by stage. They share input validation with
the compiled path (:mod:`fastbn._validation`), so for any input both raise the same error or both
return results.

Elementwise work is done in the computation dtype (float32 or float64); every reduction
accumulates in float64 and is rounded once to the computation dtype (the per-channel nodes of
the staged batchnorm backward stay in float64, where float32 would overflow).

Examples
--------
>>> import numpy as np
>>> from fastbn import reference
>>> x = np.arange(6.0).reshape(3, 2)
>>> out, cache = reference.batchnorm_forward(x, np.ones(2), np.zeros(2), {"mode": "train"})
>>> np.round(out[:, 0], 4)
array([-1.2247,  0.    ,  1.2247])
"""
from __future__ import annotations

import math
from collections.abc import MutableMapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fastbn._moments import Moments, prepare_moments
from fastbn._ops import LAYOUTS, OPS, public_functions
from fastbn._results import NormCache, finish_backward, finish_forward, test_statistics
from fastbn._validation import prepare, prepare_backward

__all__ = [*public_functions(), "batchnorm_moments"]


def _sum64(a, axes):
    """float64 sums of `a` over `axes` (kept), with a rounding error of a few float64 epsilons
    whatever the count: trailing axes are summed as contiguous runs (NumPy sums those pairwise),
    leading ones by halving (_halving_sum). (NumPy adds the values of a strided reduction one by
    one, with an error that grows with the count: 2e-12 in the variance of 4e5 values per channel
    of an NHWC array.)"""
    kept_shape = [1 if k in axes else n for k, n in enumerate(a.shape)]
    n_trailing = 0
    while n_trailing < a.ndim and a.ndim - 1 - n_trailing in axes:
        n_trailing += 1
    n_leading = len(axes) - n_trailing
    if sorted(axes)[:n_leading] != list(range(n_leading)):  # axes in between: as runs of a copy
        kept = [k for k in range(a.ndim) if k not in axes]
        a = np.moveaxis(a, kept, range(len(kept)))
        n_trailing, n_leading = len(axes), 0
    shape = a.shape
    inner = math.prod(shape[a.ndim - n_trailing:])
    a = np.sum(np.ascontiguousarray(a).reshape(shape[:a.ndim - n_trailing] + (inner,)), axis=-1,
               dtype=np.float64) if n_trailing else a.astype(np.float64)
    if n_leading:
        a = _halving_sum(a.reshape((math.prod(shape[:n_leading]),) + a.shape[n_leading:]))
    return a.reshape(kept_shape)


def _halving_sum(a):
    """The sum over axis 0 of a float64 array of our own (it is overwritten), as a tree: an odd
    last row goes into the first, then the second half of the rows into the first, until one row
    is left, so that every value meets about log2(len) roundings instead of len."""
    if a.shape[0] == 0:
        return np.zeros(a.shape[1:])
    while a.shape[0] > 1:
        half = a.shape[0] // 2
        if a.shape[0] % 2:
            a[0] += a[-1]
        a[:half] += a[half:2 * half]
        a = a[:half]
    return a[0]


def _sum(a, axes):
    """Sum over `axes` (kept), accumulated in float64 (_sum64), rounded to a's dtype."""
    return _sum64(a, axes).astype(a.dtype)


def _moments(x, axes):
    """Count, float64 mean and sum of squared deviations over `axes` (kept); an empty reduction
    gives 0, 0 and 0.

    The values are first shifted by the first value of their unit (feature, channel, row or
    group), as the compiled kernels do: the sums stay small for any mean offset, and a constant
    unit gets exactly its value as mean and exactly 0 as m2.
    """
    count = np.prod([x.shape[a] for a in axes], dtype=np.int64)
    if count == 0:
        shape = [1 if a in axes else n for a, n in enumerate(x.shape)]
        return count, np.zeros(shape), np.zeros(shape)
    first = tuple(slice(0, 1) if a in axes else slice(None) for a in range(x.ndim))
    shift = x[first].astype(np.float64)
    shifted = x - shift
    shifted_mean = _sum64(shifted, axes) / count
    m2 = _sum64(np.square(shifted - shifted_mean), axes)
    return count, shift + shifted_mean, m2


def _mean_var(x, axes):
    """float64 mean and biased variance over `axes` (kept); an empty reduction gives 0 and 0."""
    count, mean, m2 = _moments(x, axes)
    return mean, m2 / max(count, 1)


# ------------------------------------------------------------------------------------------
# Batch statistics per feature/channel: batchnorm and spatial batchnorm
# ------------------------------------------------------------------------------------------

def _channel_axis(cache_or_prepared):
    c = cache_or_prepared
    return LAYOUTS[c.layout].axis(c.x.ndim)


def _batch_axes(cache_or_prepared):
    """Reduction axes and the broadcast shape of per-channel values."""
    c = cache_or_prepared
    axis = _channel_axis(c)
    return tuple(a for a in range(c.x.ndim) if a != axis), OPS[c.op].param_shape(c.x.shape, c.layout)


def _statistics(cache):
    """cache.mean and cache.invstd in the computation dtype, as the compiled backend takes them
    (check_cache admits no other dtype; this keeps the reference's arithmetic in that dtype)."""
    dtype = cache.x.dtype
    return cache.mean.astype(dtype, copy=False), cache.invstd.astype(dtype, copy=False)


def _batch_forward(p, moments=None):
    """The forward; in train mode with the statistics of x, or the given `moments` (of a batch
    x is part of: see fastbn.merge_moments)."""
    axes, shape = _batch_axes(p)
    dtype = p.x.dtype
    if p.mode == "train":
        if moments is None:
            mean64, var64 = _mean_var(p.x, axes)
        else:  # (rounding may leave a merged m2 just below 0)
            mean64, var64 = moments.mean, np.maximum(moments.m2, 0.0) / moments.count
        mean = mean64.astype(dtype).reshape(-1)
        invstd = (1.0 / np.sqrt(var64 + p.eps)).astype(dtype).reshape(-1)
        batch_var = var64.reshape(-1)
    else:
        mean, invstd = test_statistics(p)
        batch_var = None
    xhat = (p.x - mean.reshape(shape)) * invstd.reshape(shape)
    out = xhat * p.gamma.reshape(shape) + p.beta.reshape(shape)
    mask = None
    if OPS[p.op].relu:
        out, mask = _relu_forward(out, p.residual)
    count = None if moments is None else moments.count
    return finish_forward(p, out, mean, invstd, batch_var, mask=mask, count=count)


def _relu_forward(y, residual):
    """The fused ops' epilogue: ``max(y + residual, 0)`` (NaN stays NaN, -0 becomes +0) and the
    packed mask of the elements > 0, ``np.packbits(flat, bitorder='little')``."""
    if residual is not None:
        y = y + residual
    mask = np.packbits((y > 0).reshape(-1), bitorder="little")
    return np.where(y <= 0, y.dtype.type(0), y), mask


def _relu_backward(dout, cache):
    """dout where the fused forward's output was > 0 (its mask), +0 elsewhere: the gradient of
    ReLU at 0 is 0, as in PyTorch."""
    keep = np.unpackbits(cache.mask, count=cache.x.size, bitorder="little").astype(bool)
    return np.where(keep.reshape(cache.x.shape), dout, dout.dtype.type(0))


def _batch_backward_staged(dout, cache, out=None):
    """Backpropagate through the forward's computation graph, one node at a time (first through
    the fused ops' ReLU: dresidual is dout through it)."""
    if cache.mask is not None:
        dout = _relu_backward(dout, cache)
    axes, shape = _batch_axes(cache)
    x = cache.x
    count = x.size // max(cache.gamma.size, 1)
    mean, invstd = (stat.reshape(shape) for stat in _statistics(cache))
    # forward graph: xc = x - mean; xhat = xc * invstd; out = gamma * xhat + beta
    xc = x - mean
    xhat = xc * invstd
    dbeta = _sum(dout, axes)
    dgamma = _sum(dout * xhat, axes)
    dxhat = dout * cache.gamma.reshape(shape)
    if cache.mode == "test":
        dx = dxhat * invstd  # mean and invstd are constants in test mode
    else:
        # invstd = (var + eps) ** -0.5, var = mean(xc ** 2), xc = x - mean, mean = mean(x).
        # The per-channel nodes dinvstd and dvar are kept in float64: invstd ** 3 overflows
        # float32 as soon as var + eps < 1e-26 (eps = 0 and a nearly constant channel), and so
        # can dxhat * xc for a huge gamma and x (the kernels too sum these products in double).
        dinvstd = _sum64(dxhat.astype(np.float64) * xc, axes)
        # invstd ** 3 alone under/overflows float64 beyond a std of about 1e+-103 (a constant
        # channel with eps 1e-300 gave NaN): one factor at a time, as the kernels do.
        invstd64 = invstd.astype(np.float64)
        dvar = -0.5 * invstd64 * (invstd64 * (invstd64 * dinvstd))
        dxc = (dxhat * invstd + xc * (2.0 * dvar / count)).astype(x.dtype)
        dmean = -_sum(dxc, axes)
        dx = dxc + dmean / count
    return finish_backward(cache, dx, dgamma, dbeta, out, dresidual=dout)


def _batch_backward_closed_form(dout, cache, out=None):
    """dx = gamma * invstd / M * (M * dout - dbeta - xhat * dgamma), M values per channel."""
    axes, shape = _batch_axes(cache)
    x = cache.x
    count = x.size // max(cache.gamma.size, 1)
    mean, invstd = (stat.reshape(shape) for stat in _statistics(cache))
    xhat = (x - mean) * invstd
    dbeta = _sum(dout, axes)
    dgamma = _sum(dout * xhat, axes)
    scale = cache.gamma.reshape(shape) * invstd
    if cache.mode == "test":
        dx = scale * dout
    else:
        dx = (scale / count) * (count * dout - dbeta - xhat * dgamma)
    return finish_backward(cache, dx, dgamma, dbeta, out)


def grad_sums(dout, cache):
    """The two per-channel sums of a batchnorm backward, in float64: ``sum(dout)`` and
    ``sum(dout * (x - mean))``, as a (2, C) array (what ranks exchange, see fastbn.distributed)."""
    axes, shape = _batch_axes(cache)
    mean = cache.mean.astype(np.float64).reshape(shape)
    dy = dout.astype(np.float64)
    return np.stack([_sum64(dy, axes).reshape(-1), _sum64(dy * (cache.x - mean), axes).reshape(-1)])


def backward_given(dout, cache, sums, count, out=None):
    """The closed-form backward of a part of a batch of `count` values per channel whose
    :func:`grad_sums` (added over all parts) are `sums`: dx of this part, and the whole batch's
    dgamma = sums[1] * invstd and dbeta = sums[0]."""
    axes, shape = _batch_axes(cache)
    mean, invstd = (stat.reshape(shape) for stat in _statistics(cache))
    dtype = cache.x.dtype
    dbeta = sums[0].astype(dtype)
    dgamma = (sums[1] * invstd.reshape(-1)).astype(dtype)
    scale = cache.gamma.reshape(shape) * invstd
    if cache.mode == "test":
        dx = scale * dout
    else:
        xhat = (cache.x - mean) * invstd
        dx = (scale / count) * (count * dout - dbeta.reshape(shape) - xhat * dgamma.reshape(shape))
    return finish_backward(cache, dx.astype(dtype, copy=False), dgamma, dbeta, out)


# ------------------------------------------------------------------------------------------
# Statistics per row: layernorm and RMSNorm (rows of D values), groupnorm (rows of C/G * H * W)
# ------------------------------------------------------------------------------------------

def _rows(cache_or_prepared):
    """The (R, K) view in which every row is normalised on its own."""
    c = cache_or_prepared
    _, (R, Cg, L) = OPS[c.op].view(c.x.shape, c.layout, c.groups, c.axis)
    return c.x.reshape(R, Cg * L)


def _param_shape(cache_or_prepared):
    """gamma/beta as they broadcast against x."""
    c = cache_or_prepared
    return OPS[c.op].param_shape(c.x.shape, c.layout, c.axis)


def _row_forward(p):
    """Per row: centred ops normalise with the mean and biased variance, RMSNorm divides by the
    root mean square (its mean is 0)."""
    spec = OPS[p.op]
    rows = _rows(p)
    if spec.center:
        mean64, var64 = _mean_var(rows, (1,))
    else:
        mean64 = np.zeros((rows.shape[0], 1))
        squares = _sum64(np.square(rows, dtype=np.float64), (1,))
        var64 = squares / max(rows.shape[1], 1)  # the mean square; 0 for empty rows
    mean = mean64.astype(p.x.dtype)
    invstd = (1.0 / np.sqrt(var64 + p.eps)).astype(p.x.dtype)
    xhat = ((rows - mean) * invstd).reshape(p.x.shape)
    out = xhat * p.gamma.reshape(_param_shape(p))
    if spec.beta:
        out = out + p.beta.reshape(_param_shape(p))
    stat_shape = spec.stat_shape(p.x.shape, p.layout, p.groups, p.axis)
    return finish_forward(p, out, mean.reshape(stat_shape), invstd.reshape(stat_shape))


def _row_backward(dout, cache, out=None):
    """dx = invstd / K * (K * g - sum(g) - xhat * sum(g * xhat)) per row of K values,
    g = dout * gamma; RMSNorm (no centring) has no sum(g) term."""
    spec = OPS[cache.op]
    param_shape = _param_shape(cache)
    rows = _rows(cache)
    count = rows.shape[1]
    mean, invstd = (stat.reshape(-1, 1) for stat in _statistics(cache))
    xhat = (rows - mean) * invstd
    first, stop = spec.feature_axes(cache.x.shape, cache.layout, cache.axis)
    sum_axes = tuple(a for a in range(cache.x.ndim) if not first <= a < stop)
    dbeta = _sum(dout, sum_axes)
    dgamma = _sum(dout * xhat.reshape(cache.x.shape), sum_axes)
    g = (dout * cache.gamma.reshape(param_shape)).reshape(rows.shape)
    centring = _sum(g, (1,)) if spec.center else 0
    scale, inner = invstd / max(count, 1), count * g - centring - xhat * _sum(g * xhat, (1,))
    dx = np.empty(cache.x.shape, np.result_type(scale, inner))  # in x's shape: owns its data
    np.multiply(scale, inner, out=dx.reshape(inner.shape))
    return finish_backward(cache, dx, dgamma, dbeta, out)


# ------------------------------------------------------------------------------------------
# The public reference functions: validate, then the computation of the op's family
# ------------------------------------------------------------------------------------------

def forward_impl(spec):
    """The reference computation of `spec`'s forward, on a :class:`~fastbn._validation.Prepared`."""
    return _batch_forward if spec.running_stats else _row_forward


def backward_impl(spec, function):
    """The reference computation of the backward `function` of `spec`: batch statistics ops
    backpropagate through the graph stage by stage (``*_alt``: the closed form)."""
    if not spec.running_stats:
        return _row_backward
    return _batch_backward_closed_form if function.endswith("_alt") else _batch_backward_staged


def _forward(name, x, gamma, beta, param, groups=None, out=None, residual=None):
    spec = OPS[name]
    return forward_impl(spec)(prepare(spec, x, gamma, beta, param, groups, out, residual))


def _backward(name, function, dout, cache, out):
    spec = OPS[name]
    dout, out = prepare_backward(dout, cache, spec, function, out)
    return backward_impl(spec, function)(dout, cache, out)


def moments(spec: Any, x: NDArray[Any], layout: str) -> Moments:
    """The :class:`~fastbn._moments.Moments` of a checked x of batchnorm op `spec` in `layout`."""
    axis = LAYOUTS[layout].axis(x.ndim)
    count, mean, m2 = _moments(x, tuple(a for a in range(x.ndim) if a != axis))
    channels = x.shape[axis]
    return Moments(np.full(channels, float(count)), mean.reshape(channels), m2.reshape(channels))


def batchnorm_moments(x: NDArray[Any], *, layout: str = "NCHW") -> Moments:
    """Reference batch statistics; see :func:`fastbn.batchnorm_moments`."""
    return moments(*prepare_moments(x, layout))


def batchnorm_forward(x: NDArray[Any], gamma: NDArray[Any] | None, beta: NDArray[Any] | None, bn_param: MutableMapping[str, Any],
                      *, out: NDArray[Any] | None = None) -> tuple[NDArray[Any], NormCache]:
    """Reference batchnorm forward; see :func:`fastbn.batchnorm_forward`."""
    return _forward("batchnorm", x, gamma, beta, bn_param, out=out)


def batchnorm_backward(dout: NDArray[Any], cache: NormCache,
                       *, out: NDArray[Any] | None = None) -> tuple[NDArray[Any], NDArray[Any] | None, NDArray[Any] | None]:
    """Reference batchnorm backward (staged graph); see :func:`fastbn.batchnorm_backward`."""
    return _backward("batchnorm", "batchnorm_backward", dout, cache, out)


def batchnorm_backward_alt(dout: NDArray[Any], cache: NormCache,
                           *, out: NDArray[Any] | None = None) -> tuple[NDArray[Any], NDArray[Any] | None, NDArray[Any] | None]:
    """Reference batchnorm backward (closed form); see :func:`fastbn.batchnorm_backward_alt`."""
    return _backward("batchnorm", "batchnorm_backward_alt", dout, cache, out)


def spatial_batchnorm_forward(x: NDArray[Any], gamma: NDArray[Any] | None, beta: NDArray[Any] | None, bn_param: MutableMapping[str, Any],
                              *, out: NDArray[Any] | None = None) -> tuple[NDArray[Any], NormCache]:
    """Reference spatial batchnorm forward; see :func:`fastbn.spatial_batchnorm_forward`."""
    return _forward("spatial_batchnorm", x, gamma, beta, bn_param, out=out)


def spatial_batchnorm_backward(dout: NDArray[Any], cache: NormCache,
                               *, out: NDArray[Any] | None = None) -> tuple[NDArray[Any], NDArray[Any] | None, NDArray[Any] | None]:
    """Reference spatial batchnorm backward; see :func:`fastbn.spatial_batchnorm_backward`."""
    return _backward("spatial_batchnorm", "spatial_batchnorm_backward", dout, cache, out)


def layernorm_forward(x: NDArray[Any], gamma: NDArray[Any] | None, beta: NDArray[Any] | None, ln_param: MutableMapping[str, Any],
                      *, out: NDArray[Any] | None = None) -> tuple[NDArray[Any], NormCache]:
    """Reference layernorm forward; see :func:`fastbn.layernorm_forward`."""
    return _forward("layernorm", x, gamma, beta, ln_param, out=out)


def layernorm_backward(dout: NDArray[Any], cache: NormCache,
                       *, out: NDArray[Any] | None = None) -> tuple[NDArray[Any], NDArray[Any] | None, NDArray[Any] | None]:
    """Reference layernorm backward; see :func:`fastbn.layernorm_backward`."""
    return _backward("layernorm", "layernorm_backward", dout, cache, out)


def spatial_groupnorm_forward(x: NDArray[Any], gamma: NDArray[Any] | None, beta: NDArray[Any] | None, G: int,
                              gn_param: MutableMapping[str, Any], *, out: NDArray[Any] | None = None) -> tuple[NDArray[Any], NormCache]:
    """Reference spatial groupnorm forward; see :func:`fastbn.spatial_groupnorm_forward`."""
    return _forward("groupnorm", x, gamma, beta, gn_param, G, out)


def spatial_groupnorm_backward(dout: NDArray[Any], cache: NormCache,
                               *, out: NDArray[Any] | None = None) -> tuple[NDArray[Any], NDArray[Any] | None, NDArray[Any] | None]:
    """Reference spatial groupnorm backward; see :func:`fastbn.spatial_groupnorm_backward`."""
    return _backward("groupnorm", "spatial_groupnorm_backward", dout, cache, out)


def rmsnorm_forward(x: NDArray[Any], gamma: NDArray[Any] | None, ln_param: MutableMapping[str, Any],
                    *, out: NDArray[Any] | None = None) -> tuple[NDArray[Any], NormCache]:
    """Reference RMSNorm forward; see :func:`fastbn.rmsnorm_forward`."""
    return _forward("rmsnorm", x, gamma, None, ln_param, out=out)


def rmsnorm_backward(dout: NDArray[Any], cache: NormCache,
                     *, out: NDArray[Any] | None = None) -> tuple[NDArray[Any], NDArray[Any] | None]:
    """Reference RMSNorm backward; see :func:`fastbn.rmsnorm_backward`."""
    return _backward("rmsnorm", "rmsnorm_backward", dout, cache, out)


def batchnorm_relu_forward(x, gamma, beta, bn_param, *, residual=None, out=None):
    """Reference fused batchnorm + ReLU forward; see :func:`fastbn.batchnorm_relu_forward`."""
    return _forward("batchnorm_relu", x, gamma, beta, bn_param, out=out, residual=residual)


def batchnorm_relu_backward(dout, cache, *, out=None):
    """Reference fused batchnorm + ReLU backward (staged graph); see
    :func:`fastbn.batchnorm_relu_backward`."""
    return _backward("batchnorm_relu", "batchnorm_relu_backward", dout, cache, out)


def spatial_batchnorm_relu_forward(x, gamma, beta, bn_param, *, residual=None, out=None):
    """Reference fused spatial batchnorm + ReLU forward; see
    :func:`fastbn.spatial_batchnorm_relu_forward`."""
    return _forward("spatial_batchnorm_relu", x, gamma, beta, bn_param, out=out, residual=residual)


def spatial_batchnorm_relu_backward(dout, cache, *, out=None):
    """Reference fused spatial batchnorm + ReLU backward; see
    :func:`fastbn.spatial_batchnorm_relu_backward`."""
    return _backward("spatial_batchnorm_relu", "spatial_batchnorm_relu_backward", dout, cache, out)
