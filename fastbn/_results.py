"""What both backends do with their raw results: the cache, running statistics, output dtypes.

The NumPy reference (:mod:`fastbn.reference`) and the compiled glue (:mod:`fastbn._compiled`)
compute an op's output and statistics their own way; the functions here turn those into what the
public functions return, the same for both, so that a cache from either backend is accepted by
the backward of either backend.
"""
import math
from typing import Any, NamedTuple, Optional

import numpy as np

from fastbn._ops import OPS

__all__ = ["NormCache"]


class NormCache(NamedTuple):
    """What a ``*_forward`` function hands to its ``*_backward``.

    It holds references, not x-sized intermediates. A cache made by either backend is accepted
    by the backward of either backend.

    Attributes
    ----------
    op : str
        The operation that made it: ``'batchnorm'``, ``'spatial_batchnorm'``, ``'layernorm'``,
        ``'groupnorm'``, ``'rmsnorm'``, ``'batchnorm_relu'`` or ``'spatial_batchnorm_relu'``
        (the names of :data:`fastbn._ops.OPS`).
    x : ndarray
        The input as computed on: C-contiguous, in the computation dtype.
    gamma : ndarray
        The scale, flattened to one value per feature/channel, in the computation dtype (ones
        when the forward was given ``gamma=None``).
    mean, invstd : ndarray
        The statistics the forward normalised with (batch statistics in train mode, running
        statistics in test mode) and ``1 / sqrt(var + eps)``: one value per feature (batchnorm),
        channel (spatial batchnorm), row (layernorm, RMSNorm: shape ``x.shape[:axis]``) or
        (sample, group) pair, shape (N, G) (groupnorm). RMSNorm's mean is 0 (rows are not
        centred) and its invstd is ``1 / sqrt(mean(x**2) + eps)``.
    eps : float
    mode : str
        ``'train'`` or ``'test'``; layernorm and groupnorm always use ``'train'`` (batch
        statistics).
    layout : str
        ``'NC'`` (batchnorm), ``'NCHW'`` or ``'NHWC'`` (spatial ops), ``'ND'`` (layernorm,
        RMSNorm).
    groups : int
        G for groupnorm, 1 otherwise.
    gamma_shape, beta_shape : tuple or None
        Shapes of the parameters as given, so that dgamma and dbeta come back alike; None for a
        parameter given as None (the backward then returns None for its gradient) and for
        RMSNorm's beta, which does not exist.
    dtype : numpy.dtype
        The dtype of the returned arrays (float16 input is computed in float32).
    axis : int or None
        Layernorm and RMSNorm over several trailing axes: the first normalized axis
        (``ln_param['axis']`` counted from 0). None for the last axis and for the other ops,
        whose channel axis is the layout's.
    mask : ndarray of uint8, or None
        The fused ops' ReLU mask, one bit per element of x: bit ``k`` of byte ``b`` is 1 where
        element ``8 * b + k`` of the flattened output was > 0, i.e.
        ``np.packbits(out.ravel() > 0, bitorder='little')`` (``ceil(x.size / 8)`` bytes; unpack
        with ``np.unpackbits(mask, count=x.size, bitorder='little')``). None for other ops.
    residual : bool
        Whether the fused forward added a residual (its backward then returns dresidual).
    """

    op: str
    x: np.ndarray
    gamma: np.ndarray
    mean: np.ndarray
    invstd: np.ndarray
    eps: float
    mode: str
    layout: str
    groups: int
    gamma_shape: tuple[int, ...]
    beta_shape: Optional[tuple[int, ...]]
    dtype: np.dtype[Any]
    axis: Optional[int] = None
    mask: Optional[np.ndarray] = None
    residual: bool = False



def test_statistics(p):
    """mean and invstd (computation dtype, flat) from the running statistics, for test mode.

    Both are new arrays: the cache never aliases the caller's running statistics, which a later
    train-mode call updates in place.
    """
    dtype = p.x.dtype
    mean = np.array(p.running_mean, dtype=dtype, order="C", copy=True).reshape(-1)
    var = np.asarray(p.running_var, dtype=np.float64).reshape(-1)
    invstd = (1.0 / np.sqrt(var + p.eps)).astype(dtype)
    return mean, invstd


def finish_forward(p, out, mean, invstd, batch_var=None, updated=False, mask=None, count=None):
    """Update running statistics (train-mode batchnorm), build the cache, cast the output.

    Called only after the backend succeeded, so that a failing call leaves bn_param untouched.
    `updated`: the backend updated running_mean and running_var already (then only
    num_batches_tracked is counted here). `mask`: the fused ops' packed ReLU mask. `count`: the
    whole batch's values per channel when the statistics are given moments (see update_running).
    """
    if p.mode == "train" and OPS[p.op].running_stats:
        if updated:
            _count_batch(p)
        else:
            update_running(p, mean, batch_var, count)
    # every field, in order, through tuple.__new__: the constructor's argument parsing and _make's
    # length check (interpreted code) are a measurable part of a small call
    cache = tuple.__new__(NormCache, (
        p.op, p.x, p.gamma, mean, invstd, p.eps, p.mode, p.layout, p.groups, p.gamma_shape,
        p.beta_shape, p.dtype, p.axis, mask, mask is not None and p.residual is not None))
    if p.out is None and (out.dtype is p.dtype or out.dtype == p.dtype):  # the usual case
        return out, cache
    return _into(p.out, out, p.dtype), cache


def _into(out, result, dtype):
    """result in `dtype`, written into the caller's `out` array when there is one."""
    if out is None:
        return result if result.dtype == dtype else result.astype(dtype)
    if not np.may_share_memory(result, out):  # else the backend wrote into out already
        out[...] = result
    return out


def update_running(p, batch_mean, batch_var, count=None):
    """running = momentum * running + (1 - momentum) * batch, in place, shapes and dtypes kept;
    a missing running statistic starts as zeros. With ``p.unbiased`` the variance term is the
    unbiased batch variance ``var * M / (M - 1)`` (PyTorch's), M being `count`: the values per
    channel of the whole batch (a forward fed moments: their count, at least 2), or by default
    those of x; ``p.momentum`` is already the
    cumulative average's ``n / (n + 1)`` when ``bn_param['momentum']`` is None.
    ``bn_param['num_batches_tracked']`` is counted (``p.batches``: its value before this call, or
    None) last.

    Both new values are computed before either is written, so that a running array passed as both
    statistics ends up with the variance's update of its old values. The compiled kernels repeat
    this arithmetic, bit for bit, for separate arrays in the computation dtype
    (``_kernels._update_running``; they are not given the statistics when ``p.unbiased``).
    """
    m = p.momentum
    if p.unbiased:
        if count is None:
            count = OPS[p.op].per_channel(p.x.shape, p.layout)
        batch_var = np.asarray(batch_var, dtype=np.float64) * (count / (count - 1))
    new = []
    for key, current, stat in (
        ("running_mean", p.running_mean, batch_mean),
        ("running_var", p.running_var, batch_var),
    ):
        if current is None:
            current = np.zeros(stat.shape, dtype=p.x.dtype)
            p.param[key] = current
        new.append((current, m * current + (1.0 - m) * np.reshape(stat, current.shape)))
    for current, value in new:
        current[...] = value
    _count_batch(p)


def _count_batch(p):
    """Count this train-mode call in ``bn_param['num_batches_tracked']`` when it is kept."""
    if p.batches is not None:
        p.param["num_batches_tracked"] = p.batches + 1


def _param_grad(grad, shape, dtype):
    """The gradient of a parameter given in `shape` (None: not given): grad (one value per
    channel) reshaped, or summed when the parameter was one value broadcast to every channel."""
    if shape is None:
        return None
    if shape != grad.shape:
        if math.prod(shape) != grad.size:
            grad = np.sum(grad, dtype=np.float64)
        grad = grad.reshape(shape)
    return grad if grad.dtype == dtype else grad.astype(dtype)


def finish_backward(cache, dx, dgamma, dbeta, out=None, dresidual=None):
    """Cast to the output dtype and give dgamma/dbeta the shapes gamma/beta had (None for a
    parameter given as None); ``(dx, dgamma)`` for ops without beta; dresidual appended for a
    fused forward that had a residual."""
    dtype = cache.dtype
    dx = _into(out, dx, dtype)
    dgamma = _param_grad(dgamma, cache.gamma_shape, dtype)
    if not OPS[cache.op].beta:
        return dx, dgamma
    dbeta = _param_grad(dbeta, cache.beta_shape, dtype)
    if cache.residual:  # (in x's shape from both backends)
        return dx, dgamma, dbeta, _into(None, dresidual, dtype)
    return dx, dgamma, dbeta
