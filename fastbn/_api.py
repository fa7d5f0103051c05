"""Public normalization functions: validate once, then run the chosen backend.

Each function is a documented one-line call of :func:`fastbn._dispatch.forward` or
:func:`fastbn._dispatch.backward` with its op's name; what the op takes and computes is its row of the op table (:mod:`fastbn._ops`).

Annotations (one style for every public function): arrays are ``NDArray[Any]`` (any dtype is
accepted and validated at run time), parameter dicts ``MutableMapping[str, Any]``, ``backend`` a
``str``, optional arrays ``NDArray[Any] | None``.
"""
from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from numpy.typing import NDArray

from fastbn import _backends, _compiled, reference
from fastbn._dispatch import backward as _backward
from fastbn._dispatch import forward as _forward
from fastbn._moments import Moments, prepare_moments
from fastbn._ops import public_functions
from fastbn._results import NormCache

__all__ = [*public_functions(), "batchnorm_moments"]

_BN_PARAM_DOC = """bn_param : dict
        Updated in place. Keys:

        - ``'mode'`` (required): ``'train'`` normalises with the batch mean and biased batch
          variance and updates the running statistics; ``'test'`` normalises with the running
          statistics.
        - ``'eps'`` (default 1e-5, >= 0) and ``'momentum'`` (default 0.9, in [0, 1]):
          ``running = momentum * running + (1 - momentum) * batch_statistic``. ``None`` keeps
          the cumulative average of all batches (PyTorch's ``momentum=None``): momentum is
          ``n / (n + 1)`` after n batches, counted in ``'num_batches_tracked'``.
        - ``'unbiased'`` (default False): True updates running_var with the unbiased batch
          variance ``var * M / (M - 1)``, M values per feature (PyTorch's convention); the
          output is normalised with the biased one either way.
        - ``'num_batches_tracked'``: an integer >= 0, counted up by every train-mode call when
          present or when momentum is None (then created as 0).
        - ``'running_mean'``, ``'running_var'``: created as zeros on the first train-mode
          call; arrays you supply are updated in place and keep their shape and dtype.

        A call that raises changes none of them. Other keys are ignored; the conventions of
        other frameworks are mapped to these keys in ``docs/conventions.md``."""


def batchnorm_moments(x: NDArray[Any], *, layout: str = "NCHW", backend: str = "auto") -> Moments:
    """Per-feature or per-channel batch statistics: the moments a train-mode forward uses.

    Parameters
    ----------
    x : ndarray of shape (N, D), or (N, C, *spatial), or (N, *spatial, C) with ``layout='NHWC'``
        Any x of :func:`batchnorm_forward` or :func:`spatial_batchnorm_forward` (for instance
        (N, C, L), (N, C, H, W), (N, C, D, H, W)); dtypes as there.
    layout : {'NCHW', 'NHWC', 'channels_first', 'channels_last'}, default 'NCHW'
        Where the channels of a spatial x are, as ``bn_param['layout']`` of
        :func:`spatial_batchnorm_forward`; a 2-D x has its features on axis 1.
    backend : {'auto', 'cython', 'numpy'}, default 'auto'
        The compiled backend runs the statistics pass of the forward alone (x read once), so
        feeding the result back (``batchnorm_forward(..., moments=m)``) gives the bits of the
        plain forward.

    Returns
    -------
    Moments
        ``(count, mean, m2)``, float64 arrays of shape (D,) or (C,): values per channel, their
        mean and their sum of squared deviations from it (0, 0 and 0 for an empty batch).
        Moments of parts of a batch merge with :func:`merge_moments`.

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(64, 4))
    >>> parts = [fastbn.batchnorm_moments(x[:40]), fastbn.batchnorm_moments(x[40:])]
    >>> m = fastbn.merge_moments(parts)
    >>> gamma, beta = np.ones(4), np.zeros(4)
    >>> out, cache = fastbn.batchnorm_forward(x, gamma, beta, {"mode": "train"}, moments=m)
    >>> np.allclose(out, fastbn.batchnorm_forward(x, gamma, beta, {"mode": "train"})[0])
    True
    """
    spec, x, layout = prepare_moments(x, layout)
    impl = reference.moments if _backends.resolve(backend) == "numpy" else _compiled.moments
    return impl(spec, x, layout)


def batchnorm_forward(
    x: NDArray[Any], gamma: NDArray[Any] | None, beta: NDArray[Any] | None, bn_param: MutableMapping[str, Any],
    *, backend: str = "auto", out: NDArray[Any] | None = None,
    moments: Moments | None = None,
) -> tuple[NDArray[Any], NormCache]:
    """Batch normalization of an (N, D) array, cs231n style.

    Parameters
    ----------
    x : ndarray of shape (N, D)
        float32 and float64 are computed in their own precision; integer and bool input is
        computed in float64; float16 is computed in float32 and returned as float16.
    gamma, beta : ndarray of shape (D,) or (1, D), or None
        Scale and shift; None means 1 (no scale) / 0 (no shift). A single value (shape (1,)
        or (1, 1)) applies to every feature.
    {bn_param}
    backend : {{'auto', 'cython', 'numpy'}}, default 'auto'
        ``'auto'`` uses the compiled kernels when they are built.
    out : ndarray, optional
        A C-contiguous array of x's shape and the output dtype to write the result into
        (reusing a buffer across calls); it must not overlap the inputs (x, gamma, beta and
        the running statistics).
    moments : Moments, optional
        Train mode only: normalise with these statistics (of a batch x is part of, see
        :func:`merge_moments`) instead of x's own; x may then have any number of rows, and
        the running statistics are updated with these (``unbiased``: corrected by their
        count, the whole batch's). Fed ``batchnorm_moments(x)``, the result has the bits of
        the plain call.

    Returns
    -------
    out : ndarray of shape (N, D)
        ``gamma * (x - mean) / sqrt(var + eps) + beta``.
    cache : NormCache
        For :func:`batchnorm_backward`; ``cache.mean`` and ``cache.invstd`` hold the statistics.

    Raises
    ------
    ValueError
        Wrong shapes, a missing or unknown mode, eps < 0, momentum outside [0, 1], a batch of
        one in train mode, or test mode without running statistics.
    TypeError
        Non-array input or a complex, object or string dtype.

    Notes
    -----
    Edge cases (the same for both backends):

    - Empty input: with D = 0, or in test mode with N = 0, the output is empty. Train mode
      with N = 0 or N = 1 raises ValueError (no batch statistics).
    - A constant feature has variance 0: with eps > 0 its output is beta and its gradients
      are finite; with eps = 0 its invstd is inf and its output, dx and dgamma are NaN (as in
      PyTorch). Other features are not affected.
    - NaN or Inf in a feature makes that feature's output and statistics (cache.mean,
      cache.invstd, running statistics) non-finite; every other feature is computed exactly as
      without it.
    - The running statistics keep their dtype: float32 ones overflow to inf when the batch
      variance exceeds 3.4e38 (|x| above ~1e19); mean and invstd stay finite for any finite
      float32 input, and the output while x - mean is within float32's range (the sweep
      computes x - mean in float32: values of +-3e38 in one batch give inf).

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, size=(200, 3))
    >>> bn_param = {{"mode": "train"}}
    >>> out, cache = fastbn.batchnorm_forward(x, np.ones(3), np.zeros(3), bn_param)
    >>> np.allclose(out.mean(axis=0), 0), np.allclose(out.std(axis=0), 1, atol=1e-4)
    (True, True)
    >>> sorted(bn_param)
    ['mode', 'running_mean', 'running_var']
    """
    return _forward("batchnorm", x, gamma, beta, bn_param, backend=backend, out=out,
                    moments=moments)


def batchnorm_backward(
    dout: NDArray[Any], cache: NormCache,
    *, backend: str = "auto", out: NDArray[Any] | None = None,
) -> tuple[NDArray[Any], NDArray[Any] | None, NDArray[Any] | None]:
    """Gradients of :func:`batchnorm_forward`.

    Parameters
    ----------
    dout : ndarray of shape (N, D)
        Upstream gradient; cast to the computation dtype of the forward.
    cache : NormCache
        The cache returned by :func:`batchnorm_forward` (of either backend).
    backend : {'auto', 'cython', 'numpy'}, default 'auto'
        The NumPy backend backpropagates stage by stage through the computation graph; the
        compiled backend uses the closed form, so the two check each other.
    out : ndarray, optional
        A C-contiguous array of dout's shape and the output dtype to write dx into; it must
        not overlap dout or the arrays of the cache.

    Returns
    -------
    dx : ndarray of shape (N, D)
    dgamma, dbeta : ndarray or None
        Shaped like gamma and beta; None for a parameter the forward was given as None.

    Notes
    -----
    A test-mode cache gives the gradient of the test-mode forward, in which the running
    statistics are constants: ``dx = dout * gamma * invstd``.

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> x = np.random.default_rng(0).normal(size=(50, 4))
    >>> out, cache = fastbn.batchnorm_forward(x, np.ones(4), np.zeros(4), {"mode": "train"})
    >>> dx, dgamma, dbeta = fastbn.batchnorm_backward(np.ones_like(x), cache)
    >>> np.allclose(dx, 0), dbeta
    (True, array([50., 50., 50., 50.]))
    """
    return _backward("batchnorm", "batchnorm_backward", dout, cache, backend=backend, out=out)


def batchnorm_backward_alt(
    dout: NDArray[Any], cache: NormCache,
    *, backend: str = "auto", out: NDArray[Any] | None = None,
) -> tuple[NDArray[Any], NDArray[Any] | None, NDArray[Any] | None]:
    """Gradients of :func:`batchnorm_forward` from the simplified closed form.

    ``dx = gamma * invstd / N * (N * dout - dbeta - xhat * dgamma)``. Parameters and return
    values are those of :func:`batchnorm_backward`; the compiled backend runs the same kernel.

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> x = np.random.default_rng(1).normal(size=(20, 3))
    >>> dout = np.random.default_rng(2).normal(size=(20, 3))
    >>> _, cache = fastbn.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    >>> a = fastbn.batchnorm_backward(dout, cache, backend="numpy")
    >>> b = fastbn.batchnorm_backward_alt(dout, cache, backend="numpy")
    >>> all(np.allclose(u, v) for u, v in zip(a, b))
    True
    """
    return _backward("batchnorm", "batchnorm_backward_alt", dout, cache, backend=backend, out=out)


def spatial_batchnorm_forward(
    x: NDArray[Any], gamma: NDArray[Any] | None, beta: NDArray[Any] | None, bn_param: MutableMapping[str, Any],
    *, backend: str = "auto", out: NDArray[Any] | None = None,
    moments: Moments | None = None,
) -> tuple[NDArray[Any], NormCache]:
    """Batch normalization per channel of a batch of any rank >= 3.

    Parameters
    ----------
    x : ndarray of shape (N, C, *spatial), or (N, *spatial, C) with ``bn_param['layout'] = 'NHWC'``
        Any number of spatial axes: (N, C, L) as PyTorch's BatchNorm1d, (N, C, H, W) as
        BatchNorm2d, (N, C, D, H, W) as BatchNorm3d. Statistics are taken per channel over N
        and the spatial axes.
    gamma, beta : ndarray of shape (C,) or (1, C, 1, 1) ((1, 1, 1, C) for NHWC), or None
        Any shape of C values (or of one value) that broadcasts against x is accepted, such as
        (C, 1, 1); None means 1 / 0.
    {bn_param}
        ``'layout'``: ``'NCHW'`` (default, channels first, for any rank) or ``'NHWC'``
        (channels last); ``'channels_first'`` and ``'channels_last'`` are synonyms.
    backend : {{'auto', 'cython', 'numpy'}}, default 'auto'
    out : ndarray, optional
        Output buffer, as in :func:`batchnorm_forward`.
    moments : Moments, optional
        Given statistics, as in :func:`batchnorm_forward` (from
        ``batchnorm_moments(x, layout=...)``).

    Returns
    -------
    out : ndarray shaped like x
    cache : NormCache

    Notes
    -----
    Edge cases (the same for both backends):

    - Empty input: with C = 0, or in test mode with N*H*W = 0, the output is empty. Train mode
      with N*H*W = 0 or N*H*W = 1 raises ValueError (no batch statistics).
    - A constant channel has variance 0: with eps > 0 its output is beta and its gradients
      are finite; with eps = 0 its invstd is inf and its output, dx and dgamma are NaN (as in
      PyTorch). Other channels are not affected.
    - NaN or Inf in a channel makes that channel's output and statistics (cache.mean,
      cache.invstd, running statistics) non-finite; every other channel is computed exactly as
      without it.
    - The running statistics keep their dtype: float32 ones overflow to inf when the batch
      variance exceeds 3.4e38 (|x| above ~1e19); mean and invstd stay finite for any finite
      float32 input, and the output while x - mean is within float32's range (the sweep
      computes x - mean in float32: values of +-3e38 in one batch give inf).

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(8, 3, 5, 5))
    >>> out, cache = fastbn.spatial_batchnorm_forward(x, np.ones(3), np.zeros(3), {{"mode": "train"}})
    >>> np.allclose(out.mean(axis=(0, 2, 3)), 0)
    True
    >>> x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    >>> out_nhwc, _ = fastbn.spatial_batchnorm_forward(
    ...     x_nhwc, np.ones(3), np.zeros(3), {{"mode": "train", "layout": "NHWC"}})
    >>> np.allclose(out_nhwc, out.transpose(0, 2, 3, 1))
    True
    """
    return _forward("spatial_batchnorm", x, gamma, beta, bn_param, backend=backend, out=out,
                    moments=moments)


def spatial_batchnorm_backward(
    dout: NDArray[Any], cache: NormCache,
    *, backend: str = "auto", out: NDArray[Any] | None = None,
) -> tuple[NDArray[Any], NDArray[Any] | None, NDArray[Any] | None]:
    """Gradients of :func:`spatial_batchnorm_forward`.

    Parameters
    ----------
    dout : ndarray shaped like x
    cache : NormCache
        From :func:`spatial_batchnorm_forward`.
    backend : {'auto', 'cython', 'numpy'}, default 'auto'
    out : ndarray, optional
        Buffer for dx, as in :func:`batchnorm_backward`.

    Returns
    -------
    dx : ndarray shaped like x
    dgamma, dbeta : ndarray shaped like gamma and beta, or None where the forward had None

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> x = np.random.default_rng(0).normal(size=(4, 2, 3, 3))
    >>> _, cache = fastbn.spatial_batchnorm_forward(x, np.ones(2), np.zeros(2), {"mode": "train"})
    >>> dx, dgamma, dbeta = fastbn.spatial_batchnorm_backward(np.ones_like(x), cache)
    >>> dbeta
    array([36., 36.])
    """
    return _backward("spatial_batchnorm", "spatial_batchnorm_backward", dout, cache, backend=backend,
                     out=out)


def layernorm_forward(
    x: NDArray[Any], gamma: NDArray[Any] | None, beta: NDArray[Any] | None, ln_param: MutableMapping[str, Any],
    *, backend: str = "auto", out: NDArray[Any] | None = None,
) -> tuple[NDArray[Any], NormCache]:
    """Layer normalization over the last axis of x, or over its trailing axes from ``axis``.

    Parameters
    ----------
    x : ndarray of shape (..., D)
        Each row of D values is normalised with its own mean and biased variance; with
        ``ln_param['axis']`` a row is ``x[i, j, ...]`` over the axes ``axis ... x.ndim - 1``.
    gamma, beta : ndarray of shape ``x.shape[axis:]`` or flat (D,), or None
        Any shape of D values (or of one value) that broadcasts against x is accepted (such as
        (1, D)); None means 1 / 0 (PyTorch's ``elementwise_affine=False``, ONNX's missing B).
    ln_param : dict
        ``'eps'`` (default 1e-5, >= 0); ``'axis'`` (default -1): normalize over the axes
        ``axis ... x.ndim - 1``, ONNX's LayerNormalization axis, PyTorch's
        ``normalized_shape = x.shape[axis:]``. Other keys (such as ``'mode'``) are ignored.
    backend : {'auto', 'cython', 'numpy'}, default 'auto'
    out : ndarray, optional
        Output buffer, as in :func:`batchnorm_forward`.

    Returns
    -------
    out : ndarray shaped like x
    cache : NormCache
        ``cache.mean`` and ``cache.invstd`` have shape ``x.shape[:axis]``.

    Notes
    -----
    Edge cases (the same for both backends):

    - Empty input (any dimension 0) gives an empty output, and empty or zero gradients.
    - A constant row has variance 0: with eps > 0 its output is beta and its gradients are
      finite; with eps = 0 its invstd is inf and its output and dx are NaN (as in PyTorch).
    - NaN or Inf in a row makes that row's output, dx and statistics non-finite; every other
      row is computed exactly as without it (dgamma and dbeta, sums over all rows, are
      non-finite where it contributes).

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> x = np.random.default_rng(0).normal(size=(4, 10))
    >>> out, cache = fastbn.layernorm_forward(x, np.ones(10), np.zeros(10), {})
    >>> np.allclose(out.mean(axis=1), 0), cache.mean.shape
    (True, (4,))
    >>> images = np.random.default_rng(1).normal(size=(2, 3, 4, 4))
    >>> out, cache = fastbn.layernorm_forward(images, None, None, {"axis": 1})
    >>> cache.mean.shape, np.allclose(out.reshape(2, -1).std(axis=1), 1, atol=1e-4)
    ((2,), True)
    """
    return _forward("layernorm", x, gamma, beta, ln_param, backend=backend, out=out)


def layernorm_backward(
    dout: NDArray[Any], cache: NormCache,
    *, backend: str = "auto", out: NDArray[Any] | None = None,
) -> tuple[NDArray[Any], NDArray[Any] | None, NDArray[Any] | None]:
    """Gradients of :func:`layernorm_forward`.

    Parameters
    ----------
    dout : ndarray shaped like x
    cache : NormCache
        From :func:`layernorm_forward`.
    backend : {'auto', 'cython', 'numpy'}, default 'auto'
    out : ndarray, optional
        Buffer for dx, as in :func:`batchnorm_backward`.

    Returns
    -------
    dx : ndarray shaped like x
    dgamma, dbeta : ndarray shaped like gamma and beta, or None where the forward had None

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> x = np.random.default_rng(0).normal(size=(4, 10))
    >>> _, cache = fastbn.layernorm_forward(x, np.ones(10), np.zeros(10), {})
    >>> dx, dgamma, dbeta = fastbn.layernorm_backward(np.ones_like(x), cache)
    >>> np.allclose(dx, 0), dbeta[:3]
    (True, array([4., 4., 4.]))
    """
    return _backward("layernorm", "layernorm_backward", dout, cache, backend=backend, out=out)


def spatial_groupnorm_forward(
    x: NDArray[Any], gamma: NDArray[Any] | None, beta: NDArray[Any] | None, G: int,
    gn_param: MutableMapping[str, Any],
    *, backend: str = "auto", out: NDArray[Any] | None = None,
) -> tuple[NDArray[Any], NormCache]:
    """Group normalization of an (N, C, *spatial) array: statistics per sample and group.

    Parameters
    ----------
    x : ndarray of shape (N, C, *spatial)
        Channels first, with any number (also none) of spatial axes, as PyTorch's GroupNorm.
    gamma, beta : ndarray of shape (1, C, 1, 1) or (C,), or None
        Any shape of C values (or of one value) that broadcasts against x; None means 1 / 0.
    G : int
        Number of groups; must divide C. G = 1 is layernorm over (C, H, W), G = C is instance
        normalization.
    gn_param : dict
        ``'eps'`` (default 1e-5, >= 0); ``'layout'``: only ``'NCHW'`` (``'channels_first'``).
        Other keys are ignored.
    backend : {'auto', 'cython', 'numpy'}, default 'auto'
    out : ndarray, optional
        Output buffer, as in :func:`batchnorm_forward`.

    Returns
    -------
    out : ndarray shaped like x
    cache : NormCache
        ``cache.mean`` and ``cache.invstd`` have shape (N, G).

    Notes
    -----
    Edge cases (the same for both backends):

    - Empty input (N, C, H or W = 0) gives an empty output, and empty or zero gradients.
    - A constant group (one sample's C/G channels) has variance 0: with eps > 0 its output is
      beta and its gradients are finite; with eps = 0 its invstd is inf and its output and dx
      are NaN (as in PyTorch).
    - NaN or Inf in a group makes that group's output, dx and statistics non-finite; every
      other group is computed exactly as without it (dgamma and dbeta, sums over the batch, are
      non-finite for the channels it touches).

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> x = np.random.default_rng(0).normal(size=(2, 6, 4, 4))
    >>> out, cache = fastbn.spatial_groupnorm_forward(
    ...     x, np.ones((1, 6, 1, 1)), np.zeros((1, 6, 1, 1)), 3, {})
    >>> cache.mean.shape, np.allclose(out.reshape(2, 3, -1).mean(axis=2), 0)
    ((2, 3), True)
    """
    return _forward("groupnorm", x, gamma, beta, gn_param, G, backend=backend, out=out)


def spatial_groupnorm_backward(
    dout: NDArray[Any], cache: NormCache,
    *, backend: str = "auto", out: NDArray[Any] | None = None,
) -> tuple[NDArray[Any], NDArray[Any] | None, NDArray[Any] | None]:
    """Gradients of :func:`spatial_groupnorm_forward`.

    Parameters
    ----------
    dout : ndarray shaped like x
    cache : NormCache
        From :func:`spatial_groupnorm_forward`.
    backend : {'auto', 'cython', 'numpy'}, default 'auto'
    out : ndarray, optional
        Buffer for dx, as in :func:`batchnorm_backward`.

    Returns
    -------
    dx : ndarray shaped like x
    dgamma, dbeta : ndarray shaped like the gamma and beta given to the forward, or None where
        the forward had None

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> x = np.random.default_rng(0).normal(size=(2, 6, 4, 4))
    >>> _, cache = fastbn.spatial_groupnorm_forward(
    ...     x, np.ones((1, 6, 1, 1)), np.zeros((1, 6, 1, 1)), 3, {})
    >>> dx, dgamma, dbeta = fastbn.spatial_groupnorm_backward(np.ones_like(x), cache)
    >>> dbeta.shape, float(dbeta[0, 0, 0, 0])
    ((1, 6, 1, 1), 32.0)
    """
    return _backward("groupnorm", "spatial_groupnorm_backward", dout, cache, backend=backend, out=out)


def rmsnorm_forward(
    x: NDArray[Any], gamma: NDArray[Any] | None, ln_param: MutableMapping[str, Any],
    *, backend: str = "auto", out: NDArray[Any] | None = None,
) -> tuple[NDArray[Any], NormCache]:
    """Root-mean-square normalization (RMSNorm) over the last axis of x (or the trailing axes
    from ``ln_param['axis']``).

    ``out = x / sqrt(mean(x**2, axis=-1) + eps) * gamma``: layernorm without centring and
    without a shift, as PyTorch's ``torch.nn.functional.rms_norm`` and ONNX's
    RMSNormalization (over the last axis) compute it.

    Parameters
    ----------
    x : ndarray of shape (..., D)
        Each row of D values is divided by its own root mean square. dtypes as in
        :func:`batchnorm_forward`.
    gamma : ndarray of shape ``x.shape[axis:]`` or (D,) (or (1, ..., 1, D)), or None
        Scale; None means 1. A single value applies to every feature.
    ln_param : dict
        ``'eps'`` (default 1e-5, >= 0); ``'axis'`` (default -1): normalize over the axes
        ``axis ... x.ndim - 1`` as in :func:`layernorm_forward`. Other keys are ignored.
    backend : {'auto', 'cython', 'numpy'}, default 'auto'
    out : ndarray, optional
        Output buffer, as in :func:`batchnorm_forward`.

    Returns
    -------
    out : ndarray shaped like x
    cache : NormCache
        For :func:`rmsnorm_backward`; ``cache.invstd`` holds ``1 / sqrt(mean(x**2) + eps)``
        per row, shape ``x.shape[:axis]`` (``cache.mean`` is 0: rows are not centred).

    Raises
    ------
    ValueError
        Wrong shapes or eps < 0.
    TypeError
        Non-array input or a complex, object or string dtype.

    Notes
    -----
    Empty input gives an empty output. An all-zero row with eps = 0 has invstd inf and a NaN
    output (as in PyTorch); with eps > 0 its output is 0.

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> x = np.array([[3.0, 4.0], [1.0, 1.0]])
    >>> out, cache = fastbn.rmsnorm_forward(x, np.ones(2), {"eps": 0.0})
    >>> out
    array([[0.84852814, 1.13137085],
           [1.        , 1.        ]])
    >>> np.allclose(cache.invstd, 1 / np.sqrt([12.5, 1.0]))
    True
    """
    return _forward("rmsnorm", x, gamma, None, ln_param, backend=backend, out=out)


def rmsnorm_backward(
    dout: NDArray[Any], cache: NormCache,
    *, backend: str = "auto", out: NDArray[Any] | None = None,
) -> tuple[NDArray[Any], NDArray[Any] | None]:
    """Gradients of :func:`rmsnorm_forward`.

    With ``g = dout * gamma`` and ``xhat = x * invstd`` per row of D values:
    ``dx = invstd * (g - xhat * mean(g * xhat))`` and ``dgamma = sum(dout * xhat)`` over all rows.

    Parameters
    ----------
    dout : ndarray shaped like x
    cache : NormCache
        From :func:`rmsnorm_forward` (of either backend).
    backend : {'auto', 'cython', 'numpy'}, default 'auto'
    out : ndarray, optional
        Buffer for dx, as in :func:`batchnorm_backward`.

    Returns
    -------
    dx : ndarray shaped like x
    dgamma : ndarray shaped like gamma, or None when the forward had gamma=None
        (RMSNorm has no beta, so there is no dbeta.)

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> x = np.random.default_rng(0).normal(size=(4, 10))
    >>> _, cache = fastbn.rmsnorm_forward(x, np.ones(10), {})
    >>> dx, dgamma = fastbn.rmsnorm_backward(np.ones_like(x), cache)
    >>> dx.shape, dgamma.shape
    ((4, 10), (10,))
    """
    return _backward("rmsnorm", "rmsnorm_backward", dout, cache, backend=backend, out=out)


_RELU_NOTES = """Notes
    -----
    One sweep each way: the normalising sweep adds the residual, applies the ReLU and writes
    its mask; the backward's sums and dx sweep read dout through the mask. The cache keeps the
    mask packed, one bit per element (``cache.mask``: ``np.packbits(out.ravel() > 0,
    bitorder='little')``, see :class:`NormCache`), and neither the output nor the
    pre-activation: beyond the unfused op's cache, ``ceil(x.size / 8)`` bytes. The gradient of
    the ReLU at exactly 0 is 0, as in PyTorch; a NaN output passes NaN forward and no gradient
    back. Running statistics, modes, dtypes and edge cases are those of the unfused op."""


def batchnorm_relu_forward(
    x: NDArray[Any], gamma: NDArray[Any] | None, beta: NDArray[Any] | None,
    bn_param: MutableMapping[str, Any], *, residual: NDArray[Any] | None = None,
    backend: str = "auto", out: NDArray[Any] | None = None,
) -> tuple[NDArray[Any], NormCache]:
    """Batch normalization of an (N, D) array, plus an optional residual, then ReLU, fused.

    ``out = max(batchnorm(x) + residual, 0)`` in one sweep over memory.

    Parameters
    ----------
    x : ndarray of shape (N, D)
        dtypes as in :func:`batchnorm_forward`.
    gamma, beta : ndarray of shape (D,) or (1, D)
    {bn_param}
    residual : ndarray of shape (N, D), optional
        Added after the normalization, before the ReLU (a residual block's skip connection);
        cast to the computation dtype of x.
    backend : {{'auto', 'cython', 'numpy'}}, default 'auto'
    out : ndarray, optional
        Output buffer, as in :func:`batchnorm_forward`.

    Returns
    -------
    out : ndarray of shape (N, D)
    cache : NormCache
        For :func:`batchnorm_relu_backward`.

    {notes}

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> x = np.random.default_rng(0).normal(size=(100, 4))
    >>> out, cache = fastbn.batchnorm_relu_forward(x, np.ones(4), np.zeros(4), {{"mode": "train"}})
    >>> bn, _ = fastbn.batchnorm_forward(x, np.ones(4), np.zeros(4), {{"mode": "train"}})
    >>> np.allclose(out, np.maximum(bn, 0)), cache.mask.nbytes
    (True, 50)
    """
    return _forward("batchnorm_relu", x, gamma, beta, bn_param, backend=backend, out=out,
                    residual=residual)


def batchnorm_relu_backward(
    dout: NDArray[Any], cache: NormCache,
    *, backend: str = "auto", out: NDArray[Any] | None = None,
) -> tuple[NDArray[Any] | None, ...]:
    """Gradients of :func:`batchnorm_relu_forward`.

    Parameters
    ----------
    dout : ndarray of shape (N, D)
    cache : NormCache
        From :func:`batchnorm_relu_forward` (of either backend).
    backend : {'auto', 'cython', 'numpy'}, default 'auto'
    out : ndarray, optional
        Buffer for dx, as in :func:`batchnorm_backward`.

    Returns
    -------
    dx : ndarray of shape (N, D)
    dgamma, dbeta : ndarray shaped like gamma and beta
    dresidual : ndarray of shape (N, D)
        Only when the forward had a residual: ``dout * (out > 0)``.

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> rng = np.random.default_rng(0)
    >>> x, skip = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    >>> out, cache = fastbn.batchnorm_relu_forward(
    ...     x, np.ones(3), np.zeros(3), {"mode": "train"}, residual=skip)
    >>> dx, dgamma, dbeta, dskip = fastbn.batchnorm_relu_backward(np.ones_like(x), cache)
    >>> np.array_equal(dskip, (out > 0).astype(float)), dbeta == (out > 0).sum(axis=0)
    (True, array([ True,  True,  True]))
    """
    return _backward("batchnorm_relu", "batchnorm_relu_backward", dout, cache, backend=backend,
                     out=out)


def spatial_batchnorm_relu_forward(
    x: NDArray[Any], gamma: NDArray[Any] | None, beta: NDArray[Any] | None,
    bn_param: MutableMapping[str, Any], *, residual: NDArray[Any] | None = None,
    backend: str = "auto", out: NDArray[Any] | None = None,
) -> tuple[NDArray[Any], NormCache]:
    """Spatial batch normalization, plus an optional residual, then ReLU, fused.

    ``out = max(spatial_batchnorm(x) + residual, 0)`` in one sweep over memory.

    Parameters
    ----------
    x : ndarray of shape (N, C, H, W), or (N, H, W, C) with ``bn_param['layout'] = 'NHWC'``
    gamma, beta : ndarray of shape (C,) or (1, C, 1, 1) ((1, 1, 1, C) for NHWC)
    {bn_param}
        ``'layout'``: ``'NCHW'`` (default) or ``'NHWC'``.
    residual : ndarray shaped like x, optional
        Added after the normalization, before the ReLU; cast to the computation dtype of x.
    backend : {{'auto', 'cython', 'numpy'}}, default 'auto'
    out : ndarray, optional
        Output buffer, as in :func:`batchnorm_forward`.

    Returns
    -------
    out : ndarray shaped like x
    cache : NormCache
        For :func:`spatial_batchnorm_relu_backward`.

    {notes}

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> x = np.random.default_rng(0).normal(size=(4, 3, 5, 5))
    >>> skip = np.ones_like(x)
    >>> out, cache = fastbn.spatial_batchnorm_relu_forward(
    ...     x, np.ones(3), np.zeros(3), {{"mode": "train"}}, residual=skip)
    >>> bn, _ = fastbn.spatial_batchnorm_forward(x, np.ones(3), np.zeros(3), {{"mode": "train"}})
    >>> np.allclose(out, np.maximum(bn + 1, 0))
    True
    """
    return _forward("spatial_batchnorm_relu", x, gamma, beta, bn_param, backend=backend, out=out,
                    residual=residual)


def spatial_batchnorm_relu_backward(
    dout: NDArray[Any], cache: NormCache,
    *, backend: str = "auto", out: NDArray[Any] | None = None,
) -> tuple[NDArray[Any] | None, ...]:
    """Gradients of :func:`spatial_batchnorm_relu_forward`.

    Parameters
    ----------
    dout : ndarray shaped like x
    cache : NormCache
        From :func:`spatial_batchnorm_relu_forward` (of either backend).
    backend : {'auto', 'cython', 'numpy'}, default 'auto'
    out : ndarray, optional
        Buffer for dx, as in :func:`batchnorm_backward`.

    Returns
    -------
    dx : ndarray shaped like x
    dgamma, dbeta : ndarray shaped like gamma and beta
    dresidual : ndarray shaped like x
        Only when the forward had a residual: ``dout * (out > 0)``.

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> x = np.random.default_rng(0).normal(size=(4, 2, 3, 3))
    >>> out, cache = fastbn.spatial_batchnorm_relu_forward(
    ...     x, np.ones(2), np.zeros(2), {"mode": "train"})
    >>> dx, dgamma, dbeta = fastbn.spatial_batchnorm_relu_backward(np.ones_like(x), cache)
    >>> np.array_equal(dbeta, (out > 0).sum(axis=(0, 2, 3)))
    True
    """
    return _backward("spatial_batchnorm_relu", "spatial_batchnorm_relu_backward", dout, cache,
                     backend=backend, out=out)


batchnorm_forward.__doc__ = batchnorm_forward.__doc__.format(bn_param=_BN_PARAM_DOC)
spatial_batchnorm_forward.__doc__ = spatial_batchnorm_forward.__doc__.format(bn_param=_BN_PARAM_DOC)
for _f in (batchnorm_relu_forward, spatial_batchnorm_relu_forward):
    _f.__doc__ = _f.__doc__.format(bn_param=_BN_PARAM_DOC, notes=_RELU_NOTES)
