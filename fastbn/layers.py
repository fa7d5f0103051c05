"""Stateful normalization layers: parameters, running statistics and trained state in and out.

Each layer holds its scale ``gamma``, shift ``beta`` (either may be None: no affine) and, for
:class:`BatchNorm`, its running statistics; ``forward(x, train=True)`` returns the output and
``backward(dout)`` returns dx and keeps ``dgamma`` / ``dbeta``. ``state_dict()`` and
``load_state_dict()`` use PyTorch's key names (``weight``, ``bias``, ``running_mean``,
``running_var``, ``num_batches_tracked``) with NumPy arrays, and ``from_torch``, ``from_keras``
and ``from_onnx`` read another framework's trained layer, converting its conventions (see
``docs/conventions.md``) so that eval-mode outputs and the next train-mode running statistics
equal the source framework's. fastbn never imports torch: ``from_torch`` reads a module's
attributes and tensors by duck typing.

Examples
--------
>>> import numpy as np
>>> from fastbn.layers import BatchNorm
>>> bn = BatchNorm(3, momentum=0.9)
>>> x = np.random.default_rng(0).normal(2.0, 1.5, size=(8, 3, 4, 4))
>>> out = bn.forward(x, train=True)
>>> dx = bn.backward(np.ones_like(x))
>>> sorted(bn.state_dict())
['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral
from typing import Any, Optional, Union

import numpy as np

from fastbn import _api
from fastbn._ops import LAYOUT_SYNONYMS, OPS
from fastbn._validation import _check_real, check_ndarray, compute_dtype

__all__ = ["BatchNorm", "LayerNorm", "GroupNorm", "RMSNorm"]


def _to_numpy(value, name):
    """A new NumPy array of `value`: an array, or a tensor read by duck typing (``.detach()``,
    ``.cpu()``, ``.numpy()``, as torch.Tensor has them)."""
    given = value
    try:
        if not isinstance(value, np.ndarray):
            for method in ("detach", "cpu", "numpy"):
                if callable(getattr(value, method, None)):
                    value = getattr(value, method)()
        array = np.array(value)
    except (TypeError, ValueError, RuntimeError) as error:
        dtype = getattr(given, "dtype", None)
        held = f" of dtype {dtype}" if dtype is not None else ""
        raise TypeError(f"{name} must be an array or a tensor of real numbers that NumPy holds, "
                        f"got {type(given).__name__}{held}") from error
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    return array


def _check_train(train):
    if not isinstance(train, (bool, np.bool_)):
        raise TypeError(f"train must be True or False, got {train!r} of type {type(train).__name__}")
    return bool(train)


def _eps(value, allow_none=False):
    if value is None and allow_none:
        return None
    if value is None:
        raise TypeError("eps must be a real number, got None")
    return _check_real(value, "eps", 0.0, np.inf, None)


def _flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} of type {type(value).__name__}")
    return bool(value)


def _positive_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _shape_tuple(value, name):
    """PyTorch's normalized_shape: an int or a sequence of ints >= 1, as a tuple."""
    shape = (value,) if isinstance(value, Integral) and not isinstance(value, bool) else value
    try:
        shape = tuple(shape)
    except TypeError:
        shape = None
    if not shape or not all(isinstance(n, Integral) and not isinstance(n, bool) and n >= 1 for n in shape):
        raise ValueError(f"{name} must be an integer >= 1 or a non-empty sequence of them, got {value!r}")
    return tuple(int(n) for n in shape)


def _same_size(value, name, size, like=None):
    """value (None passes) must hold `size` values (those of `like`, when named)."""
    if value is not None and value.size != size:
        whose = f", as {like} has" if like else ""
        raise ValueError(f"{name} must have {size} values{whose}, got shape {value.shape}")
    return value


def _require(module, names, what):
    """The attributes `names` of a module read by duck typing, or a TypeError naming the missing."""
    missing = [name for name in names if not hasattr(module, name)]
    if missing:
        raise TypeError(f"module must be {what} (missing attributes {missing}), got {type(module).__name__}")
    return [getattr(module, name) for name in names]


def _keras_weights(weights, scale, center, trailing, what):
    """Split Keras' weight list ``[gamma][, beta], *trailing`` by its ``scale``/``center`` flags."""
    names = (["gamma"] if scale else []) + (["beta"] if center else []) + list(trailing)
    weights = list(weights)
    if len(weights) != len(names):
        raise ValueError(f"weights must be the {len(names)} arrays {names} of a Keras {what} "
                         f"(scale={scale}, center={center}), got {len(weights)} arrays")
    named = {name: _to_numpy(w, f"weights[{i}] ({name})") for i, (name, w) in enumerate(zip(names, weights))}
    return named.get("gamma"), named.get("beta"), [named[name] for name in trailing]


class _Layer:
    """What every layer shares: forward/backward through the public functions, the gradients,
    and state_dict()/load_state_dict() over the attributes named by ``_state()``."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f" or self.dtype.itemsize not in (2, 4, 8):
            raise TypeError(f"dtype must be float16, float32 or float64, got {self.dtype}")
        self.dgamma = self.dbeta = None
        self._cache = None

    @staticmethod
    def _check_channels(x, channels, name, axis):
        """x (when an array of 2 or more dimensions: the functions check the rest) must have
        `channels` values on `axis`, the layer's `name`."""
        if isinstance(x, np.ndarray) and x.ndim >= 2 and x.shape[axis] != channels:
            where = "the last axis" if axis == -1 else f"axis {axis}"
            raise ValueError(f"x must have {name}={channels} channels on {where}, got shape "
                             f"{x.shape}")

    def _params(self, channels, affine, bias=True, shape=None):
        shape = (channels,) if shape is None else shape
        self.gamma = np.ones(shape, self.dtype) if affine else None
        self.beta = np.zeros(shape, self.dtype) if affine and bias else None

    def _state(self):
        """{state_dict key: attribute name} of the state this layer holds."""
        keys = {}
        if self.gamma is not None:
            keys["weight"] = "gamma"
        if getattr(self, "beta", None) is not None:
            keys["bias"] = "beta"
        return keys

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dx for the last forward; keeps ``self.dgamma`` and ``self.dbeta`` (None for a missing
        parameter).

        Parameters
        ----------
        dout : ndarray shaped like the last forward's x

        Returns
        -------
        dx : ndarray shaped like x
        """
        if self._cache is None:
            raise RuntimeError("backward needs a forward call first")
        grads = getattr(_api, OPS[self._cache.op].backward[0])(dout, self._cache,
                                                                   backend=self.backend)
        self.dgamma = grads[1]
        self.dbeta = grads[2] if len(grads) > 2 else None
        return grads[0]

    def state_dict(self) -> dict:
        """The layer's state under PyTorch's key names: new NumPy arrays
        (``num_batches_tracked`` a 0-D int64 array, as in PyTorch)."""
        state = {}
        for key, attribute in self._state().items():
            value = getattr(self, attribute)
            state[key] = np.array(value, dtype=np.int64) if key == "num_batches_tracked" else value.copy()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a state of the same keys and shapes (NumPy arrays, or tensors read by duck
        typing, such as a torch ``state_dict()``). Everything is checked before anything is
        changed: a call that raises leaves the layer as it was."""
        expected = self._state()
        missing = [key for key in expected if key not in state]
        unexpected = [key for key in state if key not in expected]
        if missing or unexpected:
            raise ValueError(f"state_dict must have the keys {list(expected)}: missing {missing}, "
                             f"unexpected {unexpected}")
        new = {}
        for key, attribute in expected.items():
            value = _to_numpy(state[key], f"state_dict[{key!r}]")
            if key == "num_batches_tracked":
                if value.shape != () or value.dtype.kind not in "iu" or value < 0:
                    raise ValueError(f"state_dict['num_batches_tracked'] must be an integer >= 0, "
                                     f"got {value!r}")
                new[attribute] = int(value)
                continue
            current = getattr(self, attribute)
            if value.shape != current.shape:
                raise ValueError(f"state_dict[{key!r}] must have shape {current.shape}, "
                                 f"got shape {value.shape}")
            new[attribute] = value.astype(self.dtype)
        for attribute, value in new.items():
            setattr(self, attribute, value)


class BatchNorm(_Layer):
    """Batch normalization of (N, C) or (N, C, *spatial) input (PyTorch's BatchNorm1d/2d/3d,
    Keras' BatchNormalization, ONNX's BatchNormalization), with running statistics.

    Parameters
    ----------
    num_features : int
        C, the channel count.
    eps : float, default 1e-5
    momentum : float or None, default 0.9
        fastbn's (and Keras', ONNX's) convention: ``running = momentum * running + (1 -
        momentum) * batch``; PyTorch's momentum m is ``1 - m`` here. None: the cumulative
        average over ``num_batches_tracked`` batches.
    unbiased : bool, default False
        Update running_var with the unbiased batch variance (PyTorch).
    affine : bool, default True
        Hold gamma (ones) and beta (zeros); False: both None.
    track_running_stats : bool, default True
        False: keep no running statistics and normalise with the batch statistics in both modes.
    layout : {'NCHW', 'NHWC', 'channels_first', 'channels_last'}, default 'NCHW'
        Where the channels of input of rank >= 3 are.
    dtype : dtype, default float64
        Of the parameters and running statistics (running_var starts as ones).
    backend : {'auto', 'cython', 'numpy'}, default 'auto'

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import BatchNorm
    >>> bn = BatchNorm(2, momentum=None, unbiased=True)  # PyTorch's BatchNorm1d(2, momentum=None)
    >>> for k in range(3):
    ...     _ = bn.forward(np.random.default_rng(k).normal(k, 1.0, size=(16, 2, 5)))
    >>> bn.num_batches_tracked, bn.running_mean.shape
    (3, (2,))
    >>> bn.forward(np.zeros((1, 2, 5)), train=False).shape
    (1, 2, 5)
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: Optional[float] = 0.9,
                 unbiased: bool = False, affine: bool = True, track_running_stats: bool = True,
                 layout: str = "NCHW", dtype: Any = np.float64, backend: str = "auto") -> None:
        super().__init__(dtype)
        C = _positive_int(num_features, "num_features")
        self.num_features = C
        self.eps = _eps(eps)
        self.momentum = None if momentum is None else _check_real(momentum, "momentum", 0.0, 1.0, None)
        self.unbiased = _flag(unbiased, "unbiased")
        known = isinstance(layout, str) and LAYOUT_SYNONYMS.get(layout, layout) in ("NCHW", "NHWC")
        if not known:
            raise ValueError(f"layout must be one of ['NCHW', 'NHWC', 'channels_first', "
                             f"'channels_last'], got {layout!r}")
        self.layout, self.backend = layout, backend
        self._params(C, _flag(affine, "affine"))
        self.track_running_stats = _flag(track_running_stats, "track_running_stats")
        if self.track_running_stats:
            self.running_mean = np.zeros(C, self.dtype)
            self.running_var = np.ones(C, self.dtype)
            self.num_batches_tracked = 0
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def _state(self):
        keys = super()._state()
        if self.track_running_stats:
            keys.update(running_mean="running_mean", running_var="running_var",
                        num_batches_tracked="num_batches_tracked")
        return keys

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        """Normalise x: with the batch statistics, updating the running ones (``train=True``),
        or with the running statistics (``train=False``)."""
        train = _check_train(train)
        channels_last = np.ndim(x) >= 3 and LAYOUT_SYNONYMS.get(self.layout, self.layout) == "NHWC"
        self._check_channels(x, self.num_features, "num_features", -1 if channels_last else 1)
        param = {"mode": "train" if train or not self.track_running_stats else "test",
                 "eps": self.eps, "momentum": self.momentum, "unbiased": self.unbiased,
                 "layout": self.layout}
        if self.track_running_stats:
            param.update(running_mean=self.running_mean, running_var=self.running_var,
                         num_batches_tracked=self.num_batches_tracked)
        forward = _api.spatial_batchnorm_forward if np.ndim(x) >= 3 else _api.batchnorm_forward
        out, self._cache = forward(x, self.gamma, self.beta, param, backend=self.backend)
        if self.track_running_stats:
            self.num_batches_tracked = param["num_batches_tracked"]
        return out

    @classmethod
    def from_torch(cls, module: Any, *, backend: str = "auto") -> BatchNorm:
        """A BatchNorm equal to a ``torch.nn.BatchNorm1d/2d/3d`` module: its tensors, eps,
        ``momentum -> 1 - momentum`` (None stays None), ``unbiased=True``."""
        C, eps, momentum, affine, track = _require(
            module, ("num_features", "eps", "momentum", "affine", "track_running_stats"),
            "a torch.nn.BatchNorm1d, BatchNorm2d or BatchNorm3d")
        state = module.state_dict()
        dtype = _to_numpy(state["weight"] if affine else state.get("running_mean", np.zeros(0)),
                          "module.weight").dtype
        layer = cls(C, eps=float(eps), momentum=None if momentum is None else 1.0 - float(momentum),
                    unbiased=True, affine=bool(affine), track_running_stats=bool(track),
                    dtype=dtype if dtype.kind == "f" else np.float32, backend=backend)
        layer.load_state_dict(state)
        return layer

    @classmethod
    def from_keras(cls, weights: Sequence[Any], *, axis: int = -1, momentum: float = 0.99,
                   epsilon: float = 1e-3, center: bool = True, scale: bool = True,
                   unbiased: bool = False, backend: str = "auto") -> BatchNorm:
        """A BatchNorm equal to a Keras ``BatchNormalization`` layer from its ``get_weights()``
        (``[gamma, beta, moving_mean, moving_variance]``, gamma without ``scale``, beta without
        ``center``) and its config: ``axis`` -1 (channels last) or 1 (channels first);
        momentum and epsilon carry over unchanged (TensorFlow's ``decay`` is this momentum).
        Keras 3 keeps the biased batch variance; ``unbiased=True`` for a tf.keras (Keras 2) or
        TensorFlow 1 layer on TensorFlow's fused kernel (their default for 4-D x), which keeps
        the unbiased one (docs/conventions.md)."""
        _check_real(epsilon, "epsilon", 0.0, np.inf, None)
        if axis not in (-1, 1):
            raise ValueError(f"axis must be -1 (channels last) or 1 (channels first), got {axis!r}")
        gamma, beta, (mean, var) = _keras_weights(weights, scale, center,
                                                  ("moving_mean", "moving_variance"), "BatchNormalization")
        layer = cls(mean.size, eps=epsilon, momentum=momentum, unbiased=unbiased, affine=True,
                    layout="channels_last" if axis == -1 else "channels_first",
                    dtype=mean.dtype if mean.dtype.kind == "f" else np.float32, backend=backend)
        layer._set(gamma, beta, mean, var)
        return layer

    @classmethod
    def from_onnx(cls, scale: Any, B: Any, input_mean: Any, input_var: Any, *,
                  epsilon: float = 1e-5, momentum: float = 0.9, backend: str = "auto") -> BatchNorm:
        """A BatchNorm equal to an ONNX ``BatchNormalization`` node (channels first) from its
        initializers and attributes: ONNX's conventions are fastbn's (momentum of the old value,
        biased variance). scale or B may be None."""
        _check_real(epsilon, "epsilon", 0.0, np.inf, None)
        mean = _to_numpy(input_mean, "input_mean")
        layer = cls(mean.size, eps=epsilon, momentum=momentum,
                    dtype=mean.dtype if mean.dtype.kind == "f" else np.float32, backend=backend)
        layer._set(None if scale is None else _to_numpy(scale, "scale"),
                   None if B is None else _to_numpy(B, "B"), mean, _to_numpy(input_var, "input_var"))
        return layer

    def _set(self, gamma, beta, mean, var):
        for name, value in (("gamma", gamma), ("beta", beta), ("running_mean", mean), ("running_var", var)):
            _same_size(value, name, self.num_features)
        self.gamma = None if gamma is None else gamma.reshape(-1).astype(self.dtype)
        self.beta = None if beta is None else beta.reshape(-1).astype(self.dtype)
        self.running_mean = mean.reshape(-1).astype(self.dtype)
        self.running_var = var.reshape(-1).astype(self.dtype)


class LayerNorm(_Layer):
    """Layer normalization over the trailing axes ``normalized_shape`` (PyTorch's LayerNorm,
    Keras' LayerNormalization over trailing axes, ONNX's LayerNormalization).

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The trailing shape of x normalised together; gamma and beta have this shape.
    eps : float, default 1e-5
    elementwise_affine : bool, default True
    bias : bool, default True
        With elementwise_affine, hold beta too.
    dtype : dtype, default float64
    backend : {'auto', 'cython', 'numpy'}, default 'auto'

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import LayerNorm
    >>> ln = LayerNorm((4, 5))
    >>> out = ln.forward(np.random.default_rng(0).normal(size=(2, 3, 4, 5)))
    >>> np.allclose(out.reshape(6, 20).mean(axis=1), 0)
    True
    """

    def __init__(self, normalized_shape: Union[int, Sequence[int]], *, eps: Optional[float] = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, dtype: Any = np.float64,
                 backend: str = "auto") -> None:
        super().__init__(dtype)
        self.normalized_shape = _shape_tuple(normalized_shape, "normalized_shape")
        self.eps, self.backend = _eps(eps, allow_none=type(self) is RMSNorm), backend
        self._params(math.prod(self.normalized_shape), _flag(elementwise_affine, "elementwise_affine"),
                     _flag(bias, "bias"), self.normalized_shape)

    def _ln_param(self, x):
        k = len(self.normalized_shape)
        if isinstance(x, np.ndarray) and (x.ndim < k or x.shape[x.ndim - k:] != self.normalized_shape):
            raise ValueError(f"x must have the trailing shape normalized_shape={self.normalized_shape}, "
                             f"got shape {x.shape}")
        return {"eps": self.eps, "axis": -k}

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        """Normalise each x[i, ...] over the trailing normalized_shape (train has no effect)."""
        _check_train(train)
        out, self._cache = _api.layernorm_forward(x, self.gamma, self.beta, self._ln_param(x),
                                                  backend=self.backend)
        return out

    @classmethod
    def from_torch(cls, module: Any, *, backend: str = "auto") -> LayerNorm:
        """A LayerNorm equal to a ``torch.nn.LayerNorm`` module (weight and bias may be None)."""
        shape, eps, weight, bias = _require(module, ("normalized_shape", "eps", "weight", "bias"),
                                            "a torch.nn.LayerNorm")
        weight = None if weight is None else _to_numpy(weight, "module.weight")
        layer = cls(shape, eps=float(eps), elementwise_affine=weight is not None,
                    bias=bias is not None,
                    dtype=weight.dtype if weight is not None else np.float32, backend=backend)
        layer.load_state_dict(module.state_dict())
        return layer

    @classmethod
    def from_keras(cls, weights: Sequence[Any], *, axis: Union[int, Sequence[int]] = -1,
                   epsilon: float = 1e-3, center: bool = True, scale: bool = True,
                   rms_scaling: bool = False, backend: str = "auto") -> LayerNorm:
        """A LayerNorm equal to a Keras ``LayerNormalization`` from ``get_weights()``
        (``[gamma, beta]``) and config. ``axis`` must name trailing axes (-1, or a list such as
        [-2, -1]); the normalized shape is that of gamma or beta."""
        _check_real(epsilon, "epsilon", 0.0, np.inf, None)
        if rms_scaling:
            raise ValueError("rms_scaling=True is not supported: Keras then divides the uncentred x "
                             "by the centred standard deviation, which no fastbn op computes")
        axes = [axis] if isinstance(axis, Integral) else list(axis)
        if sorted(axes) != list(range(-len(axes), 0)):
            raise ValueError(f"axis must be trailing axes given as negative integers (-1, or "
                             f"[-k, ..., -1]), got {axis!r}")
        gamma, beta, _ = _keras_weights(weights, scale, center, (), "LayerNormalization")
        given = gamma if gamma is not None else beta
        if given is None:
            raise ValueError("weights must hold gamma or beta (scale or center True): they give the "
                             "normalized shape")
        shape = given.shape[-len(axes):] if given.ndim >= len(axes) else None
        if shape is None or math.prod(shape) != given.size:
            raise ValueError(f"weights must have {len(axes)} dimensions for axis {axis!r}, "
                             f"got shape {given.shape}")
        _same_size(beta, "beta", given.size, "gamma")
        layer = cls(shape, eps=epsilon, elementwise_affine=True, bias=True, dtype=given.dtype,
                    backend=backend)
        layer.gamma = None if gamma is None else gamma.reshape(shape).astype(layer.dtype)
        layer.beta = None if beta is None else beta.reshape(shape).astype(layer.dtype)
        return layer

    @classmethod
    def from_onnx(cls, scale: Any, B: Any = None, *, axis: int = -1, epsilon: float = 1e-5,
                  backend: str = "auto") -> LayerNorm:
        """A LayerNorm equal to an ONNX ``LayerNormalization`` node: a negative ``axis``
        normalises the last ``-axis`` axes, whose shape scale has (a flat scale: axis -1 only)."""
        _check_real(epsilon, "epsilon", 0.0, np.inf, None)
        if not isinstance(axis, Integral) or isinstance(axis, bool) or axis >= 0:
            raise ValueError(f"axis must be a negative integer (count the normalized axes from the "
                             f"end), got {axis!r}")
        scale = _to_numpy(scale, "scale")
        shape = scale.shape[axis:] if scale.ndim >= -axis else None
        if shape is None or math.prod(shape) != scale.size:
            raise ValueError(f"scale must have shape x.shape[{axis}:], {-axis} dimensions, "
                             f"got shape {scale.shape}")
        layer = cls(shape, eps=epsilon, bias=B is not None, dtype=scale.dtype, backend=backend)
        layer.gamma = scale.reshape(shape).astype(layer.dtype)
        if B is not None:
            B = _same_size(_to_numpy(B, "B"), "B", scale.size, "gamma")
            layer.beta = B.reshape(shape).astype(layer.dtype)
        return layer


class RMSNorm(LayerNorm):
    """Root-mean-square normalization over the trailing axes ``normalized_shape`` (PyTorch's
    RMSNorm, Keras' RMSNormalization, ONNX's RMSNormalization).

    Parameters
    ----------
    normalized_shape : int or tuple of int
    eps : float or None, default None
        None is PyTorch's default: the machine epsilon of the computation dtype (float32 for
        float16 and float32 input, float64 otherwise).
    elementwise_affine : bool, default True
        Hold gamma (no beta: RMSNorm has none).
    dtype : dtype, default float64
    backend : {'auto', 'cython', 'numpy'}, default 'auto'

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import RMSNorm
    >>> out = RMSNorm(2, eps=0.0).forward(np.array([[3.0, 4.0]]))
    >>> np.round(out, 4)
    array([[0.8485, 1.1314]])
    """

    def __init__(self, normalized_shape: Union[int, Sequence[int]], *, eps: Optional[float] = None,
                 elementwise_affine: bool = True, dtype: Any = np.float64,
                 backend: str = "auto") -> None:
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine,
                         bias=False, dtype=dtype, backend=backend)

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        """Divide each x[i, ...] by its root mean square over normalized_shape, times gamma."""
        _check_train(train)
        param = self._ln_param(x)
        if self.eps is None:
            param["eps"] = float(np.finfo(compute_dtype(check_ndarray(x, "x"), "x")[0]).eps)
        out, self._cache = _api.rmsnorm_forward(x, self.gamma, param, backend=self.backend)
        return out

    @classmethod
    def from_torch(cls, module: Any, *, backend: str = "auto") -> RMSNorm:
        """An RMSNorm equal to a ``torch.nn.RMSNorm`` module (eps None stays None)."""
        shape, eps, weight = _require(module, ("normalized_shape", "eps", "weight"), "a torch.nn.RMSNorm")
        weight = None if weight is None else _to_numpy(weight, "module.weight")
        layer = cls(shape, eps=None if eps is None else float(eps),
                    elementwise_affine=weight is not None,
                    dtype=weight.dtype if weight is not None else np.float32, backend=backend)
        layer.load_state_dict(module.state_dict())
        return layer

    @classmethod
    def from_keras(cls, weights: Sequence[Any], *, axis: Union[int, Sequence[int]] = -1,
                   epsilon: float = 1e-6, backend: str = "auto") -> RMSNorm:
        """An RMSNorm equal to a Keras ``RMSNormalization`` from ``get_weights()`` (``[scale]``)
        and its config (``axis`` -1, or [-1])."""
        _check_real(epsilon, "epsilon", 0.0, np.inf, None)
        if not (axis == -1 or isinstance(axis, (list, tuple)) and list(axis) == [-1]):
            raise ValueError(f"axis must be -1 (or [-1]), got {axis!r}")
        (scale,) = _keras_weights(weights, True, False, (), "RMSNormalization")[:1]
        layer = cls(scale.size, eps=epsilon, dtype=scale.dtype, backend=backend)
        layer.gamma = scale.reshape(-1).astype(layer.dtype)
        return layer

    @classmethod
    def from_onnx(cls, scale: Any, *, axis: int = -1, epsilon: float = 1e-5,
                  backend: str = "auto") -> RMSNorm:
        """An RMSNorm equal to an ONNX ``RMSNormalization`` node (negative ``axis``)."""
        _check_real(epsilon, "epsilon", 0.0, np.inf, None)
        base = LayerNorm.from_onnx(scale, None, axis=axis, epsilon=epsilon, backend=backend)
        layer = cls(base.normalized_shape, eps=epsilon, dtype=base.dtype, backend=backend)
        layer.gamma = base.gamma
        return layer


class GroupNorm(_Layer):
    """Group normalization of (N, C, *spatial) input (PyTorch's GroupNorm, ONNX's
    GroupNormalization-21, Keras' GroupNormalization with channels first).

    Parameters
    ----------
    num_groups : int
        G; must divide num_channels.
    num_channels : int
    eps : float, default 1e-5
    affine : bool, default True
    dtype : dtype, default float64
    backend : {'auto', 'cython', 'numpy'}, default 'auto'

    Examples
    --------
    >>> import numpy as np
    >>> from fastbn.layers import GroupNorm
    >>> gn = GroupNorm(2, 4)
    >>> gn.forward(np.random.default_rng(0).normal(size=(3, 4, 7))).shape
    (3, 4, 7)
    """

    def __init__(self, num_groups: int, num_channels: int, *, eps: float = 1e-5, affine: bool = True,
                 dtype: Any = np.float64, backend: str = "auto") -> None:
        super().__init__(dtype)
        self.num_groups = _positive_int(num_groups, "num_groups")
        self.num_channels = _positive_int(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_groups must divide num_channels={num_channels}, got {num_groups}")
        self.eps, self.backend = _eps(eps), backend
        self._params(self.num_channels, _flag(affine, "affine"))

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        """Normalise each (sample, group) of x (train has no effect)."""
        _check_train(train)
        self._check_channels(x, self.num_channels, "num_channels", 1)
        out, self._cache = _api.spatial_groupnorm_forward(
            x, self.gamma, self.beta, self.num_groups, {"eps": self.eps}, backend=self.backend)
        return out

    @classmethod
    def from_torch(cls, module: Any, *, backend: str = "auto") -> GroupNorm:
        """A GroupNorm equal to a ``torch.nn.GroupNorm`` module, or to an
        ``InstanceNorm1d/2d/3d`` without running statistics (groupnorm with G = C)."""
        if type(module).__name__.startswith("InstanceNorm"):
            C, eps, affine, track = _require(
                module, ("num_features", "eps", "affine", "track_running_stats"), "a torch.nn.InstanceNorm")
            if track:
                raise ValueError("module must not track running statistics: instance normalization "
                                 "with running statistics (track_running_stats=True) has no fastbn op")
            G = C
        else:
            G, C, eps, affine = _require(module, ("num_groups", "num_channels", "eps", "affine"),
                                         "a torch.nn.GroupNorm")
        state = module.state_dict()
        dtype = _to_numpy(state["weight"], "module.weight").dtype if affine else np.float32
        layer = cls(G, C, eps=float(eps), affine=bool(affine), dtype=dtype, backend=backend)
        layer.load_state_dict(state)
        return layer

    @classmethod
    def from_keras(cls, weights: Sequence[Any], *, groups: int = 32, axis: int = -1,
                   epsilon: float = 1e-3, center: bool = True, scale: bool = True,
                   backend: str = "auto") -> GroupNorm:
        """A GroupNorm equal to a Keras ``GroupNormalization`` from ``get_weights()``
        (``[gamma, beta]``) and config. fastbn's groupnorm takes channels first: ``axis`` must
        be 1 (transpose channels-last x to (N, C, *spatial) yourself)."""
        _check_real(epsilon, "epsilon", 0.0, np.inf, None)
        if axis != 1:
            raise ValueError(f"axis must be 1: fastbn's groupnorm takes x channels first, got {axis!r} "
                             "(transpose x to (N, C, *spatial) and pass axis=1)")
        gamma, beta, _ = _keras_weights(weights, scale, center, (), "GroupNormalization")
        given = gamma if gamma is not None else beta
        if given is None:
            raise ValueError("weights must hold gamma or beta (scale or center True): they give C")
        _same_size(beta, "beta", given.size, "gamma")
        groups = _positive_int(groups, "groups")
        if given.size % groups:
            raise ValueError(f"groups must divide the channel count C={given.size}, got {groups}")
        layer = cls(groups, given.size, eps=epsilon, dtype=given.dtype, backend=backend)
        layer.gamma = None if gamma is None else gamma.reshape(-1).astype(layer.dtype)
        layer.beta = None if beta is None else beta.reshape(-1).astype(layer.dtype)
        return layer

    @classmethod
    def from_onnx(cls, scale: Any, bias: Any, *, num_groups: int, epsilon: float = 1e-5,
                  backend: str = "auto") -> GroupNorm:
        """A GroupNorm equal to an ONNX ``GroupNormalization`` node of opset 21 (scale and bias
        per channel)."""
        _check_real(epsilon, "epsilon", 0.0, np.inf, None)
        scale, bias = _to_numpy(scale, "scale"), _to_numpy(bias, "bias")
        if scale.shape != bias.shape or scale.ndim != 1:
            raise ValueError(f"scale and bias must have the same shape (C,), got shapes "
                             f"{scale.shape} and {bias.shape}")
        layer = cls(num_groups, scale.size, eps=epsilon, dtype=scale.dtype, backend=backend)
        layer.gamma, layer.beta = scale.astype(layer.dtype), bias.astype(layer.dtype)
        return layer
