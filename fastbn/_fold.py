"""Batchnorm folding for inference: a layer followed by test-mode batchnorm as one layer."""
from __future__ import annotations

from collections.abc import MutableMapping
from numbers import Integral
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fastbn._validation import check_eps, check_ndarray, check_param_dict, compute_dtype

__all__ = ["fold_batchnorm"]


def _per_channel(a, name, channels):
    """A per-channel array of `channels` values (any shape holding them, such as (1, C, 1, 1)),
    flattened, in float64."""
    check_ndarray(a, name)
    compute_dtype(a, name)
    if a.size != channels or sum(n != 1 for n in a.shape) > 1:
        raise ValueError(f"{name} must hold one value per output channel ({channels}, shape "
                         f"({channels},) or one that broadcasts so), got shape {a.shape}")
    return np.asarray(a, dtype=np.float64).reshape(channels)


def fold_batchnorm(
    weight: NDArray[Any], bias: NDArray[Any] | None, gamma: NDArray[Any] | None,
    beta: NDArray[Any] | None, bn_param: MutableMapping[str, Any], *, channel_axis: int = 0,
) -> tuple[NDArray[Any], NDArray[Any]]:
    """Fold a test-mode batchnorm into the affine or convolution layer before it.

    Returns ``(weight', bias')`` such that the layer with them computes what the layer followed
    by test-mode batchnorm computes: per output channel c, with
    ``s = gamma / sqrt(running_var + eps)``, ``weight'`` is ``weight * s`` along `channel_axis`
    and ``bias' = (bias - running_mean) * s + beta``.

    Parameters
    ----------
    weight : ndarray
        The layer's weight: PyTorch Linear ``(out, in)`` and Conv ``(out, in, kh, kw)``
        (``channel_axis=0``), ConvTranspose ``(in, out, kh, kw)`` (``channel_axis=1``), or a
        cs231n affine ``(D, M)`` for ``x @ w + b`` (``channel_axis=-1``). float16, float32 or
        float64 (integer weights are folded in float64).
    bias : ndarray of shape (C,), or None
        The layer's bias; None for a layer without one (a zero bias).
    gamma, beta : ndarray of shape (C,) (or a shape of C values, such as (1, C, 1, 1)), or None
        The batchnorm's scale and shift; None for a batchnorm without them (scale 1, shift 0,
        PyTorch's ``affine=False``).
    bn_param : dict
        The batchnorm's parameters: ``'running_mean'`` and ``'running_var'`` (required, C
        values each) and ``'eps'`` (default 1e-5); other keys are ignored.
    channel_axis : int, default 0
        The axis of `weight` that indexes the layer's output channels (negative counts from the
        end).

    Returns
    -------
    weight : ndarray
        Shaped like `weight`, in its dtype (float64 for integer or bool weights).
    bias : ndarray of shape (C,)
        In the dtype of the returned weight.

    Raises
    ------
    ValueError
        A channel axis outside the weight, per-channel arrays without C values, missing running
        statistics or a negative eps.
    TypeError
        Non-array input, a complex or object dtype, a non-integer channel_axis.

    Notes
    -----
    The arithmetic is done in float64 and rounded once to the result's dtype; the results
    equal those of PyTorch's ``torch.nn.utils.fusion.fuse_linear_bn_weights`` and
    ``fuse_conv_bn_weights`` (``transpose=True`` for ``channel_axis=1``) to the rounding of
    the dtype (PyTorch computes in the dtype itself).

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> rng = np.random.default_rng(0)
    >>> x, w, b = rng.normal(size=(8, 5)), rng.normal(size=(5, 3)), rng.normal(size=3)
    >>> bn_param = {"mode": "train"}
    >>> _ = fastbn.batchnorm_forward(x @ w + b, np.ones(3), np.zeros(3), bn_param)
    >>> bn_param["mode"] = "test"
    >>> y, _ = fastbn.batchnorm_forward(x @ w + b, np.ones(3), np.zeros(3), bn_param)
    >>> w2, b2 = fastbn.fold_batchnorm(w, b, np.ones(3), np.zeros(3), bn_param, channel_axis=-1)
    >>> np.allclose(x @ w2 + b2, y)
    True
    """
    weight = np.asarray(check_ndarray(weight, "weight"))  # a subclass (np.matrix) as an array
    dtype, out_dtype = compute_dtype(weight, "weight")
    if isinstance(channel_axis, (bool, np.bool_)) or not isinstance(channel_axis, Integral):
        raise TypeError(f"channel_axis must be an integer, got {channel_axis!r} of type "
                        f"{type(channel_axis).__name__}")
    if not -weight.ndim <= channel_axis < weight.ndim:
        raise ValueError(f"channel_axis must be in [{-weight.ndim}, {weight.ndim - 1}] for a "
                         f"weight of shape {weight.shape}, got {channel_axis}")
    axis = int(channel_axis) % weight.ndim
    C = weight.shape[axis]
    check_param_dict(bn_param, "bn_param")
    eps = check_eps(bn_param, "bn_param")
    stats = []
    for key in ("running_mean", "running_var"):
        if bn_param.get(key) is None:
            raise ValueError(f"bn_param[{key!r}] is missing: folding needs the running statistics "
                             "of a trained batchnorm")
        stats.append(_per_channel(bn_param[key], f"bn_param[{key!r}]", C))
    running_mean, running_var = stats
    gamma = np.ones(C) if gamma is None else _per_channel(gamma, "gamma", C)
    beta = np.zeros(C) if beta is None else _per_channel(beta, "beta", C)
    bias = np.zeros(C) if bias is None else _per_channel(bias, "bias", C)
    scale = gamma / np.sqrt(running_var + eps)
    shape = [1] * weight.ndim
    shape[axis] = C
    folded = (weight.astype(np.float64) * scale.reshape(shape)).astype(out_dtype)
    return folded, ((bias - running_mean) * scale + beta).astype(out_dtype)
