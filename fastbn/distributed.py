"""Synchronized batchnorm over MPI: each process holds a part of the batch, every process
normalises with the statistics of the whole batch.

The functions take the arguments of their local counterparts plus ``comm``, an mpi4py
intra-communicator (``MPI.COMM_WORLD`` or a sub-communicator); every rank of ``comm`` must make
the same call, in the same order. Ranks may hold different numbers of rows, including none.
This is the only fastbn module that imports mpi4py (``import fastbn`` does not).

Forward (train mode): each rank computes the moments ``(count, mean, m2)`` of its part
(:func:`fastbn.batchnorm_moments`, one read of x); the moments of all ranks are gathered and
merged in rank order (:func:`fastbn.merge_moments`), so every rank gets identical bits, and each
rank normalises its part with them through the local forward (``moments=``). The output,
``cache.mean``, ``cache.invstd`` and the running statistics are those of the local forward on the
concatenation of all ranks' parts (to rounding). Test mode normalises with the running
statistics, as the local forward does.

Backward: each rank computes the two per-channel sums ``sum(dout)`` and
``sum(dout * (x - mean))`` of its part; they are gathered and added in rank order, and each rank
computes its part of dx from them (the compiled dx sweep of the local backward); dgamma and
dbeta are the whole batch's, identical bits on every rank.

Communication per call: two gathers of ``O(C)`` values per rank (the arguments' description,
then the statistics), independent of the number of rows.

Errors are collective: every rank first learns every rank's arguments, so ranks that disagree
on the function called, the number of channels, the computation dtype, the mode, the layout,
eps, momentum or ``bn_param['unbiased']`` (the last two in train mode), backwards given caches
of different statistics (a cache of the local forward), a batch with fewer than two values per
channel in train mode, or a rank whose own arguments are invalid make every rank raise (the same
``ValueError`` on every rank, except that a rank with invalid arguments raises its own error).
Nothing is computed or updated then.
Every collective is non-blocking and polled against a deadline (``timeout`` seconds): a rank
whose peers do not make the same call raises :class:`CollectiveTimeout` instead of waiting
forever. After a timeout the ranks' collectives are out of step: end the job (``comm.Abort()``).
"""
import math
import time
import zlib
from numbers import Real

import numpy as np
from mpi4py import MPI

from fastbn import _backends, _compiled, reference
from fastbn._dispatch import run_forward
from fastbn._moments import Moments, merge_moments
from fastbn._ops import OPS
from fastbn._results import NormCache
from fastbn._validation import prepare, prepare_backward

__all__ = [
    "CollectiveTimeout",
    "batchnorm_backward",
    "batchnorm_forward",
    "spatial_batchnorm_backward",
    "spatial_batchnorm_forward",
]

DEFAULT_TIMEOUT = 60.0  # seconds a rank waits for the others in each collective

# What every rank tells the others before any statistic is exchanged (one float64 each).
_HEADER = ("error", "function", "channels", "dtype", "mode", "layout", "eps", "momentum",
           "unbiased", "statistics", "count")
_FUNCTIONS = ("batchnorm_forward", "batchnorm_backward", "spatial_batchnorm_forward",
              "spatial_batchnorm_backward")
_MODES = ("train", "test")
_LAYOUTS = ("NC", "NCHW", "NHWC")
_AGREE = {  # header field: how the error message names it, and how it shows a value
    "function": ("the function called", lambda v: _FUNCTIONS[int(v)]),
    "channels": ("the number of channels (features) C", lambda v: str(int(v))),
    "dtype": ("the computation dtype", lambda v: f"float{8 * int(v)}"),
    "mode": ("bn_param['mode'] (cache.mode)", lambda v: repr(_MODES[int(v)])),
    "layout": ("the layout", lambda v: repr(_LAYOUTS[int(v)])),
    "eps": ("eps", lambda v: repr(float(v))),
    "momentum": ("momentum (with bn_param['momentum'] None: n / (n + 1) after "
                 "num_batches_tracked = n)", lambda v: repr(float(v))),
    "unbiased": ("bn_param['unbiased']", lambda v: repr(bool(v))),
    "statistics": ("the cache's statistics (cache.mean and cache.invstd: the backward takes the "
                   "caches of one distributed forward, not of a local one)",
                   lambda v: f"CRC-32 {int(v):08x}"),
}
_SPIN_SECONDS = 2e-3  # a collective is polled without pause this long, then every _POLL_SECONDS
_POLL_SECONDS = 2e-4


class CollectiveTimeout(TimeoutError):
    """A collective of :mod:`fastbn.distributed` did not complete within its timeout: another
    rank of the communicator did not make the same call.

    Examples
    --------
    >>> import fastbn.distributed
    >>> issubclass(fastbn.distributed.CollectiveTimeout, TimeoutError)
    True
    """


def batchnorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, bn_param: dict,
                      comm: MPI.Intracomm, *, backend: str = "auto", out: np.ndarray | None = None,
                      timeout: float = DEFAULT_TIMEOUT) -> tuple[np.ndarray, NormCache]:
    """Batchnorm of an (N, D) array that is one rank's part of a batch spread over `comm`.

    Parameters
    ----------
    x : ndarray of shape (N, D)
        This rank's rows; N may differ between ranks and be 0 or 1.
    gamma, beta : ndarray of shape (D,) or (1, D)
        The same on every rank.
    bn_param : dict
        As in :func:`fastbn.batchnorm_forward` (and the same on every rank); the running
        statistics are updated with the whole batch's statistics (identical on every rank when
        they were before).
    comm : mpi4py.MPI.Intracomm
        The ranks that hold the batch.
    backend : {'auto', 'cython', 'numpy'}, default 'auto'
    out : ndarray, optional
        Output buffer, as in :func:`fastbn.batchnorm_forward`.
    timeout : float, default 60.0
        Seconds to wait for the other ranks in each collective.

    Returns
    -------
    out : ndarray of shape (N, D)
        This rank's part of the output of batchnorm on the whole batch.
    cache : NormCache
        For :func:`batchnorm_backward` of this module (the local
        :func:`fastbn.batchnorm_backward` would take this rank's rows for the whole batch):
        ``cache.mean`` and ``cache.invstd`` are the whole batch's, identical on every rank.

    Raises
    ------
    ValueError
        On every rank, when the ranks disagree (D, dtype, mode, eps, momentum, unbiased) or the
        whole batch has fewer than 2 rows in train mode; see the module's notes.
    CollectiveTimeout
        When another rank does not make the same call within `timeout` seconds.

    Examples
    --------
    >>> import numpy as np, fastbn.distributed
    >>> from mpi4py import MPI
    >>> comm = MPI.COMM_WORLD
    >>> x = np.random.default_rng(comm.rank).normal(size=(8, 3))  # this rank's rows
    >>> out, cache = fastbn.distributed.batchnorm_forward(
    ...     x, np.ones(3), np.zeros(3), {"mode": "train"}, comm)
    >>> out.shape, cache.mean.shape
    ((8, 3), (3,))
    """
    return _forward("batchnorm_forward", x, gamma, beta, bn_param, comm, backend, out, timeout)


def batchnorm_backward(dout: np.ndarray, cache: NormCache, comm: MPI.Intracomm, *,
                       backend: str = "auto", out: np.ndarray | None = None,
                       timeout: float = DEFAULT_TIMEOUT,
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`batchnorm_forward`: this rank's dx, the whole batch's dgamma and dbeta.

    Parameters
    ----------
    dout : ndarray of shape (N, D)
        The upstream gradient of this rank's rows.
    cache : NormCache
        From this rank's :func:`batchnorm_forward` (of this module: a cache of the local
        forward holds this rank's statistics, which differ between ranks, and every rank raises).
    comm : mpi4py.MPI.Intracomm
        The communicator of the forward.
    backend : {'auto', 'cython', 'numpy'}, default 'auto'
    out : ndarray, optional
        Buffer for dx, as in :func:`fastbn.batchnorm_backward`.
    timeout : float, default 60.0
        Seconds to wait for the other ranks in each collective.

    Returns
    -------
    dx : ndarray of shape (N, D)
        This rank's rows of the gradient of the loss of the whole batch.
    dgamma, dbeta : ndarray
        The whole batch's, identical bits on every rank (do not add them up over the ranks).

    Raises
    ------
    ValueError
        On every rank, when the ranks disagree (the function, D, dtype, mode, eps) or their
        caches hold different statistics; see the module's notes.
    CollectiveTimeout
        When another rank does not make the same call within `timeout` seconds.

    Examples
    --------
    >>> import numpy as np, fastbn.distributed
    >>> from mpi4py import MPI
    >>> comm = MPI.COMM_WORLD
    >>> x = np.random.default_rng(comm.rank).normal(size=(8, 3))
    >>> _, cache = fastbn.distributed.batchnorm_forward(
    ...     x, np.ones(3), np.zeros(3), {"mode": "train"}, comm)
    >>> dx, dgamma, dbeta = fastbn.distributed.batchnorm_backward(np.ones_like(x), cache, comm)
    >>> np.allclose(dx, 0), dbeta == 8.0 * comm.size
    (True, array([ True,  True,  True]))
    """
    return _backward("batchnorm_backward", dout, cache, comm, backend, out, timeout)


def spatial_batchnorm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, bn_param: dict,
                              comm: MPI.Intracomm, *, backend: str = "auto",
                              out: np.ndarray | None = None, timeout: float = DEFAULT_TIMEOUT,
                              ) -> tuple[np.ndarray, NormCache]:
    """Spatial batchnorm of an image batch spread over the ranks of `comm`.

    Parameters, returns and errors are those of :func:`batchnorm_forward`, with x of shape
    (N, C, H, W) (or (N, H, W, C) with ``bn_param['layout'] = 'NHWC'``, on every rank) and
    gamma, beta of shape (C,) or broadcasting against x; N may differ between ranks.

    Examples
    --------
    >>> import numpy as np, fastbn.distributed
    >>> from mpi4py import MPI
    >>> comm = MPI.COMM_WORLD
    >>> x = np.random.default_rng(comm.rank).normal(size=(2, 3, 4, 4))
    >>> out, cache = fastbn.distributed.spatial_batchnorm_forward(
    ...     x, np.ones(3), np.zeros(3), {"mode": "train"}, comm)
    >>> out.shape
    (2, 3, 4, 4)
    """
    return _forward("spatial_batchnorm_forward", x, gamma, beta, bn_param, comm, backend, out,
                    timeout)


def spatial_batchnorm_backward(dout: np.ndarray, cache: NormCache, comm: MPI.Intracomm, *,
                               backend: str = "auto", out: np.ndarray | None = None,
                               timeout: float = DEFAULT_TIMEOUT,
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`spatial_batchnorm_forward`; as :func:`batchnorm_backward`.

    Examples
    --------
    >>> import numpy as np, fastbn.distributed
    >>> from mpi4py import MPI
    >>> comm = MPI.COMM_WORLD
    >>> x = np.random.default_rng(comm.rank).normal(size=(2, 3, 4, 4))
    >>> _, cache = fastbn.distributed.spatial_batchnorm_forward(
    ...     x, np.ones(3), np.zeros(3), {"mode": "train"}, comm)
    >>> dx, dgamma, dbeta = fastbn.distributed.spatial_batchnorm_backward(
    ...     np.ones_like(x), cache, comm)
    >>> dbeta == 32.0 * comm.size
    array([ True,  True,  True])
    """
    return _backward("spatial_batchnorm_backward", dout, cache, comm, backend, out, timeout)


# ------------------------------------------------------------------------------------------

def _op(function):
    return OPS["batchnorm" if function.startswith("batchnorm") else "spatial_batchnorm"]


def _forward(function, x, gamma, beta, param, comm, backend, out, timeout):
    """Exchange the arguments (computing this rank's moments meanwhile), check them on every
    rank, exchange the moments, merge them in rank order and run the local forward with them."""
    spec = _op(function)
    comm = _check_comm(comm)
    try:
        timeout = _check_timeout(timeout)
        numpy = _backends.resolve(backend) == "numpy"
        p = prepare(spec, x, gamma, beta, param, out=out, whole_batch=False)
        train = p.mode == "train"  # momentum and unbiased matter in train mode only
        header = _header(function, p.gamma.size, p.x.dtype, p.mode, p.layout, p.eps,
                         p.momentum if train else 0.0, p.unbiased and train, 0,
                         spec.per_channel(p.x.shape, p.layout))
        error = None
    except Exception as e:  # any local failure: every rank raises
        header, error, timeout = _error_header(), e, _valid_timeout(timeout)

    def statistics():  # this rank's, while the arguments are exchanged
        if error is None and p.mode == "train":
            return (reference.moments if numpy else _compiled.moments)(spec, p.x, p.layout)

    headers, local = _allgather(comm, header, timeout, f"{function}: the exchange of arguments",
                                statistics)
    _check_agreement(headers, error, comm)
    if p.mode == "test":
        return run_forward(spec, p, backend)
    C = p.gamma.size
    gathered, _ = _allgather(comm, np.concatenate([local.mean, local.m2]), timeout,
                             f"{function}: the exchange of batch statistics")
    counts = headers[:, _HEADER.index("count")]
    moments = merge_moments([Moments(np.full(C, counts[r]), gathered[r, :C], gathered[r, C:])
                             for r in range(comm.size)])
    return run_forward(spec, p, backend, moments)


def _backward(function, dout, cache, comm, backend, out, timeout):
    """Exchange the arguments (computing this rank's gradient sums meanwhile), check them on every
    rank, exchange the sums, add them in rank order and run the dx sweep with them."""
    spec = _op(function)
    comm = _check_comm(comm)
    try:
        timeout = _check_timeout(timeout)
        numpy = _backends.resolve(backend) == "numpy"
        dout, out = prepare_backward(dout, cache, spec, function, out)
        statistics = zlib.crc32(np.ascontiguousarray(cache.invstd).tobytes(),
                                zlib.crc32(np.ascontiguousarray(cache.mean).tobytes()))
        header = _header(function, cache.gamma.size, cache.x.dtype, cache.mode, cache.layout,
                         cache.eps, 0.0, False, statistics,
                         spec.per_channel(cache.x.shape, cache.layout))
        error = None
    except Exception as e:  # any local failure: every rank raises
        header, error, timeout = _error_header(), e, _valid_timeout(timeout)

    def gradient_sums():  # this rank's, while the arguments are exchanged
        if error is None:
            return (reference.grad_sums if numpy else _compiled.grad_sums)(dout, cache)

    headers, local = _allgather(comm, header, timeout, f"{function}: the exchange of arguments",
                                gradient_sums)
    _check_agreement(headers, error, comm)
    gathered, _ = _allgather(comm, local.reshape(-1), timeout,
                             f"{function}: the exchange of gradient sums")
    sums = gathered[0].copy()
    for r in range(1, comm.size):  # in rank order: the same bits on every rank
        sums += gathered[r]
    count = 0.0
    for value in headers[:, _HEADER.index("count")]:
        count += value
    given = reference.backward_given if numpy else _compiled.backward_given
    return given(dout, cache, sums.reshape(2, -1), count, out)


def _check_comm(comm):
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(f"comm must be an mpi4py intra-communicator (mpi4py.MPI.Intracomm, such as "
                        f"MPI.COMM_WORLD), got {type(comm).__name__}")
    return comm


def _check_timeout(timeout):
    """`timeout` as a float: a positive number of seconds (checked with the other arguments: a
    rank with an invalid one takes part in the exchange of arguments with DEFAULT_TIMEOUT)."""
    try:
        seconds = float(timeout) if isinstance(timeout, Real) else math.nan
    except OverflowError:  # an int beyond float: no timeout, as inf
        seconds = math.inf
    if isinstance(timeout, (bool, np.bool_)) or not seconds > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return seconds


def _valid_timeout(timeout):
    """`timeout` when it is valid, else DEFAULT_TIMEOUT."""
    try:
        return _check_timeout(timeout)
    except ValueError:
        return DEFAULT_TIMEOUT


def _header(function, channels, dtype, mode, layout, eps, momentum, unbiased, statistics, count):
    """This rank's call as a float64 vector of the fields of _HEADER (`statistics`: a backward's
    CRC-32 of its cache's mean and invstd, 0 for a forward)."""
    return np.array([0.0, _FUNCTIONS.index(function), channels, np.dtype(dtype).itemsize,
                     _MODES.index(mode), _LAYOUTS.index(layout), eps, momentum, bool(unbiased),
                     statistics, count])


def _error_header():
    header = np.zeros(len(_HEADER))
    header[0] = 1.0
    return header


def _check_agreement(headers, error, comm):
    """Raise on every rank when a rank's arguments were invalid, the ranks disagree, or a
    train-mode batch has fewer than two values per channel: every rank sees every header, so
    every rank takes the same decision (and raises the same message)."""
    failed = np.flatnonzero(headers[:, 0])
    if failed.size:
        if error is not None:
            raise error
        raise ValueError(f"rank {failed[0]} of {comm.size} rejected its arguments (its own error "
                         "says why); no rank computed or updated anything")
    for field, (what, show) in _AGREE.items():
        values = headers[:, _HEADER.index(field)]
        differ = np.flatnonzero(values != values[0])
        if differ.size:
            r = differ[0]
            raise ValueError(f"the ranks disagree on {what}: rank 0 has {show(values[0])}, "
                             f"rank {r} has {show(values[r])}; every rank of the communicator "
                             "must make the same call")
    counts = headers[:, _HEADER.index("count")]
    total = int(sum(counts))
    if _MODES[int(headers[0, _HEADER.index("mode")])] == "train" and total < 2:
        raise ValueError(f"train mode needs at least 2 values per channel in the whole batch to "
                         f"compute batch statistics, got {total} (per rank: "
                         f"{[int(n) for n in counts]})")


def _allgather(comm, send, timeout, what, meanwhile=None):
    """Every rank's `send` (equal-sized float64 vectors) as a (size, n) array, in rank order,
    or CollectiveTimeout when the other ranks do not join within `timeout` seconds (counted
    from the start). ``meanwhile()``, if given, runs while the exchange is in flight (a rank that
    arrives first computes instead of waiting); returns (the array, what meanwhile returned)."""
    send = np.ascontiguousarray(send, dtype=np.float64)
    received = np.empty((comm.size, send.size))
    start = time.monotonic()
    request = comm.Iallgather(send, received)
    result = meanwhile() if meanwhile is not None else None
    while not request.Test():
        waited = time.monotonic() - start
        if waited > timeout:
            raise CollectiveTimeout(
                f"rank {comm.rank} of {comm.size}: {what} did not complete within {timeout:g} s: "
                "another rank did not make the same call (it skipped the layer, raised before "
                "it, or calls the distributed functions in another order). The ranks' collectives "
                "are now out of step: end the job (comm.Abort())."
            )
        if waited > _SPIN_SECONDS:
            time.sleep(_POLL_SECONDS)
    return received, result
