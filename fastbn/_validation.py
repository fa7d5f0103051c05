"""Validation shared by the public API and :mod:`fastbn.reference`.

Everything a caller can get wrong is checked here, once, before any backend runs: both backends
call the same ``prepare_*`` functions, so they raise the same errors for the same input. The
functions turn user input into a :class:`Prepared` record of C-contiguous arrays in the
computation dtype, and ``finish_*`` turn a backend's raw results into what the public functions
return (running statistics, cache, output dtype).
"""
import math
from collections.abc import MutableMapping
from numbers import Real
from typing import NamedTuple

import numpy as np

__all__ = ["NormCache"]

LAYOUTS = ("NCHW", "NHWC")
DEFAULT_EPS = 1e-5
DEFAULT_MOMENTUM = 0.9


class NormCache(NamedTuple):
    """What a ``*_forward`` function hands to its ``*_backward``.

    It holds references, not x-sized intermediates. A cache made by either backend is accepted
    by the backward of either backend.

    Attributes
    ----------
    op : str
        The operation that made it: ``'batchnorm'``, ``'spatial_batchnorm'``, ``'layernorm'``
        or ``'groupnorm'``.
    x : ndarray
        The input as computed on: C-contiguous, in the computation dtype.
    gamma : ndarray
        The scale, flattened to one value per feature/channel, in the computation dtype.
    mean, invstd : ndarray
        The statistics the forward normalised with (batch statistics in train mode, running
        statistics in test mode) and ``1 / sqrt(var + eps)``: one value per feature (batchnorm),
        channel (spatial batchnorm), row of ``x.reshape(-1, D)`` (layernorm) or (sample, group)
        pair, shape (N, G) (groupnorm).
    eps : float
    mode : str
        ``'train'`` or ``'test'``; layernorm and groupnorm always use ``'train'`` (batch
        statistics).
    layout : str
        ``'NC'`` (batchnorm), ``'NCHW'`` or ``'NHWC'`` (spatial ops), ``'ND'`` (layernorm).
    groups : int
        G for groupnorm, 1 otherwise.
    gamma_shape, beta_shape : tuple
        Shapes of the parameters as given, so that dgamma and dbeta come back alike.
    dtype : numpy.dtype
        The dtype of the returned arrays (float16 input is computed in float32).
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
    gamma_shape: tuple
    beta_shape: tuple
    dtype: np.dtype


class Prepared(NamedTuple):
    """Validated forward input: arrays are C-contiguous in the computation dtype."""

    op: str
    x: np.ndarray
    gamma: np.ndarray  # flat (C,)
    beta: np.ndarray  # flat (C,)
    eps: float
    mode: str
    momentum: float
    running_mean: object  # user's array, or None
    running_var: object
    param: object  # the user's bn_param dict (running statistics are written back into it)
    layout: str
    groups: int
    gamma_shape: tuple
    beta_shape: tuple
    dtype: np.dtype  # output dtype
    out: object = None  # the caller's output array (``out=``), or None


def _type_name(value):
    return type(value).__name__


def _shape_text(a):
    return f"a {a.ndim}-D array of shape {a.shape}"


def compute_dtype(a, name):
    """Return (computation dtype, output dtype) for an input array, or raise TypeError."""
    dt = a.dtype
    if dt.kind == "f":
        if dt.isnative and dt.itemsize in (4, 8):
            return dt, dt
        if dt.itemsize == 2:
            return np.dtype(np.float32), dt
        if dt.itemsize in (4, 8):
            return dt.newbyteorder("="), dt.newbyteorder("=")
    elif dt.kind in "biu":
        return np.dtype(np.float64), np.dtype(np.float64)
    raise TypeError(
        f"{name} must have a real floating, integer or bool dtype (float16, float32, float64, "
        f"int*, uint*, bool), got dtype {dt}"
    )


def check_ndarray(a, name):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {_type_name(a)}")
    return a


def _check_real(value, name, low, high, default):
    """A real number in [low, high] (high may be inf: then finite and >= low), or the default."""
    if value is None:
        return default
    if type(value) not in (float, int) and (  # the usual types skip the (slower) ABC check
            isinstance(value, (bool, np.bool_)) or not isinstance(value, Real)):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {_type_name(value)}")
    value = float(value)
    if not (low <= value <= high) or value == np.inf:  # also rejects NaN
        expected = f"in [{low}, {high}]" if high != np.inf else f"finite and >= {low}"
        raise ValueError(f"{name} must be a real number {expected}, got {value!r}")
    return value


def check_param_dict(param, name):
    if type(param) is not dict and not isinstance(param, MutableMapping):
        raise TypeError(f"{name} must be a dict, got {_type_name(param)}")
    return param


def check_eps(param, name):
    return _check_real(param.get("eps"), f"{name}['eps']", 0.0, np.inf, DEFAULT_EPS)


def check_mode(param, name):
    if "mode" not in param:
        raise ValueError(f"{name}['mode'] is required: 'train' or 'test'")
    mode = param["mode"]
    if not isinstance(mode, str) or mode not in ("train", "test"):
        raise ValueError(f"{name}['mode'] must be 'train' or 'test', got {mode!r}")
    return mode


def check_layout(param, name, allowed):
    layout = param.get("layout", allowed[0])
    if not isinstance(layout, str) or layout not in allowed:
        raise ValueError(f"{name}['layout'] must be one of {list(allowed)}, got {layout!r}")
    return layout


def check_affine(a, name, channels, broadcast_shape, dtype):
    """gamma/beta: shape (C,) or the shape that broadcasts against x; returned flat."""
    if type(a) is np.ndarray and a.dtype == dtype and a.shape == (channels,) and a.flags.c_contiguous:
        return a, a.shape  # the usual case, already what the kernels take
    check_ndarray(a, name)
    compute_dtype(a, name)
    if a.shape not in ((channels,), broadcast_shape):
        raise ValueError(
            f"{name} must have shape {(channels,)} or {broadcast_shape}, got shape {a.shape}"
        )
    return np.ascontiguousarray(a, dtype=dtype).reshape(channels), a.shape


def check_running(param, name, key, channels, broadcast_shape, mode):
    """A running statistic the caller supplied (or None): float array of an allowed shape."""
    value = param.get(key)
    if value is None:
        if mode == "test":
            raise ValueError(
                f"{name}[{key!r}] is missing: test mode needs the running statistics of an earlier "
                "train-mode call (or supply running_mean and running_var)"
            )
        return None
    if (type(value) is np.ndarray and value.dtype.kind == "f" and value.shape == (channels,)
            and (mode != "train" or value.flags.writeable)):
        return value  # the usual case: what an earlier train-mode call stored
    full = f"{name}[{key!r}]"
    check_ndarray(value, full)
    if value.dtype.kind != "f":
        raise TypeError(f"{full} must be a floating-point array, got dtype {value.dtype}")
    allowed = ((channels,), (1, channels), broadcast_shape)
    if value.shape not in allowed:
        raise ValueError(
            f"{full} must have one of the shapes {sorted(set(allowed))}, got shape {value.shape}"
        )
    if mode == "train" and not value.flags.writeable:
        raise ValueError(f"{full} must be writeable: train mode updates it in place")
    return value


def check_x(x, name, ndim, description):
    """x must be an ndarray with `ndim` dimensions (None: at least one); returns its dtypes."""
    check_ndarray(x, name)
    if (x.ndim < 1) if ndim is None else (x.ndim != ndim):
        raise ValueError(f"{name} must be {description}, got {_shape_text(x)}")
    return compute_dtype(x, name)


def _prepare_bn(op, x, dtypes, gamma, beta, bn_param, layout, channels, broadcast_shape,
                per_channel, out):
    """Common part of batchnorm and spatial batchnorm preparation; `dtypes` from check_x."""
    dtype, out_dtype = dtypes
    mode = check_mode(bn_param, "bn_param")
    eps = check_eps(bn_param, "bn_param")
    momentum = _check_real(
        bn_param.get("momentum"), "bn_param['momentum']", 0.0, 1.0, DEFAULT_MOMENTUM
    )
    gamma_flat, gamma_shape = check_affine(gamma, "gamma", channels, broadcast_shape, dtype)
    beta_flat, beta_shape = check_affine(beta, "beta", channels, broadcast_shape, dtype)
    running_mean = check_running(bn_param, "bn_param", "running_mean", channels, broadcast_shape, mode)
    running_var = check_running(bn_param, "bn_param", "running_var", channels, broadcast_shape, mode)
    if mode == "train" and per_channel < 2:
        why = ("an empty batch has no statistics" if per_channel == 0 else
               "with one value the output would be beta for every input")
        raise ValueError(
            f"train mode needs at least 2 values per {'feature' if op == 'batchnorm' else 'channel'} "
            f"to compute batch statistics, got {per_channel} (x has shape {x.shape}); {why}"
        )
    return Prepared(
        op=op, x=np.ascontiguousarray(x, dtype=dtype), gamma=gamma_flat, beta=beta_flat,
        eps=eps, mode=mode, momentum=momentum, running_mean=running_mean,
        running_var=running_var, param=bn_param, layout=layout, groups=1,
        gamma_shape=gamma_shape, beta_shape=beta_shape, dtype=out_dtype,
        out=check_out(out, "out", x, out_dtype, gamma, beta),
    )


def prepare_batchnorm(x, gamma, beta, bn_param, out=None):
    dtypes = check_x(x, "x", 2, "a 2-D array of shape (N, D)")
    check_param_dict(bn_param, "bn_param")
    N, D = x.shape
    return _prepare_bn("batchnorm", x, dtypes, gamma, beta, bn_param, "NC", D, (1, D), N, out)


def prepare_spatial_batchnorm(x, gamma, beta, bn_param, out=None):
    check_param_dict(bn_param, "bn_param")
    layout = check_layout(bn_param, "bn_param", LAYOUTS)
    dtypes = check_x(x, "x", 4, f"a 4-D array of shape {'(N, C, H, W)' if layout == 'NCHW' else '(N, H, W, C)'}")
    if layout == "NCHW":
        N, C, H, W = x.shape
        broadcast_shape = (1, C, 1, 1)
    else:
        N, H, W, C = x.shape
        broadcast_shape = (1, 1, 1, C)
    return _prepare_bn("spatial_batchnorm", x, dtypes, gamma, beta, bn_param, layout, C,
                       broadcast_shape, N * H * W, out)


def prepare_layernorm(x, gamma, beta, ln_param, out=None):
    dtype, out_dtype = check_x(x, "x", None, "an array of at least 1 dimension, shape (..., D)")
    check_param_dict(ln_param, "ln_param")
    eps = check_eps(ln_param, "ln_param")
    D = x.shape[-1]
    gamma_flat, gamma_shape = check_affine(gamma, "gamma", D, (1,) * (x.ndim - 1) + (D,), dtype)
    beta_flat, beta_shape = check_affine(beta, "beta", D, (1,) * (x.ndim - 1) + (D,), dtype)
    return Prepared(
        op="layernorm", x=np.ascontiguousarray(x, dtype=dtype), gamma=gamma_flat, beta=beta_flat,
        eps=eps, mode="train", momentum=0.0, running_mean=None, running_var=None, param=ln_param,
        layout="ND", groups=1, gamma_shape=gamma_shape, beta_shape=beta_shape, dtype=out_dtype,
        out=check_out(out, "out", x, out_dtype, gamma, beta),
    )


def check_out(out, name, like, dtype, *others):
    """An ``out=`` array: None, or a writeable C-contiguous array of like's shape and `dtype`
    that shares no memory with the inputs."""
    if out is None:
        return None
    check_ndarray(out, name)
    if out.shape != like.shape or out.dtype != dtype:
        raise ValueError(
            f"{name} must be an array of shape {like.shape} and dtype {dtype}, "
            f"got shape {out.shape} and dtype {out.dtype}"
        )
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"{name} must be C-contiguous and writeable")
    for other in (like, *others):
        if np.may_share_memory(out, other):
            raise ValueError(f"{name} must not share memory with the inputs")
    return out


def check_groups(G, channels):
    if isinstance(G, (bool, np.bool_)) or not isinstance(G, (int, np.integer)):
        raise TypeError(f"G must be an integer, got {G!r} of type {_type_name(G)}")
    G = int(G)
    if G < 1:
        raise ValueError(f"G must be >= 1, got {G}")
    if channels % G != 0:
        raise ValueError(f"G must divide the number of channels C={channels}, got G={G}")
    return G


def prepare_groupnorm(x, gamma, beta, G, gn_param, out=None):
    dtype, out_dtype = check_x(x, "x", 4, "a 4-D array of shape (N, C, H, W)")
    check_param_dict(gn_param, "gn_param")
    check_layout(gn_param, "gn_param", ("NCHW",))
    eps = check_eps(gn_param, "gn_param")
    C = x.shape[1]
    G = check_groups(G, C)
    gamma_flat, gamma_shape = check_affine(gamma, "gamma", C, (1, C, 1, 1), dtype)
    beta_flat, beta_shape = check_affine(beta, "beta", C, (1, C, 1, 1), dtype)
    return Prepared(
        op="groupnorm", x=np.ascontiguousarray(x, dtype=dtype), gamma=gamma_flat, beta=beta_flat,
        eps=eps, mode="train", momentum=0.0, running_mean=None, running_var=None, param=gn_param,
        layout="NCHW", groups=G, gamma_shape=gamma_shape, beta_shape=beta_shape, dtype=out_dtype,
        out=check_out(out, "out", x, out_dtype, gamma, beta),
    )


def kernel_view(cache_or_prepared):
    """The kernel family and the 2-D/3-D shape in which x is processed (a free reshape).

    ``('cols', (M, C))``: statistics per column (batchnorm, NHWC spatial batchnorm).
    ``('planes', (N, C, H*W))``: statistics per channel over contiguous planes (NCHW).
    ``('rows', (R, Cg, L))``: statistics per row of Cg*L values (layernorm: R = prod(x.shape[:-1]),
    Cg = D, L = 1; groupnorm: R = N*G, Cg = C/G, L = H*W).
    """
    op, shape = cache_or_prepared.op, cache_or_prepared.x.shape
    if op == "batchnorm":
        return "cols", shape
    if op == "spatial_batchnorm":
        if cache_or_prepared.layout == "NHWC":
            return "cols", (shape[0] * shape[1] * shape[2], shape[3])
        return "planes", (shape[0], shape[1], shape[2] * shape[3])
    if op == "layernorm":
        return "rows", (math.prod(shape[:-1]), shape[-1], 1)
    G = cache_or_prepared.groups
    return "rows", (shape[0] * G, shape[1] // G, shape[2] * shape[3])


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


def finish_forward(p, out, mean, invstd, batch_var=None, updated=False):
    """Update running statistics (train-mode batchnorm), build the cache, cast the output.

    Called only after the backend succeeded, so that a failing call leaves bn_param untouched.
    `updated`: the backend updated running_mean and running_var already.
    """
    if p.op in ("batchnorm", "spatial_batchnorm") and p.mode == "train":
        update_running(p, mean, batch_var, updated)
    # positional: NamedTuple keywords cost a third of this function's time
    cache = NormCache(p.op, p.x, p.gamma, mean, invstd, p.eps, p.mode, p.layout, p.groups,
                      p.gamma_shape, p.beta_shape, p.dtype)
    return _into(p.out, out, p.dtype), cache


def _into(out, result, dtype):
    """result in `dtype`, written into the caller's `out` array when there is one."""
    if out is None:
        return result if result.dtype == dtype else result.astype(dtype)
    if not np.may_share_memory(result, out):  # else the backend wrote into out already
        out[...] = result
    return out


def update_running(p, batch_mean, batch_var, updated=False):
    """running = momentum * running + (1 - momentum) * batch, in place, shapes and dtypes kept;
    a missing running statistic starts as zeros. Nothing to do when the backend `updated` both.

    Both new values are computed before either is written, so that a running array passed as both
    statistics ends up with the variance's update of its old values. The compiled kernels repeat
    this arithmetic, bit for bit, for separate arrays in the computation dtype
    (``_kernels._update_running``).
    """
    if updated:
        return
    m = p.momentum
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


_CACHE_LAYOUTS = {
    "batchnorm": ("NC",), "spatial_batchnorm": LAYOUTS, "layernorm": ("ND",), "groupnorm": ("NCHW",),
}
_CACHE_NDIM = {"batchnorm": 2, "spatial_batchnorm": 4, "groupnorm": 4}
_OUTPUT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def check_cache(cache, op, function):
    """The cache must be a NormCache of `op` whose fields agree with each other.

    The checks are O(1) (shapes, dtypes, flags; no data is read). They stop a cache from another
    op, or one edited by hand (``cache._replace(...)``), before a kernel indexes its arrays.
    """
    if not isinstance(cache, NormCache):
        raise TypeError(
            f"cache must be the cache returned by {op}_forward (a fastbn NormCache), "
            f"got {_type_name(cache)}"
        )
    cache_op, x, gamma, mean, invstd, _, mode, layout, groups, gamma_shape, beta_shape, dtype = cache
    if cache_op != op:
        raise ValueError(
            f"cache comes from {cache_op}_forward, but {function} needs the cache of {op}_forward"
        )
    if not (isinstance(x, np.ndarray) and x.dtype.char in "fd" and x.dtype.isnative
            and x.flags.c_contiguous):
        got = f"dtype {x.dtype}, C-contiguous {x.flags.c_contiguous}" if isinstance(x, np.ndarray) else _type_name(x)
        raise ValueError(f"cache.x must be a C-contiguous float32 or float64 array, got {got}")
    ndim = _CACHE_NDIM.get(op)
    if (x.ndim != ndim) if ndim else (x.ndim < 1):
        raise ValueError(f"cache.x must have {ndim or 'at least 1'} dimensions for {op}, got shape {x.shape}")
    if layout not in _CACHE_LAYOUTS[op]:
        raise ValueError(f"cache.layout must be one of {list(_CACHE_LAYOUTS[op])}, got {layout!r}")
    modes = ("train", "test") if op in ("batchnorm", "spatial_batchnorm") else ("train",)
    if mode not in modes:
        raise ValueError(f"cache.mode must be one of {list(modes)}, got {mode!r}")
    if op == "groupnorm":
        check_groups(groups, x.shape[1])
    elif groups != 1:
        raise ValueError(f"cache.groups must be 1 for {op}, got {groups!r}")
    _, view = kernel_view(cache)
    channels = view[1] if op != "groupnorm" else x.shape[1]
    n_stats = channels if op in ("batchnorm", "spatial_batchnorm") else view[0]
    if not (isinstance(gamma, np.ndarray) and gamma.shape == (channels,) and gamma.dtype == x.dtype
            and gamma.flags.c_contiguous):
        got = (f"shape {gamma.shape}, dtype {gamma.dtype}" if isinstance(gamma, np.ndarray)
               else _type_name(gamma))
        raise ValueError(
            f"cache.gamma must be a C-contiguous array of shape {(channels,)} and dtype {x.dtype}, got {got}"
        )
    for name, stat in (("mean", mean), ("invstd", invstd)):
        if not (isinstance(stat, np.ndarray) and stat.dtype.kind == "f" and stat.size == n_stats):
            got = (f"size {stat.size}, dtype {stat.dtype}" if isinstance(stat, np.ndarray)
                   else _type_name(stat))
            raise ValueError(f"cache.{name} must be a float array of {n_stats} values, got {got}")
    for name, shape in (("gamma_shape", gamma_shape), ("beta_shape", beta_shape)):
        if not (isinstance(shape, tuple) and (
                shape == (channels,)  # the usual shape, checked first as it is the cheapest check
                or all(isinstance(n, (int, np.integer)) and n >= 0 for n in shape)
                and math.prod(map(int, shape)) == channels)):
            raise ValueError(f"cache.{name} must be a shape of {channels} values, got {shape!r}")
    if dtype not in _OUTPUT_DTYPES:
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
            raise ValueError(f"cache.dtype must be float16, float32 or float64, got {cache.dtype!r}")


def prepare_backward(dout, cache, op, function, out=None):
    """Check the cache, dout and out; return dout C-contiguous in the cache's computation dtype,
    and out (None or the caller's dx array)."""
    check_cache(cache, op, function)
    check_ndarray(dout, "dout")
    compute_dtype(dout, "dout")
    if dout.shape != cache.x.shape:
        raise ValueError(f"dout must have the shape of x, {cache.x.shape}, got shape {dout.shape}")
    out = check_out(out, "out", dout, cache.dtype, cache.x)
    return np.ascontiguousarray(dout, dtype=cache.x.dtype), out


def finish_backward(cache, dx, dgamma, dbeta, out=None):
    """Cast to the output dtype and give dgamma/dbeta the shapes gamma/beta had."""
    dtype = cache.dtype
    return (
        _into(out, dx, dtype),
        _into(None, dgamma.reshape(cache.gamma_shape), dtype),
        _into(None, dbeta.reshape(cache.beta_shape), dtype),
    )
