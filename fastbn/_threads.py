"""Thread-count control for the compiled kernels."""
import numbers

from fastbn import _backends, _planner

_user_threads = None


def set_num_threads(n):
    """Set the largest number of threads fastbn's compiled kernels use.

    Parameters
    ----------
    n : int or None
        A positive thread count, or None to go back to the default (OpenMP's
        ``omp_get_max_threads()``, which follows ``OMP_NUM_THREADS``).

    Notes
    -----
    The effective count never exceeds what OpenMP allows in the calling thread, so
    ``threadpoolctl.threadpool_limits(1, user_api="openmp")`` and ``OMP_NUM_THREADS`` still
    lower it. Small inputs run on fewer threads than this: see :func:`get_num_threads`.

    Examples
    --------
    >>> import fastbn
    >>> fastbn.set_num_threads(1)
    >>> fastbn.get_num_threads()
    1
    >>> fastbn.set_num_threads(None)
    """
    global _user_threads
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise TypeError(f"n must be a positive integer or None, got {n!r} of type {type(n).__name__}")
        if n < 1:
            raise ValueError(f"n must be a positive integer or None, got {n}")
        n = int(n)
    _user_threads = n


def get_num_threads():
    """Return the number of threads a large input would run on now.

    It is ``min(set_num_threads value, omp_get_max_threads())``, or ``omp_get_max_threads()``
    when no value was set; 1 when the kernels were built without OpenMP or are not built.
    An input of fewer than ``131072 * k`` elements runs on at most ``k`` threads.

    Examples
    --------
    >>> import fastbn
    >>> fastbn.get_num_threads() >= 1
    True
    """
    kernels = _backends.kernels()
    available = kernels.omp_max_threads() if kernels is not None else 1
    if _user_threads is None:
        return available
    return max(1, min(_user_threads, available))


def threads_for(n_elements):
    """Thread count for an input of n_elements: get_num_threads(), fewer for small inputs."""
    per_thread = _planner.current().min_elements_per_thread
    if n_elements < 2 * per_thread:
        return 1
    return max(1, min(get_num_threads(), n_elements // per_thread))
