"""Thread-count control for the compiled kernels."""
from __future__ import annotations

import numbers
import os
import resource
import time

from fastbn import _backends, _planner

_user_threads = None
_load = {"checked": -1.0, "free": None, "since": None}  # last count, its result, the window's start
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# Whether this process has run a kernel on several threads (OpenMP then keeps a pool of them),
# and whether it is a child forked from a process that had: the pool's threads are not copied
# by fork, and GNU OpenMP waits for them forever at the child's first parallel region.
_teams = {"started": False, "forked": False}


def _after_fork_in_child():
    _teams["forked"] = _teams["forked"] or _teams["started"]


def forked_after_threads():
    """Whether this process was forked from one that had run fastbn on several threads (it
    then runs on one: see :func:`get_num_threads`)."""
    return _teams["forked"]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_num_threads(n: int | None) -> None:
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
    lower it. Small inputs run on fewer threads than this, and a process forked after fastbn
    ran on several threads on one: see :func:`get_num_threads`.

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


def get_num_threads() -> int:
    """Return the number of threads a large input would run on now.

    It is ``min(set_num_threads value, omp_get_max_threads())``, or ``omp_get_max_threads()``
    when no value was set; 1 when the kernels were built without OpenMP or are not built, and
    in a process forked (``os.fork``, multiprocessing's "fork" start method) from one in which
    fastbn had run on several threads: OpenMP's threads do not survive fork, and GNU OpenMP
    would wait for them forever. (Worker processes started with "spawn" or "forkserver" use
    threads as usual.) An input of fewer than ``131072 * k`` elements runs on at most ``k``
    threads.

    Examples
    --------
    >>> import fastbn
    >>> fastbn.get_num_threads() >= 1
    True
    """
    kernels = _backends.kernels()
    available = kernels.omp_max_threads() if kernels is not None else 1
    if forked_after_threads():
        return 1
    if _user_threads is None:
        return available
    return max(1, min(_user_threads, available))


def threads_for(n_elements):
    """Thread count for an input of n_elements: get_num_threads(), fewer for small inputs, and
    no more than the cores other processes leave free (see :func:`free_cores`)."""
    plan = _planner.current()
    if n_elements < 2 * plan.min_elements_per_thread:
        return 1
    n = max(1, min(get_num_threads(), n_elements // plan.min_elements_per_thread))
    if n > 1 and plan.load_check_ms:
        free = free_cores(plan.load_check_ms / 1000.0)
        if free is not None:
            n = max(1, min(n, free))
    if n > 1:
        _teams["started"] = True
    return n


def _cpu_seconds():
    """(CPU seconds the whole machine has run anything (Linux /proc/stat: user, nice, system, irq,
    softirq and steal time of all cores), CPU seconds of this process)."""
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()
    user, nice, system, _, _, irq, softirq, steal = (int(v) for v in fields[1:9])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return ((user + nice + system + irq + softirq + steal) / _CLOCK_TICKS,
            usage.ru_utime + usage.ru_stime)


def free_cores(max_age=0.0):
    """Cores that other processes leave free, or None where that cannot be read.

    A process that keeps a core busy makes a parallel call wait, at every barrier, for whichever
    of our threads the OS put aside (docs/decisions.md has the measurements). So a call with
    several threads looks at how much CPU time the machine spent outside this process over the
    last window of at least the plan's ``load_window_ms`` (Linux /proc/stat against getrusage;
    steal time, which the hypervisor gives other machines, counts as busy) and leaves a core to
    every 0.6 core of it (a kernel thread that runs for a moment is no reason to give up a core).
    Counted again after `max_age` seconds.
    """
    now = time.monotonic()
    if now - _load["checked"] <= max_age:
        return _load["free"]
    _load["checked"] = now
    try:
        machine, own = _cpu_seconds()
        cores = len(os.sched_getaffinity(0))
    except (OSError, ValueError, AttributeError):
        _load.update(free=None, since=None)
        return None
    since = _load.get("since")
    if since is None:
        _load.update(since=(now, machine, own), free=cores)
    elif now - since[0] >= _planner.current().load_window_ms / 1000.0:
        others = ((machine - since[1]) - (own - since[2])) / (now - since[0])
        _load.update(since=(now, machine, own), free=max(1, cores - int(others + 0.4)))
    return _load["free"]
