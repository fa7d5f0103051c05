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

from fastbn._ops import LAYOUT_SYNONYMS, LAYOUTS, OPS
from fastbn._results import NormCache

DEFAULT_EPS = 1e-5
DEFAULT_MOMENTUM = 0.9
_FLOAT32, _FLOAT64 = np.dtype(np.float32), np.dtype(np.float64)


def _numpy_is_vector(a, dtype, n):
    """Whether `a` is exactly an ndarray of shape (n,), C-contiguous and aligned, of `dtype`."""
    return (type(a) is np.ndarray and a.shape == (n,) and a.dtype == dtype
            and a.flags.c_contiguous and a.flags.aligned)


def _numpy_is_running(a, n, writeable):
    """Whether `a` is exactly an ndarray of shape (n,) with a floating dtype, writeable when
    `writeable`."""
    return (type(a) is np.ndarray and a.shape == (n,) and a.dtype.kind == "f"
            and (not writeable or a.flags.writeable))


try:  # the same two checks read from the array's C struct (fastbn/_arrays.pyx), built with the kernels
    from fastbn._arrays import is_running, is_vector
except ImportError:  # not built
    is_vector, is_running = _numpy_is_vector, _numpy_is_running


class Prepared(NamedTuple):
    """Validated forward input: arrays are C-contiguous in the computation dtype."""

    op: str
    x: np.ndarray
    gamma: np.ndarray  # flat (C,); ones for gamma=None
    beta: np.ndarray  # flat (C,); zeros for beta=None, None for ops without beta
    eps: float
    mode: str
    momentum: float  # the update's weight of the old value (n / (n + 1) for momentum=None)
    running_mean: object  # user's array, or None
    running_var: object
    param: object  # the user's bn_param dict (running statistics are written back into it)
    layout: str
    groups: int
    gamma_shape: tuple  # None: gamma=None
    beta_shape: tuple  # None: beta=None, or an op without beta
    dtype: np.dtype  # output dtype
    out: object = None  # the caller's output array (``out=``), or None
    unbiased: bool = False  # update running_var with the unbiased batch variance (PyTorch)
    batches: object = None  # num_batches_tracked before this call, or None: not counted
    axis: object = None  # layernorm/RMSNorm: the first normalized axis, from 0; None: the last
    residual: object = None  # fused ops: the residual, like x (C-contiguous, computation dtype), or None
    shapes: object = None  # what follows from x's shape (fastbn._ops.Shapes, for this layout, axis and G)


def _type_name(value):
    return type(value).__name__


def _shape_text(a):
    return f"a {a.ndim}-D array of shape {a.shape}"


def compute_dtype(a, name):
    """Return (computation dtype, output dtype) for an input array, or raise TypeError."""
    dt = a.dtype
    if dt is _FLOAT64 or dt is _FLOAT32:  # the usual dtypes, computed in themselves
        return dt, dt
    if dt.kind == "f":
        if dt.isnative and dt.itemsize in (4, 8):
            return dt, dt
        if dt.itemsize == 2:  # output in native float16, whatever x's byte order
            return np.dtype(np.float32), dt.newbyteorder("=")
        if dt.itemsize in (4, 8):
            return dt.newbyteorder("="), dt.newbyteorder("=")
    elif dt.kind in "biu":
        return np.dtype(np.float64), np.dtype(np.float64)
    raise TypeError(
        f"{name} must have a real floating, integer or bool dtype (float16, float32, float64, "
        f"int*, uint*, bool), got dtype {dt}"
    )


def check_ndarray(a, name):
    if type(a) is not np.ndarray:  # (the usual case skips the subclass checks)
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {_type_name(a)}")
        if isinstance(a, np.ma.MaskedArray):  # its mask would be ignored: masked values counted
            raise TypeError(f"{name} must be a numpy.ndarray without a mask, got a "
                            f"numpy.ma.MaskedArray (pass {name}.filled(value) or {name}.data)")
    return a


def _check_real(value, name, low, high, default):
    """A real number in [low, high] (high may be inf: then finite and >= low), or the default."""
    if value is None:
        return default
    if type(value) not in (float, int) and (  # the usual types skip the (slower) ABC check
            isinstance(value, (bool, np.bool_)) or not isinstance(value, Real)):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {_type_name(value)}")
    try:
        value = float(value)
        valid = low <= value <= high and value != np.inf  # not NaN
    except OverflowError:  # an int beyond float's range
        valid = False
    if not valid:
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
    """``param['layout']``: one of `allowed` or a synonym of one (LAYOUT_SYNONYMS); returned
    as the layout's own name."""
    layout = param.get("layout", allowed[0])
    if type(layout) is str and layout in allowed:  # the usual case: a layout's own name
        return layout
    if isinstance(layout, str) and LAYOUT_SYNONYMS.get(layout, layout) in allowed:
        return LAYOUT_SYNONYMS.get(layout, layout)
    synonyms = [s for s, target in LAYOUT_SYNONYMS.items() if target in allowed]
    raise ValueError(
        f"{name}['layout'] must be one of {list(allowed) + synonyms}, got {layout!r}"
    )


def _integer(value):
    """value as an int when it is an integer (a Python or NumPy integer, or a 0-D integer
    array as a state_dict holds it), not a bool; else None."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu":
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return None
    return int(value)


def check_axis(param, name, ndim):
    """``param['axis']`` (default -1): the first of the trailing axes to normalize, an integer
    in [-ndim, ndim - 1]; returned counted from 0, or None for the last axis (the layout's own
    channel axis)."""
    value = param.get("axis", -1)
    axis = value if type(value) is int else _integer(value)
    if axis is None:
        raise TypeError(f"{name}['axis'] must be an integer, got {value!r} of type {_type_name(value)}")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"{name}['axis'] must be in [{-ndim}, {ndim - 1}] for x of {ndim} dimensions, got {axis}"
        )
    return None if axis in (-1, ndim - 1) else axis % ndim


def check_flag(param, name, key):
    """A True/False setting (default False)."""
    value = param.get(key, False)
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}[{key!r}] must be True or False, got {value!r} of type {_type_name(value)}")
    return bool(value)


def check_momentum(param, name):
    """``param['momentum']``: a real number in [0, 1] (default 0.9), or None: a cumulative
    average (PyTorch's ``momentum=None``)."""
    if "momentum" in param and param["momentum"] is None:
        return None
    return _check_real(param.get("momentum"), f"{name}['momentum']", 0.0, 1.0, DEFAULT_MOMENTUM)


def check_batches_tracked(param, name, momentum):
    """``param['num_batches_tracked']``: an integer >= 0 (0 when missing and momentum is None),
    or None: not counted."""
    if "num_batches_tracked" not in param:
        return 0 if momentum is None else None
    value = param["num_batches_tracked"]
    count = _integer(value)
    if count is None or count < 0:
        error = TypeError if count is None else ValueError
        raise error(f"{name}['num_batches_tracked'] must be an integer >= 0, got {value!r}")
    return count


def check_running_settings(param, name):
    """A batchnorm's settings in `param`: ``(mode, eps, momentum, unbiased, batches)``, checked
    in that order as :func:`check_mode`, :func:`check_eps`, :func:`check_momentum`,
    :func:`check_flag` and :func:`check_batches_tracked` do (the usual values -- a float, True
    or False -- are taken without calling them: this runs on every call)."""
    mode = check_mode(param, name)
    get = param.get
    eps = get("eps", DEFAULT_EPS)
    if not (type(eps) is float and 0.0 <= eps < math.inf):
        eps = check_eps(param, name)
    momentum = get("momentum", DEFAULT_MOMENTUM)
    if not (type(momentum) is float and 0.0 <= momentum <= 1.0):
        momentum = check_momentum(param, name)
    unbiased = get("unbiased", False)
    if unbiased is not False and unbiased is not True:
        unbiased = check_flag(param, name, "unbiased")
    batches = check_batches_tracked(param, name, momentum)
    return mode, eps, momentum, unbiased, batches


def _fits(shape, broadcast_shape, channels, allow_single):
    """`shape` holds the `channels` values (or, `allow_single`, one value) and broadcasts
    against x as `broadcast_shape` does."""
    if len(shape) > len(broadcast_shape):
        return False
    tail = broadcast_shape[len(broadcast_shape) - len(shape):]
    if any(n != 1 and n != full for n, full in zip(shape, tail)):
        return False
    size = math.prod(shape)
    return size == channels or (allow_single and size == 1)


def check_affine(a, name, channels, broadcast_shape, dtype):
    """gamma/beta: shape (C,) or one of C values (or a single value) that broadcasts against x;
    returned flat (C,), with the shape as given. None (no parameter) gives ``(None, None)``."""
    if is_vector(a, dtype, channels):
        return a, a.shape  # the usual case, already what the kernels take
    if a is None:
        return None, None
    check_ndarray(a, name)
    compute_dtype(a, name)
    if a.shape != (channels,) and not _fits(a.shape, broadcast_shape, channels, True):
        raise ValueError(
            f"{name} must have shape {(channels,)} or {broadcast_shape}, or another shape of "
            f"{channels} values or of one value that broadcasts like it, got shape {a.shape}"
        )
    flat = np.ascontiguousarray(a, dtype=dtype).reshape(-1)
    if flat.size != channels:  # one value for every channel
        flat = np.full(channels, flat[0], dtype=dtype)
    return flat, a.shape


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
    if is_running(value, channels, mode == "train"):
        return value  # the usual case: what an earlier train-mode call stored
    full = f"{name}[{key!r}]"
    check_ndarray(value, full)
    if value.dtype.kind != "f":
        raise TypeError(f"{full} must be a floating-point array, got dtype {value.dtype}")
    if value.shape not in ((channels,), (1, channels)) and not _fits(
            value.shape, broadcast_shape, channels, False):
        raise ValueError(
            f"{full} must have one of the shapes {sorted({(channels,), (1, channels), broadcast_shape})} "
            f"or another shape of {channels} values that broadcasts like them, got shape {value.shape}"
        )
    if mode == "train" and not value.flags.writeable:
        raise ValueError(f"{full} must be writeable: train mode updates it in place")
    return value


def check_x(x, name, ndim_range, layout):
    """x must be an ndarray with ``ndim_range = (fewest, most)`` dimensions (most None: no
    limit), as `layout` (a :class:`~fastbn._ops.Layout`) describes; returns its dtypes."""
    check_ndarray(x, name)
    low, high = ndim_range
    if x.ndim < low or (high is not None and x.ndim > high):
        raise ValueError(f"{name} must be {layout.describe(low)}, got {_shape_text(x)}")
    return compute_dtype(x, name)


def prepare(spec, x, gamma, beta, param, groups=None, out=None, residual=None, *, whole_batch=True):
    """Validate the arguments of `spec`'s forward and return them as a :class:`Prepared` record.

    `beta` is ignored by ops without a shift (``spec.beta`` false), `groups` by ungrouped ops,
    `residual` by ops without a fused ReLU (``spec.relu`` false).
    ``whole_batch=False``: x is one part of a batch whose statistics are given (moments, other
    ranks), so its own count per channel is not checked; the caller checks the batch's.
    """
    name = spec.param_name
    check_param_dict(param, name)
    layout = check_layout(param, name, spec.layouts) if "NCHW" in spec.layouts else spec.layouts[0]
    geometry = LAYOUTS[layout]
    dtype, out_dtype = check_x(x, "x", spec.ndim_range(layout), geometry)
    axis = check_axis(param, name, x.ndim) if geometry.trailing else None
    if spec.running_stats:
        mode, eps, momentum, unbiased, batches = check_running_settings(param, name)
        if momentum is None:  # the cumulative average of the batches so far and this one
            momentum = batches / (batches + 1)
    else:
        mode, eps, momentum, unbiased, batches = "train", check_eps(param, name), 0.0, False, None
    shapes = spec.shapes(x.shape, layout, 1, axis)
    channels, broadcast_shape = shapes.channels, shapes.param_shape
    G = 1
    if spec.grouped:
        G = check_groups(groups, channels)
        shapes = spec.shapes(x.shape, layout, G, axis)
    gamma_flat, gamma_shape = check_affine(gamma, "gamma", channels, broadcast_shape, dtype)
    beta_flat, beta_shape = (check_affine(beta, "beta", channels, broadcast_shape, dtype)
                             if spec.beta else (None, None))
    running_mean = running_var = None
    if spec.running_stats:
        running_mean = check_running(param, name, "running_mean", channels, broadcast_shape, mode)
        running_var = check_running(param, name, "running_var", channels, broadcast_shape, mode)
        per_channel = shapes.before * shapes.after
        if whole_batch and mode == "train" and per_channel < 2:
            why = ("an empty batch has no statistics" if per_channel == 0 else
                   "with one value the output would be beta for every input")
            raise ValueError(
                f"train mode needs at least 2 values per {'feature' if layout == 'NC' else 'channel'} "
                f"to compute batch statistics, got {per_channel} (x has shape {x.shape}); {why}"
            )
    if gamma_flat is None or beta_flat is None:  # missing parameters (or an op without beta)
        gamma_flat = np.ones(channels, dtype=dtype) if gamma_flat is None else gamma_flat
        beta_flat = np.zeros(channels, dtype=dtype) if beta_flat is None and spec.beta else beta_flat
    given = (residual,) if spec.relu and residual is not None else ()
    residual = check_residual(residual, x, dtype) if given else None
    if out is not None:  # out must not overwrite an input, the running statistics included
        out = check_out(out, "out", x, out_dtype, (
            ("x", x), ("gamma", gamma), ("beta", beta), ("residual", residual),
            (f"{name}['running_mean']", running_mean), (f"{name}['running_var']", running_var)))
    # every field, in order, through tuple.__new__: the constructor's argument parsing and _make's
    # length check (interpreted code) are a measurable part of a small call
    return tuple.__new__(Prepared, (
        spec.name, np.ascontiguousarray(x, dtype=dtype), gamma_flat, beta_flat, eps, mode,
        momentum, running_mean, running_var, param, layout, G, gamma_shape, beta_shape,
        out_dtype, out,
        unbiased, batches if mode == "train" else None, axis, residual, shapes,
    ))


def check_residual(residual, x, dtype):
    """The fused ops' residual: an array of x's shape with a dtype x could have, returned
    C-contiguous in the computation dtype `dtype`."""
    check_ndarray(residual, "residual")
    compute_dtype(residual, "residual")
    if residual.shape != x.shape:
        raise ValueError(f"residual must have the shape of x, {x.shape}, got shape {residual.shape}")
    return np.ascontiguousarray(residual, dtype=dtype)


def check_out(out, name, like, dtype, inputs):
    """An ``out=`` array: None, or a writeable C-contiguous array of like's shape and `dtype`
    that shares no memory with the inputs: `inputs`, (what the message calls it, an array or
    None) pairs."""
    if out is None:
        return None
    check_ndarray(out, name)
    if out.shape != like.shape or out.dtype != dtype:
        raise ValueError(
            f"{name} must be an array of shape {like.shape} and dtype {dtype}, "
            f"got shape {out.shape} and dtype {out.dtype}"
        )
    if not (out.flags.c_contiguous and out.flags.writeable):
        lacks = "C-contiguous" if not out.flags.c_contiguous else "writeable"
        raise ValueError(f"{name} must be C-contiguous and writeable, got an array that is not "
                         f"{lacks}")
    for what, other in inputs:
        if other is not None and np.may_share_memory(out, other):
            raise ValueError(f"{name} must not share memory with the inputs, got an array that "
                             f"shares memory with {what}")
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


def _output_dtypes(x_dtype):
    """The output dtypes a forward that computed in `x_dtype` returns: its own, and float16
    for float32 (float16 input is computed in float32)."""
    if x_dtype == np.float32:
        return (x_dtype, np.dtype(np.float16))
    return (x_dtype,)


def _array_text(a):
    return f"shape {a.shape}, dtype {a.dtype}" if isinstance(a, np.ndarray) else _type_name(a)


def check_cache(cache, spec, function):
    """The cache must be a NormCache of `spec`'s op whose every field agrees with the others.

    x (a C-contiguous float32/float64 array) and the op fix what every other field may be: the
    layout (x's rank), the mode, the groups (dividing x's channels), gamma (C-contiguous, one
    value per channel, x's dtype), mean and invstd (arrays of x's dtype in the statistics' shape
    the forward returns), eps (finite and >= 0), gamma_shape and beta_shape (shapes the forward
    accepts for gamma and beta, None for an op without beta) and dtype (x's dtype; float16 for a
    float32 x). The checks read no data: O(1) for any size. They stop a cache from another op,
    or one edited by hand (``cache._replace(...)``), before a kernel indexes its arrays or a
    backward returns gradients of another dtype; the values of mean and invstd are used as
    they are.
    """
    if not isinstance(cache, NormCache):
        raise TypeError(
            f"cache must be the cache returned by {spec.forward} (a fastbn NormCache), "
            f"got {_type_name(cache)}"
        )
    (cache_op, x, gamma, mean, invstd, eps, mode, layout, groups, gamma_shape, beta_shape, dtype,
     axis) = cache[:13]
    if cache_op != spec.name:
        made_by = OPS[cache_op].forward if isinstance(cache_op, str) and cache_op in OPS else repr(cache_op)
        raise ValueError(
            f"cache comes from {made_by}, but {function} needs the cache of {spec.forward}"
        )
    if not (isinstance(x, np.ndarray) and x.dtype.char in "fd" and x.dtype.isnative
            and x.flags.c_contiguous):
        got = f"dtype {x.dtype}, C-contiguous {x.flags.c_contiguous}" if isinstance(x, np.ndarray) else _type_name(x)
        raise ValueError(f"cache.x must be a C-contiguous float32 or float64 array, got {got}")
    if not isinstance(layout, str) or layout not in spec.layouts:
        raise ValueError(f"cache.layout must be one of {list(spec.layouts)}, got {layout!r}")
    low, high = spec.ndim_range(layout)
    if x.ndim < low or (high is not None and x.ndim > high):
        expected = f"at least {low}" if high is None else f"{low}"
        raise ValueError(f"cache.x must have {expected} dimensions for {spec.name}, got shape {x.shape}")
    if axis is not None:
        given, axis = axis, _integer(axis)
        if not (LAYOUTS[layout].trailing and axis is not None and 0 <= axis < x.ndim):
            expected = (f"an integer in [0, {x.ndim - 1}] or None" if LAYOUTS[layout].trailing
                        else "None")
            raise ValueError(f"cache.axis must be {expected} for {spec.name}, got {given!r}")
    modes = ("train", "test") if spec.running_stats else ("train",)
    if not isinstance(mode, str) or mode not in modes:
        raise ValueError(f"cache.mode must be one of {list(modes)}, got {mode!r}")
    shapes = spec.shapes(x.shape, layout, 1, axis)
    channels = shapes.channels
    if spec.grouped:
        try:
            groups = check_groups(groups, channels)
        except (TypeError, ValueError) as error:  # the forward's check, named for the cache
            raise ValueError(f"cache.groups must be an integer >= 1 that divides the number of "
                             f"channels C={channels}, got {groups!r}") from error
        shapes = spec.shapes(x.shape, layout, groups, axis)
    elif type(groups) is not int or groups != 1:
        raise ValueError(f"cache.groups must be 1 for {spec.name}, got {groups!r}")
    if not (type(eps) is float and 0.0 <= eps < np.inf):  # what a forward stores
        if not (isinstance(eps, Real) and not isinstance(eps, (bool, np.bool_))
                and 0.0 <= eps < np.inf):
            raise ValueError(f"cache.eps must be a finite real number >= 0, got {eps!r}")
    if not (isinstance(gamma, np.ndarray) and gamma.shape == (channels,) and gamma.dtype == x.dtype
            and gamma.flags.c_contiguous):
        raise ValueError(
            f"cache.gamma must be a C-contiguous array of shape {(channels,)} and dtype {x.dtype}, "
            f"got {_array_text(gamma)}"
        )
    stat_shape = shapes.stat_shape
    for name, stat in (("mean", mean), ("invstd", invstd)):
        if not (isinstance(stat, np.ndarray) and stat.shape == stat_shape and stat.dtype == x.dtype):
            raise ValueError(
                f"cache.{name} must be an array of shape {stat_shape} and dtype {x.dtype} (those of "
                f"the statistics of cache.x), got {_array_text(stat)}"
            )
    params = (("gamma_shape", gamma_shape), ("beta_shape", beta_shape)) if spec.beta else (
        ("gamma_shape", gamma_shape),)
    for name, shape in params:
        if not (shape is None or isinstance(shape, tuple) and (
                shape == (channels,)  # the usual shape first: the cheapest check
                or all(type(n) is int for n in shape)
                and _fits(shape, shapes.param_shape, channels, True))):
            raise ValueError(
                f"cache.{name} must be None or a shape the forward takes for gamma/beta of an x "
                f"of shape {x.shape} ({(channels,)}, {shapes.param_shape}, "
                f"or another of {channels} values or of one value that broadcasts like it), "
                f"got {shape!r}"
            )
    if not spec.beta and beta_shape is not None:
        raise ValueError(f"cache.beta_shape must be None for {spec.name} (it has no beta), got {beta_shape!r}")
    check_mask(cache, spec, x)
    if dtype is x.dtype:  # the usual case (dtypes of one kind are one object)
        return
    outputs = _output_dtypes(x.dtype)
    if not isinstance(dtype, np.dtype) or dtype not in outputs:
        raise ValueError(
            f"cache.dtype must be {' or '.join(map(str, outputs))} for a cache.x of dtype {x.dtype}, "
            f"got {dtype!r}"
        )


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
    if out is not None:  # dx must not overwrite anything the kernels read while writing it
        out = check_out(out, "out", dout, cache.dtype, (
            ("dout", dout), ("cache.x", cache.x), ("cache.gamma", cache.gamma),
            ("cache.mean", cache.mean), ("cache.invstd", cache.invstd), ("cache.mask", cache.mask)))
    return np.ascontiguousarray(dout, dtype=cache.x.dtype), out
