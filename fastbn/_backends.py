"""The backend registry: which implementations exist and which one a call uses."""
try:
    from fastbn import _kernels
except ImportError:  # the compiled extension is not built: only the NumPy backend runs
    _kernels = None

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
