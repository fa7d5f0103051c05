"""Batch statistics as values: per-channel moments, their validation and Chan's merge.

A batchnorm forward in train mode normalises with the mean and biased variance of each feature
(2-D x) or channel (spatial x). :class:`Moments` holds them as ``(count, mean, m2)`` in float64,
``m2`` being the sum of squared deviations from the mean; moments of parts of a batch merge into
the moments of the whole batch (:func:`merge_moments`, Chan et al.'s pairwise formula), and a
forward fed the merged moments normalises with the whole batch's statistics. This is how
:mod:`fastbn.distributed` synchronizes batchnorm across processes: ranks exchange moments, never
``(mean, invstd)``, from which the variance could only be recovered with a loss of precision.
"""
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from fastbn._ops import LAYOUT_SYNONYMS, LAYOUTS, OPS
from fastbn._validation import check_ndarray, compute_dtype

__all__ = ["Moments", "merge_moments"]


class Moments(NamedTuple):
    """Per-channel statistics of a batch: the input and output of :func:`fastbn.merge_moments`.

    Attributes
    ----------
    count : ndarray of float64, shape (C,)
        Values per channel (N for an (N, D) batch, N * H * W for an image batch).
    mean : ndarray of float64, shape (C,)
        Their mean (0 where count is 0).
    m2 : ndarray of float64, shape (C,)
        Their sum of squared deviations from the mean; the biased variance is ``m2 / count``.

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> m = fastbn.batchnorm_moments(np.array([[1.0, 10.0], [3.0, 30.0]]))
    >>> m.count, m.mean, m.m2
    (array([2., 2.]), array([ 2., 20.]), array([  2., 200.]))
    """

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray


def prepare_moments(x, layout):
    """Validate the arguments of :func:`fastbn.batchnorm_moments`: ``(spec, x, layout)`` with x
    C-contiguous in its computation dtype and the op and layout whose statistics it has."""
    spatial = OPS["spatial_batchnorm"]  # its layouts, their synonyms and its shapes
    if not isinstance(layout, str) or LAYOUT_SYNONYMS.get(layout, layout) not in spatial.layouts:
        allowed = [*spatial.layouts,
                   *(name for name, to in LAYOUT_SYNONYMS.items() if to in spatial.layouts)]
        raise ValueError(f"layout must be one of {allowed}, got {layout!r}")
    layout = LAYOUT_SYNONYMS.get(layout, layout)
    check_ndarray(x, "x")
    low = spatial.ndim_range(layout)[0]
    if x.ndim != 2 and x.ndim < low:
        raise ValueError(f"x must be a 2-D array of shape (N, D) or "
                         f"{LAYOUTS[layout].describe(low)}, got a {x.ndim}-D array of shape "
                         f"{x.shape}")
    spec, layout = (OPS["batchnorm"], "NC") if x.ndim == 2 else (spatial, layout)
    dtype, _ = compute_dtype(x, "x")
    return spec, np.ascontiguousarray(x, dtype=dtype), layout


def check_moments(moments, name, channels=None):
    """`moments` as a :class:`Moments` of three C-contiguous float64 arrays of one shape (C,)
    (C = `channels` when given) with counts >= 0; raises TypeError or ValueError naming `name`."""
    if not (isinstance(moments, tuple) and len(moments) == 3):
        raise TypeError(f"{name} must be a fastbn.Moments (count, mean, m2), got "
                        f"{type(moments).__name__}")
    fields = []
    for field, value in zip(Moments._fields, moments):
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu" or value.ndim != 1:
            what = (f"a {value.ndim}-D array of dtype {value.dtype}"
                    if isinstance(value, np.ndarray) else type(value).__name__)
            raise TypeError(f"{name}.{field} must be a 1-D real array, got {what}")
        fields.append(np.ascontiguousarray(value, dtype=np.float64))
    shapes = {a.shape for a in fields}
    expected = (channels,) if channels is not None else fields[0].shape
    if shapes != {expected}:
        raise ValueError(f"{name}.count, .mean and .m2 must all have shape {expected}, got shapes "
                         f"{[a.shape for a in fields]}")
    if not np.all((fields[0] >= 0) & (fields[0] < np.inf)):  # also NaN
        raise ValueError(f"{name}.count must be finite and >= 0, got {fields[0]}")
    return Moments(*fields)


def check_forward_moments(moments, prepared):
    """The `moments` given to a batchnorm forward: train mode, C channels, at least two values
    per channel."""
    if prepared.mode != "train":
        raise ValueError("moments are given but bn_param['mode'] is 'test': test mode normalises "
                         "with the running statistics")
    moments = check_moments(moments, "moments", prepared.gamma.size)
    if not np.all(moments.count >= 2):
        raise ValueError(f"train mode needs at least 2 values per channel to compute batch "
                         f"statistics, got moments.count with minimum {moments.count.min()}")
    return moments


def merge_moments(moments_sequence: Iterable[Moments]) -> Moments:
    """Merge the moments of parts of a batch into the moments of the whole batch.

    Chan et al.'s pairwise formula, applied from left to right in the order given, so that the
    result depends only on the values and their order (not on timing): for parts a and b,
    ``count = n_a + n_b``, ``delta = mean_b - mean_a``,
    ``mean = mean_a + delta * n_b / count``,
    ``m2 = m2_a + m2_b + delta**2 * n_a * n_b / count``. A part with count 0 changes nothing.

    Parameters
    ----------
    moments_sequence : iterable of Moments
        At least one; all with the same number of channels C (from
        :func:`fastbn.batchnorm_moments` or this function).

    Returns
    -------
    Moments
        float64 arrays of shape (C,).

    Raises
    ------
    ValueError
        An empty sequence, different numbers of channels, or a negative count.
    TypeError
        An element that is not a Moments of 1-D real arrays.

    Examples
    --------
    >>> import numpy as np, fastbn
    >>> x = np.random.default_rng(0).normal(5.0, 2.0, size=(100, 3))
    >>> parts = [fastbn.batchnorm_moments(part) for part in (x[:30], x[30:31], x[31:])]
    >>> whole = fastbn.merge_moments(parts)
    >>> np.allclose(whole.mean, x.mean(axis=0)), np.allclose(whole.m2 / whole.count, x.var(axis=0))
    (True, True)
    """
    if isinstance(moments_sequence, Moments):
        raise TypeError("moments_sequence must be a sequence of Moments, got a single Moments "
                        "(wrap it in a list)")
    parts = [check_moments(m, f"moments_sequence[{i}]") for i, m in enumerate(moments_sequence)]
    if not parts:
        raise ValueError("moments_sequence must hold at least one Moments, got none")
    channels = parts[0].count.shape
    for i, part in enumerate(parts):
        if part.count.shape != channels:
            raise ValueError(f"moments_sequence[{i}] has {part.count.shape[0]} channels, "
                             f"moments_sequence[0] has {channels[0]}")
    count, mean, m2 = (a.copy() for a in parts[0])
    for part in parts[1:]:
        n_b = part.count
        total = count + n_b
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = part.mean - mean
            merged_mean = mean + delta * (n_b / total)
            merged_m2 = m2 + part.m2 + delta * delta * (count * n_b / total)
        # an empty side leaves the other unchanged (and 0 / 0 never reaches the result)
        mean = np.where(n_b == 0, mean, np.where(count == 0, part.mean, merged_mean))
        m2 = np.where(n_b == 0, m2, np.where(count == 0, part.m2, merged_m2))
        count = total
    return Moments(count, mean, m2)
