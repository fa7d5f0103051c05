"""The compiled side of fastbn's buffer cache (see ``_src/buffer_pool.h`` and
:mod:`fastbn._memory`): NumPy arrays whose memory goes back to a bounded pool when they are freed.
"""
cimport numpy as cnp

import numpy as np

cnp.import_array()

cdef extern from "buffer_pool.h":
    ctypedef struct fastbn_pool_stats:
        size_t max_bytes
        size_t cached_bytes
        size_t live_bytes
        int blocks
        unsigned long long hits
        unsigned long long misses
    object fastbn_pool_capsule()
    void fastbn_pool_set_max(size_t max_bytes) noexcept nogil
    void fastbn_pool_set_offset(size_t offset) noexcept nogil
    fastbn_pool_stats fastbn_pool_info() noexcept nogil
    int fastbn_gc_pause() noexcept
    void fastbn_gc_resume(int was) noexcept

cdef extern from "numpy/arrayobject.h":
    object PyDataMem_SetHandler(object handler)

cdef object _handler = fastbn_pool_capsule()
cdef bint _enabled = False


def empty(tuple shape not None, cnp.dtype dtype not None, size_t offset=0, size_t min_bytes=0):
    """``np.empty(shape, dtype)`` (a native-byte-order builtin `dtype`), with its memory from the
    pool when the pool is on and the array has at least `min_bytes`, its data then `offset`
    bytes (mod the page size) past a page boundary.

    The handler is set in the calling thread's context only for this one allocation, with the
    garbage collector paused (so that no other code runs meanwhile); the array records it, so
    that its memory returns to the pool whenever and wherever it is freed.
    """
    cdef cnp.npy_intp dims[64]  # NPY_MAXDIMS
    cdef int nd = len(shape), i
    cdef size_t nbytes = dtype.itemsize
    if nd > 64:
        raise ValueError(f"at most 64 dimensions, got {nd}")
    for i in range(nd):
        dims[i] = shape[i]
        nbytes *= <size_t>dims[i]
    if not _enabled or nbytes < min_bytes:
        return cnp.PyArray_EMPTY(nd, dims, dtype.type_num, 0)
    cdef int collecting = fastbn_gc_pause()
    try:
        fastbn_pool_set_offset(offset)
        previous = PyDataMem_SetHandler(_handler)
        try:
            return cnp.PyArray_EMPTY(nd, dims, dtype.type_num, 0)
        finally:
            PyDataMem_SetHandler(previous)
    finally:
        fastbn_gc_resume(collecting)


def empty_like(cnp.ndarray a not None, size_t page_shift=0, size_t min_bytes=0, tuple shape=None):
    """:func:`empty` of a's dtype and shape (or `shape`, of as many values) with at least
    `min_bytes`, its data at a's offset within a page plus `page_shift` bytes."""
    return empty((<object>a).shape if shape is None else shape, a.dtype,
                 (<size_t>cnp.PyArray_DATA(a) + page_shift) % 4096, min_bytes)


def set_max_bytes(size_t max_bytes):
    """Keep at most `max_bytes` of freed blocks (0: none, and :func:`empty` uses NumPy's own
    allocator); blocks beyond it are unmapped, oldest first."""
    global _enabled
    fastbn_pool_set_max(max_bytes)
    _enabled = max_bytes > 0


def info():
    """The pool's limit, the bytes it holds free and handed out, its blocks, hits and misses."""
    cdef fastbn_pool_stats s = fastbn_pool_info()
    return {"max_bytes": s.max_bytes, "cached_bytes": s.cached_bytes,
            "live_bytes": s.live_bytes, "blocks": s.blocks, "hits": s.hits,
            "misses": s.misses}
