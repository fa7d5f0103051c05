"""Array checks and small allocations that the compiled glue (:mod:`fastbn._compiled`,
:mod:`fastbn._validation`) makes on every call, read from the array's C struct.

Each is what a line of NumPy in Python does (``a.flags.aligned``, ``a.dtype == dtype``,
``np.empty(n, dtype)``), without creating the flags, shape and dtype objects those lookups build:
on a small batch they are a measurable part of a call's fixed cost (docs/decisions.md, "Fixed
cost per call, fourth session").
"""
cimport numpy as cnp

import numpy as np

cnp.import_array()


cdef inline bint _equivalent(cnp.ndarray a, cnp.dtype dtype):
    """a.dtype == dtype (NumPy's equality of dtypes is PyArray_EquivTypes)."""
    cdef cnp.dtype own = <cnp.dtype>cnp.PyArray_DESCR(a)
    return own is dtype or cnp.PyArray_EquivTypes(own, dtype)


def aligned(cnp.ndarray a not None):
    """`a`, or a copy of it when its data does not start on a multiple of its element size (an
    array from ``np.frombuffer(..., offset=1)``): the kernels load and store through ``float*``
    and ``double*``, and an unaligned one is undefined behaviour in C (UBSan reports it)."""
    return a if cnp.PyArray_ISALIGNED(a) else a.copy()


def aligned_as(cnp.ndarray a not None, tuple shape not None):
    """``aligned(a).reshape(shape)``; `a` itself when it is aligned and has that shape already."""
    cdef int ndim = cnp.PyArray_NDIM(a)
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(a)
    cdef Py_ssize_t i
    if cnp.PyArray_ISALIGNED(a) and len(shape) == ndim:
        for i in range(ndim):
            if dims[i] != <cnp.npy_intp>shape[i]:
                break
        else:
            return a
    return aligned(a).reshape(shape)


def is_flat(a, cnp.dtype dtype not None):
    """Whether `a` is a 1-D, C-contiguous, aligned ndarray whose dtype equals `dtype`: an array
    the kernels take as it is."""
    if not isinstance(a, cnp.ndarray):
        return False
    cdef cnp.ndarray array = <cnp.ndarray>a
    return (cnp.PyArray_NDIM(array) == 1 and cnp.PyArray_ISCARRAY_RO(array)
            and _equivalent(array, dtype))


def is_vector(a, cnp.dtype dtype not None, cnp.npy_intp n):
    """Whether `a` is exactly an ndarray (no subclass) of shape ``(n,)``, C-contiguous and
    aligned, whose dtype equals `dtype`: a per-channel array the kernels take as it is."""
    if type(a) is not np.ndarray:
        return False
    cdef cnp.ndarray array = <cnp.ndarray>a
    return (cnp.PyArray_NDIM(array) == 1 and cnp.PyArray_DIMS(array)[0] == n
            and cnp.PyArray_ISCARRAY_RO(array) and _equivalent(array, dtype))


def empty_vector(cnp.npy_intp n, cnp.dtype dtype not None):
    """``np.empty(n, dtype)`` for a native-byte-order builtin `dtype` (float32, float64)."""
    return cnp.PyArray_EMPTY(1, &n, dtype.type_num, 0)


def disjoint_flat(a, b, cnp.dtype dtype not None):
    """Whether `a` and `b` are both :func:`is_flat` arrays of `dtype` whose memory does not
    overlap (for contiguous arrays, what ``np.may_share_memory`` tells apart exactly)."""
    if not (is_flat(a, dtype) and is_flat(b, dtype)):
        return False
    cdef char *a_start = cnp.PyArray_BYTES(<cnp.ndarray>a)
    cdef char *b_start = cnp.PyArray_BYTES(<cnp.ndarray>b)
    return (a_start + cnp.PyArray_NBYTES(<cnp.ndarray>a) <= b_start
            or b_start + cnp.PyArray_NBYTES(<cnp.ndarray>b) <= a_start)
