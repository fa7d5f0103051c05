"""Validation shared by the public API and :mod:`fastbn.reference`.

Everything a caller can get wrong is checked here, once, before any backend runs: both backends
call the same :func:`prepare` and :func:`prepare_backward`, driven by the op's row of the op
table (:mod:`fastbn._ops`), so they raise the same errors for the same input. :func:`prepare`
turns user input into a :class:`Prepared` record of C-contiguous arrays in the computation dtype;
what the backends do with their results is in :mod:`fastbn._results`.
"""
import math
from collections.abc import MutableMapping
from numbers import Real
from typing import NamedTuple

import numpy as np

from fastbn._ops import LAYOUTS, OPS
from fastbn._results import NormCache

DEFAULT_EPS = 1e-5
DEFAULT_MOMENTUM = 0.9


class Prepared(NamedTuple):
    """Validated forward input: arrays are C-contiguous in the computation dtype."""

    op: str
    x: np.ndarray
    gamma: np.ndarray  # flat (C,)
    beta: np.ndarray  # flat (C,); None for ops without beta
    eps: float
    mode: str
    momentum: float
    running_mean: object  # user's array, or None
    running_var: object
    param: object  # the user's bn_param dict (running statistics are written back into it)
    layout: str
    groups: int
    gamma_shape: tuple
    beta_shape: tuple  # None for ops without beta
    dtype: np.dtype  # output dtype
    out: object = None  # the caller's output array (``out=``), or None
    residual: object = None  # fused ops: the residual, like x (C-contiguous, computation dtype), or None


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


def prepare(spec, x, gamma, beta, param, groups=None, out=None, residual=None):
    """Validate the arguments of `spec`'s forward and return them as a :class:`Prepared` record.

    `beta` is ignored by ops without a shift (``spec.beta`` false), `groups` by ungrouped ops,
    `residual` by ops without a fused ReLU (``spec.relu`` false).
    """
    name = spec.param_name
    check_param_dict(param, name)
    layout = check_layout(param, name, spec.layouts) if "NCHW" in spec.layouts else spec.layouts[0]
    geometry = LAYOUTS[layout]
    dtype, out_dtype = check_x(x, "x", geometry.ndim, geometry.describe())
    if spec.running_stats:
        mode = check_mode(param, name)
        eps = check_eps(param, name)
        momentum = _check_real(param.get("momentum"), f"{name}['momentum']", 0.0, 1.0, DEFAULT_MOMENTUM)
    else:
        mode, eps, momentum = "train", check_eps(param, name), 0.0
    channels = spec.channels(x.shape, layout)
    G = check_groups(groups, channels) if spec.grouped else 1
    broadcast_shape = spec.param_shape(x.shape, layout)
    gamma_flat, gamma_shape = check_affine(gamma, "gamma", channels, broadcast_shape, dtype)
    beta_flat, beta_shape = (check_affine(beta, "beta", channels, broadcast_shape, dtype)
                             if spec.beta else (None, None))
    running_mean = running_var = None
    if spec.running_stats:
        running_mean = check_running(param, name, "running_mean", channels, broadcast_shape, mode)
        running_var = check_running(param, name, "running_var", channels, broadcast_shape, mode)
        per_channel = spec.per_channel(x.shape, layout)
        if mode == "train" and per_channel < 2:
            why = ("an empty batch has no statistics" if per_channel == 0 else
                   "with one value the output would be beta for every input")
            raise ValueError(
                f"train mode needs at least 2 values per {'feature' if layout == 'NC' else 'channel'} "
                f"to compute batch statistics, got {per_channel} (x has shape {x.shape}); {why}"
            )
    given = (residual,) if spec.relu and residual is not None else ()
    residual = check_residual(residual, x, dtype) if given else None
    return Prepared(
        op=spec.name, x=np.ascontiguousarray(x, dtype=dtype), gamma=gamma_flat, beta=beta_flat,
        eps=eps, mode=mode, momentum=momentum, running_mean=running_mean,
        running_var=running_var, param=param, layout=layout, groups=G,
        gamma_shape=gamma_shape, beta_shape=beta_shape, dtype=out_dtype,
        out=check_out(out, "out", x, out_dtype, gamma, beta, *given),
        residual=residual,
    )


def check_residual(residual, x, dtype):
    """The fused ops' residual: an array of x's shape with a dtype x could have, returned
    C-contiguous in the computation dtype `dtype`."""
    check_ndarray(residual, "residual")
    compute_dtype(residual, "residual")
    if residual.shape != x.shape:
        raise ValueError(f"residual must have the shape of x, {x.shape}, got shape {residual.shape}")
    return np.ascontiguousarray(residual, dtype=dtype)


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


_OUTPUT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def check_cache(cache, spec, function):
    """The cache must be a NormCache of `spec`'s op whose fields agree with each other.

    The checks are O(1) (shapes, dtypes, flags; no data is read). They stop a cache from another
    op, or one edited by hand (``cache._replace(...)``), before a kernel indexes its arrays.
    """
    if not isinstance(cache, NormCache):
        raise TypeError(
            f"cache must be the cache returned by {spec.forward} (a fastbn NormCache), "
            f"got {_type_name(cache)}"
        )
    cache_op, x, gamma, mean, invstd, _, mode, layout, groups, gamma_shape, beta_shape, dtype = cache[:12]
    if cache_op != spec.name:
        made_by = OPS[cache_op].forward if cache_op in OPS else repr(cache_op)
        raise ValueError(
            f"cache comes from {made_by}, but {function} needs the cache of {spec.forward}"
        )
    if not (isinstance(x, np.ndarray) and x.dtype.char in "fd" and x.dtype.isnative
            and x.flags.c_contiguous):
        got = f"dtype {x.dtype}, C-contiguous {x.flags.c_contiguous}" if isinstance(x, np.ndarray) else _type_name(x)
        raise ValueError(f"cache.x must be a C-contiguous float32 or float64 array, got {got}")
    if layout not in spec.layouts:
        raise ValueError(f"cache.layout must be one of {list(spec.layouts)}, got {layout!r}")
    ndim = LAYOUTS[layout].ndim
    if (x.ndim != ndim) if ndim else (x.ndim < 1):
        raise ValueError(f"cache.x must have {ndim or 'at least 1'} dimensions for {spec.name}, got shape {x.shape}")
    modes = ("train", "test") if spec.running_stats else ("train",)
    if mode not in modes:
        raise ValueError(f"cache.mode must be one of {list(modes)}, got {mode!r}")
    channels = spec.channels(x.shape, layout)
    if spec.grouped:
        check_groups(groups, channels)
    elif groups != 1:
        raise ValueError(f"cache.groups must be 1 for {spec.name}, got {groups!r}")
    n_stats = math.prod(spec.stat_shape(x.shape, layout, groups))
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
    shapes = (("gamma_shape", gamma_shape), ("beta_shape", beta_shape)) if spec.beta else (
        ("gamma_shape", gamma_shape),)
    for name, shape in shapes:
        if not (isinstance(shape, tuple) and (
                shape == (channels,)  # the usual shape, checked first as it is the cheapest check
                or all(isinstance(n, (int, np.integer)) and n >= 0 for n in shape)
                and math.prod(map(int, shape)) == channels)):
            raise ValueError(f"cache.{name} must be a shape of {channels} values, got {shape!r}")
    if not spec.beta and beta_shape is not None:
        raise ValueError(f"cache.beta_shape must be None for {spec.name} (it has no beta), got {beta_shape!r}")
    check_mask(cache, spec, x)
    if dtype not in _OUTPUT_DTYPES:
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
            raise ValueError(f"cache.dtype must be float16, float32 or float64, got {cache.dtype!r}")


def check_mask(cache, spec, x):
    """A fused op's cache holds its packed ReLU mask (uint8, C-contiguous, ceil(x.size / 8)
    bytes) and a bool `residual`; other ops' caches hold neither."""
    mask, residual = cache.mask, cache.residual
    if not spec.relu:
        if mask is not None or residual is not False:
            raise ValueError(f"cache.mask must be None and cache.residual False for {spec.name}, "
                             f"got {_type_name(mask)} and {residual!r}")
        return
    n_bytes = (x.size + 7) // 8
    if not (isinstance(mask, np.ndarray) and mask.dtype == np.uint8 and mask.shape == (n_bytes,)
            and mask.flags.c_contiguous):
        got = (f"dtype {mask.dtype}, shape {mask.shape}" if isinstance(mask, np.ndarray)
               else _type_name(mask))
        raise ValueError(f"cache.mask must be a C-contiguous uint8 array of shape {(n_bytes,)}, got {got}")
    if not isinstance(residual, (bool, np.bool_)):
        raise ValueError(f"cache.residual must be True or False, got {residual!r}")


def prepare_backward(dout, cache, spec, function, out=None):
    """Check the cache, dout and out; return dout C-contiguous in the cache's computation dtype,
    and out (None or the caller's dx array)."""
    check_cache(cache, spec, function)
    check_ndarray(dout, "dout")
    compute_dtype(dout, "dout")
    if dout.shape != cache.x.shape:
        raise ValueError(f"dout must have the shape of x, {cache.x.shape}, got shape {dout.shape}")
    out = check_out(out, "out", dout, cache.dtype, cache.x)
    return np.ascontiguousarray(dout, dtype=cache.x.dtype), out
