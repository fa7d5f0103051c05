"""The backend registry: which implementations exist and which one a call uses."""
import os

# After a parallel region, libgomp's idle threads spin before they sleep: by default for about
# 10 ms of CPU time after every call here (measured on the 2-core CI machine), taking the core
# that NumPy's BLAS threads need next. In a NumPy training loop (matmul, batchnorm, ...) that made
# a whole step 2.6x slower. Unless the user chose a wait policy, the OpenMP runtime is started
# with a short spin (about 1 ms of CPU), which is long enough to cover the gaps between fastbn's
# own parallel regions and calls. libgomp reads the variable once, when it is loaded, so it is set
# only around the import of the kernels and the environment is left as it was. It has no effect
# when another module loaded libgomp first; OMP_WAIT_POLICY or GOMP_SPINCOUNT set by the user
# always win.
GOMP_SPINCOUNT = "10000"
OPENMP_WAIT = None  # how the idle-thread wait was configured, for show_config


def _import_kernels():
    global OPENMP_WAIT
    spin = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
    OPENMP_WAIT = (f"GOMP_SPINCOUNT={GOMP_SPINCOUNT} at import (if fastbn loaded libgomp first)"
                   if spin else "as set in the environment (OMP_WAIT_POLICY / GOMP_SPINCOUNT)")
    if spin:
        os.environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT
    try:
        from fastbn import _kernels
    except ImportError:  # the compiled extension is not built: only the NumPy backend runs
        return None
    finally:
        if spin:
            del os.environ["GOMP_SPINCOUNT"]
    return _kernels


_kernels = _import_kernels()

BACKENDS = ("auto", "cython", "numpy")


def kernels():
    """The compiled kernel module, or None when it is not built."""
    return _kernels


def available_backends():
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
    if backend == "auto":
        return available_backends()[0]
    if backend in available_backends():
        return backend
    if backend == "cython":
        raise ImportError(
            "backend='cython' needs the compiled extension fastbn._kernels, which is not built; "
            f"available backends: {list(available_backends())} (reinstall with `pip install .`)"
        )
    raise ValueError(
        f"backend must be one of {list(BACKENDS)}, got {backend!r}; "
        f"available here: {list(available_backends())}"
    )
