"""The backend registry: which implementations exist and which one a call uses."""
from __future__ import annotations

import os

# After a parallel region, libgomp's idle threads spin before they sleep: by default for about
# 10 ms of CPU time after every call here (measured on the 2-core CI machine), taking the core
# that NumPy's BLAS threads need next. In a NumPy training loop (matmul, batchnorm, ...) that made
# a whole step 2.6x slower. Unless the user chose a wait policy, the OpenMP runtime is started
# with a short spin (about 1 ms of CPU), which is long enough to cover the gaps between fastbn's
# own parallel regions and calls. libgomp reads the variable once, when it is loaded, so it is set
# only around the import of the kernels and the environment is left as it was; not when another
# module loaded libgomp first (it would have no effect). OMP_WAIT_POLICY or GOMP_SPINCOUNT set by
# the user always win. show_config() tells which of these happened.
GOMP_SPINCOUNT = "10000"
OPENMP_WAIT = "no compiled kernels"  # how the idle-thread wait was configured (show_config)


def _libgomp_loaded():
    """Whether libgomp is mapped into this process (Linux; False where that cannot be read)."""
    try:
        with open("/proc/self/maps") as maps:
            return "libgomp" in maps.read()
    except OSError:
        return False


def _import_kernels():
    global OPENMP_WAIT
    chosen = "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ
    early = not chosen and _libgomp_loaded()  # loaded by another module: its settings stand
    spin = not chosen and not early
    if spin:
        os.environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT
    try:
        from fastbn import _kernels
    except ImportError:  # the compiled extension is not built: only the NumPy backend runs
        return None
    finally:
        if spin:
            del os.environ["GOMP_SPINCOUNT"]
    if chosen:
        OPENMP_WAIT = "as set in the environment (OMP_WAIT_POLICY / GOMP_SPINCOUNT)"
    elif early:
        OPENMP_WAIT = "libgomp's default (another module loaded libgomp before fastbn)"
    elif _libgomp_loaded():
        OPENMP_WAIT = f"GOMP_SPINCOUNT={GOMP_SPINCOUNT} (set by fastbn when it loaded libgomp)"
    else:
        OPENMP_WAIT = "not libgomp (or no OpenMP): the runtime's default"
    return _kernels


_kernels = _import_kernels()

BACKENDS = ("auto", "cython", "numpy")
SERIAL_OK = "FASTBN_SERIAL_OK"  # set to 1 to accept a build without OpenMP silently


def _cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def serial_build_message(kernels=None, cpus=None, environ=None):
    """What ``import fastbn`` warns about when the kernels were built without OpenMP on a machine
    with more than one CPU (a build's output is hidden by pip), or None."""
    kernels = _kernels if kernels is None else kernels
    cpus = _cpu_count() if cpus is None else cpus
    environ = os.environ if environ is None else environ
    if kernels is None or kernels.openmp_enabled() or cpus < 2:
        return None
    if environ.get(SERIAL_OK, "").strip().lower() not in ("", "0", "false", "no"):
        return None
    return (f"fastbn's compiled kernels were built without OpenMP: they run on one thread of the "
            f"{cpus} CPUs here. Rebuild with a compiler that supports OpenMP (and without "
            f"FASTBN_NO_OPENMP) for multithreaded kernels, or set {SERIAL_OK}=1 to silence this.")


def kernels():
    """The compiled kernel module, or None when it is not built."""
    return _kernels


def available_backends() -> tuple[str, ...]:
    """Names of the backends that can run here, best first.

    Examples
    --------
    >>> import fastbn
    >>> "numpy" in fastbn.available_backends()
    True
    """
    return ("cython", "numpy") if _kernels is not None else ("numpy",)


def resolve(backend):
    """Map a ``backend=`` argument to ``'cython'`` or ``'numpy'``, or raise."""
    if isinstance(backend, str):  # (not an array, which == compares element by element)
        if backend == "auto":
            return available_backends()[0]
        if backend in available_backends():
            return backend
        if backend == "cython":
            raise ImportError(
                "backend='cython' needs the compiled extension fastbn._kernels, which is not "
                f"built; available backends: {list(available_backends())} (reinstall with "
                "`pip install .`)"
            )
    raise ValueError(
        f"backend must be one of {list(BACKENDS)}, got {backend!r}; "
        f"available here: {list(available_backends())}"
    )
