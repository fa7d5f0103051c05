"""Compiled normalization kernels (float32 and float64 through the ``floating`` fused type).

Every function here trusts its caller, :mod:`fastbn._validation`, for shapes, dtypes and
contiguity: nothing is checked. Three families of kernels cover all public operations:

``cols_*``
    x of shape (M, D), statistics per column: batchnorm and channels-last spatial batchnorm
    (an (N, H, W, C) array seen as (N*H*W, C)).
``planes_*``
    x of shape (N, C, L), statistics per channel over N contiguous planes of L values: NCHW
    spatial batchnorm.
``rows_*``
    x of shape (R, Cg, L), statistics per row of Cg*L values, affine parameters per channel
    ``(r % G) * Cg + k``: layernorm (G = 1, L = 1) and groupnorm (R = N*G, L = H*W).

Determinism: work is cut into chunks whose boundaries depend only on the shape, partial results
are stored per chunk and combined in chunk order, so the bits do not depend on the thread count.
Statistics are accumulated in double precision, shifted by a sample of the data (the first value
of each chunk) and merged with Chan's formula: never E[x^2] - E[x]^2.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

cdef extern from "omp_shim.h":
    int omp_get_max_threads() noexcept nogil
    int FASTBN_OPENMP


# Column blocks of the (M, D) grid: a task covers COL_BLOCK columns of a chunk of rows.
cdef Py_ssize_t COL_BLOCK = 256
# Row chunks of the (M, D) grid: at least MIN_CHUNK_ROWS rows each, about TARGET_TASKS tasks.
cdef Py_ssize_t MIN_CHUNK_ROWS = 64
cdef Py_ssize_t TARGET_TASKS = 16
# Upper bound on the number of doubles in one array of per-chunk partials.
cdef Py_ssize_t MAX_PARTIALS = 1 << 18


def openmp_enabled():
    """Return True when the kernels were compiled with OpenMP."""
    return bool(FASTBN_OPENMP)


def omp_max_threads():
    """Return ``omp_get_max_threads()`` for the calling thread (1 without OpenMP)."""
    return omp_get_max_threads()


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline Py_ssize_t _chunk_start(Py_ssize_t k, Py_ssize_t n, Py_ssize_t n_chunks) noexcept nogil:
    """First index of chunk k when n items are cut into n_chunks balanced chunks."""
    return (k * n) // n_chunks


cdef Py_ssize_t _n_row_chunks(Py_ssize_t n_rows, Py_ssize_t n_cols):
    """Row chunks of the (M, D) grid: a function of the shape only."""
    cdef Py_ssize_t n_col_blocks = _ceil_div(n_cols, COL_BLOCK)
    cdef Py_ssize_t k = _ceil_div(TARGET_TASKS, n_col_blocks)
    k = min(k, _ceil_div(n_rows, MIN_CHUNK_ROWS))
    k = min(k, max(MAX_PARTIALS // max(n_cols, 1), 1))
    return max(k, 1)


cdef inline void _merge_moments(
    const double[:, ::1] part_mean,  # IN (K, D) per-chunk means
    const double[:, ::1] part_m2,    # IN (K, D) per-chunk sums of squared deviations
    const double[::1] counts,        # IN (K,) values per chunk and column
    double[::1] mean,                # OUT (D,)
    double[::1] var,                 # OUT (D,) biased variance
    int n_threads,
) noexcept nogil:
    """Chan's pairwise merge of chunk moments, in chunk order, for every column."""
    cdef Py_ssize_t K = part_mean.shape[0], D = part_mean.shape[1], k, d
    cdef double n_a, n_b, n_ab, mean_a, m2_a, delta
    for d in prange(D, num_threads=n_threads, schedule='static'):
        n_a = counts[0]
        mean_a = part_mean[0, d]
        m2_a = part_m2[0, d]
        for k in range(1, K):
            n_b = counts[k]
            n_ab = n_a + n_b
            delta = part_mean[k, d] - mean_a
            mean_a = mean_a + delta * (n_b / n_ab)
            m2_a = m2_a + part_m2[k, d] + delta * delta * (n_a * n_b / n_ab)
            n_a = n_ab
        mean[d] = mean_a
        var[d] = (m2_a if m2_a > 0 else 0.0) / n_a


cdef inline void _fold_affine(
    const double[::1] mean, const double[::1] var, const floating[::1] gamma,
    const floating[::1] beta, double eps,
    floating[::1] mean_out, floating[::1] invstd_out, floating[::1] scale,
) noexcept nogil:
    """invstd = 1/sqrt(var + eps) and scale = gamma * invstd, per feature."""
    cdef Py_ssize_t d
    cdef double invstd
    for d in range(mean.shape[0]):
        invstd = 1.0 / sqrt(var[d] + eps)
        mean_out[d] = <floating>mean[d]
        invstd_out[d] = <floating>invstd
        scale[d] = <floating>(gamma[d] * invstd)


cdef inline void _backward_coefficients(
    const double[:, ::1] part_dy,    # IN (K, C) per-chunk sums of dy
    const double[:, ::1] part_dyxc,  # IN (K, C) per-chunk sums of dy * (x - mean)
    const floating[::1] invstd, const floating[::1] gamma, double count, bint train,
    floating[::1] dgamma, floating[::1] dbeta,   # OUT (C,)
    floating[::1] k_dy, floating[::1] k_xc, floating[::1] k_0,  # OUT dx = k_dy*dy + k_xc*xc + k_0
) noexcept nogil:
    """Sum per-chunk partials in chunk order and fold the closed-form dx into three coefficients."""
    cdef Py_ssize_t K = part_dy.shape[0], C = part_dy.shape[1], k, c
    cdef double sum_dy, sum_dyxc, g_invstd, dg
    for c in range(C):
        sum_dy = 0.0
        sum_dyxc = 0.0
        for k in range(K):
            sum_dy = sum_dy + part_dy[k, c]
            sum_dyxc = sum_dyxc + part_dyxc[k, c]
        dg = sum_dyxc * invstd[c]
        dgamma[c] = <floating>dg
        dbeta[c] = <floating>sum_dy
        g_invstd = <double>gamma[c] * invstd[c]
        k_dy[c] = <floating>g_invstd
        if train:
            k_xc[c] = <floating>(-g_invstd * invstd[c] * dg / count)
            k_0[c] = <floating>(-g_invstd * sum_dy / count)
        else:
            k_xc[c] = 0
            k_0[c] = 0


# --------------------------------------------------------------------------------------------
# (M, D): statistics per column
# --------------------------------------------------------------------------------------------

cdef inline void _cols_task_moments(
    const floating* x, Py_ssize_t stride, Py_ssize_t n_rows, Py_ssize_t width,
    double* mean, double* m2,
) noexcept nogil:
    """Mean and sum of squared deviations of n_rows x width values (row stride `stride`).

    Sums are shifted by the first row of the block, which keeps them small for any offset.
    """
    cdef Py_ssize_t i, j
    cdef const floating* row
    cdef double t, n = <double>n_rows
    for j in range(width):
        mean[j] = 0.0
        m2[j] = 0.0
    for i in range(1, n_rows):
        row = x + i * stride
        for j in range(width):
            t = <double>row[j] - <double>x[j]
            mean[j] += t
            m2[j] += t * t
    for j in range(width):
        t = mean[j]
        mean[j] = <double>x[j] + t / n
        m2[j] = m2[j] - t * t / n


cdef inline void _affine_vec(
    const floating* x, floating* out, Py_ssize_t n,
    const floating* mean, const floating* scale, const floating* beta,
) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        out[j] = (x[j] - mean[j]) * scale[j] + beta[j]


cdef inline void _cols_affine(
    const floating[:, ::1] x, const floating[::1] mean, const floating[::1] scale,
    const floating[::1] beta, floating[:, ::1] out, int n_threads,
) noexcept nogil:
    cdef Py_ssize_t M = x.shape[0], D = x.shape[1], i
    for i in prange(M, num_threads=n_threads, schedule='static'):
        _affine_vec(&x[i, 0], &out[i, 0], D, &mean[0], &scale[0], &beta[0])


cdef inline object _np_dtype(floating zero):
    """The NumPy dtype of a fused-type specialisation (call as ``_np_dtype(<floating>0)``)."""
    if floating is float:
        return np.float32
    else:
        return np.float64


def cols_forward_train(
    const floating[:, ::1] x,      # IN (M, D)
    const floating[::1] gamma,     # IN (D,)
    const floating[::1] beta,      # IN (D,)
    double eps,
    floating[:, ::1] out,          # OUT (M, D)
    floating[::1] mean,            # OUT (D,) batch mean
    floating[::1] invstd,          # OUT (D,) 1/sqrt(var + eps)
    double[::1] var,               # OUT (D,) biased batch variance, for the running statistics
    int n_threads,
):
    """Batch statistics per column, then out = (x - mean) * gamma * invstd + beta."""
    cdef Py_ssize_t M = x.shape[0], D = x.shape[1]
    if M == 0 or D == 0:
        return
    cdef Py_ssize_t K = _n_row_chunks(M, D), n_col_blocks = _ceil_div(D, COL_BLOCK)
    cdef Py_ssize_t task, k, b, r0, r1, c0, c1
    cdef double[:, ::1] part_mean = np.empty((K, D))
    cdef double[:, ::1] part_m2 = np.empty((K, D))
    cdef double[::1] counts = np.empty(K)
    cdef double[::1] mean64 = np.empty(D)
    cdef floating[::1] scale = np.empty(D, dtype=_np_dtype(<floating>0))
    for k in range(K):
        counts[k] = _chunk_start(k + 1, M, K) - _chunk_start(k, M, K)
    with nogil:
        for task in prange(K * n_col_blocks, num_threads=n_threads, schedule='static'):
            k = task // n_col_blocks
            b = task % n_col_blocks
            r0 = _chunk_start(k, M, K)
            r1 = _chunk_start(k + 1, M, K)
            c0 = b * COL_BLOCK
            c1 = min(c0 + COL_BLOCK, D)
            _cols_task_moments(&x[r0, c0], D, r1 - r0, c1 - c0, &part_mean[k, c0], &part_m2[k, c0])
        _merge_moments(part_mean, part_m2, counts, mean64, var, n_threads)
        _fold_affine(mean64, var, gamma, beta, eps, mean, invstd, scale)
        _cols_affine(x, mean, scale, beta, out, n_threads)


def cols_affine(
    const floating[:, ::1] x,      # IN (M, D)
    const floating[::1] mean,      # IN (D,)
    const floating[::1] scale,     # IN (D,) gamma * invstd
    const floating[::1] beta,      # IN (D,)
    floating[:, ::1] out,          # OUT (M, D)
    int n_threads,
):
    """out = (x - mean) * scale + beta per column (test-mode forward)."""
    if x.shape[0] == 0 or x.shape[1] == 0:
        return
    with nogil:
        _cols_affine(x, mean, scale, beta, out, n_threads)


cdef inline void _cols_task_grad_sums(
    const floating* x, const floating* dy, Py_ssize_t stride, Py_ssize_t n_rows,
    Py_ssize_t width, const floating* mean, double* sum_dy, double* sum_dyxc,
) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef const floating* xr
    cdef const floating* dr
    for j in range(width):
        sum_dy[j] = 0.0
        sum_dyxc[j] = 0.0
    for i in range(n_rows):
        xr = x + i * stride
        dr = dy + i * stride
        for j in range(width):
            sum_dy[j] += <double>dr[j]
            sum_dyxc[j] += <double>dr[j] * (<double>xr[j] - <double>mean[j])


cdef inline void _dx_vec(
    const floating* x, const floating* dy, floating* dx, Py_ssize_t n, const floating* mean,
    const floating* k_dy, const floating* k_xc, const floating* k_0,
) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        dx[j] = k_dy[j] * dy[j] + k_xc[j] * (x[j] - mean[j]) + k_0[j]


def cols_backward(
    const floating[:, ::1] x,      # IN (M, D) forward input
    const floating[:, ::1] dy,     # IN (M, D) upstream gradient
    const floating[::1] mean,      # IN (D,) mean used in the forward
    const floating[::1] invstd,    # IN (D,) invstd used in the forward
    const floating[::1] gamma,     # IN (D,)
    bint train,                    # statistics were the batch's own (True) or fixed (False)
    floating[:, ::1] dx,           # OUT (M, D)
    floating[::1] dgamma,          # OUT (D,)
    floating[::1] dbeta,           # OUT (D,)
    int n_threads,
):
    """One reduction sweep (sum dy, sum dy*(x - mean)) and one elementwise sweep for dx."""
    cdef Py_ssize_t M = x.shape[0], D = x.shape[1]
    if D == 0:
        return
    if M == 0:
        dgamma[:] = 0
        dbeta[:] = 0
        return
    cdef Py_ssize_t K = _n_row_chunks(M, D), n_col_blocks = _ceil_div(D, COL_BLOCK)
    cdef Py_ssize_t task, k, b, r0, r1, c0, c1, i
    cdef double[:, ::1] part_dy = np.empty((K, D))
    cdef double[:, ::1] part_dyxc = np.empty((K, D))
    dtype = _np_dtype(<floating>0)
    cdef floating[::1] k_dy = np.empty(D, dtype=dtype)
    cdef floating[::1] k_xc = np.empty(D, dtype=dtype)
    cdef floating[::1] k_0 = np.empty(D, dtype=dtype)
    with nogil:
        for task in prange(K * n_col_blocks, num_threads=n_threads, schedule='static'):
            k = task // n_col_blocks
            b = task % n_col_blocks
            r0 = _chunk_start(k, M, K)
            r1 = _chunk_start(k + 1, M, K)
            c0 = b * COL_BLOCK
            c1 = min(c0 + COL_BLOCK, D)
            _cols_task_grad_sums(&x[r0, c0], &dy[r0, c0], D, r1 - r0, c1 - c0, &mean[c0],
                                 &part_dy[k, c0], &part_dyxc[k, c0])
        _backward_coefficients(part_dy, part_dyxc, invstd, gamma, <double>M, train,
                               dgamma, dbeta, k_dy, k_xc, k_0)
        for i in prange(M, num_threads=n_threads, schedule='static'):
            _dx_vec(&x[i, 0], &dy[i, 0], &dx[i, 0], D, &mean[0], &k_dy[0], &k_xc[0], &k_0[0])


# --------------------------------------------------------------------------------------------
# (N, C, L): statistics per channel over N contiguous planes
# --------------------------------------------------------------------------------------------

cdef inline void _plane_moments(const floating* x, Py_ssize_t n, double* mean, double* m2) noexcept nogil:
    """Mean and sum of squared deviations of n contiguous values, shifted by the first."""
    cdef Py_ssize_t j
    cdef double shift = <double>x[0], s1 = 0.0, s2 = 0.0, t
    for j in range(1, n):
        t = <double>x[j] - shift
        s1 += t
        s2 += t * t
    mean[0] = shift + s1 / n
    m2[0] = s2 - s1 * s1 / n


cdef inline void _affine_plane(
    const floating* x, floating* out, Py_ssize_t n, floating mean, floating scale, floating beta,
) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        out[j] = (x[j] - mean) * scale + beta


cdef inline void _planes_affine(
    const floating[:, :, ::1] x, const floating[::1] mean, const floating[::1] scale,
    const floating[::1] beta, floating[:, :, ::1] out, int n_threads,
) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], p, n, c
    for p in prange(N * C, num_threads=n_threads, schedule='static'):
        n = p // C
        c = p % C
        _affine_plane(&x[n, c, 0], &out[n, c, 0], L, mean[c], scale[c], beta[c])


def planes_forward_train(
    const floating[:, :, ::1] x,   # IN (N, C, L)
    const floating[::1] gamma,     # IN (C,)
    const floating[::1] beta,      # IN (C,)
    double eps,
    floating[:, :, ::1] out,       # OUT (N, C, L)
    floating[::1] mean,            # OUT (C,)
    floating[::1] invstd,          # OUT (C,)
    double[::1] var,               # OUT (C,) biased batch variance
    int n_threads,
):
    """Per-plane moments merged per channel over N, then the normalising sweep."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], p, n, c
    if N == 0 or C == 0 or L == 0:
        return
    cdef double[:, ::1] part_mean = np.empty((N, C))
    cdef double[:, ::1] part_m2 = np.empty((N, C))
    cdef double[::1] counts = np.full(N, <double>L)
    cdef double[::1] mean64 = np.empty(C)
    cdef floating[::1] scale = np.empty(C, dtype=_np_dtype(<floating>0))
    with nogil:
        for p in prange(N * C, num_threads=n_threads, schedule='static'):
            n = p // C
            c = p % C
            _plane_moments(&x[n, c, 0], L, &part_mean[n, c], &part_m2[n, c])
        _merge_moments(part_mean, part_m2, counts, mean64, var, n_threads)
        _fold_affine(mean64, var, gamma, beta, eps, mean, invstd, scale)
        _planes_affine(x, mean, scale, beta, out, n_threads)


def planes_affine(
    const floating[:, :, ::1] x,   # IN (N, C, L)
    const floating[::1] mean,      # IN (C,)
    const floating[::1] scale,     # IN (C,)
    const floating[::1] beta,      # IN (C,)
    floating[:, :, ::1] out,       # OUT (N, C, L)
    int n_threads,
):
    """out = (x - mean[c]) * scale[c] + beta[c] (test-mode forward)."""
    if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        return
    with nogil:
        _planes_affine(x, mean, scale, beta, out, n_threads)


cdef inline void _plane_grad_sums(
    const floating* x, const floating* dy, Py_ssize_t n, double mean, double* sum_dy, double* sum_dyxc,
) noexcept nogil:
    cdef Py_ssize_t j
    cdef double s1 = 0.0, s2 = 0.0
    for j in range(n):
        s1 += <double>dy[j]
        s2 += <double>dy[j] * (<double>x[j] - mean)
    sum_dy[0] = s1
    sum_dyxc[0] = s2


cdef inline void _dx_plane(
    const floating* x, const floating* dy, floating* dx, Py_ssize_t n, floating mean,
    floating k_dy, floating k_xc, floating k_0,
) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        dx[j] = k_dy * dy[j] + k_xc * (x[j] - mean) + k_0


def planes_backward(
    const floating[:, :, ::1] x,   # IN (N, C, L)
    const floating[:, :, ::1] dy,  # IN (N, C, L)
    const floating[::1] mean,      # IN (C,)
    const floating[::1] invstd,    # IN (C,)
    const floating[::1] gamma,     # IN (C,)
    bint train,
    floating[:, :, ::1] dx,        # OUT (N, C, L)
    floating[::1] dgamma,          # OUT (C,)
    floating[::1] dbeta,           # OUT (C,)
    int n_threads,
):
    """Per-plane gradient sums, combined per channel in order, then the dx sweep."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], p, n, c
    if C == 0:
        return
    if N == 0 or L == 0:
        dgamma[:] = 0
        dbeta[:] = 0
        return
    cdef double[:, ::1] part_dy = np.empty((N, C))
    cdef double[:, ::1] part_dyxc = np.empty((N, C))
    dtype = _np_dtype(<floating>0)
    cdef floating[::1] k_dy = np.empty(C, dtype=dtype)
    cdef floating[::1] k_xc = np.empty(C, dtype=dtype)
    cdef floating[::1] k_0 = np.empty(C, dtype=dtype)
    with nogil:
        for p in prange(N * C, num_threads=n_threads, schedule='static'):
            n = p // C
            c = p % C
            _plane_grad_sums(&x[n, c, 0], &dy[n, c, 0], L, mean[c], &part_dy[n, c], &part_dyxc[n, c])
        _backward_coefficients(part_dy, part_dyxc, invstd, gamma, <double>(N * L), train,
                               dgamma, dbeta, k_dy, k_xc, k_0)
        for p in prange(N * C, num_threads=n_threads, schedule='static'):
            n = p // C
            c = p % C
            _dx_plane(&x[n, c, 0], &dy[n, c, 0], &dx[n, c, 0], L, mean[c], k_dy[c], k_xc[c], k_0[c])


# --------------------------------------------------------------------------------------------
# (R, Cg, L): statistics per row (layernorm, groupnorm)
# --------------------------------------------------------------------------------------------

cdef inline double _row_mean(const floating* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    cdef double s = 0.0
    for j in range(n):
        s += <double>x[j]
    return s / n


cdef inline double _row_var(const floating* x, Py_ssize_t n, double mean) noexcept nogil:
    """Biased variance about a known mean: the second pass of a two-pass variance over a row
    that is still in cache after the first."""
    cdef Py_ssize_t j
    cdef double s = 0.0, t
    for j in range(n):
        t = <double>x[j] - mean
        s += t * t
    return s / n


def rows_forward_train(
    const floating[:, :, ::1] x,   # IN (R, Cg, L)
    const floating[::1] gamma,     # IN (G * Cg,)
    const floating[::1] beta,      # IN (G * Cg,)
    Py_ssize_t groups,             # G: rows r use parameters of group r % G
    double eps,
    floating[:, :, ::1] out,       # OUT (R, Cg, L)
    floating[::1] mean,            # OUT (R,)
    floating[::1] invstd,          # OUT (R,)
    int n_threads,
):
    """Each row is read for its statistics and normalised while it is still in cache."""
    cdef Py_ssize_t R = x.shape[0], Cg = x.shape[1], L = x.shape[2], r, k, c0, j
    cdef double m, v, s
    cdef floating mf, sf
    cdef const floating* xr
    cdef floating* yr
    if R == 0 or Cg == 0 or L == 0:
        return
    with nogil:
        for r in prange(R, num_threads=n_threads, schedule='static'):
            xr = &x[r, 0, 0]
            yr = &out[r, 0, 0]
            m = _row_mean(xr, Cg * L)
            v = _row_var(xr, Cg * L, m)
            s = 1.0 / sqrt(v + eps)
            mf = <floating>m
            mean[r] = mf
            invstd[r] = <floating>s
            c0 = (r % groups) * Cg
            if L == 1:
                sf = <floating>s
                for k in range(Cg):
                    yr[k] = (xr[k] - mf) * (gamma[c0 + k] * sf) + beta[c0 + k]
            else:
                for k in range(Cg):
                    _affine_plane(xr + k * L, yr + k * L, L, mf,
                                  <floating>(gamma[c0 + k] * s), beta[c0 + k])


def rows_backward(
    const floating[:, :, ::1] x,   # IN (R, Cg, L)
    const floating[:, :, ::1] dy,  # IN (R, Cg, L)
    const floating[::1] mean,      # IN (R,)
    const floating[::1] invstd,    # IN (R,)
    const floating[::1] gamma,     # IN (G * Cg,)
    Py_ssize_t groups,
    floating[:, :, ::1] dx,        # OUT (R, Cg, L)
    floating[::1] dgamma,          # OUT (G * Cg,)
    floating[::1] dbeta,           # OUT (G * Cg,)
    int n_threads,
):
    """Per row: one sweep for the two row sums (and dgamma/dbeta partials), one for dx.

    dgamma/dbeta partials are kept per chunk of samples (G consecutive rows make one sample) and
    added in chunk order.
    """
    cdef Py_ssize_t R = x.shape[0], Cg = x.shape[1], L = x.shape[2], C = groups * Cg
    cdef Py_ssize_t N = R // groups if groups > 0 else 0
    cdef Py_ssize_t K, q, n, g, r, k, j, c, c0, n0, n1
    cdef double s, s3, sum_g, sum_gxc, gy, xc, pdb, pdg, a, b
    cdef const floating* xr
    cdef const floating* dr
    cdef floating* oxr
    if C == 0:
        return
    if R == 0 or L == 0:
        dgamma[:] = 0
        dbeta[:] = 0
        return
    K = max(min(N, TARGET_TASKS, MAX_PARTIALS // C), 1)
    cdef double[:, ::1] part_dgamma = np.zeros((K, C))
    cdef double[:, ::1] part_dbeta = np.zeros((K, C))
    with nogil:
        for q in prange(K, num_threads=n_threads, schedule='static'):
            n0 = _chunk_start(q, N, K)
            n1 = _chunk_start(q + 1, N, K)
            for n in range(n0, n1):
                for g in range(groups):
                    r = n * groups + g
                    xr = &x[r, 0, 0]
                    dr = &dy[r, 0, 0]
                    oxr = &dx[r, 0, 0]
                    c0 = g * Cg
                    s = <double>invstd[r]
                    sum_g = 0.0
                    sum_gxc = 0.0
                    for k in range(Cg):
                        pdb = 0.0
                        pdg = 0.0
                        for j in range(k * L, (k + 1) * L):
                            xc = <double>xr[j] - <double>mean[r]
                            pdb = pdb + <double>dr[j]
                            pdg = pdg + <double>dr[j] * xc
                        part_dbeta[q, c0 + k] += pdb
                        part_dgamma[q, c0 + k] += pdg * s
                        sum_g = sum_g + pdb * gamma[c0 + k]
                        sum_gxc = sum_gxc + pdg * gamma[c0 + k]
                    # dx = s * (g - sum_g / M - xc * s^2 * sum_gxc / M), g = dy * gamma
                    s3 = s * s * s * sum_gxc / (Cg * L)
                    b = -s * sum_g / (Cg * L)
                    for k in range(Cg):
                        a = s * gamma[c0 + k]
                        for j in range(k * L, (k + 1) * L):
                            oxr[j] = <floating>(a * dr[j] - s3 * (<double>xr[j] - <double>mean[r]) + b)
        for c in prange(C, num_threads=n_threads, schedule='static'):
            pdg = 0.0
            pdb = 0.0
            for q in range(K):
                pdg = pdg + part_dgamma[q, c]
                pdb = pdb + part_dbeta[q, c]
            dgamma[c] = <floating>pdg
            dbeta[c] = <floating>pdb


def parallel_copy(
    const floating[::1] src,       # IN
    floating[::1] dst,             # OUT
    int n_threads,
):
    """Copy src into dst with n_threads threads: the memory-bandwidth yardstick of the benchmarks."""
    cdef Py_ssize_t n = src.shape[0], block = 1 << 16, n_blocks = _ceil_div(n, block), b, j, j1
    with nogil:
        for b in prange(n_blocks, num_threads=n_threads, schedule='static'):
            j1 = min((b + 1) * block, n)
            for j in range(b * block, j1):
                dst[j] = src[j]
