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
import numpy as np

from fastbn._validation import (
    finish_backward,
    finish_forward,
    kernel_view,
    prepare_backward,
    prepare_batchnorm,
    prepare_groupnorm,
    prepare_layernorm,
    prepare_spatial_batchnorm,
    test_statistics,
)

__all__ = [
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_backward_alt",
    "spatial_batchnorm_forward",
    "spatial_batchnorm_backward",
    "layernorm_forward",
    "layernorm_backward",
    "spatial_groupnorm_forward",
    "spatial_groupnorm_backward",
]


def _sum(a, axes):
    """Sum over `axes` (kept), accumulated in float64, rounded to a's dtype."""
    return np.sum(a, axis=axes, dtype=np.float64, keepdims=True).astype(a.dtype)


def _mean_var(x, axes):
    """float64 mean and biased variance over `axes` (kept); an empty reduction gives 0 and 0.

    The values are first shifted by the first value of their unit (feature, channel, row or
    group), as the compiled kernels do: the sums stay small for any mean offset, and a constant
    unit gets exactly its value as mean and exactly 0 as variance.
    """
    count = np.prod([x.shape[a] for a in axes], dtype=np.int64)
    if count == 0:
        shape = [1 if a in axes else n for a, n in enumerate(x.shape)]
        return np.zeros(shape), np.zeros(shape)
    first = tuple(slice(0, 1) if a in axes else slice(None) for a in range(x.ndim))
    shift = x[first].astype(np.float64)
    shifted = x - shift
    shifted_mean = np.mean(shifted, axis=axes, keepdims=True)
    var = np.mean(np.square(shifted - shifted_mean), axis=axes, keepdims=True)
    return shift + shifted_mean, var


# ------------------------------------------------------------------------------------------
# Batch statistics per feature/channel: batchnorm and spatial batchnorm
# ------------------------------------------------------------------------------------------

def _batch_axes(cache_or_prepared):
    """Reduction axes and the broadcast shape of per-channel values."""
    x = cache_or_prepared.x
    channel_axis = 1 if cache_or_prepared.layout in ("NC", "NCHW") else x.ndim - 1
    axes = tuple(a for a in range(x.ndim) if a != channel_axis)
    shape = tuple(x.shape[a] if a == channel_axis else 1 for a in range(x.ndim))
    return axes, shape


def _statistics(cache):
    """cache.mean and cache.invstd in the computation dtype, as the compiled backend takes them
    (a cache edited by hand may hold float16 ones, which NumPy would keep dividing in float16)."""
    dtype = cache.x.dtype
    return cache.mean.astype(dtype, copy=False), cache.invstd.astype(dtype, copy=False)


def _batch_forward(p):
    axes, shape = _batch_axes(p)
    dtype = p.x.dtype
    if p.mode == "train":
        mean64, var64 = _mean_var(p.x, axes)
        mean = mean64.astype(dtype).reshape(-1)
        invstd = (1.0 / np.sqrt(var64 + p.eps)).astype(dtype).reshape(-1)
        batch_var = var64.reshape(-1)
    else:
        mean, invstd = test_statistics(p)
        batch_var = None
    xhat = (p.x - mean.reshape(shape)) * invstd.reshape(shape)
    out = xhat * p.gamma.reshape(shape) + p.beta.reshape(shape)
    return finish_forward(p, out, mean, invstd, batch_var)


def _batch_backward_staged(dout, cache, out=None):
    """Backpropagate through the forward's computation graph, one node at a time."""
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
        # float32 as soon as var + eps < 1e-26 (eps = 0 and a nearly constant channel).
        dinvstd = np.sum(dxhat * xc, axis=axes, dtype=np.float64, keepdims=True)
        dvar = -0.5 * invstd.astype(np.float64) ** 3 * dinvstd
        dxc = (dxhat * invstd + xc * (2.0 * dvar / count)).astype(x.dtype)
        dmean = -_sum(dxc, axes)
        dx = dxc + dmean / count
    return finish_backward(cache, dx, dgamma, dbeta, out)


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


def batchnorm_forward(x, gamma, beta, bn_param, *, out=None):
    """Reference batchnorm forward; see :func:`fastbn.batchnorm_forward`."""
    return _batch_forward(prepare_batchnorm(x, gamma, beta, bn_param, out))


def batchnorm_backward(dout, cache, *, out=None):
    """Reference batchnorm backward (staged graph); see :func:`fastbn.batchnorm_backward`."""
    dout, out = prepare_backward(dout, cache, "batchnorm", "batchnorm_backward", out)
    return _batch_backward_staged(dout, cache, out)


def batchnorm_backward_alt(dout, cache, *, out=None):
    """Reference batchnorm backward (closed form); see :func:`fastbn.batchnorm_backward_alt`."""
    dout, out = prepare_backward(dout, cache, "batchnorm", "batchnorm_backward_alt", out)
    return _batch_backward_closed_form(dout, cache, out)


def spatial_batchnorm_forward(x, gamma, beta, bn_param, *, out=None):
    """Reference spatial batchnorm forward; see :func:`fastbn.spatial_batchnorm_forward`."""
    return _batch_forward(prepare_spatial_batchnorm(x, gamma, beta, bn_param, out))


def spatial_batchnorm_backward(dout, cache, *, out=None):
    """Reference spatial batchnorm backward; see :func:`fastbn.spatial_batchnorm_backward`."""
    dout, out = prepare_backward(dout, cache, "spatial_batchnorm", "spatial_batchnorm_backward", out)
    return _batch_backward_staged(dout, cache, out)


# ------------------------------------------------------------------------------------------
# Statistics per row: layernorm (rows of D values) and groupnorm (rows of C/G * H * W values)
# ------------------------------------------------------------------------------------------

def _rows(cache_or_prepared):
    """The (R, K) view in which every row is normalised on its own."""
    _, (R, Cg, L) = kernel_view(cache_or_prepared)
    return cache_or_prepared.x.reshape(R, Cg * L)


def _param_shape(cache_or_prepared):
    x = cache_or_prepared.x
    if cache_or_prepared.op == "layernorm":
        return (x.shape[-1],)
    return (1, x.shape[1], 1, 1)


def _stat_shape(cache_or_prepared):
    x = cache_or_prepared.x
    if cache_or_prepared.op == "layernorm":
        return x.shape[:-1]
    return (x.shape[0], cache_or_prepared.groups)


def _row_forward(p):
    rows = _rows(p)
    mean64, var64 = _mean_var(rows, (1,))
    mean = mean64.astype(p.x.dtype)
    invstd = (1.0 / np.sqrt(var64 + p.eps)).astype(p.x.dtype)
    xhat = ((rows - mean) * invstd).reshape(p.x.shape)
    out = xhat * p.gamma.reshape(_param_shape(p)) + p.beta.reshape(_param_shape(p))
    stat_shape = _stat_shape(p)
    return finish_forward(p, out, mean.reshape(stat_shape), invstd.reshape(stat_shape))


def _row_backward(dout, cache, out=None):
    """dx = invstd / K * (K * g - sum(g) - xhat * sum(g * xhat)) per row, g = dout * gamma."""
    param_shape = _param_shape(cache)
    rows = _rows(cache)
    count = rows.shape[1]
    mean, invstd = (stat.reshape(-1, 1) for stat in _statistics(cache))
    xhat = (rows - mean) * invstd
    sum_axes = tuple(range(cache.x.ndim - 1)) if cache.op == "layernorm" else (0, 2, 3)
    dbeta = _sum(dout, sum_axes)
    dgamma = _sum(dout * xhat.reshape(cache.x.shape), sum_axes)
    g = (dout * cache.gamma.reshape(param_shape)).reshape(rows.shape)
    dx = (invstd / max(count, 1)) * (count * g - _sum(g, (1,)) - xhat * _sum(g * xhat, (1,)))
    return finish_backward(cache, dx.reshape(cache.x.shape), dgamma, dbeta, out)


def layernorm_forward(x, gamma, beta, ln_param, *, out=None):
    """Reference layernorm forward; see :func:`fastbn.layernorm_forward`."""
    return _row_forward(prepare_layernorm(x, gamma, beta, ln_param, out))


def layernorm_backward(dout, cache, *, out=None):
    """Reference layernorm backward; see :func:`fastbn.layernorm_backward`."""
    dout, out = prepare_backward(dout, cache, "layernorm", "layernorm_backward", out)
    return _row_backward(dout, cache, out)


def spatial_groupnorm_forward(x, gamma, beta, G, gn_param, *, out=None):
    """Reference spatial groupnorm forward; see :func:`fastbn.spatial_groupnorm_forward`."""
    return _row_forward(prepare_groupnorm(x, gamma, beta, G, gn_param, out))


def spatial_groupnorm_backward(dout, cache, *, out=None):
    """Reference spatial groupnorm backward; see :func:`fastbn.spatial_groupnorm_backward`."""
    dout, out = prepare_backward(dout, cache, "groupnorm", "spatial_groupnorm_backward", out)
    return _row_backward(dout, cache, out)
