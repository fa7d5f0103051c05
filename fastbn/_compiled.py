"""The compiled backend: run validated input through the kernels of :mod:`fastbn._kernels`.

The op's row of the op table (:mod:`fastbn._ops`) says which kernel family takes x, in which
free reshape (``OpSpec.view``), and whether rows are centred.
"""
import threading

import numpy as np

from fastbn import _backends
from fastbn._ops import OPS
from fastbn._results import finish_backward, finish_forward, test_statistics
from fastbn._threads import threads_for


def _aligned(a):
    """`a`, or a copy of it when it does not start on a multiple of its element size (an array
    from ``np.frombuffer(..., offset=1)``): the kernels load and store through ``float*`` and
    ``double*``, and an unaligned one is undefined behaviour in C (UBSan reports it)."""
    return a if a.flags.aligned else a.copy()


def _buffer(out, like):
    """The caller's ``out=`` array seen in like's shape when the kernel can write into it (same
    dtype, aligned), else a new array like `like` (finish_* then copy it into `out`)."""
    if out is not None and out.dtype == like.dtype and out.flags.aligned:
        return out.reshape(like.shape)
    return np.empty_like(like)


class _MaskMemory:
    """The memory of a fused op's packed ReLU mask, seen as an array (``np.asarray``, whose base
    it becomes). When the last array on it is gone (the caller dropped the cache), its storage goes
    back to a small pool for the next mask of the same size: a fresh array of a few MiB is a fresh
    mapping whose pages are faulted in and zeroed on every call (measured in docs/decisions.md).
    """

    POOL_SIZE = 4  # masks kept for reuse, at most (the pool holds them only while unused)
    _pool = []
    _lock = threading.Lock()

    def __init__(self, n):
        storage = None
        with self._lock:
            for i, buf in enumerate(self._pool):
                if buf.size == n:
                    storage = self._pool.pop(i)
                    break
        self._storage = np.empty(n, dtype=np.uint8) if storage is None else storage
        self.__array_interface__ = {"shape": (n,), "typestr": "|u1", "version": 3,
                                    "data": (self._storage.ctypes.data, False)}

    def __del__(self):
        try:
            with self._lock:
                if len(self._pool) >= self.POOL_SIZE:
                    del self._pool[0]  # the least recently returned
                self._pool.append(self._storage)
        except Exception:  # interpreter shutdown
            pass


def _new_mask(n):
    """A uint8 array of n bytes for a packed ReLU mask, its last byte zeroed (the bits past the
    last element stay 0; the kernels write every other bit)."""
    mask = np.asarray(_MaskMemory(n)) if n else np.zeros(0, dtype=np.uint8)
    mask[-1:] = 0
    return mask


def forward(p):
    """Forward pass of any operation on a :class:`~fastbn._validation.Prepared` input."""
    kernels = _backends.kernels()
    spec = OPS[p.op]
    family, view_shape = spec.view(p.x.shape, p.layout, p.groups)
    dtype = p.x.dtype
    x = _aligned(p.x).reshape(view_shape)
    gamma = _aligned(p.gamma)
    beta = _aligned(p.beta) if spec.beta else np.zeros_like(gamma)
    out = _buffer(p.out, x)
    n_threads = threads_for(x.size)
    if family == "rows":
        R = view_shape[0]
        mean = np.zeros(R, dtype=dtype)
        invstd = np.full(R, 1.0 / np.sqrt(p.eps) if p.eps > 0 else np.inf, dtype=dtype)
        kernels.rows_forward_train(x, gamma, beta, p.groups, p.eps, spec.center, out, mean,
                                   invstd, n_threads)
        stat_shape = spec.stat_shape(p.x.shape, p.layout, p.groups)
        return finish_forward(p, out.reshape(p.x.shape), mean.reshape(stat_shape), invstd.reshape(stat_shape))
    C = p.gamma.size
    epilogue = {}
    if spec.relu:  # the fused ReLU: its packed mask (the last byte's unused bits are 0)
        mask = _new_mask((x.size + 7) // 8)
        epilogue = {"mask": mask, "residual": None if p.residual is None
                    else _aligned(p.residual).reshape(view_shape)}
    if p.mode == "train":
        mean = np.empty(C, dtype=dtype)
        invstd = np.empty(C, dtype=dtype)
        batch_var = np.empty(C)
        running = _in_place(p, dtype)
        train = kernels.cols_forward_train if family == "cols" else kernels.planes_forward_train
        train(x, gamma, beta, p.eps, out, mean, invstd, batch_var, *running, p.momentum,
              n_threads, **epilogue)
        updated = running[0] is not None
    else:
        mean, invstd = test_statistics(p)
        batch_var = None
        updated = False
        affine = kernels.cols_affine if family == "cols" else kernels.planes_affine
        affine(x, mean, gamma * invstd, beta, out, n_threads, **epilogue)
    return finish_forward(p, out.reshape(p.x.shape), mean, invstd, batch_var, updated,
                          epilogue.get("mask"))


def _in_place(p, dtype):
    """The running statistics as the flat views the kernel updates in place (the same bits as
    the NumPy update, see _kernels._update_running), or (None, None): then finish_forward updates
    them. The kernel takes them only when both exist (a first call creates them, in
    finish_forward, after the kernel succeeded), are C-contiguous and aligned, in the computation
    dtype, and separate arrays (one array passed as both must get the update of its old values)."""
    rm, rv = p.running_mean, p.running_var
    if (rm is not None and rv is not None and rm.dtype == dtype and rv.dtype == dtype
            and rm.flags.c_contiguous and rv.flags.c_contiguous
            and rm.flags.aligned and rv.flags.aligned
            and not np.may_share_memory(rm, rv)):
        return rm.reshape(-1), rv.reshape(-1)
    return None, None


def _flat(a, dtype):
    """`a` as a flat, aligned, C-contiguous array of `dtype`: `a` itself when it is one, else
    a view or a copy."""
    if a.ndim == 1 and a.dtype == dtype and a.flags.c_contiguous and a.flags.aligned:
        return a
    return _aligned(np.ascontiguousarray(a, dtype=dtype)).reshape(-1)


def backward(dout, cache, out=None):
    """dx, dgamma, dbeta for a checked dout (C-contiguous, computation dtype) and its cache;
    dx is written into `out` when given."""
    kernels = _backends.kernels()
    spec = OPS[cache.op]
    family, view_shape = spec.view(cache.x.shape, cache.layout, cache.groups)
    x = _aligned(cache.x).reshape(view_shape)
    dy = _aligned(dout).reshape(view_shape)
    dx = _buffer(out, x)
    gamma = _aligned(cache.gamma)
    C = gamma.size
    dgamma = np.empty(C, dtype=x.dtype)
    dbeta = np.empty(C, dtype=x.dtype)
    mean = _flat(cache.mean, x.dtype)
    invstd = _flat(cache.invstd, x.dtype)
    n_threads = threads_for(x.size)
    if family == "rows":
        kernels.rows_backward(x, dy, mean, invstd, gamma, cache.groups, spec.center, dx, dgamma,
                              dbeta, n_threads)
    else:
        epilogue = {}
        if spec.relu:  # dy read through the ReLU mask; dresidual = dy * mask
            epilogue = {"mask": cache.mask, "dresidual": np.empty_like(x) if cache.residual else None}
        run = kernels.cols_backward if family == "cols" else kernels.planes_backward
        run(x, dy, mean, invstd, gamma, cache.mode == "train", dx, dgamma, dbeta, n_threads,
            **epilogue)
        if epilogue.get("dresidual") is not None:
            return finish_backward(cache, dx.reshape(cache.x.shape), dgamma, dbeta, out,
                                   epilogue["dresidual"])
    return finish_backward(cache, dx.reshape(cache.x.shape), dgamma, dbeta, out)
