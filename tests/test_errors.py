"""Bad input: every public function raises a clear error, and a failing call changes nothing.

Each bad input is one :class:`Bad` case: the public function, a builder of its arguments (all
valid but one), the exception type and a regular expression the message must match. Messages
name the argument, what was expected and what was received. Every case runs on both backends
and must be raised by the validation layer (``fastbn/_validation.py``), not from deep inside
NumPy or a kernel.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import fastbn
import fastbn._ops
from fastbn import _backends, reference
from registry import OPS, copy_param

BACKENDS = fastbn.available_backends()


def _x(*shape, dtype=np.float64):
    return np.random.default_rng(sum(shape)).standard_normal(shape).astype(dtype)


def _train(**extra):
    return {"mode": "train", **extra}


def _test(C, **extra):
    return {"mode": "test", "running_mean": np.zeros(C), "running_var": np.ones(C), **extra}


_KEEP = object()  # builder default: keep the valid argument


def _pick(given, default):
    return default() if given is _KEEP else given


def _bn(x=_KEEP, gamma=_KEEP, beta=_KEEP, param=_KEEP):
    """batchnorm_forward arguments: x (6, 4), with any of them replaced."""
    return (_pick(x, lambda: _x(6, 4)), _pick(gamma, lambda: np.ones(4)),
            _pick(beta, lambda: np.zeros(4)), _pick(param, _train))


def _sbn(x=_KEEP, gamma=_KEEP, beta=_KEEP, param=_KEEP):
    """spatial_batchnorm_forward arguments: x (2, 3, 4, 5) NCHW."""
    return (_pick(x, lambda: _x(2, 3, 4, 5)), _pick(gamma, lambda: np.ones(3)),
            _pick(beta, lambda: np.zeros(3)), _pick(param, _train))


def _ln(x=_KEEP, gamma=_KEEP, beta=_KEEP, param=_KEEP):
    """layernorm_forward arguments: x (3, 5)."""
    return (_pick(x, lambda: _x(3, 5)), _pick(gamma, lambda: np.ones(5)),
            _pick(beta, lambda: np.zeros(5)), _pick(param, dict))


def _rms(x=_KEEP, gamma=_KEEP, param=_KEEP):
    """rmsnorm_forward arguments: x (3, 5)."""
    return (_pick(x, lambda: _x(3, 5)), _pick(gamma, lambda: np.ones(5)), _pick(param, dict))


def _gn(x=_KEEP, gamma=_KEEP, beta=_KEEP, G=2, param=_KEEP):
    """spatial_groupnorm_forward arguments: x (2, 4, 3, 3), G = 2."""
    return (_pick(x, lambda: _x(2, 4, 3, 3)), _pick(gamma, lambda: np.ones(4)),
            _pick(beta, lambda: np.zeros(4)), G, _pick(param, dict))


_FORWARDS = {
    "batchnorm": ("batchnorm_forward", _bn),
    "spatial_batchnorm": ("spatial_batchnorm_forward", _sbn),
    "layernorm": ("layernorm_forward", _ln),
    "groupnorm": ("spatial_groupnorm_forward", _gn),
    "rmsnorm": ("rmsnorm_forward", _rms),
}


def _cache(op, **changes):
    """A valid cache of `op` (made by the reference), with fields replaced by `changes`."""
    name, make = _FORWARDS[op]
    _, cache = getattr(reference, name)(*make())
    return cache._replace(**changes)


def _cache32(op, **changes):
    """A valid float32 cache of `op` (made by the reference), with fields replaced by `changes`."""
    name, make = _FORWARDS[op]
    args = [a.astype(np.float32) if isinstance(a, np.ndarray) else a for a in make()]
    _, cache = getattr(reference, name)(*args)
    return cache._replace(**changes)


def _dout(op):
    return np.ones_like(_cache(op).x)


@dataclass(frozen=True)
class Bad:
    """One bad input: ``getattr(fastbn, function)(*build(), backend=...)`` raises error(match)."""

    id: str
    function: str
    build: Callable[[], tuple]
    error: type
    match: str


NDARRAY = r"must be a numpy\.ndarray, got "
DTYPE = r"must have a real floating, integer or bool dtype .*, got dtype "

FORWARD_CASES = [
    # --- batchnorm_forward: x
    Bad("bn-x-1d", "batchnorm_forward", lambda: _bn(x=_x(6)), ValueError,
        r"x must be a 2-D array of shape \(N, D\), got a 1-D array of shape \(6,\)"),
    Bad("bn-x-3d", "batchnorm_forward", lambda: _bn(x=_x(6, 4, 1)), ValueError,
        r"x must be a 2-D array .*, got a 3-D array of shape \(6, 4, 1\)"),
    Bad("bn-x-0d", "batchnorm_forward", lambda: _bn(x=np.array(1.0)), ValueError,
        r"x must be a 2-D array .*, got a 0-D array of shape \(\)"),
    Bad("bn-x-list", "batchnorm_forward", lambda: _bn(x=_x(6, 4).tolist()), TypeError,
        "x " + NDARRAY + "list"),
    Bad("bn-x-ragged-list", "batchnorm_forward", lambda: _bn(x=[[1.0, 2.0, 3.0, 4.0], [1.0]]),
        TypeError, "x " + NDARRAY + "list"),
    Bad("bn-x-scalar", "batchnorm_forward", lambda: _bn(x=3.0), TypeError, "x " + NDARRAY + "float"),
    Bad("bn-x-numpy-scalar", "batchnorm_forward", lambda: _bn(x=np.float64(3.0)), TypeError,
        "x " + NDARRAY + "float64"),
    Bad("bn-x-none", "batchnorm_forward", lambda: _bn(x=None), TypeError,
        "x " + NDARRAY + "NoneType"),
    Bad("bn-x-masked", "batchnorm_forward",
        lambda: _bn(x=np.ma.masked_array(_x(6, 4), mask=np.eye(6, 4, dtype=bool))), TypeError,
        r"x must be a numpy.ndarray without a mask, got a numpy.ma.MaskedArray \(pass "
        r"x.filled\(value\) or x.data\)"),
    Bad("bn-x-complex", "batchnorm_forward", lambda: _bn(x=_x(6, 4).astype(complex)), TypeError,
        "x " + DTYPE + "complex128"),
    Bad("bn-x-object", "batchnorm_forward", lambda: _bn(x=_x(6, 4).astype(object)), TypeError,
        "x " + DTYPE + "object"),
    Bad("bn-x-ragged-object", "batchnorm_forward",
        lambda: _bn(x=_ragged_object_array()), TypeError, "x " + DTYPE + "object"),
    Bad("bn-x-string", "batchnorm_forward", lambda: _bn(x=np.full((6, 4), "1.0")), TypeError,
        "x " + DTYPE + "<U3"),
    Bad("bn-x-datetime", "batchnorm_forward",
        lambda: _bn(x=np.zeros((6, 4), dtype="datetime64[s]")), TypeError, "x " + DTYPE + "datetime64"),
    # --- batchnorm_forward: gamma, beta
    Bad("bn-gamma-too-long", "batchnorm_forward", lambda: _bn(gamma=np.ones(5)), ValueError,
        r"gamma must have shape \(4,\) or \(1, 4\), or another shape .* broadcasts like it, got shape \(5,\)"),
    Bad("bn-gamma-column", "batchnorm_forward", lambda: _bn(gamma=np.ones((4, 1))), ValueError,
        r"gamma must have shape \(4,\) or \(1, 4\), or another shape of 4 values or of one value that broadcasts like it, got shape \(4, 1\)"),
    Bad("bn-beta-two-values", "batchnorm_forward", lambda: _bn(beta=np.zeros((1, 2))), ValueError,
        r"beta must have shape \(4,\) or \(1, 4\), or another shape of 4 values or of one value that broadcasts like it, got shape \(1, 2\)"),
    Bad("bn-gamma-list", "batchnorm_forward", lambda: _bn(gamma=[1.0] * 4), TypeError,
        "gamma " + NDARRAY + "list"),
    Bad("bn-beta-complex", "batchnorm_forward", lambda: _bn(beta=np.zeros(4, complex)), TypeError,
        "beta " + DTYPE + "complex128"),
    Bad("bn-gamma-string", "batchnorm_forward", lambda: _bn(gamma=np.array(["1"] * 4)), TypeError,
        "gamma " + DTYPE + "<U1"),
    # --- batchnorm_forward: bn_param
    Bad("bn-param-none", "batchnorm_forward", lambda: _bn(param=None), TypeError,
        "bn_param must be a dict, got NoneType"),
    Bad("bn-param-string", "batchnorm_forward", lambda: _bn(param="train"), TypeError,
        "bn_param must be a dict, got str"),
    Bad("bn-mode-missing", "batchnorm_forward", lambda: _bn(param={"eps": 1e-5}), ValueError,
        r"bn_param\['mode'\] is required: 'train' or 'test'"),
    Bad("bn-mode-eval", "batchnorm_forward", lambda: _bn(param={"mode": "eval"}), ValueError,
        r"bn_param\['mode'\] must be 'train' or 'test', got 'eval'"),
    Bad("bn-mode-uppercase", "batchnorm_forward", lambda: _bn(param={"mode": "TRAIN"}), ValueError,
        r"bn_param\['mode'\] must be 'train' or 'test', got 'TRAIN'"),
    Bad("bn-mode-bool", "batchnorm_forward", lambda: _bn(param={"mode": True}), ValueError,
        r"bn_param\['mode'\] must be 'train' or 'test', got True"),
    Bad("bn-eps-negative", "batchnorm_forward", lambda: _bn(param=_train(eps=-1e-5)), ValueError,
        r"bn_param\['eps'\] must be a real number finite and >= 0.0, got -1e-05"),
    Bad("bn-eps-nan", "batchnorm_forward", lambda: _bn(param=_train(eps=float("nan"))), ValueError,
        r"bn_param\['eps'\] must be a real number finite and >= 0.0, got nan"),
    Bad("bn-eps-inf", "batchnorm_forward", lambda: _bn(param=_train(eps=np.inf)), ValueError,
        r"bn_param\['eps'\] must be a real number finite and >= 0.0, got inf"),
    Bad("bn-eps-huge-int", "batchnorm_forward", lambda: _bn(param=_train(eps=10**400)), ValueError,
        r"bn_param\['eps'\] must be a real number finite and >= 0.0, got 1000000"),
    Bad("bn-momentum-huge-int", "batchnorm_forward", lambda: _bn(param=_train(momentum=-10**400)),
        ValueError, r"bn_param\['momentum'\] must be a real number in \[0.0, 1.0\], got -1000000"),
    Bad("bn-eps-string", "batchnorm_forward", lambda: _bn(param=_train(eps="1e-5")), TypeError,
        r"bn_param\['eps'\] must be a real number, got '1e-5' of type str"),
    Bad("bn-eps-array", "batchnorm_forward", lambda: _bn(param=_train(eps=np.full(4, 1e-5))), TypeError,
        r"bn_param\['eps'\] must be a real number, got array\(.*\) of type ndarray"),
    Bad("bn-momentum-above-1", "batchnorm_forward", lambda: _bn(param=_train(momentum=1.5)), ValueError,
        r"bn_param\['momentum'\] must be a real number in \[0.0, 1.0\], got 1.5"),
    Bad("bn-momentum-negative", "batchnorm_forward", lambda: _bn(param=_train(momentum=-0.1)),
        ValueError, r"bn_param\['momentum'\] must be a real number in \[0.0, 1.0\], got -0.1"),
    Bad("bn-momentum-nan", "batchnorm_forward", lambda: _bn(param=_train(momentum=np.nan)), ValueError,
        r"bn_param\['momentum'\] must be a real number in \[0.0, 1.0\], got nan"),
    Bad("bn-momentum-bool", "batchnorm_forward", lambda: _bn(param=_train(momentum=True)), TypeError,
        r"bn_param\['momentum'\] must be a real number, got True of type bool"),
    # --- batchnorm_forward: running statistics and batch size
    Bad("bn-test-without-running-stats", "batchnorm_forward", lambda: _bn(param={"mode": "test"}),
        ValueError, r"bn_param\['running_mean'\] is missing: test mode needs the running statistics"),
    Bad("bn-test-without-running-var", "batchnorm_forward",
        lambda: _bn(param={"mode": "test", "running_mean": np.zeros(4)}), ValueError,
        r"bn_param\['running_var'\] is missing"),
    Bad("bn-running-mean-shape", "batchnorm_forward",
        lambda: _bn(param=_train(running_mean=np.zeros(5), running_var=np.ones(4))), ValueError,
        r"bn_param\['running_mean'\] must have one of the shapes \[\(1, 4\), \(4,\)\] or another shape of 4 values that broadcasts like them, got shape \(5,\)"),
    Bad("bn-running-var-shape-test", "batchnorm_forward",
        lambda: _bn(param=_test(4, running_var=np.ones((4, 1)))), ValueError,
        r"bn_param\['running_var'\] must have one of the shapes .* that broadcasts like them, got shape \(4, 1\)"),
    Bad("bn-running-mean-int", "batchnorm_forward",
        lambda: _bn(param=_test(4, running_mean=np.zeros(4, dtype=np.int64))), TypeError,
        r"bn_param\['running_mean'\] must be a floating-point array, got dtype int64"),
    Bad("bn-running-var-list", "batchnorm_forward",
        lambda: _bn(param=_test(4, running_var=[1.0] * 4)), TypeError,
        r"bn_param\['running_var'\] " + NDARRAY + "list"),
    Bad("bn-running-mean-read-only-train", "batchnorm_forward",
        lambda: _bn(param=_train(running_mean=_read_only(np.zeros(4)), running_var=np.ones(4))),
        ValueError, r"bn_param\['running_mean'\] must be writeable: train mode updates it in place"),
    Bad("bn-train-batch-of-one", "batchnorm_forward", lambda: _bn(x=_x(1, 4)), ValueError,
        r"train mode needs at least 2 values per feature .*, got 1 \(x has shape \(1, 4\)\)"),
    Bad("bn-train-empty-batch", "batchnorm_forward", lambda: _bn(x=_x(0, 4)), ValueError,
        r"at least 2 values per feature .*, got 0 .*an empty batch has no statistics"),
    # --- spatial_batchnorm_forward
    Bad("sbn-x-2d", "spatial_batchnorm_forward", lambda: _sbn(x=_x(2, 3)), ValueError,
        r"x must be an array of at least 3 dimensions, shape \(N, C, \*spatial\), got a 2-D array "
        r"of shape \(2, 3\)"),
    Bad("sbn-x-2d-nhwc", "spatial_batchnorm_forward",
        lambda: _sbn(x=_x(2, 3), param=_train(layout="NHWC")), ValueError,
        r"x must be an array of at least 3 dimensions, shape \(N, \*spatial, C\), got a 2-D array"),
    Bad("sbn-x-3d-channels-last-wrong-C", "spatial_batchnorm_forward",
        lambda: _sbn(x=_x(2, 5, 4), param=_train(layout="channels_last")), ValueError,
        r"gamma must have shape \(4,\) or \(1, 1, 4\), .*got shape \(3,\)"),
    Bad("sbn-unbiased-string", "spatial_batchnorm_forward",
        lambda: _sbn(param=_train(unbiased="yes")), TypeError,
        r"bn_param\['unbiased'\] must be True or False, got 'yes' of type str"),
    Bad("sbn-unbiased-int", "spatial_batchnorm_forward", lambda: _sbn(param=_train(unbiased=1)),
        TypeError, r"bn_param\['unbiased'\] must be True or False, got 1 of type int"),
    Bad("sbn-num-batches-negative", "spatial_batchnorm_forward",
        lambda: _sbn(param=_train(momentum=None, num_batches_tracked=-1)), ValueError,
        r"bn_param\['num_batches_tracked'\] must be an integer >= 0, got -1"),
    Bad("sbn-num-batches-float", "spatial_batchnorm_forward",
        lambda: _sbn(param=_train(num_batches_tracked=2.0)), TypeError,
        r"bn_param\['num_batches_tracked'\] must be an integer >= 0, got 2.0"),
    Bad("sbn-beta-wrong-with-batch-count", "spatial_batchnorm_forward",
        lambda: _sbn(beta=np.zeros(2), param=_train(momentum=None, num_batches_tracked=3,
                                                    unbiased=True)), ValueError,
        r"beta must have shape \(3,\) or \(1, 3, 1, 1\)"),
    Bad("sbn-momentum-string", "spatial_batchnorm_forward",
        lambda: _sbn(param=_train(momentum="none")), TypeError,
        r"bn_param\['momentum'\] must be a real number, got 'none' of type str"),
    Bad("sbn-layout-unknown", "spatial_batchnorm_forward", lambda: _sbn(param=_train(layout="NWHC")),
        ValueError, r"bn_param\['layout'\] must be one of \['NCHW', 'NHWC', 'channels_first', 'channels_last'\], got 'NWHC'"),
    Bad("sbn-layout-lowercase", "spatial_batchnorm_forward",
        lambda: _sbn(param=_train(layout="nchw")), ValueError,
        r"bn_param\['layout'\] must be one of \['NCHW', 'NHWC', 'channels_first', 'channels_last'\], got 'nchw'"),
    Bad("sbn-layout-none", "spatial_batchnorm_forward", lambda: _sbn(param=_train(layout=None)),
        ValueError, r"bn_param\['layout'\] must be one of \['NCHW', 'NHWC', 'channels_first', 'channels_last'\], got None"),
    Bad("sbn-gamma-nhwc-shape-for-nchw", "spatial_batchnorm_forward",
        lambda: _sbn(gamma=np.ones((1, 1, 1, 3))), ValueError,
        r"gamma must have shape \(3,\) or \(1, 3, 1, 1\), or another shape .* broadcasts like it, got shape \(1, 1, 1, 3\)"),
    Bad("sbn-beta-wrong-channels", "spatial_batchnorm_forward", lambda: _sbn(beta=np.zeros(4)),
        ValueError, r"beta must have shape \(3,\) or \(1, 3, 1, 1\), or another shape .* broadcasts like it, got shape \(4,\)"),
    Bad("sbn-running-var-shape", "spatial_batchnorm_forward",
        lambda: _sbn(param=_test(3, running_var=np.ones((1, 1, 1, 3)))), ValueError,
        r"bn_param\['running_var'\] must have one of the shapes .* that broadcasts like them, got shape \(1, 1, 1, 3\)"),
    Bad("sbn-train-one-value-per-channel", "spatial_batchnorm_forward",
        lambda: _sbn(x=_x(1, 3, 1, 1)), ValueError,
        r"at least 2 values per channel .*, got 1 \(x has shape \(1, 3, 1, 1\)\)"),
    Bad("sbn-train-empty-plane", "spatial_batchnorm_forward", lambda: _sbn(x=_x(2, 3, 0, 5)),
        ValueError, r"at least 2 values per channel .*, got 0 .*an empty batch"),
    Bad("sbn-test-without-running-stats", "spatial_batchnorm_forward",
        lambda: _sbn(param={"mode": "test", "layout": "NHWC"}, x=_x(2, 4, 5, 3)), ValueError,
        r"bn_param\['running_mean'\] is missing"),
    Bad("sbn-x-object", "spatial_batchnorm_forward",
        lambda: _sbn(x=_x(2, 3, 4, 5).astype(object)), TypeError, "x " + DTYPE + "object"),
    # --- layernorm_forward
    Bad("ln-x-0d", "layernorm_forward", lambda: _ln(x=np.array(2.0)), ValueError,
        r"x must be an array of at least 1 dimension, shape \(..., D\), got a 0-D array"),
    Bad("ln-x-tuple", "layernorm_forward", lambda: _ln(x=(1.0, 2.0, 3.0, 4.0, 5.0)), TypeError,
        "x " + NDARRAY + "tuple"),
    Bad("ln-x-complex64", "layernorm_forward", lambda: _ln(x=_x(3, 5).astype(np.complex64)), TypeError,
        "x " + DTYPE + "complex64"),
    Bad("ln-gamma-wrong-D", "layernorm_forward", lambda: _ln(gamma=np.ones(3)), ValueError,
        r"gamma must have shape \(5,\) or \(1, 5\), or another shape .* broadcasts like it, got shape \(3,\)"),
    Bad("ln-beta-2d-wrong", "layernorm_forward", lambda: _ln(beta=np.zeros((3, 5))), ValueError,
        r"beta must have shape \(5,\) or \(1, 5\), or another shape .* broadcasts like it, got shape \(3, 5\)"),
    Bad("ln-axis-too-small", "layernorm_forward", lambda: _ln(param={"axis": -3}), ValueError,
        r"ln_param\['axis'\] must be in \[-2, 1\] for x of 2 dimensions, got -3"),
    Bad("ln-axis-float", "layernorm_forward", lambda: _ln(param={"axis": 1.0}), TypeError,
        r"ln_param\['axis'\] must be an integer, got 1.0 of type float"),
    Bad("ln-axis-bool", "layernorm_forward", lambda: _ln(param={"axis": True}), TypeError,
        r"ln_param\['axis'\] must be an integer, got True of type bool"),
    Bad("ln-axis-none", "layernorm_forward", lambda: _ln(param={"axis": None}), TypeError,
        r"ln_param\['axis'\] must be an integer, got None of type NoneType"),
    Bad("ln-gamma-of-last-axis-for-axis-0", "layernorm_forward",
        lambda: _ln(param={"axis": 0}), ValueError,
        r"gamma must have shape \(15,\) or \(3, 5\), or another shape .*, got shape \(5,\)"),
    Bad("ln-eps-negative", "layernorm_forward", lambda: _ln(param={"eps": -1.0}), ValueError,
        r"ln_param\['eps'\] must be a real number finite and >= 0.0, got -1.0"),
    Bad("ln-eps-none-string", "layernorm_forward", lambda: _ln(param={"eps": "small"}), TypeError,
        r"ln_param\['eps'\] must be a real number, got 'small' of type str"),
    Bad("ln-param-list", "layernorm_forward", lambda: _ln(param=[]), TypeError,
        "ln_param must be a dict, got list"),
    # --- rmsnorm_forward
    Bad("rms-x-0d", "rmsnorm_forward", lambda: _rms(x=np.array(2.0)), ValueError,
        r"x must be an array of at least 1 dimension, shape \(..., D\), got a 0-D array"),
    Bad("rms-x-list", "rmsnorm_forward", lambda: _rms(x=[1.0, 2.0]), TypeError, "x " + NDARRAY + "list"),
    Bad("rms-x-complex", "rmsnorm_forward", lambda: _rms(x=_x(3, 5).astype(complex)), TypeError,
        "x " + DTYPE + "complex128"),
    Bad("rms-gamma-wrong-D", "rmsnorm_forward", lambda: _rms(gamma=np.ones(4)), ValueError,
        r"gamma must have shape \(5,\) or \(1, 5\), or another shape .* broadcasts like it, got shape \(4,\)"),
    Bad("rms-gamma-list", "rmsnorm_forward", lambda: _rms(gamma=[1.0] * 5), TypeError,
        "gamma " + NDARRAY + "list"),
    Bad("rms-axis-out-of-range", "rmsnorm_forward", lambda: _rms(param={"axis": 2}), ValueError,
        r"ln_param\['axis'\] must be in \[-2, 1\] for x of 2 dimensions, got 2"),
    Bad("rms-eps-negative", "rmsnorm_forward", lambda: _rms(param={"eps": -1e-5}), ValueError,
        r"ln_param\['eps'\] must be a real number finite and >= 0.0, got -1e-05"),
    Bad("rms-eps-nan", "rmsnorm_forward", lambda: _rms(param={"eps": float("nan")}), ValueError,
        r"ln_param\['eps'\] must be a real number finite and >= 0.0, got nan"),
    Bad("rms-param-none", "rmsnorm_forward", lambda: _rms(param=None), TypeError,
        "ln_param must be a dict, got NoneType"),
    # --- spatial_groupnorm_forward
    Bad("gn-x-1d", "spatial_groupnorm_forward", lambda: _gn(x=_x(4)), ValueError,
        r"x must be an array of at least 2 dimensions, shape \(N, C, \*spatial\), got a 1-D array "
        r"of shape \(4,\)"),
    Bad("gn-gamma-partial-broadcast", "spatial_groupnorm_forward",
        lambda: _gn(gamma=np.ones((2, 1, 1))), ValueError,
        r"gamma must have shape \(4,\) or \(1, 4, 1, 1\), or another shape .*, got shape \(2, 1, 1\)"),
    Bad("gn-G-not-dividing-C", "spatial_groupnorm_forward", lambda: _gn(G=3), ValueError,
        r"G must divide the number of channels C=4, got G=3"),
    Bad("gn-G-larger-than-C", "spatial_groupnorm_forward", lambda: _gn(G=8), ValueError,
        r"G must divide the number of channels C=4, got G=8"),
    Bad("gn-G-zero", "spatial_groupnorm_forward", lambda: _gn(G=0), ValueError, r"G must be >= 1, got 0"),
    Bad("gn-G-negative", "spatial_groupnorm_forward", lambda: _gn(G=-2), ValueError,
        r"G must be >= 1, got -2"),
    Bad("gn-G-float", "spatial_groupnorm_forward", lambda: _gn(G=2.0), TypeError,
        r"G must be an integer, got 2.0 of type float"),
    Bad("gn-G-string", "spatial_groupnorm_forward", lambda: _gn(G="2"), TypeError,
        r"G must be an integer, got '2' of type str"),
    Bad("gn-G-bool", "spatial_groupnorm_forward", lambda: _gn(G=True), TypeError,
        r"G must be an integer, got True of type bool"),
    Bad("gn-G-none", "spatial_groupnorm_forward", lambda: _gn(G=None), TypeError,
        r"G must be an integer, got None of type NoneType"),
    Bad("gn-gamma-row-shape", "spatial_groupnorm_forward", lambda: _gn(gamma=np.ones((1, 4))),
        ValueError, r"gamma must have shape \(4,\) or \(1, 4, 1, 1\), or another shape .* broadcasts like it, got shape \(1, 4\)"),
    Bad("gn-layout-nhwc", "spatial_groupnorm_forward", lambda: _gn(param={"layout": "NHWC"}),
        ValueError, r"gn_param\['layout'\] must be one of \['NCHW', 'channels_first'\], got 'NHWC'"),
    Bad("gn-eps-nan", "spatial_groupnorm_forward", lambda: _gn(param={"eps": np.float32("nan")}),
        ValueError, r"gn_param\['eps'\] must be a real number finite and >= 0.0, got nan"),
    Bad("gn-param-none", "spatial_groupnorm_forward", lambda: _gn(param=None), TypeError,
        "gn_param must be a dict, got NoneType"),
    Bad("gn-x-bytes", "spatial_groupnorm_forward",
        lambda: _gn(x=np.zeros((2, 4, 3, 3), dtype="S4")), TypeError, "x " + DTYPE + "|S4"),
]

def _read_only(a):
    a.flags.writeable = False
    return a


def _ragged_object_array():
    a = np.empty((6, 4), dtype=object)
    for i in range(6):
        for j in range(4):
            a[i, j] = [1.0] * (j + 1)
    return a


BACKWARD_CASES = [
    # --- the cache
    Bad("bn-back-cache-of-layernorm", "batchnorm_backward",
        lambda: (np.ones((6, 4)), _cache("layernorm")), ValueError,
        "cache comes from layernorm_forward, but batchnorm_backward needs the cache of batchnorm_forward"),
    Bad("bn-back-alt-cache-of-spatial", "batchnorm_backward_alt",
        lambda: (_dout("spatial_batchnorm"), _cache("spatial_batchnorm")), ValueError,
        "cache comes from spatial_batchnorm_forward, but batchnorm_backward_alt needs the cache of "
        "batchnorm_forward"),
    Bad("sbn-back-cache-of-groupnorm", "spatial_batchnorm_backward",
        lambda: (_dout("groupnorm"), _cache("groupnorm")), ValueError,
        "cache comes from spatial_groupnorm_forward, but spatial_batchnorm_backward needs the cache of "
        "spatial_batchnorm_forward"),
    Bad("rms-back-cache-of-layernorm", "rmsnorm_backward",
        lambda: (_dout("layernorm"), _cache("layernorm")), ValueError,
        "cache comes from layernorm_forward, but rmsnorm_backward needs the cache of rmsnorm_forward"),
    Bad("ln-back-cache-of-rmsnorm", "layernorm_backward",
        lambda: (_dout("rmsnorm"), _cache("rmsnorm")), ValueError,
        "cache comes from rmsnorm_forward, but layernorm_backward needs the cache of layernorm_forward"),
    Bad("rms-back-tampered-invstd-size", "rmsnorm_backward",
        lambda: (_dout("rmsnorm"), _cache("rmsnorm", invstd=np.ones(2))), ValueError,
        r"cache.invstd must be an array of shape \(3,\) and dtype float64 \(those of the statistics of cache.x\), got shape \(2,\)"),
    Bad("rms-back-tampered-beta-shape", "rmsnorm_backward",
        lambda: (_dout("rmsnorm"), _cache("rmsnorm", beta_shape=(5,))), ValueError,
        r"cache.beta_shape must be None for rmsnorm \(it has no beta\), got \(5,\)"),
    Bad("ln-back-cache-of-batchnorm", "layernorm_backward",
        lambda: (_dout("batchnorm"), _cache("batchnorm")), ValueError,
        "cache comes from batchnorm_forward, but layernorm_backward needs"),
    Bad("gn-back-cache-of-spatial", "spatial_groupnorm_backward",
        lambda: (_dout("spatial_batchnorm"), _cache("spatial_batchnorm")), ValueError,
        "cache comes from spatial_batchnorm_forward, but spatial_groupnorm_backward needs"),
    Bad("bn-back-cache-none", "batchnorm_backward", lambda: (np.ones((6, 4)), None), TypeError,
        r"cache must be the cache returned by batchnorm_forward \(a fastbn NormCache\), got NoneType"),
    Bad("bn-back-cache-cs231n-tuple", "batchnorm_backward",
        lambda: (np.ones((6, 4)), tuple(_cache("batchnorm"))), TypeError,
        r"cache must be the cache returned by batchnorm_forward .*, got tuple"),
    Bad("ln-back-cache-dict", "layernorm_backward",
        lambda: (_dout("layernorm"), _cache("layernorm")._asdict()), TypeError,
        r"cache must be the cache returned by layernorm_forward .*, got dict"),
    Bad("gn-back-cache-array", "spatial_groupnorm_backward",
        lambda: (_dout("groupnorm"), _dout("groupnorm")), TypeError, r"got ndarray"),
    # --- dout
    Bad("bn-back-dout-shape", "batchnorm_backward", lambda: (np.ones((6, 5)), _cache("batchnorm")),
        ValueError, r"dout must have the shape of x, \(6, 4\), got shape \(6, 5\)"),
    Bad("bn-back-dout-transposed", "batchnorm_backward",
        lambda: (np.ones((4, 6)), _cache("batchnorm")), ValueError,
        r"dout must have the shape of x, \(6, 4\), got shape \(4, 6\)"),
    Bad("sbn-back-dout-nhwc-for-nchw", "spatial_batchnorm_backward",
        lambda: (np.ones((2, 4, 5, 3)), _cache("spatial_batchnorm")), ValueError,
        r"dout must have the shape of x, \(2, 3, 4, 5\), got shape \(2, 4, 5, 3\)"),
    Bad("ln-back-dout-list", "layernorm_backward",
        lambda: (_dout("layernorm").tolist(), _cache("layernorm")), TypeError, "dout " + NDARRAY + "list"),
    Bad("gn-back-dout-complex", "spatial_groupnorm_backward",
        lambda: (_dout("groupnorm").astype(complex), _cache("groupnorm")), TypeError,
        "dout " + DTYPE + "complex128"),
    Bad("ln-back-dout-none", "layernorm_backward", lambda: (None, _cache("layernorm")), TypeError,
        "dout " + NDARRAY + "NoneType"),
    # --- a hand-made or tampered cache: refused before any kernel indexes its arrays
    Bad("bn-back-tampered-gamma-short", "batchnorm_backward",
        lambda: (np.ones((6, 4)), _cache("batchnorm", gamma=np.ones(2))), ValueError,
        r"cache.gamma must be a C-contiguous array of shape \(4,\) and dtype float64, got shape \(2,\)"),
    Bad("sbn-back-tampered-gamma-dtype", "spatial_batchnorm_backward",
        lambda: (_dout("spatial_batchnorm"), _cache("spatial_batchnorm", gamma=np.ones(3, np.float32))),
        ValueError, r"cache.gamma must be .* dtype float64, got shape \(3,\), dtype float32"),
    Bad("gn-back-tampered-gamma-strided", "spatial_groupnorm_backward",
        lambda: (_dout("groupnorm"), _cache("groupnorm", gamma=np.ones(8)[::2])), ValueError,
        r"cache.gamma must be a C-contiguous array"),
    Bad("ln-back-tampered-mean-size", "layernorm_backward",
        lambda: (_dout("layernorm"), _cache("layernorm", mean=np.zeros(2))), ValueError,
        r"cache.mean must be an array of shape \(3,\) and dtype float64 .*, got shape \(2,\), dtype float64"),
    Bad("bn-back-tampered-invstd-none", "batchnorm_backward",
        lambda: (np.ones((6, 4)), _cache("batchnorm", invstd=None)), ValueError,
        r"cache.invstd must be an array of shape \(4,\) and dtype float64 .*, got NoneType"),
    Bad("gn-back-tampered-invstd-complex", "spatial_groupnorm_backward",
        lambda: (_dout("groupnorm"), _cache("groupnorm", invstd=np.ones((2, 2), complex))), ValueError,
        r"cache.invstd must be an array of shape \(2, 2\) and dtype float64 .*, got shape \(2, 2\), dtype complex128"),
    Bad("bn-back-tampered-x-fortran", "batchnorm_backward",
        lambda: (np.ones((6, 4)), _cache("batchnorm", x=np.asfortranarray(_x(6, 4)))), ValueError,
        r"cache.x must be a C-contiguous float32 or float64 array, got dtype float64, C-contiguous False"),
    Bad("ln-back-tampered-x-float16", "layernorm_backward",
        lambda: (_dout("layernorm"), _cache("layernorm", x=_x(3, 5, dtype=np.float16))), ValueError,
        r"cache.x must be a C-contiguous float32 or float64 array, got dtype float16"),
    Bad("bn-back-tampered-x-list", "batchnorm_backward",
        lambda: (np.ones((6, 4)), _cache("batchnorm", x=_x(6, 4).tolist())), ValueError,
        r"cache.x must be a C-contiguous float32 or float64 array, got list"),
    Bad("sbn-back-tampered-x-2d", "spatial_batchnorm_backward",
        lambda: (_x(2, 3), _cache("spatial_batchnorm", x=_x(2, 3))), ValueError,
        r"cache.x must have at least 3 dimensions for spatial_batchnorm, got shape \(2, 3\)"),
    Bad("gn-back-tampered-groups", "spatial_groupnorm_backward",
        lambda: (_dout("groupnorm"), _cache("groupnorm", groups=3)), ValueError,
        r"cache.groups must be an integer >= 1 that divides the number of channels C=4, got 3"),
    Bad("ln-back-tampered-groups", "layernorm_backward",
        lambda: (_dout("layernorm"), _cache("layernorm", groups=5)), ValueError,
        r"cache.groups must be 1 for layernorm, got 5"),
    Bad("gn-back-tampered-layout", "spatial_groupnorm_backward",
        lambda: (_dout("groupnorm"), _cache("groupnorm", layout="NHWC")), ValueError,
        r"cache.layout must be one of \['NCHW'\], got 'NHWC'"),
    Bad("bn-back-tampered-mode", "batchnorm_backward",
        lambda: (np.ones((6, 4)), _cache("batchnorm", mode="eval")), ValueError,
        r"cache.mode must be one of \['train', 'test'\], got 'eval'"),
    Bad("ln-back-tampered-mode-test", "layernorm_backward",
        lambda: (_dout("layernorm"), _cache("layernorm", mode="test")), ValueError,
        r"cache.mode must be one of \['train'\], got 'test'"),
    Bad("ln-back-tampered-axis", "layernorm_backward",
        lambda: (_dout("layernorm"), _cache("layernorm", axis=2)), ValueError,
        r"cache.axis must be an integer in \[0, 1\] or None for layernorm, got 2"),
    Bad("bn-back-tampered-axis", "batchnorm_backward",
        lambda: (np.ones((6, 4)), _cache("batchnorm", axis=0)), ValueError,
        r"cache.axis must be None for batchnorm, got 0"),
    Bad("bn-back-tampered-gamma-shape", "batchnorm_backward",
        lambda: (np.ones((6, 4)), _cache("batchnorm", gamma_shape=(5,))), ValueError,
        r"cache.gamma_shape must be None or a shape the forward takes for gamma/beta of an x of shape \(6, 4\) \(\(4,\), \(1, 4\), or another of 4 values or of one value that broadcasts like it\), got \(5,\)"),
    Bad("bn-back-tampered-negative-shape", "batchnorm_backward",
        lambda: (np.ones((6, 4)), _cache("batchnorm", beta_shape=(-1, -4))), ValueError,
        r"cache.beta_shape must be None or a shape the forward takes .*, got \(-1, -4\)"),
    Bad("bn-back-tampered-dtype", "batchnorm_backward",
        lambda: (np.ones((6, 4)), _cache("batchnorm", dtype=np.dtype(np.int8))), ValueError,
        r"cache.dtype must be float64 for a cache.x of dtype float64, got dtype\('int8'\)"),
    # --- fields that disagree with the others: each would make a backward lie
    Bad("bn-back-tampered-eps-negative", "batchnorm_backward",
        lambda: (np.ones((6, 4)), _cache("batchnorm", eps=-1.0)), ValueError,
        r"cache.eps must be a finite real number >= 0, got -1.0"),
    Bad("ln-back-tampered-eps-nan", "layernorm_backward",
        lambda: (_dout("layernorm"), _cache("layernorm", eps=float("nan"))), ValueError,
        r"cache.eps must be a finite real number >= 0, got nan"),
    Bad("gn-back-tampered-eps-none", "spatial_groupnorm_backward",
        lambda: (_dout("groupnorm"), _cache("groupnorm", eps=None)), ValueError,
        r"cache.eps must be a finite real number >= 0, got None"),
    Bad("rms-back-tampered-eps-string", "rmsnorm_backward",
        lambda: (_dout("rmsnorm"), _cache("rmsnorm", eps="1e-5")), ValueError,
        r"cache.eps must be a finite real number >= 0, got '1e-5'"),
    Bad("bn-back-tampered-dtype-float32", "batchnorm_backward",
        lambda: (np.ones((6, 4)), _cache("batchnorm", dtype=np.dtype(np.float32))), ValueError,
        r"cache.dtype must be float64 for a cache.x of dtype float64, got dtype\('float32'\)"),
    Bad("sbn-back-tampered-dtype-float16", "spatial_batchnorm_backward",
        lambda: (_dout("spatial_batchnorm"), _cache("spatial_batchnorm", dtype=np.dtype(np.float16))),
        ValueError, r"cache.dtype must be float64 for a cache.x of dtype float64, got dtype\('float16'\)"),
    Bad("ln-back-tampered-dtype-float64-of-float32", "layernorm_backward",
        lambda: (_dout("layernorm"), _cache32("layernorm", dtype=np.dtype(np.float64))), ValueError,
        r"cache.dtype must be float32 or float16 for a cache.x of dtype float32, got dtype\('float64'\)"),
    Bad("bn-back-tampered-dtype-type", "batchnorm_backward",
        lambda: (np.ones((6, 4)), _cache("batchnorm", dtype=np.float64)), ValueError,
        r"cache.dtype must be float64 for a cache.x of dtype float64, got <class 'numpy.float64'>"),
    Bad("bn-back-tampered-mean-float32", "batchnorm_backward",
        lambda: (np.ones((6, 4)), _cache("batchnorm", mean=np.zeros(4, np.float32))), ValueError,
        r"cache.mean must be an array of shape \(4,\) and dtype float64 .*, got shape \(4,\), dtype float32"),
    Bad("ln-back-tampered-invstd-float16", "layernorm_backward",
        lambda: (_dout("layernorm"), _cache("layernorm", invstd=np.ones(3, np.float16))), ValueError,
        r"cache.invstd must be an array of shape \(3,\) and dtype float64 .*, dtype float16"),
    Bad("bn-back-tampered-mean-reshaped", "batchnorm_backward",
        lambda: (np.ones((6, 4)), _cache("batchnorm", mean=np.zeros((1, 4)))), ValueError,
        r"cache.mean must be an array of shape \(4,\) .*, got shape \(1, 4\)"),
    Bad("gn-back-tampered-gamma-shape-same-size", "spatial_groupnorm_backward",
        lambda: (_dout("groupnorm"), _cache("groupnorm", gamma_shape=(2, 2))), ValueError,
        r"cache.gamma_shape must be None or a shape the forward takes .*, got \(2, 2\)"),
    Bad("ln-back-tampered-groups-bool", "layernorm_backward",
        lambda: (_dout("layernorm"), _cache("layernorm", groups=True)), ValueError,
        r"cache.groups must be 1 for layernorm, got True"),
    Bad("gn-back-tampered-groups-none", "spatial_groupnorm_backward",
        lambda: (_dout("groupnorm"), _cache("groupnorm", groups=None)), ValueError,
        r"cache.groups must be an integer >= 1 that divides the number of channels C=4, got None"),
    Bad("gn-back-tampered-groups-zero", "spatial_groupnorm_backward",
        lambda: (_dout("groupnorm"), _cache("groupnorm", groups=0)), ValueError,
        r"cache.groups must be an integer >= 1 that divides the number of channels C=4, got 0"),
    Bad("ln-back-tampered-axis-array-out-of-range", "layernorm_backward",
        lambda: (_dout("layernorm"), _cache("layernorm", axis=np.array(7))), ValueError,
        r"cache.axis must be an integer in \[0, 1\] or None for layernorm, got array\(7\)"),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unusable_out_is_named_with_what_is_wrong(backend):
    """out= over an input names that input; a read-only or non-contiguous out says which."""
    cache = _cache("batchnorm")
    buffer = np.zeros(cache.x.size)
    buffer[: cache.mean.size] = cache.mean
    over_mean = cache._replace(mean=buffer[: cache.mean.size])
    with pytest.raises(ValueError, match=r"out must not share memory with the inputs, got an array "
                                         r"that shares memory with cache.mean"):
        fastbn.batchnorm_backward(_dout("batchnorm"), over_mean, backend=backend,
                                  out=buffer.reshape(cache.x.shape))
    x, gamma, beta, param = _bn()
    buffer = np.zeros(x.size)
    param = dict(param, running_mean=np.zeros(4), running_var=buffer[:4])
    with pytest.raises(ValueError, match=r"shares memory with bn_param\['running_var'\]"):
        fastbn.batchnorm_forward(x, gamma, beta, param, backend=backend,
                                 out=buffer.reshape(x.shape))
    read_only = np.zeros(x.shape)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=r"out must be C-contiguous and writeable, got an array "
                                         r"that is not writeable"):
        fastbn.batchnorm_forward(x, gamma, beta, {"mode": "train"}, backend=backend, out=read_only)
    with pytest.raises(ValueError, match=r"got an array that is not C-contiguous"):
        fastbn.batchnorm_forward(x, gamma, beta, {"mode": "train"}, backend=backend,
                                 out=np.zeros(x.shape[::-1]).T)


ALL_CASES = FORWARD_CASES + BACKWARD_CASES


def _call(case, backend):
    return getattr(fastbn, case.function)(*case.build(), backend=backend)


def test_the_battery_is_large_and_ids_are_unique():
    ids = [case.id for case in ALL_CASES]
    assert len(set(ids)) == len(ids)
    assert len(ids) >= 30


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ALL_CASES, ids=[case.id for case in ALL_CASES])
def test_bad_input_raises_a_clear_error(case, backend):
    with pytest.raises(case.error, match=case.match) as excinfo:
        _call(case, backend)
    # Raised by the validation layer, not from deep inside NumPy or a kernel.
    assert Path(str(excinfo.traceback[-1].path)).name == "_validation.py"


@pytest.mark.parametrize("case", ALL_CASES, ids=[case.id for case in ALL_CASES])
def test_reference_raises_the_same_error(case):
    """fastbn.reference is the oracle: it validates the same way."""
    with pytest.raises(case.error, match=case.match):
        getattr(reference, case.function)(*case.build())


# ---------------------------------------------------------------------------------------------
# Nothing lost on error
# ---------------------------------------------------------------------------------------------

def _snapshot(args):
    """Copies of every array among the arguments (and inside dict arguments), with identities."""
    arrays = []
    for a in args:
        if isinstance(a, np.ndarray):
            arrays.append((a, a.copy()))
        elif isinstance(a, dict):
            arrays.append((a, dict(a)))
            arrays.extend((v, v.copy()) for v in a.values() if isinstance(v, np.ndarray))
    return arrays


def _assert_unchanged(snapshot):
    for current, before in snapshot:
        if isinstance(current, dict):
            assert current.keys() == before.keys()
            assert all(current[k] is before[k] for k in before)  # same objects, no key added
        else:
            np.testing.assert_array_equal(current, before, strict=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", FORWARD_CASES, ids=[case.id for case in FORWARD_CASES])
def test_failing_forward_leaves_arguments_as_they_were(case, backend):
    args = case.build()
    snapshot = _snapshot(args)
    with pytest.raises(case.error):
        getattr(fastbn, case.function)(*args, backend=backend)
    _assert_unchanged(snapshot)


BATCH_TRAIN_OPS = [op for op in OPS if op.uses_running_stats and op.mode == "train"
                   and not op.param_broadcast]


def _fail(*args, **kwargs):
    raise MemoryError("simulated allocation failure half way through the call")


CONVENTIONS = {"cs231n": {}, "torch": {"momentum": None, "unbiased": True, "num_batches_tracked": 5}}


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", BATCH_TRAIN_OPS, ids=[op.id for op in BATCH_TRAIN_OPS])
def test_backend_failure_leaves_running_stats_untouched(op, backend, convention, monkeypatch):
    """Running statistics (and the batch count) are written only after the backend succeeded."""
    if backend == "cython":
        for name in ("cols_forward_train", "planes_forward_train"):
            monkeypatch.setattr(_backends.kernels(), name, _fail)
    else:
        monkeypatch.setattr(reference, "_mean_var", _fail)
    x, gamma, beta, param = op.make(op.shapes[2])
    C = op.channels(x.shape)
    running_mean, running_var = np.full(C, 0.5), np.full(C, 2.0)
    param.update(running_mean=running_mean, running_var=running_var, **CONVENTIONS[convention])
    snapshot = _snapshot((x, gamma, beta, param))
    with pytest.raises(MemoryError):
        op.forward(x, gamma, beta, param, backend=backend)
    _assert_unchanged(snapshot)
    assert param["running_mean"] is running_mean and param["running_var"] is running_var


@pytest.mark.parametrize("backend", BACKENDS)
def test_failing_first_train_call_creates_no_running_stats(backend):
    x, gamma, beta, param = _bn(param=_train(momentum=2.0))
    with pytest.raises(ValueError):
        fastbn.batchnorm_forward(x, gamma, beta, param, backend=backend)
    assert param == {"mode": "train", "momentum": 2.0}


# ---------------------------------------------------------------------------------------------
# Inputs untouched and outputs fresh, for every dtype rule
# ---------------------------------------------------------------------------------------------

OPS_IDS = [op.id for op in OPS]


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.int32],
                         ids=["float64", "float32", "float16", "int32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS, ids=OPS_IDS)
def test_no_output_aliases_an_input_or_a_running_statistic(op, backend, dtype):
    shape = op.shapes[2]
    x, gamma, beta, param = op.make(shape, np.float64)
    x = (x * 10).astype(dtype)
    gamma, beta = gamma.astype(x.dtype if dtype != np.int32 else np.float64), beta.astype(np.float64)
    inputs = [x, gamma, beta] + [v for v in param.values() if isinstance(v, np.ndarray)]
    copies = [a.copy() for a in inputs]
    out, cache = op.forward(x, gamma, beta, param, backend=backend)
    dout = np.ones(shape, dtype=dtype)
    grads = op.backward(dout, cache, backend=backend)
    for a, c in zip(inputs + [dout], copies + [np.ones(shape, dtype=dtype)]):
        np.testing.assert_array_equal(a, c, strict=True)
    running = [v for v in param.values() if isinstance(v, np.ndarray)]
    for result in (out, cache.mean, cache.invstd, *grads):
        for given in [x, gamma, beta, dout, *running]:
            assert not np.shares_memory(result, given)
    for grad in grads:
        for cached in (cache.x, cache.gamma, cache.mean, cache.invstd):
            assert not np.shares_memory(grad, cached)


@pytest.mark.parametrize("backend", BACKENDS)
def test_test_mode_cache_is_not_changed_by_a_later_train_call(backend):
    """cache.mean is a copy of the running mean, which later train calls update in place."""
    x, gamma, beta, param = _bn(param=_test(4))
    _, cache = fastbn.batchnorm_forward(x, gamma, beta, param, backend=backend)
    mean_before = cache.mean.copy()
    param["mode"] = "train"
    fastbn.batchnorm_forward(x + 5.0, gamma, beta, param, backend=backend)
    assert not np.array_equal(param["running_mean"], mean_before)
    np.testing.assert_array_equal(cache.mean, mean_before)


# ---------------------------------------------------------------------------------------------
# dout: another dtype or layout is cast, and gives the same gradients
# ---------------------------------------------------------------------------------------------

def _dout_variants(dout):
    yield "float32", dout.astype(np.float32)
    yield "float16", dout.astype(np.float16)
    yield "int64", np.round(dout * 4).astype(np.int64)
    yield "bool", dout > 0
    yield "fortran", np.asfortranarray(dout)
    yield "big-endian", dout.astype(">f8")
    yield "read-only", _read_only(dout.copy())


DOUT_IDS = ["float32", "float16", "int64", "bool", "fortran", "big-endian", "read-only"]


@pytest.mark.parametrize("variant", range(len(DOUT_IDS)), ids=DOUT_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS, ids=OPS_IDS)
def test_dout_of_another_dtype_or_layout_is_cast(op, backend, variant):
    shape = op.shapes[2]
    x, gamma, beta, param = op.make(shape)
    _, cache = op.forward(x, gamma, beta, param, backend=backend)
    dout = np.random.default_rng(2).standard_normal(shape)
    _, given = list(_dout_variants(dout))[variant]
    expected = op.backward(np.array(given, dtype=np.float64, order="C"), cache, backend=backend)
    for a, b in zip(op.backward(given, cache, backend=backend), expected):
        assert a.dtype == np.float64
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Empty arrays: empty outputs (see the Notes of each forward's docstring)
# ---------------------------------------------------------------------------------------------

EMPTY_CASES = [
    ("bn-test-N0", "batchnorm", (0, 4), _test(4)),
    ("bn-train-D0", "batchnorm", (5, 0), _train()),
    ("bn-test-D0", "batchnorm", (5, 0), _test(0)),
    ("sbn-test-N0", "spatial_batchnorm", (0, 3, 4, 5), _test(3)),
    ("sbn-test-H0", "spatial_batchnorm", (2, 3, 0, 5), _test(3)),
    ("sbn-train-C0", "spatial_batchnorm", (2, 0, 4, 5), _train()),
    ("sbn-nhwc-test-N0", "spatial_batchnorm", (0, 4, 5, 3), _test(3, layout="NHWC")),
    ("sbn-nhwc-train-C0", "spatial_batchnorm", (2, 4, 5, 0), _train(layout="NHWC")),
    ("ln-N0", "layernorm", (0, 5), {}),
    ("ln-D0", "layernorm", (3, 0), {}),
    ("ln-3d-middle0", "layernorm", (2, 0, 5), {}),
    ("ln-1d-D0", "layernorm", (0,), {}),
    ("gn-N0", "groupnorm", (0, 4, 3, 3), {}),
    ("gn-H0", "groupnorm", (2, 4, 0, 3), {}),
    ("gn-C0", "groupnorm", (2, 0, 3, 3), {}),
    ("rms-N0", "rmsnorm", (0, 5), {}),
    ("rms-D0", "rmsnorm", (3, 0), {}),
]


def _channels(op, shape, param):
    spec = fastbn._ops.OPS[op]
    return spec.channels(shape, spec.layout(param))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", EMPTY_CASES, ids=[c[0] for c in EMPTY_CASES])
def test_empty_input_gives_empty_output_and_zero_parameter_gradients(case, backend, dtype):
    _, op, shape, param = case
    param = copy_param(param)
    C = _channels(op, shape, param)
    x = np.zeros(shape, dtype=dtype)
    spec = fastbn._ops.OPS[op]
    args = spec.forward_args(x, np.ones(C, dtype), np.zeros(C, dtype), param, 1)
    out, cache = getattr(fastbn, spec.forward)(*args, backend=backend)
    assert out.shape == shape and out.dtype == dtype
    # the statistics of empty rows (layernorm D=0, ...): mean 0, invstd 1/sqrt(eps), as the reference
    reference_args = spec.forward_args(x, np.ones(C, dtype), np.zeros(C, dtype), copy_param(case[3]), 1)
    _, reference = getattr(fastbn, spec.forward)(*reference_args, backend="numpy")
    np.testing.assert_array_equal(cache.mean, reference.mean, strict=True)
    np.testing.assert_array_equal(cache.invstd, reference.invstd, strict=True)
    dx, *param_grads = getattr(fastbn, spec.backward[0])(np.ones(shape, dtype), cache, backend=backend)
    assert dx.shape == shape and dx.dtype == dtype
    assert len(param_grads) == (2 if spec.beta else 1)
    # dgamma and dbeta sum over every axis but the channel axis: over no values, 0.
    for grad in param_grads:
        np.testing.assert_array_equal(grad, np.zeros(C, dtype), strict=True)
