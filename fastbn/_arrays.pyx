"""Array checks and small allocations that the compiled glue (:mod:`fastbn._compiled`,
:mod:`fastbn._validation`) makes on every call, read from the array's C struct.

Each is what a line of NumPy in Python does (``a.flags.aligned``, ``a.dtype == dtype``,
``np.empty(n, dtype)``), without creating the flags, shape and dtype objects those lookups build:
on a small batch they are a measurable part of a call's fixed cost (docs/decisions.md, "Fixed
cost per call, fourth session"). :mod:`fastbn._validation` keeps NumPy versions of
:func:`is_vector` and :func:`is_running` for a checkout that is not built; tests/test_arrays.py
checks every function here against its NumPy spelling. A `dtype` argument is a computation
dtype, float32 or float64 in native byte order.
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


cdef object _reshape(cnp.ndarray a, tuple shape):
    """``a.reshape(shape)`` without the method's argument parsing (-1 allowed, as there)."""
    cdef cnp.npy_intp dims[64]  # NPY_MAXDIMS
    cdef cnp.PyArray_Dims new_shape
    cdef Py_ssize_t i, n = len(shape)
    if n > 64:
        return a.reshape(shape)
    for i in range(n):
        dims[i] = shape[i]
    new_shape.ptr = dims
    new_shape.len = <int>n
    return cnp.PyArray_Newshape(a, &new_shape, cnp.NPY_CORDER)


def shaped(cnp.ndarray a not None, tuple shape not None):
    """``a.reshape(shape)``; `a` itself when it has that shape already."""
    cdef int ndim = cnp.PyArray_NDIM(a)
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(a)
    cdef Py_ssize_t i
    if len(shape) != ndim:
        return _reshape(a, shape)
    for i in range(ndim):
        if dims[i] != <cnp.npy_intp>shape[i]:
            return _reshape(a, shape)
    return a


def aligned_as(cnp.ndarray a not None, tuple shape not None):
    """``aligned(a).reshape(shape)``, without a new array object where neither changes `a`."""
    return shaped(aligned(a), shape)


def is_flat(a, cnp.dtype dtype not None):
    """Whether `a` is a 1-D, C-contiguous, aligned ndarray whose dtype equals `dtype`: an array
    the kernels take as it is."""
    if not isinstance(a, cnp.ndarray):
        return False
    cdef cnp.ndarray array = <cnp.ndarray>a
    return (cnp.PyArray_NDIM(array) == 1 and cnp.PyArray_ISCARRAY_RO(array)
            and _equivalent(array, dtype))


def as_flat(a, cnp.dtype dtype not None):
    """`a` seen as 1-D without a copy when it is a C-contiguous, aligned ndarray whose dtype
    equals `dtype` (`a` itself when it is 1-D already); else None."""
    if not isinstance(a, cnp.ndarray):
        return None
    cdef cnp.ndarray array = <cnp.ndarray>a
    if not (cnp.PyArray_ISCARRAY_RO(array) and _equivalent(array, dtype)):
        return None
    return a if cnp.PyArray_NDIM(array) == 1 else _reshape(array, (cnp.PyArray_SIZE(array),))


def is_vector(a, cnp.dtype dtype not None, cnp.npy_intp n):
    """Whether `a` is exactly an ndarray (no subclass) of shape ``(n,)``, C-contiguous and
    aligned, whose dtype equals `dtype`: a per-channel array the kernels take as it is."""
    if type(a) is not np.ndarray:
        return False
    cdef cnp.ndarray array = <cnp.ndarray>a
    return (cnp.PyArray_NDIM(array) == 1 and cnp.PyArray_DIMS(array)[0] == n
            and cnp.PyArray_ISCARRAY_RO(array) and _equivalent(array, dtype))


def is_running(a, cnp.npy_intp n, bint writeable):
    """Whether `a` is exactly an ndarray (no subclass) of shape ``(n,)`` with a floating dtype,
    writeable when `writeable`: running statistics as a train-mode call stores them."""
    if type(a) is not np.ndarray:
        return False
    cdef cnp.ndarray array = <cnp.ndarray>a
    return (cnp.PyArray_NDIM(array) == 1 and cnp.PyArray_DIMS(array)[0] == n
            and cnp.PyTypeNum_ISFLOAT(cnp.PyArray_TYPE(array))
            and (not writeable or cnp.PyArray_ISWRITEABLE(array)))


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
