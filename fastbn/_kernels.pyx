"""Compiled normalization kernels (float32 and float64 through the ``floating`` fused type).

Every function here trusts its caller, :mod:`fastbn._validation` through
:mod:`fastbn._compiled`, for shapes, dtypes and contiguity: nothing is checked. The entry points
take their arrays as plain NumPy arrays (C-contiguous and aligned; of x's dtype, float32 or
float64, unless a comment says float64 or uint8; None where optional) and read their data
pointers and shapes through the NumPy C API; x's dtype picks, once per call, the float or double
version of a cdef function over pointers and sizes (no typed memoryview is made). The scratch
memory of a call (per-chunk partials, merge weights, folded and tiled coefficients) is one block
carved into pieces, from a buffer each OS thread keeps for its next call (``_src/scratch.h``; see
``_scratch``). Three families of kernels cover all public operations:

``cols_*``
    x of shape (M, D), statistics per column: batchnorm and channels-last spatial batchnorm
    (an (N, H, W, C) array seen as (N*H*W, C)).
``planes_*``
    x of shape (N, C, L), statistics per channel over N contiguous planes of L values: NCHW
    spatial batchnorm.
``rows_*``
    x of shape (R, Cg, L), statistics per row of Cg*L values, affine parameters per channel
    ``(r % G) * Cg + k``: layernorm (G = 1, L = 1) and groupnorm (R = N*G, L = H*W), centred
    (``center=1``); RMSNorm without centring (``center=0``: the mean is 0, the variance the mean
    square), through the same loops.

Statistics as values: ``cols_moments`` and ``planes_moments`` run the statistics pass of the
train-mode forward alone (per channel the mean and sum of squared deviations, in float64), and
``fold_moments`` with the affine sweeps normalises with given ones; ``cols_grad_sums`` and
``planes_grad_sums`` run the reduction pass of the backward alone, and ``*_backward_given`` its
dx sweep from given sums. Fed what the passes compute, they give the bits of the fused kernels
(fastbn.batchnorm_moments, fastbn.distributed).

Determinism: work is cut into chunks whose boundaries depend only on the shape, partial results
are stored per chunk and combined in chunk order, so the bits do not depend on the thread count
nor on which thread takes which chunk: chunks are handed out dynamically (see HANDOUT_BYTES).
(The column blocks of (M, D) arrays depend on the thread count and on the output's address too,
but no column's value depends on which block it is in.)
Statistics are accumulated in double precision, shifted by a sample of the data (the first value
of each chunk or plane; the row mean for rows) and merged with Chan's formula: never
E[x^2] - E[x]^2 (RMSNorm needs only E[x^2], a sum of squares that cannot cancel).

Speed: the hot loops live in ``_src/loops_template.c``, written once (vectorised double sums with
fixed lanes, (M, D) column sums eight rows per pass and sweeps four rows at a time, contiguous
runs) and compiled by ``_src/loops.h`` for the baseline, AVX2 and AVX-512, which give the same
bits (``_src/simd.h``); the version is chosen once, at import, from the CPU (see :func:`simd`).
The elementwise sweeps of outputs of 8 MiB or more use streaming stores (no read-for-ownership of
the output). NCHW with enough channels, layernorm, groupnorm and (M, D) arrays with enough
columns read x from memory once: a channel's planes (a row, a block of columns) are normalised
right after their statistics, while they are in cache. (M, D) with few columns is swept as wide
rows of several rows. Every choice of path depends on the shape only.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY, sqrt
from libc.string cimport memset

cnp.import_array()

cdef extern from "omp_shim.h":
    int omp_get_max_threads() noexcept nogil
    int FASTBN_OPENMP

cdef extern from "scratch.h":
    int fastbn_scratch_init()
    void* fastbn_scratch_get(size_t nbytes, size_t keep, int* owned) nogil
    void fastbn_scratch_release(void* p, int owned) nogil

cdef extern from "loops.h" nogil:
    ctypedef struct fastbn_sums:
        double s1
        double s2
    ctypedef struct fastbn_dx_coefs:
        double s3
        double b
    fastbn_sums fastbn_moments(fastbn_sums t, double shift, Py_ssize_t n, int center)
    double fastbn_row_invstd(double m2, Py_ssize_t n, double eps)
    fastbn_dx_coefs fastbn_row_dx_coefs(double invstd, double sum_g, double sum_gxc, Py_ssize_t n,
                                        int center)
    void fastbn_simd_init()
    const char* fastbn_simd_name()
    int FASTBN_REG_MAX
    # Each loop takes float or double arrays (see loops.h: a _Generic macro on the first pointer
    # picks the version for its type at compile time; the pointers are declared void here).
    fastbn_sums fastbn_sum(const void* x, Py_ssize_t n)
    fastbn_sums fastbn_shifted_sums(const void* x, Py_ssize_t n, double shift)
    fastbn_sums fastbn_sum_pf(const void* x, Py_ssize_t n, const void* next)
    fastbn_sums fastbn_shifted_sums_pf(const void* x, Py_ssize_t n, double shift, const void* next)
    fastbn_sums fastbn_grad_sums_pf(const void* x, const void* dy, Py_ssize_t n, double mean,
                                    const void* next_x, const void* next_dy,
                                    const unsigned char* mask, Py_ssize_t pos)
    fastbn_sums fastbn_row_grad_sums(const void* x, const void* dy, const void* gamma, Py_ssize_t n,
                                     double mean, double invstd, double* db, double* dg)
    void fastbn_rows4_grad_sums(const void* x, const void* dy, Py_ssize_t stride, const void* gamma,
                                Py_ssize_t n, const double* mean, const double* invstd, double* db,
                                double* dg, double* out, int ahead)
    void fastbn_layernorm_rows(const void* x, void* out, Py_ssize_t n_rows, Py_ssize_t n,
                               const void* gamma, const void* beta, double eps, int center,
                               void* mean, void* invstd)
    void fastbn_layernorm_rows_grad(const void* x, const void* dy, void* dx, Py_ssize_t n_rows,
                                    Py_ssize_t n, const void* gamma, const void* mean,
                                    const void* invstd, int center, double* db, double* dg,
                                    int stream)
    # (scalars of the element type are declared double: a float is passed exactly)
    void fastbn_plane_affine(const void* x, void* out, Py_ssize_t n, double mean, double scale,
                             double beta, int stream, const void* res, unsigned char* mask,
                             Py_ssize_t pos, Py_ssize_t mask_ahead)
    void fastbn_plane_dx(const void* x, const void* dy, void* dx, Py_ssize_t n, double mean,
                         double invstd, double k_dy, double k_b, double k_g, int stream,
                         const unsigned char* mask, Py_ssize_t pos, int train, void* dres)
    void fastbn_row_affine(const void* x, void* out, Py_ssize_t n, double mean, double invstd,
                           const void* gamma, const void* beta, int stream)
    void fastbn_row_dx(const void* x, const void* dy, void* dx, Py_ssize_t n, double mean,
                       double invstd, const void* gamma, double a, double s3, double b, int stream)
    void fastbn_cols_shifted_sums(const void* x, Py_ssize_t stride, Py_ssize_t n_rows, Py_ssize_t w,
                                  const void* shift, double* s1, double* s2, Py_ssize_t ahead)
    void fastbn_cols_grad_sums(const void* x, const void* dy, Py_ssize_t stride, Py_ssize_t n_rows,
                               Py_ssize_t w, const void* mean, double* s1, double* s2,
                               const unsigned char* mask, Py_ssize_t pos, Py_ssize_t ahead,
                               int rows)
    void fastbn_cols_affine(const void* x, void* out, Py_ssize_t stride, Py_ssize_t n_rows,
                            Py_ssize_t w, const void* mean, const void* scale, const void* beta,
                            int stream, const void* res, unsigned char* mask, Py_ssize_t pos,
                            Py_ssize_t short_run)
    void fastbn_cols_dx(const void* x, const void* dy, void* dx, Py_ssize_t stride,
                        Py_ssize_t n_rows, Py_ssize_t w, const void* mean, const void* invstd,
                        const void* k_dy, const void* k_b, const void* k_g, int stream,
                        const unsigned char* mask, Py_ssize_t pos, int train, void* dres)
    void fastbn_finish_moments(const void* first, const void* base, Py_ssize_t n, double count,
                               double* s1, double* s2)
    void fastbn_fold(const void* gamma, const double* mean, const double* m2, const double* count,
                     Py_ssize_t count_step, Py_ssize_t n, double eps, void* mean_out,
                     void* invstd_out, void* scale, double* var)
    void fastbn_test_fold(const void* gamma, const void* running_mean, const void* running_var,
                          Py_ssize_t n, double eps, void* mean_out, void* invstd_out, void* scale)
    void fastbn_store_sums(const double* part_dy, const double* part_dyxc, Py_ssize_t K,
                           Py_ssize_t stride, Py_ssize_t n, double* s1, double* s2)
    void fastbn_grad_coefs(const void* invstd, const void* gamma, const double* part_dy,
                           const double* part_dyxc, Py_ssize_t K, Py_ssize_t stride, Py_ssize_t n,
                           double count, int train, void* dgamma, void* dbeta, void* k_dy,
                           void* k_b, void* k_g)
    void fastbn_update_running(const void* mean, const double* var, Py_ssize_t n, double momentum,
                               void* running_mean, void* running_var)


# The epilogue of the fused batchnorm + (residual add) + ReLU ops (see _src/loops_template.c): the
# base pointers of the whole arrays; a loop given the flat index `pos` of its x[0] reads and writes
# them at that offset. Plain ops pass NULL.
cdef struct Epilogue:
    const void* res         # forward: the residual (shaped as x), or NULL
    unsigned char* mask     # forward: the packed ReLU mask written; backward: read
    void* dres              # backward: dout * mask written (shaped as x), or NULL


cdef inline const floating* _res_at(const Epilogue* ep, const floating* like, Py_ssize_t pos) noexcept nogil:
    """The residual at flat index pos (`like`: any pointer of the element type), or NULL."""
    if ep == NULL or ep.res == NULL:
        return NULL
    return <const floating*>ep.res + pos


cdef inline floating* _dres_at(const Epilogue* ep, const floating* like, Py_ssize_t pos) noexcept nogil:
    """dresidual at flat index pos, or NULL."""
    if ep == NULL or ep.dres == NULL:
        return NULL
    return <floating*>ep.dres + pos


cdef inline unsigned char* _mask(const Epilogue* ep) noexcept nogil:
    return ep.mask if ep != NULL else NULL


cdef inline void* _data(object a):
    """The data of the NumPy array `a`, or NULL for None (the caller guarantees an array)."""
    if a is None:
        return NULL
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline Py_ssize_t _dim(object a, int k):
    """The length of axis k of the NumPy array `a`."""
    return cnp.PyArray_DIMS(<cnp.ndarray>a)[k]


cdef inline bint _single(object a):
    """Whether the NumPy array `a` is float32 (else it is float64)."""
    return cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_FLOAT32


cdef inline void* _data_or_null(object a):
    """The data of the NumPy array `a`, or NULL for None or an empty array."""
    if a is None or cnp.PyArray_SIZE(<cnp.ndarray>a) == 0:
        return NULL
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline Epilogue _epilogue(object residual, object mask, object dresidual):
    """The epilogue of a call from its optional arrays (C-contiguous, validated by the caller)."""
    cdef Epilogue ep
    ep.res = _data_or_null(residual)
    ep.mask = <unsigned char*>_data_or_null(mask)
    ep.dres = _data_or_null(dresidual)
    return ep


cdef inline Py_ssize_t _bound(Py_ssize_t k, Py_ssize_t n, Py_ssize_t n_chunks, Py_ssize_t unit) noexcept nogil:
    """Start of chunk k of n items in n_chunks balanced chunks, rounded down to a multiple of
    `unit` (the end, n, is not rounded): chunks of the fused ops' sweeps start at multiples of 8
    elements, so that no two threads write one byte of the packed mask."""
    if k >= n_chunks:
        return n
    return _chunk_start(k, n, n_chunks) // unit * unit


cdef inline Py_ssize_t _rows_per_byte(Py_ssize_t D) noexcept nogil:
    """The least number of rows of D values that make whole bytes of the mask (8 / gcd(D, 8))."""
    return 8 // (D & -D) if D & 7 else 1


# Every path choice and tuning constant of the kernels is a field of `plan`, put in force by
# fastbn._planner (which says what each governs; why each has its value is in docs/decisions.md),
# except the few the loops need at compile time (fastbn._planner.COMPILED, see
# compiled_constants). Path fields hold -1 (chosen from the shape) or the index of a path forced
# by name.
cdef struct Plan:
    Py_ssize_t handout_bytes
    Py_ssize_t col_block
    Py_ssize_t min_chunk_rows
    Py_ssize_t target_tasks
    Py_ssize_t max_partials
    Py_ssize_t wide_max_d
    Py_ssize_t wide_cols
    Py_ssize_t wide_aliased
    Py_ssize_t min_wide_rows
    Py_ssize_t blocked_min_bytes
    Py_ssize_t block_bytes
    Py_ssize_t block_min_lines
    Py_ssize_t blocked_min_blocks
    Py_ssize_t blocked_max_rows
    Py_ssize_t blocked_large_max_rows
    Py_ssize_t shared_max_run_bytes
    Py_ssize_t sums_prefetch_min_bytes
    Py_ssize_t sums_prefetch_max_run_bytes
    Py_ssize_t sweep_wide_bytes
    Py_ssize_t grad_sums_four_rows_bytes
    Py_ssize_t block_row_chunks
    Py_ssize_t affine_rows
    Py_ssize_t affine_tile_bytes
    Py_ssize_t affine_cols
    Py_ssize_t affine_short_run_bytes
    Py_ssize_t min_channels_blocked
    Py_ssize_t mask_prefetch_values
    Py_ssize_t short_row_bytes
    Py_ssize_t row_task_bytes
    Py_ssize_t rows4_min_values
    Py_ssize_t few_rows
    Py_ssize_t long_row_bytes
    Py_ssize_t segment_bytes
    Py_ssize_t run_bytes
    Py_ssize_t stream_min_bytes
    Py_ssize_t stream_min_run_bytes
    int cols_path
    int planes_path
    int rows_forward_path
    int rows_backward_path
    int stream_path

# Indices of the paths in fastbn._planner.PATHS (-1: chosen from the shape).
cdef enum:
    AUTO = -1
cdef enum:
    COLS_BLOCKED, COLS_SHARED_BLOCKS, COLS_GRID
cdef enum:
    PLANES_CHANNELS, PLANES_CHUNKS
cdef enum:
    ROWS_FWD_SHORT, ROWS_FWD_SEGMENTS, ROWS_FWD_PER_ROW
cdef enum:
    ROWS_BWD_SHORT, ROWS_BWD_FOUR, ROWS_BWD_SEGMENTS, ROWS_BWD_PER_ROW
cdef enum:
    STREAM_NEVER, STREAM_ALWAYS

cdef Plan plan


def set_plan(dict settings):
    """Put the plan `settings` (every field of the Plan struct) in force; see fastbn._planner."""
    global plan
    plan = settings


def get_plan():
    """The plan in force, as a dict."""
    return plan


fastbn_simd_init()


def compiled_constants():
    """The compile-time constants the loops were built with (fastbn._planner.COMPILED)."""
    return {"FASTBN_REG_MAX": FASTBN_REG_MAX}


def simd():
    """Return the instruction set of the hot loops: 'avx512', 'avx2' or 'baseline'.

    The best of the three is chosen at import from the CPU; the environment variables
    FASTBN_DISABLE_AVX512 and FASTBN_DISABLE_AVX2 (set to anything but 0) stop at AVX2 and at the
    baseline. Every path gives the same bits.
    """
    return fastbn_simd_name().decode()


def openmp_enabled():
    """Return True when the kernels were compiled with OpenMP."""
    return bool(FASTBN_OPENMP)


def omp_max_threads():
    """Return ``omp_get_max_threads()`` for the calling thread (1 without OpenMP)."""
    return omp_get_max_threads()


cdef inline int _streams(Py_ssize_t out_bytes) noexcept nogil:
    """Whether an elementwise sweep writes its output with streaming stores: when it is too large
    to stay in the caches anyway (a function of the shape only; it does not change any value)."""
    if plan.stream_path != AUTO:
        return plan.stream_path == STREAM_ALWAYS
    return out_bytes >= plan.stream_min_bytes


cdef inline int _streams_runs(Py_ssize_t out_bytes, Py_ssize_t run_bytes) noexcept nogil:
    """Whether a sweep over contiguous runs of run_bytes streams its output: only large outputs
    written in runs of at least a page (shorter runs would pay a fence each for little gain)."""
    if plan.stream_path != AUTO:
        return plan.stream_path == STREAM_ALWAYS
    return out_bytes >= plan.stream_min_bytes and run_bytes >= plan.stream_min_run_bytes


cdef inline Py_ssize_t _tile_rows(Py_ssize_t row_bytes) noexcept nogil:
    """Rows per tile of an elementwise sweep: plan.affine_rows, more for narrow rows."""
    return max(plan.affine_rows, plan.affine_tile_bytes // max(row_bytes, 1))


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline Py_ssize_t _handout(Py_ssize_t item_bytes) noexcept nogil:
    """Iterations per dynamic hand-out of a loop whose iterations read item_bytes each (see
    plan.handout_bytes): a function of the shape only."""
    return max(1, plan.handout_bytes // max(item_bytes, 1))


cdef inline Py_ssize_t _columns_per_handout(Py_ssize_t K) noexcept nogil:
    """Columns per dynamic hand-out of a per-column loop over K partials of each column
    (_handout of 16 * K bytes), a multiple of 16: whole vectors of the per-column loops."""
    return _ceil_div(_handout(16 * K), 16) * 16


cdef inline Py_ssize_t _chunk_start(Py_ssize_t k, Py_ssize_t n, Py_ssize_t n_chunks) noexcept nogil:
    """First index of chunk k when n items are cut into n_chunks balanced chunks."""
    return (k * n) // n_chunks


cdef inline Py_ssize_t _n_row_chunks(Py_ssize_t n_rows, Py_ssize_t n_cols) noexcept nogil:
    """Row chunks of the (M, D) grid: a function of the shape only."""
    cdef Py_ssize_t n_col_blocks = _ceil_div(n_cols, plan.col_block)
    cdef Py_ssize_t k = _ceil_div(plan.target_tasks, n_col_blocks)
    k = min(k, _ceil_div(n_rows, plan.min_chunk_rows))
    k = min(k, max(plan.max_partials // max(n_cols, 1), 1))
    return max(k, 1)


# Scratch memory: one block per call (see _src/scratch.h) from _scratch, carved into its pieces
# by _take; _release gives it back on every exit path.
cdef struct Scratch:
    char* data       # the block
    char* free       # the first byte not yet taken
    int owned        # a block of its own (else the calling thread's buffer)


cdef inline Py_ssize_t _aligned_bytes(Py_ssize_t n) noexcept nogil:
    """n rounded up to a multiple of 64 (each piece of a block starts on a cache line)."""
    return (n + 63) // 64 * 64


cdef int _scratch(Scratch* s, Py_ssize_t nbytes) except -1:
    """A block of `nbytes` uninitialised bytes (the sum of the _aligned_bytes of its pieces) for
    this call; MemoryError when there is none. Called with the GIL, before the nogil work.

    Each OS thread keeps its block, up to 4 * plan.max_partials doubles (the per-chunk partials
    would otherwise map fresh pages every call, a page fault per 4 KiB); larger requests, which
    only very wide arrays make, get a block of their own, freed by _release."""
    s.data = <char*>fastbn_scratch_get(<size_t>nbytes, <size_t>(4 * plan.max_partials) * sizeof(double),
                                       &s.owned)
    if s.data == NULL:
        raise MemoryError(f"fastbn: no memory for {nbytes} bytes of kernel scratch")
    s.free = s.data
    return 0


cdef inline void* _take(Scratch* s, Py_ssize_t nbytes) noexcept nogil:
    """The next nbytes of the block (counted by the _scratch call's `nbytes`)."""
    cdef char* p = s.free
    s.free = s.free + _aligned_bytes(nbytes)
    return p


cdef inline Py_ssize_t _tiles_bytes(Py_ssize_t n, Py_ssize_t D, Py_ssize_t k, Py_ssize_t size) noexcept nogil:
    """Scratch bytes for `n` coefficient vectors of D values of `size` bytes tiled k times
    (_tiled): none when k is 1."""
    return _aligned_bytes(n * k * D * size) if k > 1 else 0


cdef inline void* _take_tiles(Scratch* s, Py_ssize_t n, Py_ssize_t D, Py_ssize_t k, Py_ssize_t size) noexcept nogil:
    """The scratch of _tiles_bytes(n, D, k, size) from the block, NULL when k is 1."""
    return _take(s, n * k * D * size) if k > 1 else NULL


cdef inline void _release(Scratch* s) noexcept nogil:
    fastbn_scratch_release(s.data, s.owned)


if fastbn_scratch_init():
    raise MemoryError("fastbn: cannot create the thread key of the kernels' scratch memory")


cdef inline fastbn_sums _shifted_sums(const floating* x, Py_ssize_t n, double shift) noexcept nogil:
    """sum(x - shift), sum((x - shift)^2) over n contiguous values."""
    return fastbn_shifted_sums(x, n, shift)


cdef inline void _chan_merge(
    double* n_a, double* mean_a, double* m2_a, double n_b, double mean_b, double m2_b,
) noexcept nogil:
    """Merge moments (n_b, mean_b, m2_b) into (n_a, mean_a, m2_a): Chan et al.'s formula."""
    cdef double n_ab = n_a[0] + n_b, delta = mean_b - mean_a[0]
    mean_a[0] = mean_a[0] + delta * (n_b / n_ab)
    m2_a[0] = m2_a[0] + m2_b + delta * delta * (n_a[0] * n_b / n_ab)
    n_a[0] = n_ab


cdef inline void _fold(
    const double* moments, Py_ssize_t D, double count, const floating* gamma, double eps,
    floating* mean_out, floating* invstd_out, floating* scale, double* var,
    Py_ssize_t c_start, Py_ssize_t c_stop,
) noexcept nogil:
    """The biased variance and the folded affine constants of channels c_start..c_stop-1 from
    their mean (moments[d]) and sum of squared deviations (moments[D + d]) over `count`
    values: var = m2 / count (m2 <= 0 from rounding taken as +0), invstd = 1/sqrt(var + eps),
    scale = gamma * invstd (_src/loops_template.c, fold)."""
    fastbn_fold(gamma + c_start, moments + c_start, moments + D + c_start, &count, 0,
                c_stop - c_start, eps, mean_out + c_start, invstd_out + c_start, scale + c_start,
                var + c_start)


cdef inline void _merge_and_fold(
    const double* part_mean,         # IN (K, D) per-chunk means less the column's base
    const double* part_m2,           # IN (K, D) per-chunk sums of squared deviations
    Py_ssize_t K, Py_ssize_t D,
    const double* counts,            # IN (K,) values per chunk and column
    const floating* base,            # IN column d's base at base[d * base_step]
    Py_ssize_t base_step,
    double* moments,                 # OUT (2, D) mean and sum of squared deviations
    bint fold,                       # also the outputs below (else they are not touched)
    const floating* gamma, double eps,
    floating* mean_out, floating* invstd_out, floating* scale,  # OUT (D,)
    double* var,                     # OUT (D,) biased variance
    double* weights,                 # SCRATCH (2, K)
    int n_threads,
) noexcept nogil:
    """Chan's pairwise merge of chunk moments, in chunk order, then (`fold`) the folded affine
    constants, for every column. The chunks' means are given less a base per column (a value of
    the column: its first), so that the differences the merge takes are of small numbers, exact
    to a few ulps of the spread for any offset; the base is added to the merged mean. The merge
    weights depend on the chunk only and are computed once."""
    cdef Py_ssize_t k, d, chunk, d0, d1
    cdef Py_ssize_t width = _columns_per_handout(K)
    cdef double n_a = counts[0], n_ab, mean_a, m2_a, delta
    for k in range(1, K):
        n_ab = n_a + counts[k]
        weights[k] = counts[k] / n_ab
        weights[K + k] = n_a * counts[k] / n_ab
        n_a = n_ab
    for chunk in prange(_ceil_div(D, width), num_threads=n_threads, schedule='dynamic'):
        d0 = chunk * width
        d1 = min(d0 + width, D)
        for d in range(d0, d1):
            mean_a = part_mean[d]
            m2_a = part_m2[d]
            for k in range(1, K):
                delta = part_mean[k * D + d] - mean_a
                mean_a = mean_a + delta * weights[k]
                m2_a = m2_a + part_m2[k * D + d] + delta * delta * weights[K + k]
            moments[d] = <double>base[d * base_step] + mean_a
            moments[D + d] = m2_a
        if fold:
            _fold(moments, D, n_a, gamma, eps, mean_out, invstd_out, scale, var, d0, d1)


def fold_moments(
    count,                         # IN (C,) float64 values per channel
    moments,                       # IN (2, C) float64 mean, sum of squared deviations
    gamma,                         # IN (C,)
    double eps,
    mean_out,                      # OUT (C,) mean in the computation dtype
    invstd_out,                    # OUT (C,) 1/sqrt(var + eps)
    scale,                         # OUT (C,) gamma * invstd
    var,                           # OUT (C,) float64 biased variance
):
    """What a train-mode forward derives from its statistics, from given ones: the forward fed
    moments (fastbn.batchnorm_moments, fastbn.merge_moments) runs this, then the affine sweep of
    its family (cols_affine, planes_affine) with mean_out, scale and beta."""
    cdef Py_ssize_t C = _dim(count, 0)
    cdef const double* n = <const double*>_data(count)
    cdef const double* m = <const double*>_data(moments)
    if _single(gamma):
        fastbn_fold(<const float*>_data(gamma), m, m + C, n, 1, C, eps, <float*>_data(mean_out),
                    <float*>_data(invstd_out), <float*>_data(scale), <double*>_data(var))
    else:
        fastbn_fold(<const double*>_data(gamma), m, m + C, n, 1, C, eps,
                    <double*>_data(mean_out), <double*>_data(invstd_out), <double*>_data(scale),
                    <double*>_data(var))


def test_coefficients(
    running_mean,                  # IN (C,) in the computation dtype
    running_var,                   # IN (C,) in the computation dtype
    gamma,                         # IN (C,)
    double eps,
    mean_out,                      # OUT (C,) the running mean
    invstd_out,                    # OUT (C,) 1/sqrt(running_var + eps)
    scale,                         # OUT (C,) gamma * invstd
):
    """What a test-mode forward derives from the running statistics, for its affine sweep
    (cols_affine, planes_affine): invstd computed in float64 and rounded to the dtype, then
    scale = gamma * invstd in the dtype -- the bits of fastbn._results.test_statistics and its
    product with gamma."""
    cdef Py_ssize_t C = _dim(gamma, 0)
    if _single(gamma):
        fastbn_test_fold(<const float*>_data(gamma), <const float*>_data(running_mean),
                         <const float*>_data(running_var), C, eps, <float*>_data(mean_out),
                         <float*>_data(invstd_out), <float*>_data(scale))
    else:
        fastbn_test_fold(<const double*>_data(gamma), <const double*>_data(running_mean),
                         <const double*>_data(running_var), C, eps, <double*>_data(mean_out),
                         <double*>_data(invstd_out), <double*>_data(scale))


cdef inline void _store_sums(
    const double* part_dy, const double* part_dyxc, Py_ssize_t K, Py_ssize_t D, double* sums,
    Py_ssize_t c_start, Py_ssize_t c_stop,
) noexcept nogil:
    """sums[0, c], sums[1, c] ((2, D)) = the (K, D) per-chunk gradient sums of columns
    c_start..c_stop-1 added in chunk order, as the dx coefficients add them (the gradient-sums
    entries, which stop where the backward would fold them into dx coefficients)."""
    fastbn_store_sums(part_dy + c_start, part_dyxc + c_start, K, D, c_stop - c_start,
                      sums + c_start, sums + D + c_start)


cdef inline void _backward_coefficients(
    const double* part_dy,           # IN (K, C) per-chunk sums of dy
    const double* part_dyxc,         # IN (K, C) per-chunk sums of dy * (x - mean)
    Py_ssize_t K, Py_ssize_t C,
    const floating* invstd, const floating* gamma, double count, bint train,
    floating* dgamma, floating* dbeta,   # OUT (C,)
    floating* k_dy, floating* k_b, floating* k_g,  # OUT (C,), see below
    Py_ssize_t c_start, Py_ssize_t c_stop,  # the columns/channels to do
) noexcept nogil:
    """Sum per-chunk partials in chunk order and fold the closed-form dx into coefficients:
    dx = k_dy * (dy - k_b - xhat * k_g) with xhat = (x - mean) * invstd, k_dy = gamma * invstd,
    k_b = dbeta / M, k_g = dgamma / M (0 and 0 in test mode). Every factor stays within a few
    orders of magnitude of the data, so float32 neither overflows nor underflows where the
    result itself is representable (products like invstd**2 would, for tiny or huge variances).
    """
    fastbn_grad_coefs(invstd + c_start, gamma + c_start, part_dy + c_start, part_dyxc + c_start,
                      K, C, c_stop - c_start, count, train, dgamma + c_start, dbeta + c_start,
                      k_dy + c_start, k_b + c_start, k_g + c_start)


cdef inline void _update_running(
    const floating* mean, const double* var, floating* running_mean, floating* running_var,
    Py_ssize_t D, double momentum,
) noexcept nogil:
    """running = momentum * running + (1 - momentum) * batch over D values, in place, for each
    running array given (NULL, for None: fastbn._validation.update_running does it; the caller
    passes both or neither, and never one array as both). The operations and their precision are those of that NumPy
    code, so that both give the same bits: NumPy computes ``momentum * running`` in the array's
    precision (the Python float is cast to it), the mean term in the precision of the mean, and
    the variance term, the variance being float64, in double. Run after the kernel, as the NumPy
    update would be: then the result is the same even if a running array overlaps an input or the
    output."""
    fastbn_update_running(mean, var, D, momentum, running_mean, running_var)


# --------------------------------------------------------------------------------------------
# (M, D): statistics per column
# --------------------------------------------------------------------------------------------

cdef inline Py_ssize_t _sums_ahead(Py_ssize_t nbytes, Py_ssize_t run_bytes) noexcept nogil:
    """Rows ahead that the column sums over an array of `nbytes` bytes prefetch, reading runs of
    `run_bytes` bytes of each row (0: none; see plan.sums_prefetch_min_bytes and
    plan.sums_prefetch_max_run_bytes)."""
    cdef Py_ssize_t longest = plan.sums_prefetch_max_run_bytes
    return 8 if nbytes >= plan.sums_prefetch_min_bytes and (
        longest == 0 or run_bytes < longest) else 0


cdef inline int _grad_sums_rows(Py_ssize_t stride_bytes) noexcept nogil:
    """Rows per pass of the column gradient sums over rows `stride_bytes` apart: 4 when that is a
    multiple of plan.grad_sums_four_rows_bytes, else 8 (the same bits either way)."""
    cdef Py_ssize_t q = plan.grad_sums_four_rows_bytes
    return 4 if q and stride_bytes % q == 0 else 8


cdef inline void _cols_task_moments(
    const floating* x, Py_ssize_t stride, Py_ssize_t n_rows, Py_ssize_t width,
    const floating* base, double* mean, double* m2, Py_ssize_t ahead,
) noexcept nogil:
    """Mean (less `base`, a value per column shared by the chunks that _merge_and_fold merges;
    NULL: the mean) and sum of squared deviations of n_rows x width values (row stride
    `stride`), prefetching `ahead` rows ahead (_sums_ahead).

    Sums are shifted by the first row of the block, which keeps them small for any offset.
    """
    cdef Py_ssize_t j
    for j in range(width):
        mean[j] = 0.0
        m2[j] = 0.0
    fastbn_cols_shifted_sums(x + stride, stride, n_rows - 1, width, x, mean, m2, ahead)
    fastbn_finish_moments(x, base, width, <double>n_rows, mean, m2)


cdef inline Py_ssize_t _wide_factor(Py_ssize_t M, Py_ssize_t D) noexcept nogil:
    """k such that (M, D) is seen as (M // k, k * D) wide rows (see plan.wide_cols), 1 for none."""
    cdef Py_ssize_t k
    if D == 0 or D >= plan.wide_max_d:
        return 1
    k = _ceil_div(plan.wide_cols, D)
    if (k * D) % plan.wide_aliased == 0:
        k += 1  # see plan.wide_aliased
    return k if M // k >= plan.min_wide_rows else 1


cdef inline Py_ssize_t _sweep_factor(Py_ssize_t M, Py_ssize_t D, Py_ssize_t size) noexcept nogil:
    """k such that the elementwise sweeps of the grid path and of test mode see (M, D) as
    (M // k, k * D) wide rows: the statistics' k (_wide_factor), or, for a streamed output whose
    rows are whole cache lines, enough rows to make wide rows of plan.sweep_wide_bytes (0: none).
    Any k gives the same values (the sweeps are elementwise)."""
    cdef Py_ssize_t k = _wide_factor(M, D), row = D * size
    if (plan.sweep_wide_bytes and row > 0 and row % 64 == 0 and k * row < plan.sweep_wide_bytes
            and _streams(M * row)):
        k = max(min(_ceil_div(plan.sweep_wide_bytes, row), M), 1)
    return k


cdef inline Py_ssize_t _block_width(
    Py_ssize_t M, Py_ssize_t D, Py_ssize_t size, Py_ssize_t arrays, int n_threads,
) noexcept nogil:
    """Columns per block of the column-blocked (M, D) path for `arrays` input arrays of `size`-byte
    values, or 0 when that path is not taken. Whether it is taken depends on the shape only."""
    cdef Py_ssize_t line = 64 // size, w
    if M * D * size < plan.blocked_min_bytes:
        if D < plan.blocked_min_blocks * line or M < 2 or M > plan.blocked_max_rows:
            return 0
        w = _ceil_div(D, max(plan.blocked_min_blocks, 2 * n_threads))
        return max(_ceil_div(w, line) * line, line)
    if (D * size) % 64:
        return 0  # rows not all at the same offset within a cache line
    if M > plan.blocked_large_max_rows:
        return 0
    w = (plan.block_bytes // (M * size * arrays)) // line * line
    if w < plan.block_min_lines * line or _ceil_div(D, w) < plan.blocked_min_blocks:
        return 0
    return w


cdef inline Py_ssize_t _cols_path_width(
    Py_ssize_t M, Py_ssize_t D, Py_ssize_t size, Py_ssize_t arrays, int n_threads, bint relu=False,
) noexcept nogil:
    """Columns per block of the blocked (M, D) paths, or 0 for the grid path: from the shape
    (wide rows go to the grid; see _block_width), or as plan.cols_path forces (a forced blocked
    path on a shape that would not take it uses about plan.blocked_min_blocks blocks). The fused
    op (`relu`) takes the grid unless forced (its column blocks measured 1.8x the plain op's
    blocked forward and 1.3x its backward, its grid 1.0-1.2x: docs/decisions.md), and column
    blocks only for rows of whole bytes of its mask (D % 8 == 0)."""
    cdef Py_ssize_t line = 64 // size, w
    if plan.cols_path == COLS_GRID or plan.cols_path == AUTO and (_wide_factor(M, D) != 1 or relu):
        return 0
    if relu and D % 8:
        return 0
    w = _block_width(M, D, size, arrays, n_threads)
    if w == 0 and plan.cols_path != AUTO:
        w = max(_ceil_div(_ceil_div(D, plan.blocked_min_blocks), line) * line, line)
    return w


cdef inline Py_ssize_t _block_start(
    Py_ssize_t b, Py_ssize_t D, Py_ssize_t w, Py_ssize_t head,
) noexcept nogil:
    """First column of block b: blocks of w columns after the first, which also takes the `head`
    columns before the output's first cache-line boundary."""
    return 0 if b == 0 else min(head + b * w, D)


cdef inline Py_ssize_t _line_head(const void* p, Py_ssize_t size) noexcept nogil:
    """Values of `size` bytes before the first 64-byte boundary at or after p."""
    return <Py_ssize_t>(((64 - (<size_t>p & 63)) & 63) // size)


cdef inline const floating* _tiled(
    const floating* src, Py_ssize_t D, Py_ssize_t k, floating* tiles, Py_ssize_t slot,
) noexcept nogil:
    """src repeated k times, the coefficients of a wide row of k rows: src itself when k is 1
    (no copy; `tiles` may then be NULL), else a copy into slot `slot` of `tiles` (k * D values
    per slot, see _tiles_bytes)."""
    cdef Py_ssize_t g, j
    cdef floating* dst
    if k == 1:
        return src
    dst = tiles + slot * k * D
    for g in range(k):
        for j in range(D):
            dst[g * D + j] = src[j]
    return dst


cdef inline void _cols_sweep(
    const floating* x, const floating* dy, floating* out, Py_ssize_t M, Py_ssize_t D,
    const floating* c1, const floating* c2, const floating* c3, const floating* c4,
    const floating* c5, int n_threads, const Epilogue* ep=NULL, Py_ssize_t pos=0, bint train=True,
) noexcept nogil:
    """An elementwise sweep of (M, D) arrays (row stride D), per column j:
    without dy, out = (x - c1) * c2 + c3 (the normalisation: mean, scale, beta);
    with dy, out = c3 * (dy - c4 - (x - c1) * c2 * c5) (dx: mean, invstd, k_dy, k_b, k_g).
    With an epilogue `ep` (x[0] at flat index `pos`), the fused op's: the forward adds the
    residual, applies the ReLU and writes the mask, tiles starting at multiples of 8 elements
    of the whole array (pos must be one); the backward reads dy through the mask (test mode, not
    `train`: dx = c3 * dy)."""
    cdef Py_ssize_t t, r0, r1, c0, w
    # row tiles of balanced heights (any tiling gives the same values: the sweep is elementwise)
    cdef Py_ssize_t n_col_tiles = _ceil_div(D, plan.affine_cols)
    cdef int stream = _streams(M * D * <Py_ssize_t>sizeof(floating))
    cdef Py_ssize_t rows = _tile_rows(min(D, plan.affine_cols) * <Py_ssize_t>sizeof(floating))
    cdef Py_ssize_t n_row_tiles = _ceil_div(M, rows)
    cdef Py_ssize_t row_unit = 1, col_unit = 1
    if M == 0 or D == 0:
        return
    if ep != NULL and dy == NULL:  # the forward writes the mask: tiles of whole bytes
        if D % 8:
            n_col_tiles = 1
            row_unit = _rows_per_byte(D)
        else:
            col_unit = 8
    for t in prange(n_row_tiles * n_col_tiles, num_threads=n_threads, schedule='dynamic'):
        r0 = _bound(t // n_col_tiles, M, n_row_tiles, row_unit)
        r1 = _bound(t // n_col_tiles + 1, M, n_row_tiles, row_unit)
        c0 = _bound(t % n_col_tiles, D, n_col_tiles, col_unit)
        w = _bound(t % n_col_tiles + 1, D, n_col_tiles, col_unit) - c0
        if r1 > r0 and w > 0:
            _cols_block(x + r0 * D + c0, (dy + r0 * D + c0) if dy != NULL else NULL,
                        out + r0 * D + c0, D, r1 - r0, w, c1 + c0, c2 + c0, c3 + c0,
                        (c4 + c0) if c4 != NULL else NULL, (c5 + c0) if c5 != NULL else NULL,
                        stream, ep, pos + r0 * D + c0, train)


cdef inline void _cols_block(
    const floating* x, const floating* dy, floating* out, Py_ssize_t stride, Py_ssize_t n_rows,
    Py_ssize_t w, const floating* c1, const floating* c2, const floating* c3, const floating* c4,
    const floating* c5, int stream, const Epilogue* ep=NULL, Py_ssize_t pos=0, bint train=True,
) noexcept nogil:
    """The sweep of _cols_sweep over n_rows x w values (row stride `stride`), x[0] at flat
    index pos."""
    if dy == NULL:
        fastbn_cols_affine(x, out, stride, n_rows, w, c1, c2, c3, stream, _res_at(ep, x, pos),
                           _mask(ep), pos, plan.affine_short_run_bytes)
    else:
        fastbn_cols_dx(x, dy, out, stride, n_rows, w, c1, c2, c3, c4, c5, stream, _mask(ep), pos,
                       train, _dres_at(ep, x, pos))


cdef struct Wide:
    # How an (M, D) array is cut for the column kernels: k consecutive rows make one wide row
    # of k * D values (k = 1: none), Mw = M // k wide rows in K chunks of rows, and the
    # rem = M - Mw * k rows left over form one more chunk. Per-column partials are stored as
    # P = K * k (+ 1 for the rest) rows of D values: chunk q's column group g is row q * k + g.
    Py_ssize_t M, D, k, Mw, Dw, rem, K, n_col_blocks, P


cdef inline Wide _wide(Py_ssize_t M, Py_ssize_t D) noexcept nogil:
    """The cut of an (M, D) array (see Wide)."""
    cdef Wide cut
    cut.M = M
    cut.D = D
    cut.k = _wide_factor(M, D)
    cut.Mw = M // cut.k
    cut.Dw = cut.k * D
    cut.rem = M - cut.Mw * cut.k
    cut.K = _n_row_chunks(cut.Mw, cut.Dw)
    cut.n_col_blocks = _ceil_div(cut.Dw, plan.col_block)
    cut.P = cut.K * cut.k + (1 if cut.rem > 0 else 0)
    return cut


cdef inline Py_ssize_t _grid_ahead(Wide cut, Py_ssize_t size) noexcept nogil:
    """_sums_ahead of the grid path's column sums over `cut`: runs of its column blocks."""
    return _sums_ahead(cut.M * cut.D * size, _ceil_div(cut.Dw, cut.n_col_blocks) * size)


def cols_forward_train(
    x,                             # IN (M, D)
    gamma,                         # IN (D,)
    beta,                          # IN (D,)
    double eps,
    out,                           # OUT (M, D)
    mean,                          # OUT (D,) batch mean
    invstd,                        # OUT (D,) 1/sqrt(var + eps)
    var,                           # OUT (D,) float64 biased batch variance, for the running statistics
    running_mean,                  # INOUT (D,) or None, see _update_running
    running_var,                   # INOUT (D,) or None
    double momentum,
    int n_threads,
    residual=None,                 # IN (M, D) or None: the fused op's residual
    mask=None,                     # OUT uint8 (ceil(M * D / 8),) or None: the fused op's ReLU mask
):
    """Batch statistics per column, then out = (x - mean) * gamma * invstd + beta; then the
    running statistics that are given are updated. With a mask (the fused op): out =
    max(out + residual, 0) and the mask of out > 0 (see _src/loops.h, fastbn_put_bits)."""
    cdef Epilogue ep = _epilogue(residual, mask, None)
    cdef const Epilogue* e = &ep if mask is not None else NULL
    cdef Py_ssize_t M = _dim(x, 0), D = _dim(x, 1)
    if _single(x):
        _cols_forward_train(<const float*>_data(x), M, D, <const float*>_data(gamma),
                            <const float*>_data(beta), eps, <float*>_data(out),
                            <float*>_data(mean), <float*>_data(invstd), <double*>_data(var), NULL,
                            True, n_threads, e)
        _update_running(<const float*>_data(mean), <const double*>_data(var),
                        <float*>_data(running_mean), <float*>_data(running_var), D, momentum)
    else:
        _cols_forward_train(<const double*>_data(x), M, D, <const double*>_data(gamma),
                            <const double*>_data(beta), eps, <double*>_data(out),
                            <double*>_data(mean), <double*>_data(invstd), <double*>_data(var),
                            NULL, True, n_threads, e)
        _update_running(<const double*>_data(mean), <const double*>_data(var),
                        <double*>_data(running_mean), <double*>_data(running_var), D, momentum)


def cols_moments(
    x,                             # IN (M, D)
    moments,                       # OUT (2, D) float64 per column: mean, sum of squared deviations
    int n_threads,
):
    """The statistics pass of cols_forward_train alone (the same paths, chunks and merge, so the
    same bits as the statistics the forward normalises with); x is read once."""
    cdef Py_ssize_t M = _dim(x, 0), D = _dim(x, 1)
    cdef double* m = <double*>_data(moments)
    if _single(x):
        _cols_forward_train(<const float*>_data(x), M, D, NULL, NULL, 0.0, NULL, NULL, NULL, NULL,
                            m, False, n_threads, NULL)
    else:
        _cols_forward_train(<const double*>_data(x), M, D, NULL, NULL, 0.0, NULL, NULL, NULL, NULL,
                            m, False, n_threads, NULL)


cdef int _cols_forward_train(
    const floating* x, Py_ssize_t M, Py_ssize_t D, const floating* gamma, const floating* beta,
    double eps, floating* out, floating* mean, floating* invstd, double* var, double* moments,
    bint sweep, int n_threads, const Epilogue* ep,
) except -1:
    """The statistics of every column into `moments` ((2, D); NULL: scratch, for a forward that
    only needs the folded constants); with `sweep`, also the folded constants (mean, invstd,
    var) and the normalised output (without it those arguments may be NULL)."""
    if M == 0 or D == 0:
        return 0
    cdef Py_ssize_t w = _cols_path_width(M, D, sizeof(floating), 1, n_threads, ep != NULL)
    if w:
        return _cols_forward_blocked(x, M, D, gamma, beta, eps, out, mean, invstd, var, moments,
                                     sweep, w, n_threads, ep)
    cdef Wide cut = _wide(M, D)
    cdef Py_ssize_t task, q, b, g, r0, r1, c0, c1, k = cut.k, Dw = cut.Dw, Mw = cut.Mw, rest = Mw * k
    cdef Py_ssize_t K = cut.K, n_col_blocks = cut.n_col_blocks, rem = cut.rem, P = cut.P
    cdef Py_ssize_t size = sizeof(floating)
    cdef Py_ssize_t ahead = _grid_ahead(cut, size)
    cdef Py_ssize_t ks = _sweep_factor(M, D, size), Ds = ks * D, swept = (M // ks) * ks
    cdef Scratch s
    _scratch(&s, 2 * _aligned_bytes(P * D * 8) + _aligned_bytes(P * 8) + _aligned_bytes(2 * P * 8)
             + (_aligned_bytes(2 * D * 8) if moments == NULL else 0) + _tiles_bytes(1, D, k, size)
             + (_aligned_bytes(D * size) + _tiles_bytes(3, D, ks, size) if sweep else 0))
    cdef double* part_mean = <double*>_take(&s, P * D * 8)
    cdef double* part_m2 = <double*>_take(&s, P * D * 8)
    cdef double* counts = <double*>_take(&s, P * 8)
    cdef double* weights = <double*>_take(&s, 2 * P * 8)
    if moments == NULL:
        moments = <double*>_take(&s, 2 * D * 8)
    # every chunk's means are taken less the first row's values (the wide rows': k copies of it)
    cdef const floating* base = _tiled(x, D, k, <floating*>_take_tiles(&s, 1, D, k, size), 0)
    cdef floating* scale = NULL
    cdef floating* tiles = NULL
    if sweep:
        scale = <floating*>_take(&s, D * size)
        tiles = <floating*>_take_tiles(&s, 3, D, ks, size)
    for q in range(K):
        for g in range(k):
            counts[q * k + g] = _chunk_start(q + 1, Mw, K) - _chunk_start(q, Mw, K)
    if rem:
        counts[P - 1] = rem
    with nogil:
        for task in prange(K * n_col_blocks + (1 if rem else 0), num_threads=n_threads,
                           schedule='dynamic'):
            if task == K * n_col_blocks:  # the rows left over, as (rem, D)
                _cols_task_moments(x + rest * D, D, rem, D, x, part_mean + (P - 1) * D,
                                   part_m2 + (P - 1) * D, ahead)
            else:  # rows r0..r1-1 (chunk q), columns c0..c1-1 (block b) of the wide view
                q = task // n_col_blocks
                b = task % n_col_blocks
                r0 = _chunk_start(q, Mw, K)
                r1 = _chunk_start(q + 1, Mw, K)
                c0 = _chunk_start(b, Dw, n_col_blocks)
                c1 = _chunk_start(b + 1, Dw, n_col_blocks)
                _cols_task_moments(x + r0 * Dw + c0, Dw, r1 - r0, c1 - c0, base + c0,
                                   part_mean + q * Dw + c0, part_m2 + q * Dw + c0, ahead)
        _merge_and_fold(part_mean, part_m2, P, D, counts, x, 1, moments, sweep, gamma, eps, mean,
                        invstd, scale, var, weights, n_threads)
        if sweep:  # as (M // ks, Ds) wide rows, then the rows left over
            _cols_sweep(x, NULL, out, M // ks, Ds, _tiled(mean, D, ks, tiles, 0),
                        _tiled(scale, D, ks, tiles, 1), _tiled(beta, D, ks, tiles, 2), NULL, NULL,
                        n_threads, ep, 0)
            if swept < M:
                _cols_sweep(x + swept * D, NULL, out + swept * D, M - swept, D, mean, scale, beta,
                            NULL, NULL, 1, ep, swept * D)
        _release(&s)
    return 0


cdef int _cols_forward_blocked(
    const floating* x, Py_ssize_t M, Py_ssize_t D, const floating* gamma, const floating* beta,
    double eps, floating* out, floating* mean, floating* invstd, double* var, double* moments,
    bint sweep, Py_ssize_t w, int n_threads, const Epilogue* ep,
) except -1:
    """_cols_forward_train by blocks of w columns: a block's statistics over all M rows, then
    its normalisation while it is still in cache. The blocks start at the output's first cache
    line boundary (x's without a sweep: no column's value depends on its block); the fused op's
    (`ep`) at a multiple of 8 columns, whole bytes of its mask (D % 8 == 0 there)."""
    cdef Py_ssize_t b, c0, c1
    cdef Py_ssize_t head = _line_head(<const void*>out if sweep else <const void*>x, sizeof(floating))
    if ep != NULL:
        head = head // 8 * 8
    cdef Py_ssize_t n_blocks = max(_ceil_div(D - head, w), 1)  # head may exceed a narrow D
    cdef int stream = _streams(M * D * <Py_ssize_t>sizeof(floating))
    cdef Py_ssize_t ahead = _sums_ahead(M * D * <Py_ssize_t>sizeof(floating),
                                        w * <Py_ssize_t>sizeof(floating))
    cdef Scratch s
    _scratch(&s, (_aligned_bytes(2 * D * 8) if moments == NULL else 0)
             + _aligned_bytes(D * <Py_ssize_t>sizeof(floating)))
    if moments == NULL:
        moments = <double*>_take(&s, 2 * D * 8)
    cdef floating* scale = <floating*>_take(&s, D * <Py_ssize_t>sizeof(floating))
    with nogil:
        for b in prange(n_blocks, num_threads=n_threads, schedule='dynamic'):
            c0 = _block_start(b, D, w, head)
            c1 = _block_start(b + 1, D, w, head)
            _cols_task_moments(x + c0, D, M, c1 - c0, NULL, moments + c0, moments + D + c0, ahead)
            if sweep:
                _fold(moments, D, <double>M, gamma, eps, mean, invstd, scale, var, c0, c1)
                _cols_block(x + c0, NULL, out + c0, D, M, c1 - c0, mean + c0, scale + c0,
                            beta + c0, NULL, NULL, stream, ep, c0)
        _release(&s)
    return 0


def cols_affine(
    x,                             # IN (M, D)
    mean,                          # IN (D,)
    scale,                         # IN (D,) gamma * invstd
    beta,                          # IN (D,)
    out,                           # OUT (M, D)
    int n_threads,
    residual=None,                 # IN (M, D) or None, as in cols_forward_train
    mask=None,                     # OUT or None, as in cols_forward_train
):
    """out = (x - mean) * scale + beta per column (test-mode forward), and the fused op's
    epilogue with a mask."""
    cdef Py_ssize_t M = _dim(x, 0), D = _dim(x, 1)
    if M == 0 or D == 0:
        return
    cdef Epilogue epilogue = _epilogue(residual, mask, None)
    cdef const Epilogue* ep = &epilogue if mask is not None else NULL
    if _single(x):
        _cols_affine(<const float*>_data(x), M, D, <const float*>_data(mean),
                     <const float*>_data(scale), <const float*>_data(beta), <float*>_data(out),
                     n_threads, ep)
    else:
        _cols_affine(<const double*>_data(x), M, D, <const double*>_data(mean),
                     <const double*>_data(scale), <const double*>_data(beta), <double*>_data(out),
                     n_threads, ep)


cdef int _cols_affine(
    const floating* x, Py_ssize_t M, Py_ssize_t D, const floating* mean, const floating* scale,
    const floating* beta, floating* out, int n_threads, const Epilogue* ep,
) except -1:
    """cols_affine of an (M, D) array, M and D > 0, swept as wide rows (see _sweep_factor)."""
    cdef Py_ssize_t k = _sweep_factor(M, D, sizeof(floating)), rest = (M // k) * k, Dw = k * D
    cdef Scratch s
    _scratch(&s, _tiles_bytes(3, D, k, sizeof(floating)))
    cdef floating* tiles = <floating*>_take_tiles(&s, 3, D, k, sizeof(floating))
    with nogil:
        _cols_sweep(x, NULL, out, M // k, Dw, _tiled(mean, D, k, tiles, 0),
                    _tiled(scale, D, k, tiles, 1), _tiled(beta, D, k, tiles, 2), NULL, NULL,
                    n_threads, ep, 0)
        if rest < M:
            _cols_sweep(x + rest * D, NULL, out + rest * D, M - rest, D, mean, scale, beta, NULL,
                        NULL, 1, ep, rest * D)
        _release(&s)
    return 0


def cols_backward(
    x,                             # IN (M, D) forward input
    dy,                            # IN (M, D) upstream gradient
    mean,                          # IN (D,) mean used in the forward
    invstd,                        # IN (D,) invstd used in the forward
    gamma,                         # IN (D,)
    bint train,                    # statistics were the batch's own (True) or fixed (False)
    dx,                            # OUT (M, D)
    dgamma,                        # OUT (D,)
    dbeta,                         # OUT (D,)
    int n_threads,
    mask=None,                     # IN uint8 or None: the fused op's ReLU mask, read in place of dy's zeros
    dresidual=None,                # OUT (M, D) or None: dy * mask
):
    """One reduction sweep (sum dy, sum dy*(x - mean)) and one elementwise sweep for dx (with a
    mask: of dy * mask, also written into dresidual when given)."""
    cdef Epilogue ep = _epilogue(None, mask, dresidual)
    cdef const Epilogue* e = &ep if mask is not None else NULL
    cdef Py_ssize_t M = _dim(x, 0), D = _dim(x, 1)
    if _single(x):
        _cols_backward(<const float*>_data(x), <const float*>_data(dy), M, D,
                       <const float*>_data(mean), <const float*>_data(invstd),
                       <const float*>_data(gamma), train, <float*>_data(dx),
                       <float*>_data(dgamma), <float*>_data(dbeta), NULL, True, n_threads, e)
    else:
        _cols_backward(<const double*>_data(x), <const double*>_data(dy), M, D,
                       <const double*>_data(mean), <const double*>_data(invstd),
                       <const double*>_data(gamma), train, <double*>_data(dx),
                       <double*>_data(dgamma), <double*>_data(dbeta), NULL, True, n_threads, e)


def cols_grad_sums(
    x,                             # IN (M, D) forward input
    dy,                            # IN (M, D) upstream gradient
    mean,                          # IN (D,) mean used in the forward
    sums,                          # OUT (2, D) float64 per column: sum dy, sum dy * (x - mean)
    int n_threads,
):
    """The reduction sweep of cols_backward alone (the same paths and chunks, so the same bits as
    the sums that cols_backward folds into its dx coefficients)."""
    cdef Py_ssize_t M = _dim(x, 0), D = _dim(x, 1)
    cdef double* s = <double*>_data(sums)
    if _single(x):
        _cols_backward(<const float*>_data(x), <const float*>_data(dy), M, D,
                       <const float*>_data(mean), NULL, NULL, True, NULL, NULL, NULL, s, False,
                       n_threads, NULL)
    else:
        _cols_backward(<const double*>_data(x), <const double*>_data(dy), M, D,
                       <const double*>_data(mean), NULL, NULL, True, NULL, NULL, NULL, s, False,
                       n_threads, NULL)


def cols_backward_given(
    x,                             # IN (M, D) forward input
    dy,                            # IN (M, D) upstream gradient
    mean,                          # IN (D,)
    invstd,                        # IN (D,)
    gamma,                         # IN (D,)
    bint train,
    sums,                          # IN (2, D) float64 sum dy, sum dy * (x - mean) over the whole batch
    double count,                  # rows of the whole batch
    dx,                            # OUT (M, D)
    dgamma,                        # OUT (D,)
    dbeta,                         # OUT (D,)
    int n_threads,
):
    """The dx sweep of cols_backward (its grid path) with given gradient sums: x and dy are one
    part of a batch of `count` rows whose sums (cols_grad_sums, added over the parts) are
    `sums`; dgamma and dbeta are the whole batch's."""
    cdef Py_ssize_t M = _dim(x, 0), D = _dim(x, 1)
    cdef const double* s = <const double*>_data(sums)
    if D == 0:
        return
    if _single(x):
        _cols_backward_given(<const float*>_data(x), <const float*>_data(dy), M, D,
                             <const float*>_data(mean), <const float*>_data(invstd),
                             <const float*>_data(gamma), train, s, count, <float*>_data(dx),
                             <float*>_data(dgamma), <float*>_data(dbeta), n_threads)
    else:
        _cols_backward_given(<const double*>_data(x), <const double*>_data(dy), M, D,
                             <const double*>_data(mean), <const double*>_data(invstd),
                             <const double*>_data(gamma), train, s, count, <double*>_data(dx),
                             <double*>_data(dgamma), <double*>_data(dbeta), n_threads)


cdef int _cols_backward_given(
    const floating* x, const floating* dy, Py_ssize_t M, Py_ssize_t D, const floating* mean,
    const floating* invstd, const floating* gamma, bint train, const double* sums, double count,
    floating* dx, floating* dgamma, floating* dbeta, int n_threads,
) except -1:
    """cols_backward_given for one dtype (D > 0)."""
    cdef Py_ssize_t size = sizeof(floating), ks = _sweep_factor(M, D, size), Ds = ks * D
    cdef Scratch s
    _scratch(&s, _aligned_bytes(3 * D * size) + _tiles_bytes(5, D, ks, size))
    cdef floating* coefs = <floating*>_take(&s, 3 * D * size)
    cdef floating* tiles = <floating*>_take_tiles(&s, 5, D, ks, size)
    with nogil:
        _backward_coefficients(sums, sums + D, 1, D, invstd, gamma, count, train, dgamma, dbeta,
                               coefs, coefs + D, coefs + 2 * D, 0, D)
        if M:
            _cols_dx_sweep(x, dy, M, D, mean, invstd, coefs, coefs + D, coefs + 2 * D, train, dx,
                           ks, tiles, n_threads, NULL)
        _release(&s)
    return 0


cdef int _cols_backward(
    const floating* x, const floating* dy, Py_ssize_t M, Py_ssize_t D, const floating* mean,
    const floating* invstd, const floating* gamma, bint train, floating* dx, floating* dgamma,
    floating* dbeta, double* sums, bint sweep, int n_threads, const Epilogue* ep,
) except -1:
    """With `sweep`, dx, dgamma and dbeta (`sums` is NULL); without, only the column sums into
    `sums` ((2, D); invstd, gamma, dx, dgamma and dbeta may be NULL). With the fused op's
    epilogue (`ep`), dy is read through its mask."""
    cdef Py_ssize_t c
    if D == 0:
        return 0
    if M == 0:
        if sweep:
            for c in range(D):
                dgamma[c] = 0
                dbeta[c] = 0
        else:
            memset(sums, 0, 2 * D * sizeof(double))
        return 0
    cdef Py_ssize_t w = _cols_path_width(M, D, sizeof(floating), 2, n_threads, ep != NULL)
    if w:
        return _cols_backward_blocked(x, dy, M, D, mean, invstd, gamma, train, dx, dgamma, dbeta,
                                      sums, sweep, w, n_threads, ep)
    cdef Wide cut = _wide(M, D)
    cdef Py_ssize_t task, q, b, r0, r1, c0, c1, k = cut.k, Dw = cut.Dw, Mw = cut.Mw, rest = Mw * k
    cdef Py_ssize_t K = cut.K, n_col_blocks = cut.n_col_blocks, rem = cut.rem, P = cut.P
    cdef Py_ssize_t p0, stride, width, size = sizeof(floating)
    cdef Py_ssize_t ahead = _grid_ahead(cut, size)
    cdef Py_ssize_t ks = _sweep_factor(M, D, size), Ds = ks * D
    cdef Scratch s
    _scratch(&s, 2 * _aligned_bytes(P * D * 8) + _tiles_bytes(1, D, k, size)
             + (_aligned_bytes(3 * D * size) + _tiles_bytes(5, D, ks, size) if sweep else 0))
    cdef double* part_dy = <double*>_take(&s, P * D * 8)
    cdef double* part_dyxc = <double*>_take(&s, P * D * 8)
    cdef floating* mean_tiles = <floating*>_take_tiles(&s, 1, D, k, size)
    cdef const floating* tiled_mean
    cdef floating* coefs = NULL
    cdef floating* tiles = NULL
    if sweep:
        coefs = <floating*>_take(&s, 3 * D * size)
        tiles = <floating*>_take_tiles(&s, 5, D, ks, size)
    with nogil:
        tiled_mean = _tiled(mean, D, k, mean_tiles, 0)
        for task in prange(K * n_col_blocks + (1 if rem else 0), num_threads=n_threads,
                           schedule='dynamic'):
            if task == K * n_col_blocks:  # the rows left over, as (rem, D)
                r0, r1, c0, c1, stride, p0 = rest, M, 0, D, D, (P - 1) * D
            else:  # rows r0..r1-1 (chunk q), columns c0..c1-1 (block b) of the wide view
                q = task // n_col_blocks
                b = task % n_col_blocks
                stride = Dw
                r0 = _chunk_start(q, Mw, K)
                r1 = _chunk_start(q + 1, Mw, K)
                c0 = _chunk_start(b, Dw, n_col_blocks)
                c1 = _chunk_start(b + 1, Dw, n_col_blocks)
                p0 = q * Dw
            _cols_grad_sums(x + r0 * stride + c0, dy + r0 * stride + c0, stride, r1 - r0, c1 - c0,
                            tiled_mean + c0, part_dy + p0 + c0, part_dyxc + p0 + c0, ep,
                            r0 * stride + c0, ahead)
        if not sweep:
            _store_sums(part_dy, part_dyxc, P, D, sums, 0, D)
        else:
            width = _columns_per_handout(P)
            for b in prange(_ceil_div(D, width), num_threads=n_threads, schedule='dynamic'):
                c0 = b * width
                c1 = min(c0 + width, D)
                _backward_coefficients(part_dy, part_dyxc, P, D, invstd, gamma, <double>M, train,
                                       dgamma, dbeta, coefs, coefs + D, coefs + 2 * D, c0, c1)
            _cols_dx_sweep(x, dy, M, D, mean, invstd, coefs, coefs + D, coefs + 2 * D, train, dx,
                           ks, tiles, n_threads, ep)
        _release(&s)
    return 0


cdef void _cols_dx_sweep(
    const floating* x, const floating* dy, Py_ssize_t M, Py_ssize_t D, const floating* mean,
    const floating* invstd, const floating* k_dy, const floating* k_b, const floating* k_g,
    bint train, floating* dx, Py_ssize_t k, floating* tiles, int n_threads, const Epilogue* ep,
) noexcept nogil:
    """dx of an (M, D) array (M > 0) from the coefficients of _backward_coefficients, swept as
    (M // k, k * D) wide rows (k: the caller's _sweep_factor; `tiles`: scratch of 5 * k * D
    values when k > 1, see _tiled); with the fused op's epilogue (`ep`), dy read through its
    mask."""
    cdef Py_ssize_t Mw = M // k, Dw = k * D, rest = Mw * k
    cdef const floating* t_mean = _tiled(mean, D, k, tiles, 0)
    cdef const floating* t_invstd = _tiled(invstd, D, k, tiles, 1)
    cdef const floating* t_dy = _tiled(k_dy, D, k, tiles, 2)
    cdef const floating* t_b = _tiled(k_b, D, k, tiles, 3)
    cdef const floating* t_g = _tiled(k_g, D, k, tiles, 4)
    if ep != NULL:  # dy read through the mask; in test mode dx = k_dy * dy, x not read
        _cols_sweep(x, dy, dx, Mw, Dw, t_mean, t_invstd, t_dy, t_b, t_g, n_threads, ep, 0, train)
        if rest < M:
            _cols_sweep(x + rest * D, dy + rest * D, dx + rest * D, M - rest, D, mean, invstd,
                        k_dy, k_b, k_g, 1, ep, rest * D, train)
    elif not train:
        # dx = gamma * invstd * dy does not depend on x (a NaN or Inf in x must not leak in);
        # k_b is 0 in test mode, and serves as the zero mean and beta
        _cols_sweep(dy, NULL, dx, Mw, Dw, t_b, t_dy, t_b, NULL, NULL, n_threads)
        if rest < M:
            _cols_sweep(dy + rest * D, NULL, dx + rest * D, M - rest, D, k_b, k_dy, k_b, NULL,
                        NULL, 1)
    else:
        _cols_sweep(x, dy, dx, Mw, Dw, t_mean, t_invstd, t_dy, t_b, t_g, n_threads)
        if rest < M:
            _cols_sweep(x + rest * D, dy + rest * D, dx + rest * D, M - rest, D, mean, invstd,
                        k_dy, k_b, k_g, 1)


cdef int _cols_backward_blocked(
    const floating* x, const floating* dy, Py_ssize_t M, Py_ssize_t D, const floating* mean,
    const floating* invstd, const floating* gamma, bint train, floating* dx, floating* dgamma,
    floating* dbeta, double* sums, bint sweep, Py_ssize_t w, int n_threads, const Epilogue* ep,
) except -1:
    """_cols_backward by blocks of w columns: a block's gradient sums over all M rows, then its
    dx while x and dy are still in cache: a block per thread, or, for arrays of
    plan.blocked_min_bytes or more with blocks of short rows, one block at a time shared among the
    threads (see plan.shared_max_run_bytes). Without `sweep`, the block's sums go to `sums`."""
    cdef Py_ssize_t b, c0, c1, q, r0, r1, size = sizeof(floating)
    cdef Py_ssize_t head = _line_head(<const void*>dx if sweep else <const void*>x, sizeof(floating))
    cdef Py_ssize_t n_blocks = max(_ceil_div(D - head, w), 1)  # head may exceed a narrow D
    cdef bint shared = plan.cols_path == COLS_SHARED_BLOCKS or (
        plan.cols_path == AUTO and M * D * <Py_ssize_t>sizeof(floating) >= plan.blocked_min_bytes
        and w * <Py_ssize_t>sizeof(floating) <= plan.shared_max_run_bytes)
    cdef Py_ssize_t K = plan.block_row_chunks if shared else 1
    cdef int stream = _streams(M * D * <Py_ssize_t>sizeof(floating))
    cdef Py_ssize_t ahead = _sums_ahead(M * D * size, w * size)
    cdef Scratch s
    _scratch(&s, 2 * _aligned_bytes(K * D * 8) + (_aligned_bytes(3 * D * size) if sweep else 0))
    cdef double* part_dy = <double*>_take(&s, K * D * 8)
    cdef double* part_dyxc = <double*>_take(&s, K * D * 8)
    cdef floating* k_dy = NULL
    cdef floating* k_b = NULL
    cdef floating* k_g = NULL
    if sweep:
        k_dy = <floating*>_take(&s, 3 * D * size)
        k_b = k_dy + D
        k_g = k_dy + 2 * D
    with nogil:
        if shared:
            for b in range(n_blocks):
                c0 = _block_start(b, D, w, head)
                c1 = _block_start(b + 1, D, w, head)
                for q in prange(K, num_threads=n_threads, schedule='dynamic'):
                    r0 = _chunk_start(q, M, K)
                    r1 = _chunk_start(q + 1, M, K)
                    _cols_grad_sums(x + r0 * D + c0, dy + r0 * D + c0, D, r1 - r0, c1 - c0,
                                    mean + c0, part_dy + q * D + c0, part_dyxc + q * D + c0, ep,
                                    r0 * D + c0, ahead)
                if not sweep:
                    _store_sums(part_dy, part_dyxc, K, D, sums, c0, c1)
                    continue
                _backward_coefficients(part_dy, part_dyxc, K, D, invstd, gamma, <double>M, train,
                                       dgamma, dbeta, k_dy, k_b, k_g, c0, c1)
                for q in prange(K, num_threads=n_threads, schedule='dynamic'):
                    r0 = _chunk_start(q, M, K)
                    r1 = _chunk_start(q + 1, M, K)
                    _block_dx(x, dy, D, mean, invstd, k_dy, k_b, k_g, train, dx, r0, r1, c0, c1,
                              stream, ep)
        else:
            for b in prange(n_blocks, num_threads=n_threads, schedule='dynamic'):
                c0 = _block_start(b, D, w, head)
                c1 = _block_start(b + 1, D, w, head)
                _cols_grad_sums(x + c0, dy + c0, D, M, c1 - c0, mean + c0, part_dy + c0,
                                part_dyxc + c0, ep, c0, ahead)
                if not sweep:
                    _store_sums(part_dy, part_dyxc, 1, D, sums, c0, c1)
                else:
                    _backward_coefficients(part_dy, part_dyxc, 1, D, invstd, gamma, <double>M,
                                           train, dgamma, dbeta, k_dy, k_b, k_g, c0, c1)
                    _block_dx(x, dy, D, mean, invstd, k_dy, k_b, k_g, train, dx, 0, M, c0, c1,
                              stream, ep)
        _release(&s)
    return 0


cdef inline void _cols_grad_sums(
    const floating* x, const floating* dy, Py_ssize_t stride, Py_ssize_t n_rows, Py_ssize_t w,
    const floating* mean, double* s1, double* s2, const Epilogue* ep, Py_ssize_t pos,
    Py_ssize_t ahead,
) noexcept nogil:
    """s1[j] = sum dy, s2[j] = sum dy * (x - mean[j]) over n_rows rows (row stride `stride`) of w
    columns j, prefetching `ahead` rows ahead (_sums_ahead); s1 and s2 are zeroed first. With an
    epilogue, dy is read through the mask (x[0] at flat index pos)."""
    cdef Py_ssize_t j
    for j in range(w):
        s1[j] = 0.0
        s2[j] = 0.0
    fastbn_cols_grad_sums(x, dy, stride, n_rows, w, mean, s1, s2, _mask(ep), pos, ahead,
                          _grad_sums_rows(stride * <Py_ssize_t>sizeof(floating)))


cdef inline void _block_dx(
    const floating* x, const floating* dy, Py_ssize_t D, const floating* mean,
    const floating* invstd, const floating* k_dy, const floating* k_b, const floating* k_g,
    bint train, floating* dx, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t c0, Py_ssize_t c1,
    int stream, const Epilogue* ep,
) noexcept nogil:
    """dx of rows r0..r1-1, columns c0..c1-1 of (M, D) arrays, from the coefficients of
    _backward_coefficients."""
    cdef Py_ssize_t o = r0 * D + c0
    if ep != NULL:  # dy read through the mask (test mode: x not read)
        _cols_block(x + o, dy + o, dx + o, D, r1 - r0, c1 - c0, mean + c0, invstd + c0,
                    k_dy + c0, k_b + c0, k_g + c0, stream, ep, o, train)
    elif not train:  # dx = k_dy * dy (k_b is 0: the zero mean and beta); x is not read
        _cols_block(dy + o, NULL, dx + o, D, r1 - r0, c1 - c0, k_b + c0, k_dy + c0, k_b + c0,
                    NULL, NULL, stream)
    else:
        _cols_block(x + o, dy + o, dx + o, D, r1 - r0, c1 - c0, mean + c0, invstd + c0,
                    k_dy + c0, k_b + c0, k_g + c0, stream)


# --------------------------------------------------------------------------------------------
# (N, C, L): statistics per channel over N contiguous planes
# --------------------------------------------------------------------------------------------

cdef inline void _plane_moments(
    const floating* x, Py_ssize_t n, double base, double* mean, double* m2, const floating* next,
    int center,
) noexcept nogil:
    """Mean less `base` (a value shared by the runs merged with this one, see _merge_and_fold;
    0: the mean) and sum of squared deviations of n contiguous values, shifted by the first,
    while the next plane (`next`, or NULL) is prefetched; not centred, 0 and the sum of
    squares."""
    cdef double shift = <double>x[0] if center else 0.0
    cdef fastbn_sums t
    t = fastbn_shifted_sums_pf(x, n, shift, next)
    t = fastbn_moments(t, shift - base if center else 0.0, n, center)
    mean[0] = t.s1
    m2[0] = t.s2


cdef inline void _affine_plane(
    const floating* x, floating* out, Py_ssize_t n, floating mean, floating scale, floating beta,
    int stream, const Epilogue* ep=NULL, Py_ssize_t pos=0,
) noexcept nogil:
    """out = (x - mean) * scale + beta over n contiguous values (and the fused op's epilogue,
    x[0] at flat index pos)."""
    fastbn_plane_affine(x, out, n, mean, scale, beta, stream, _res_at(ep, x, pos), _mask(ep), pos,
                        plan.mask_prefetch_values)


cdef Py_ssize_t _n_plane_chunks(Py_ssize_t N, Py_ssize_t C):
    """Chunks of the N planes of a channel: 1 with enough channels to keep every thread busy
    (then one task does a whole channel, statistics and elementwise sweep while its planes are in
    cache), else enough chunks for about plan.target_tasks tasks. A function of the shape only."""
    if plan.planes_path == PLANES_CHANNELS or plan.planes_path == AUTO and C >= plan.min_channels_blocked:
        return 1
    if plan.planes_path == PLANES_CHUNKS:  # at least two chunks where there are two planes
        return max(min(N, max(2, _ceil_div(plan.target_tasks, C))), 1)
    return max(min(N, _ceil_div(plan.target_tasks, C)), 1)


cdef inline void _chunk_moments(
    const floating* x, Py_ssize_t C, Py_ssize_t L, Py_ssize_t c, Py_ssize_t n0, Py_ssize_t n1,
    double* mean, double* m2,
) noexcept nogil:
    """Moments of channel c's planes n0..n1-1 of an (N, C, L) array, merged in plane order: the
    mean less the channel's first value (the base of _merge_and_fold, for every chunk)."""
    cdef Py_ssize_t n, step = C * L
    cdef const floating* p = x + (n0 * C + c) * L
    cdef double n_a = <double>L, mean_b, m2_b, base = <double>x[c * L]
    _plane_moments(p, L, base, mean, m2, p + step if n0 + 1 < n1 else NULL, 1)
    for n in range(n0 + 1, n1):
        p = x + (n * C + c) * L
        _plane_moments(p, L, base, &mean_b, &m2_b, p + step if n + 1 < n1 else NULL, 1)
        _chan_merge(&n_a, mean, m2, <double>L, mean_b, m2_b)


cdef inline fastbn_sums _segment_moments(
    const floating* x, Py_ssize_t n, Py_ssize_t seg, const floating* next, int center,
) noexcept nogil:
    """Mean (s1) and sum of squared deviations (s2) of n contiguous values: per segment of seg
    values, the sums shifted by its first value (prefetching the same segment of `next`, or
    NULL), merged over the segments in order. Not centred, 0 and the sum of squares (the
    segments' sums of squares, added in order: the merge of zero means). (Returned rather than
    written through pointers: a caller's prange makes only the variables it assigns
    thread-private.)"""
    cdef double count = 0.0, mean = 0.0, m2 = 0.0, mean_b, m2_b
    cdef double base = <double>x[0] if center and n > 0 else 0.0  # see _merge_and_fold
    cdef Py_ssize_t k = 0, w
    cdef fastbn_sums result
    while k < n:
        w = min(seg, n - k)
        _plane_moments(x + k, w, base, &mean_b, &m2_b, next + k if next != NULL else NULL, center)
        _chan_merge(&count, &mean, &m2, <double>w, mean_b, m2_b)
        k = k + w
    result.s1 = base + mean if center else 0.0
    result.s2 = m2
    return result


def planes_forward_train(
    x,                             # IN (N, C, L)
    gamma,                         # IN (C,)
    beta,                          # IN (C,)
    double eps,
    out,                           # OUT (N, C, L)
    mean,                          # OUT (C,)
    invstd,                        # OUT (C,)
    var,                           # OUT (C,) float64 biased batch variance
    running_mean,                  # INOUT (C,) or None, see _update_running
    running_var,                   # INOUT (C,) or None
    double momentum,
    int n_threads,
    residual=None,                 # IN (N, C, L) or None, as in cols_forward_train
    mask=None,                     # OUT or None, as in cols_forward_train
):
    """As _planes_forward_train; then the running statistics that are given are updated."""
    cdef Epilogue ep = _epilogue(residual, mask, None)
    cdef const Epilogue* e = &ep if mask is not None else NULL
    cdef Py_ssize_t N = _dim(x, 0), C = _dim(x, 1), L = _dim(x, 2)
    if _single(x):
        _planes_forward_train(<const float*>_data(x), N, C, L, <const float*>_data(gamma),
                              <const float*>_data(beta), eps, <float*>_data(out),
                              <float*>_data(mean), <float*>_data(invstd), <double*>_data(var),
                              NULL, True, n_threads, e)
        _update_running(<const float*>_data(mean), <const double*>_data(var),
                        <float*>_data(running_mean), <float*>_data(running_var), C, momentum)
    else:
        _planes_forward_train(<const double*>_data(x), N, C, L, <const double*>_data(gamma),
                              <const double*>_data(beta), eps, <double*>_data(out),
                              <double*>_data(mean), <double*>_data(invstd), <double*>_data(var),
                              NULL, True, n_threads, e)
        _update_running(<const double*>_data(mean), <const double*>_data(var),
                        <double*>_data(running_mean), <double*>_data(running_var), C, momentum)


def planes_moments(
    x,                             # IN (N, C, L)
    moments,                       # OUT (2, C) float64 per channel: mean, sum of squared deviations
    int n_threads,
):
    """The statistics pass of planes_forward_train alone (the same tasks and merge, so the same
    bits as the statistics the forward normalises with); x is read once."""
    cdef Py_ssize_t N = _dim(x, 0), C = _dim(x, 1), L = _dim(x, 2)
    cdef double* m = <double*>_data(moments)
    if _single(x):
        _planes_forward_train(<const float*>_data(x), N, C, L, NULL, NULL, 0.0, NULL, NULL, NULL,
                              NULL, m, False, n_threads, NULL)
    else:
        _planes_forward_train(<const double*>_data(x), N, C, L, NULL, NULL, 0.0, NULL, NULL, NULL,
                              NULL, m, False, n_threads, NULL)


cdef int _planes_forward_train(
    const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, const floating* gamma,
    const floating* beta, double eps, floating* out, floating* mean, floating* invstd,
    double* var, double* moments, bint sweep, int n_threads, const Epilogue* ep,
) except -1:
    """Per-plane moments merged per channel in plane order into `moments` ((2, C); NULL:
    scratch); with `sweep`, then the folded constants and the normalising sweep (without it
    those arguments may be NULL).

    A task covers one chunk of a channel's planes (see ``_n_plane_chunks``). With one chunk per
    channel the task also normalises the channel while it is in cache: x is read from memory once
    -- for the fused op (`ep`) only when planes are whole bytes of its mask (L % 8 == 0); else
    its sweep comes after, over chunks of whole bytes (_planes_affine).
    """
    cdef Py_ssize_t Q, task, q, c, n, o
    if N == 0 or C == 0 or L == 0:
        return 0
    Q = _n_plane_chunks(N, C)
    cdef bint in_cache = Q == 1 and (ep == NULL or L % 8 == 0)
    cdef int stream = _streams_runs(N * C * L * <Py_ssize_t>sizeof(floating), L * <Py_ssize_t>sizeof(floating))
    cdef Scratch s
    _scratch(&s, 2 * _aligned_bytes(Q * C * 8) + _aligned_bytes(Q * 8) + _aligned_bytes(2 * Q * 8)
             + (_aligned_bytes(2 * C * 8) if moments == NULL else 0)
             + (_aligned_bytes(C * <Py_ssize_t>sizeof(floating)) if sweep else 0))
    cdef double* part_mean = <double*>_take(&s, Q * C * 8)
    cdef double* part_m2 = <double*>_take(&s, Q * C * 8)
    cdef double* counts = <double*>_take(&s, Q * 8)
    cdef double* weights = <double*>_take(&s, 2 * Q * 8)
    if moments == NULL:
        moments = <double*>_take(&s, 2 * C * 8)
    cdef floating* scale = NULL
    if sweep:
        scale = <floating*>_take(&s, C * <Py_ssize_t>sizeof(floating))
    for q in range(Q):
        counts[q] = <double>((_chunk_start(q + 1, N, Q) - _chunk_start(q, N, Q)) * L)
    with nogil:
        for task in prange(C * Q, num_threads=n_threads, schedule='dynamic',
                           chunksize=_handout(_ceil_div(N, Q) * L * <Py_ssize_t>sizeof(floating))):
            c = task // Q
            q = task % Q
            _chunk_moments(x, C, L, c, _chunk_start(q, N, Q), _chunk_start(q + 1, N, Q),
                           part_mean + q * C + c, part_m2 + q * C + c)
            if Q == 1:
                moments[c] = <double>x[c * L] + part_mean[c]
                moments[C + c] = part_m2[c]
                if sweep:
                    _fold(moments, C, counts[0], gamma, eps, mean, invstd, scale, var, c, c + 1)
                    if in_cache:
                        for n in range(N):
                            o = (n * C + c) * L
                            _affine_plane(x + o, out + o, L, mean[c], scale[c], beta[c], stream,
                                          ep, o)
        if Q > 1:
            _merge_and_fold(part_mean, part_m2, Q, C, counts, x, L, moments, sweep, gamma, eps,
                            mean, invstd, scale, var, weights, n_threads)
        if sweep and not in_cache:
            _planes_affine(x, N, C, L, mean, scale, beta, out, n_threads, ep)
        _release(&s)
    return 0


cdef inline void _planes_affine(
    const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, const floating* mean,
    const floating* scale, const floating* beta, floating* out, int n_threads,
    const Epilogue* ep=NULL,
) noexcept nogil:
    """The normalising sweep of (N, C, L) arrays, a plane per task; the fused op's (`ep`) with
    planes that are not whole bytes of its mask (L % 8 != 0) over chunks of the flat array that
    are."""
    cdef Py_ssize_t p, c
    cdef Py_ssize_t total = N * C * L, size = sizeof(floating), e0, e1, end, t
    cdef Py_ssize_t chunk = _ceil_div(max(plan.handout_bytes // size, 8), 8) * 8
    cdef int stream = _streams_runs(N * C * L * <Py_ssize_t>sizeof(floating), L * <Py_ssize_t>sizeof(floating))
    if ep != NULL and L % 8:
        for t in prange(_ceil_div(total, chunk), num_threads=n_threads, schedule='dynamic'):
            e0 = t * chunk
            e1 = min(e0 + chunk, total)
            while e0 < e1:  # the pieces of planes in [e0, e1)
                p = e0 // L
                end = min((p + 1) * L, e1)
                c = p % C
                _affine_plane(x + e0, out + e0, end - e0, mean[c], scale[c], beta[c], stream, ep,
                              e0)
                e0 = end
        return
    for p in prange(N * C, num_threads=n_threads, schedule='dynamic',
                    chunksize=_handout(L * <Py_ssize_t>sizeof(floating))):
        c = p % C
        _affine_plane(x + p * L, out + p * L, L, mean[c], scale[c], beta[c], stream, ep, p * L)


def planes_affine(
    x,                             # IN (N, C, L)
    mean,                          # IN (C,)
    scale,                         # IN (C,)
    beta,                          # IN (C,)
    out,                           # OUT (N, C, L)
    int n_threads,
    residual=None,                 # IN (N, C, L) or None, as in cols_forward_train
    mask=None,                     # OUT or None, as in cols_forward_train
):
    """out = (x - mean[c]) * scale[c] + beta[c] (test-mode forward), and the fused op's epilogue
    with a mask."""
    cdef Py_ssize_t N = _dim(x, 0), C = _dim(x, 1), L = _dim(x, 2)
    if N == 0 or C == 0 or L == 0:
        return
    cdef Epilogue ep = _epilogue(residual, mask, None)
    cdef const Epilogue* e = &ep if mask is not None else NULL
    cdef const void* px = _data(x)
    cdef const void* pm = _data(mean)
    cdef const void* ps = _data(scale)
    cdef const void* pb = _data(beta)
    cdef void* po = _data(out)
    cdef bint single = _single(x)
    with nogil:
        if single:
            _planes_affine(<const float*>px, N, C, L, <const float*>pm, <const float*>ps,
                           <const float*>pb, <float*>po, n_threads, e)
        else:
            _planes_affine(<const double*>px, N, C, L, <const double*>pm, <const double*>ps,
                           <const double*>pb, <double*>po, n_threads, e)


cdef inline void _dx_plane(
    const floating* x, const floating* dy, floating* dx, Py_ssize_t n, floating mean,
    floating invstd, floating k_dy, floating k_b, floating k_g, bint train, int stream,
    const Epilogue* ep, Py_ssize_t pos,
) noexcept nogil:
    """dx = k_dy * (dy - k_b - (x - mean) * invstd * k_g) over n contiguous values; in test
    mode dx = k_dy * dy, which does not read x (a NaN or Inf in x must not leak in). With an
    epilogue dy is read through the mask (x[0] at flat index pos)."""
    if ep != NULL:
        fastbn_plane_dx(x, dy, dx, n, mean, invstd, k_dy, k_b, k_g, stream, ep.mask, pos, train,
                        _dres_at(ep, x, pos))
    elif not train:
        _affine_plane(dy, dx, n, 0, k_dy, 0, stream)
    else:
        fastbn_plane_dx(x, dy, dx, n, mean, invstd, k_dy, k_b, k_g, stream, NULL, 0, 1, NULL)


def planes_backward(
    x,                             # IN (N, C, L)
    dy,                            # IN (N, C, L)
    mean,                          # IN (C,)
    invstd,                        # IN (C,)
    gamma,                         # IN (C,)
    bint train,
    dx,                            # OUT (N, C, L)
    dgamma,                        # OUT (C,)
    dbeta,                         # OUT (C,)
    int n_threads,
    mask=None,                     # IN or None, as in cols_backward
    dresidual=None,                # OUT (N, C, L) or None, as in cols_backward
):
    """Per-plane gradient sums, added per channel in plane order, then the dx sweep; tasks as in
    :func:`planes_forward_train` (one chunk per channel: dx while the planes are in cache). With a
    mask, of dy * mask (also written into dresidual when given)."""
    cdef Epilogue ep = _epilogue(None, mask, dresidual)
    cdef const Epilogue* e = &ep if mask is not None else NULL
    cdef Py_ssize_t N = _dim(x, 0), C = _dim(x, 1), L = _dim(x, 2)
    if _single(x):
        _planes_backward(<const float*>_data(x), <const float*>_data(dy), N, C, L,
                         <const float*>_data(mean), <const float*>_data(invstd),
                         <const float*>_data(gamma), train, <float*>_data(dx),
                         <float*>_data(dgamma), <float*>_data(dbeta), NULL, True, n_threads, e)
    else:
        _planes_backward(<const double*>_data(x), <const double*>_data(dy), N, C, L,
                         <const double*>_data(mean), <const double*>_data(invstd),
                         <const double*>_data(gamma), train, <double*>_data(dx),
                         <double*>_data(dgamma), <double*>_data(dbeta), NULL, True, n_threads, e)


def planes_grad_sums(
    x,                             # IN (N, C, L)
    dy,                            # IN (N, C, L)
    mean,                          # IN (C,)
    sums,                          # OUT (2, C) float64 per channel: sum dy, sum dy * (x - mean)
    int n_threads,
):
    """The reduction sweep of planes_backward alone (the same tasks, so the same bits as the sums
    that planes_backward folds into its dx coefficients)."""
    cdef Py_ssize_t N = _dim(x, 0), C = _dim(x, 1), L = _dim(x, 2)
    cdef double* s = <double*>_data(sums)
    if _single(x):
        _planes_backward(<const float*>_data(x), <const float*>_data(dy), N, C, L,
                         <const float*>_data(mean), NULL, NULL, True, NULL, NULL, NULL, s, False,
                         n_threads, NULL)
    else:
        _planes_backward(<const double*>_data(x), <const double*>_data(dy), N, C, L,
                         <const double*>_data(mean), NULL, NULL, True, NULL, NULL, NULL, s, False,
                         n_threads, NULL)


def planes_backward_given(
    x,                             # IN (N, C, L)
    dy,                            # IN (N, C, L)
    mean,                          # IN (C,)
    invstd,                        # IN (C,)
    gamma,                         # IN (C,)
    bint train,
    sums,                          # IN (2, C) float64 sum dy, sum dy * (x - mean) over the whole batch
    double count,                  # values per channel of the whole batch
    dx,                            # OUT (N, C, L)
    dgamma,                        # OUT (C,)
    dbeta,                         # OUT (C,)
    int n_threads,
):
    """The dx sweep of planes_backward with given gradient sums: x and dy are one part of a batch
    of `count` values per channel whose sums (planes_grad_sums, added over the parts) are `sums`;
    dgamma and dbeta are the whole batch's."""
    cdef Py_ssize_t N = _dim(x, 0), C = _dim(x, 1), L = _dim(x, 2)
    cdef const double* s = <const double*>_data(sums)
    if C == 0:
        return
    if _single(x):
        _planes_backward_given(<const float*>_data(x), <const float*>_data(dy), N, C, L,
                               <const float*>_data(mean), <const float*>_data(invstd),
                               <const float*>_data(gamma), train, s, count, <float*>_data(dx),
                               <float*>_data(dgamma), <float*>_data(dbeta), n_threads)
    else:
        _planes_backward_given(<const double*>_data(x), <const double*>_data(dy), N, C, L,
                               <const double*>_data(mean), <const double*>_data(invstd),
                               <const double*>_data(gamma), train, s, count, <double*>_data(dx),
                               <double*>_data(dgamma), <double*>_data(dbeta), n_threads)


cdef int _planes_backward_given(
    const floating* x, const floating* dy, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L,
    const floating* mean, const floating* invstd, const floating* gamma, bint train,
    const double* sums, double count, floating* dx, floating* dgamma, floating* dbeta,
    int n_threads,
) except -1:
    """planes_backward_given for one dtype (C > 0)."""
    cdef Scratch s
    _scratch(&s, _aligned_bytes(3 * C * <Py_ssize_t>sizeof(floating)))
    cdef floating* coefs = <floating*>_take(&s, 3 * C * <Py_ssize_t>sizeof(floating))
    with nogil:
        _backward_coefficients(sums, sums + C, 1, C, invstd, gamma, count, train, dgamma, dbeta,
                               coefs, coefs + C, coefs + 2 * C, 0, C)
        if N and L:
            _planes_dx(x, dy, N, C, L, mean, invstd, coefs, coefs + C, coefs + 2 * C, train, dx,
                       n_threads, NULL)
        _release(&s)
    return 0


cdef int _planes_backward(
    const floating* x, const floating* dy, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L,
    const floating* mean, const floating* invstd, const floating* gamma, bint train,
    floating* dx, floating* dgamma, floating* dbeta, double* sums, bint sweep, int n_threads,
    const Epilogue* ep,
) except -1:
    """With `sweep`, dx, dgamma and dbeta (`sums` is NULL); without, only the channel sums into
    `sums` ((2, C); invstd, gamma, dx, dgamma and dbeta may be NULL). With the fused op's
    epilogue (`ep`), dy is read through its mask."""
    cdef Py_ssize_t Q, task, q, n, n1, c, o, step = C * L
    cdef double s1, s2
    cdef fastbn_sums t
    if C == 0:
        return 0
    if N == 0 or L == 0:
        if sweep:
            for c in range(C):
                dgamma[c] = 0
                dbeta[c] = 0
        else:
            memset(sums, 0, 2 * C * sizeof(double))
        return 0
    Q = _n_plane_chunks(N, C)
    cdef int stream = _streams_runs(N * C * L * <Py_ssize_t>sizeof(floating), L * <Py_ssize_t>sizeof(floating))
    cdef const unsigned char* m = _mask(ep)
    cdef Scratch s
    _scratch(&s, 2 * _aligned_bytes(Q * C * 8)
             + (_aligned_bytes(3 * C * <Py_ssize_t>sizeof(floating)) if sweep else 0))
    cdef double* part_dy = <double*>_take(&s, Q * C * 8)
    cdef double* part_dyxc = <double*>_take(&s, Q * C * 8)
    cdef floating* k_dy = NULL
    cdef floating* k_b = NULL
    cdef floating* k_g = NULL
    if sweep:
        k_dy = <floating*>_take(&s, 3 * C * <Py_ssize_t>sizeof(floating))
        k_b = k_dy + C
        k_g = k_dy + 2 * C
    with nogil:
        for task in prange(C * Q, num_threads=n_threads, schedule='dynamic',
                           chunksize=_handout(_ceil_div(N, Q) * L * <Py_ssize_t>sizeof(floating))):
            c = task // Q
            q = task % Q
            s1 = 0.0
            s2 = 0.0
            n1 = _chunk_start(q + 1, N, Q)
            for n in range(_chunk_start(q, N, Q), n1):
                o = (n * C + c) * L
                t = fastbn_grad_sums_pf(x + o, dy + o, L, <double>mean[c],
                                        x + o + step if n + 1 < n1 else NULL,
                                        dy + o + step if n + 1 < n1 else NULL, m, o)
                s1 = s1 + t.s1
                s2 = s2 + t.s2
            part_dy[q * C + c] = s1
            part_dyxc[q * C + c] = s2
            if Q == 1 and sweep:
                _backward_coefficients(part_dy, part_dyxc, 1, C, invstd, gamma, <double>(N * L),
                                       train, dgamma, dbeta, k_dy, k_b, k_g, c, c + 1)
                for n in range(N):
                    o = (n * C + c) * L
                    _dx_plane(x + o, dy + o, dx + o, L, mean[c], invstd[c], k_dy[c], k_b[c],
                              k_g[c], train, stream, ep, o)
        if not sweep:
            _store_sums(part_dy, part_dyxc, Q, C, sums, 0, C)
        elif Q > 1:
            _backward_coefficients(part_dy, part_dyxc, Q, C, invstd, gamma, <double>(N * L), train,
                                   dgamma, dbeta, k_dy, k_b, k_g, 0, C)
            _planes_dx(x, dy, N, C, L, mean, invstd, k_dy, k_b, k_g, train, dx, n_threads, ep)
        _release(&s)
    return 0


cdef inline void _planes_dx(
    const floating* x, const floating* dy, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L,
    const floating* mean, const floating* invstd, const floating* k_dy, const floating* k_b,
    const floating* k_g, bint train, floating* dx, int n_threads, const Epilogue* ep,
) noexcept nogil:
    """dx of every plane of (N, C, L) arrays from the coefficients of _backward_coefficients (dy
    read through the fused op's mask with `ep`)."""
    cdef Py_ssize_t p, c
    cdef int stream = _streams_runs(N * C * L * <Py_ssize_t>sizeof(floating), L * <Py_ssize_t>sizeof(floating))
    for p in prange(N * C, num_threads=n_threads, schedule='dynamic',
                    chunksize=_handout(2 * L * <Py_ssize_t>sizeof(floating))):
        c = p % C
        _dx_plane(x + p * L, dy + p * L, dx + p * L, L, mean[c], invstd[c], k_dy[c], k_b[c],
                  k_g[c], train, stream, ep, p * L)


# --------------------------------------------------------------------------------------------
# (R, Cg, L): statistics per row (layernorm, groupnorm)
# --------------------------------------------------------------------------------------------

def rows_forward_train(
    x,                             # IN (R, Cg, L)
    gamma,                         # IN (G * Cg,)
    beta,                          # IN (G * Cg,)
    Py_ssize_t groups,             # G: rows r use parameters of group r % G
    double eps,
    int center,                    # 1: mean and variance (layernorm, groupnorm); 0: RMSNorm
    out,                           # OUT (R, Cg, L)
    mean,                          # OUT (R,) (0 when not centred)
    invstd,                        # OUT (R,) (1/sqrt(eps) for empty rows, inf when eps is 0)
    int n_threads,
):
    """Each row is read for its statistics and normalised while it is still in cache:
    out = (x - mean) * gamma * invstd + beta, with invstd = 1/sqrt(var + eps); not centred
    (RMSNorm), mean = 0 and var = the mean of x^2 (no pass for the mean)."""
    cdef Py_ssize_t R = _dim(x, 0), Cg = _dim(x, 1), L = _dim(x, 2)
    cdef const void* px = _data(x)
    cdef const void* pg = _data(gamma)
    cdef const void* pb = _data(beta)
    cdef void* po = _data(out)
    cdef void* pm = _data(mean)
    cdef void* pi = _data(invstd)
    cdef bint single = _single(x)
    with nogil:
        if single:
            _rows_forward_train(<const float*>px, R, Cg, L, <const float*>pg, <const float*>pb,
                                groups, eps, center, <float*>po, <float*>pm, <float*>pi,
                                n_threads)
        else:
            _rows_forward_train(<const double*>px, R, Cg, L, <const double*>pg,
                                <const double*>pb, groups, eps, center, <double*>po,
                                <double*>pm, <double*>pi, n_threads)


cdef void _rows_forward_train(
    const floating* x, Py_ssize_t R, Py_ssize_t Cg, Py_ssize_t L, const floating* gamma,
    const floating* beta, Py_ssize_t groups, double eps, int center, floating* out,
    floating* mean, floating* invstd, int n_threads,
) noexcept nogil:
    """rows_forward_train for one dtype."""
    cdef Py_ssize_t n = Cg * L, r, k, c0
    cdef int stream = _streams_runs(R * n * <Py_ssize_t>sizeof(floating),
                                    (Cg if L == 1 else L) * <Py_ssize_t>sizeof(floating))
    cdef double shift, s
    cdef fastbn_sums sums
    cdef floating mf
    cdef Py_ssize_t seg = plan.segment_bytes // <Py_ssize_t>sizeof(floating)
    cdef const floating* xr
    cdef floating* yr
    if R == 0:
        return
    if n == 0:  # empty rows: mean 0 and var 0
        for r in range(R):
            mean[r] = 0
            invstd[r] = <floating>(1.0 / sqrt(eps) if eps > 0 else INFINITY)
        return
    cdef Py_ssize_t rows_per_task = max(1, plan.row_task_bytes // (n * <Py_ssize_t>sizeof(floating)))
    cdef Py_ssize_t t, r0
    cdef int path = _rows_forward_path(Cg, L, groups, sizeof(floating))
    if path == ROWS_FWD_SHORT:
        # Short layernorm rows: tasks of about 16 KiB of rows, each handled by one C call.
        for t in prange(_ceil_div(R, rows_per_task), num_threads=n_threads, schedule='static'):
            r0 = t * rows_per_task
            fastbn_layernorm_rows(x + r0 * n, out + r0 * n, min(rows_per_task, R - r0), n,
                                  gamma, beta, eps, center, mean + r0, invstd + r0)
        return
    for r in prange(R, num_threads=n_threads, schedule='dynamic',
                    chunksize=_handout(n * <Py_ssize_t>sizeof(floating))):
        xr = x + r * n
        yr = out + r * n
        if path == ROWS_FWD_SEGMENTS:  # one read (see plan.segment_bytes)
            sums = _segment_moments(xr, n, seg, xr + n if r + 1 < R else NULL, center)
        else:
            # Two passes over the cached row: the mean (prefetching the next row; none when
            # not centred), then the sums shifted by it (the corrected two-pass algorithm,
            # accurate for any offset).
            shift = 0.0
            if center:
                shift = fastbn_sum_pf(xr, n, xr + n if r + 1 < R else NULL).s1 / n
            sums = fastbn_moments(_shifted_sums(xr, n, shift), shift, n, center)
        s = fastbn_row_invstd(sums.s2, n, eps)
        mf = <floating>sums.s1
        mean[r] = mf
        invstd[r] = <floating>s
        c0 = (r % groups) * Cg
        if L == 1:
            fastbn_row_affine(xr, yr, Cg, mf, <floating>s, gamma + c0, beta + c0, stream)
        else:
            for k in range(Cg):
                _affine_plane(xr + k * L, yr + k * L, L, mf,
                              <floating>(gamma[c0 + k] * s), beta[c0 + k], stream)


cdef inline int _rows_forward_path(
    Py_ssize_t Cg, Py_ssize_t L, Py_ssize_t groups, Py_ssize_t size,
) noexcept nogil:
    """The path of the rows forward: rows of layernorm/RMSNorm (one group, L = 1) many per C
    call when short, by column segments (see plan.segment_bytes) when long, else one at a time;
    groupnorm rows one at a time. plan.rows_forward_path forces one for layernorm/RMSNorm rows."""
    if L != 1 or groups != 1:
        return ROWS_FWD_PER_ROW
    if plan.rows_forward_path != AUTO:
        return plan.rows_forward_path
    if Cg * size < plan.short_row_bytes:
        return ROWS_FWD_SHORT
    return ROWS_FWD_SEGMENTS if Cg * size > plan.long_row_bytes else ROWS_FWD_PER_ROW


cdef inline int _rows_backward_path(
    Py_ssize_t n_rows, Py_ssize_t Cg, Py_ssize_t L, Py_ssize_t groups, Py_ssize_t size,
) noexcept nogil:
    """The path of the rows backward: rows of layernorm/RMSNorm by column segments when long or
    few (plan.few_rows: few rows leave the threads too few row chunks to share), four at a time from plan.rows4_min_values values (their x and dy stay in L2 for the dx
    sweep), else many per C call; groupnorm rows one at a time. plan.rows_backward_path forces
    one for layernorm/RMSNorm rows."""
    if L != 1 or groups != 1:
        return ROWS_BWD_PER_ROW
    if plan.rows_backward_path != AUTO:
        return plan.rows_backward_path
    if Cg * size > plan.long_row_bytes or n_rows <= plan.few_rows:
        return ROWS_BWD_SEGMENTS
    return ROWS_BWD_FOUR if Cg >= plan.rows4_min_values else ROWS_BWD_SHORT


cdef inline void _rows4_grad_sums(
    const floating* x, const floating* dy, Py_ssize_t stride, const floating* gamma, Py_ssize_t n,
    const double* mean, const double* invstd, double* db, double* dg, double* out, int ahead,
) noexcept nogil:
    """fastbn_rows4_grad_sums of four rows `stride` values apart (see loops.h)."""
    fastbn_rows4_grad_sums(x, dy, stride, gamma, n, mean, invstd, db, dg, out, ahead)


cdef inline fastbn_sums _row_grad_sums(
    const floating* x, const floating* dy, const floating* gamma, Py_ssize_t n, double mean,
    double invstd, double* db, double* dg,
) noexcept nogil:
    """db += dy, dg += dy * (x - mean) * invstd; returns sum(gamma * dy), sum(gamma * dy * xc)."""
    return fastbn_row_grad_sums(x, dy, gamma, n, mean, invstd, db, dg)


cdef inline void _dx_run(
    const floating* x, const floating* dy, floating* dx, Py_ssize_t n, double mean, double invstd,
    const floating* gamma, double a, double s3, double b, int stream,
) noexcept nogil:
    """dx = a * dy - s3 * (x - mean) + b in double over n contiguous values, with
    a = invstd * gamma[j] when gamma is not NULL."""
    fastbn_row_dx(x, dy, dx, n, mean, invstd, gamma, a, s3, b, stream)


def rows_backward(
    x,                             # IN (R, Cg, L)
    dy,                            # IN (R, Cg, L)
    mean,                          # IN (R,)
    invstd,                        # IN (R,)
    gamma,                         # IN (G * Cg,)
    Py_ssize_t groups,
    int center,                    # as in rows_forward_train (0: mean is not read)
    dx,                            # OUT (R, Cg, L)
    dgamma,                        # OUT (G * Cg,)
    dbeta,                         # OUT (G * Cg,)
    int n_threads,
):
    """Per row: one sweep for the two row sums (and dgamma/dbeta partials), one for dx.

    With g = dy * gamma and xhat = (x - mean) * invstd over the M values of a row,
    dx = invstd * (g - mean(g) - xhat * mean(g * xhat)); not centred, mean = 0 and the mean(g)
    term is dropped (see fastbn_row_dx_coefs). dgamma = sum dy * xhat, dbeta = sum dy.
    dgamma/dbeta partials are kept per chunk of samples (G consecutive rows make one sample) and
    added in chunk order.
    """
    cdef Py_ssize_t R = _dim(x, 0), Cg = _dim(x, 1), L = _dim(x, 2)
    if _single(x):
        _rows_backward(<const float*>_data(x), <const float*>_data(dy), R, Cg, L,
                       <const float*>_data(mean), <const float*>_data(invstd),
                       <const float*>_data(gamma), groups, center, <float*>_data(dx),
                       <float*>_data(dgamma), <float*>_data(dbeta), n_threads)
    else:
        _rows_backward(<const double*>_data(x), <const double*>_data(dy), R, Cg, L,
                       <const double*>_data(mean), <const double*>_data(invstd),
                       <const double*>_data(gamma), groups, center, <double*>_data(dx),
                       <double*>_data(dgamma), <double*>_data(dbeta), n_threads)


cdef int _rows_backward(
    const floating* x, const floating* dy, Py_ssize_t R, Py_ssize_t Cg, Py_ssize_t L,
    const floating* mean, const floating* invstd, const floating* gamma, Py_ssize_t groups,
    int center, floating* dx, floating* dgamma, floating* dbeta, int n_threads,
) except -1:
    """rows_backward for one dtype."""
    cdef Py_ssize_t C = groups * Cg, n_row = Cg * L
    cdef Py_ssize_t N = R // groups if groups > 0 else 0
    cdef int stream = _streams_runs(R * Cg * L * <Py_ssize_t>sizeof(floating),
                                    (Cg if L == 1 else L) * <Py_ssize_t>sizeof(floating))
    cdef Py_ssize_t K, q, n, g, r, k, c, c0, n0, n1
    cdef double s, m, sum_g, sum_gxc, pdb, pdg
    cdef fastbn_sums sums
    cdef fastbn_dx_coefs coefs
    cdef const floating* xr
    cdef const floating* dr
    cdef floating* oxr
    if C == 0:
        return 0
    if R == 0 or L == 0:
        for c in range(C):
            dgamma[c] = 0
            dbeta[c] = 0
        return 0
    cdef int path = _rows_backward_path(R, Cg, L, groups, sizeof(floating))
    if path == ROWS_BWD_SEGMENTS:
        return _rows_backward_long(x, dy, R, Cg, mean, invstd, gamma, center, dx, dgamma, dbeta,
                                   n_threads)
    K = max(min(N, plan.target_tasks, plan.max_partials // C), 1)
    # Partials are zeroed by the thread that uses them (a fresh zeroed page would be copied on
    # first write, each copy flushing the TLB of every thread of the process).
    cdef Scratch sc
    _scratch(&sc, 2 * _aligned_bytes(K * C * 8) + _aligned_bytes(K * 16 * 8))
    cdef double* part_dgamma = <double*>_take(&sc, K * C * 8)  # (K, C)
    cdef double* part_dbeta = <double*>_take(&sc, K * C * 8)   # (K, C)
    cdef double* scratch = <double*>_take(&sc, K * 16 * 8)  # per chunk: 4 means, 4 invstds, 4 x 2 sums
    cdef double* sq
    with nogil:
        for q in prange(K, num_threads=n_threads, schedule='dynamic'):
            for c in range(C):
                part_dgamma[q * C + c] = 0.0
                part_dbeta[q * C + c] = 0.0
            sq = scratch + q * 16
            n0 = _chunk_start(q, N, K)
            n1 = _chunk_start(q + 1, N, K)
            n = n0
            if path == ROWS_BWD_FOUR:  # four at a time, the rows left over as short rows
                while n + 4 <= n1:
                    for k in range(4):
                        sq[k] = <double>mean[n + k] if center else 0.0
                        sq[4 + k] = <double>invstd[n + k]
                    _rows4_grad_sums(x + n * n_row, dy + n * n_row, Cg, gamma, Cg, sq, sq + 4,
                                     part_dbeta + q * C, part_dgamma + q * C, sq + 8, n + 8 <= n1)
                    for k in range(4):
                        s = sq[4 + k]
                        coefs = fastbn_row_dx_coefs(s, sq[8 + 2 * k], sq[9 + 2 * k], Cg, center)
                        _dx_run(x + (n + k) * n_row, dy + (n + k) * n_row, dx + (n + k) * n_row,
                                Cg, sq[k], s, gamma, 0.0, coefs.s3, coefs.b, stream)
                    n = n + 4
            if (path == ROWS_BWD_FOUR or path == ROWS_BWD_SHORT) and n < n1:  # the rest, in one C call
                fastbn_layernorm_rows_grad(x + n * n_row, dy + n * n_row, dx + n * n_row, n1 - n,
                                           Cg, gamma, mean + n, invstd + n, center,
                                           part_dbeta + q * C, part_dgamma + q * C, stream)
                n = n1
            for n in range(n, n1):
                for g in range(groups):
                    r = n * groups + g
                    xr = x + r * n_row
                    dr = dy + r * n_row
                    oxr = dx + r * n_row
                    c0 = g * Cg
                    s = <double>invstd[r]
                    m = <double>mean[r] if center else 0.0
                    if L == 1:
                        sums = _row_grad_sums(xr, dr, gamma + c0, Cg, m, s,
                                              part_dbeta + q * C + c0, part_dgamma + q * C + c0)
                        sum_g = sums.s1
                        sum_gxc = sums.s2
                    else:
                        sum_g = 0.0
                        sum_gxc = 0.0
                        for k in range(Cg):  # prefetching the next plane (or row)
                            sums = fastbn_grad_sums_pf(
                                xr + k * L, dr + k * L, L, m,
                                xr + (k + 1) * L if r + 1 < R or k + 1 < Cg else NULL,
                                dr + (k + 1) * L if r + 1 < R or k + 1 < Cg else NULL, NULL, 0)
                            part_dbeta[q * C + c0 + k] += sums.s1
                            part_dgamma[q * C + c0 + k] += sums.s2 * s
                            sum_g = sum_g + sums.s1 * gamma[c0 + k]
                            sum_gxc = sum_gxc + sums.s2 * gamma[c0 + k]
                    # dx = s * (g - sum_g / M - xc * s^2 * sum_gxc / M), g = dy * gamma
                    coefs = fastbn_row_dx_coefs(s, sum_g, sum_gxc, Cg * L, center)
                    if L == 1:
                        _dx_run(xr, dr, oxr, Cg, m, s, gamma + c0, 0.0, coefs.s3, coefs.b, stream)
                    else:
                        for k in range(Cg):
                            _dx_run(xr + k * L, dr + k * L, oxr + k * L, L, m, s, NULL,
                                    s * gamma[c0 + k], coefs.s3, coefs.b, stream)
        for c in prange(C, num_threads=n_threads, schedule='dynamic', chunksize=_handout(16 * K)):
            pdg = 0.0
            pdb = 0.0
            for q in range(K):
                pdg = pdg + part_dgamma[q * C + c]
                pdb = pdb + part_dbeta[q * C + c]
            dgamma[c] = <floating>pdg
            dbeta[c] = <floating>pdb
        _release(&sc)
    return 0


cdef int _rows_backward_long(
    const floating* x, const floating* dy, Py_ssize_t R, Py_ssize_t n, const floating* mean,
    const floating* invstd, const floating* gamma, int center, floating* dx, floating* dgamma,
    floating* dbeta, int n_threads,
) except -1:
    """rows_backward of (R, n, 1) layernorm rows too long for per-chunk partials: per column
    segment (in parallel), the gradient sums of every row's part of it, four rows at a time,
    while the segment's dgamma/dbeta sums stay in L1 (each column's sum is then final: no
    partials to merge); each row's sums added over the segments in order; then dx. Every sum's
    grouping depends on the shape only."""
    cdef Py_ssize_t r, j, t, c0, w
    cdef Py_ssize_t seg = plan.segment_bytes // <Py_ssize_t>sizeof(floating), n_seg = _ceil_div(n, seg)
    cdef Py_ssize_t run = plan.run_bytes // <Py_ssize_t>sizeof(floating), n_runs = _ceil_div(n, run)
    cdef int stream = _streams(R * n * <Py_ssize_t>sizeof(floating))
    cdef double sum_g, sum_gxc
    cdef fastbn_sums sums
    cdef fastbn_dx_coefs coefs
    cdef Scratch s
    _scratch(&s, 2 * _aligned_bytes(n * 8) + _aligned_bytes(n_seg * R * 2 * 8)
             + _aligned_bytes(4 * R * 8))
    cdef double* col_db = <double*>_take(&s, n * 8)  # dbeta, dgamma sums
    cdef double* col_dg = <double*>_take(&s, n * 8)
    cdef double* row_sums = <double*>_take(&s, n_seg * R * 2 * 8)  # (n_seg, R, 2): sum(g dy), sum(g dy (x - mean))
    cdef double* coef = <double*>_take(&s, 4 * R * 8)  # (4, R) per row: mean, invstd, s3, b
    for r in range(R):
        coef[r] = mean[r] if center else 0.0
        coef[R + r] = invstd[r]
    with nogil:
        for t in prange(n_seg, num_threads=n_threads, schedule='dynamic'):
            c0 = t * seg
            w = min(seg, n - c0)
            for j in range(c0, c0 + w):
                col_db[j] = 0.0
                col_dg[j] = 0.0
            r = 0
            while r + 4 <= R:
                _rows4_grad_sums(x + r * n + c0, dy + r * n + c0, n, gamma + c0, w, coef + r,
                                 coef + R + r, col_db + c0, col_dg + c0, row_sums + (t * R + r) * 2,
                                 r + 8 <= R)
                r = r + 4
            while r < R:
                sums = _row_grad_sums(x + r * n + c0, dy + r * n + c0, gamma + c0, w, coef[r],
                                      coef[R + r], col_db + c0, col_dg + c0)
                row_sums[(t * R + r) * 2] = sums.s1
                row_sums[(t * R + r) * 2 + 1] = sums.s2
                r = r + 1
            for j in range(c0, c0 + w):
                dbeta[j] = <floating>col_db[j]
                dgamma[j] = <floating>col_dg[j]
        for r in range(R):
            sum_g = 0.0
            sum_gxc = 0.0
            for t in range(n_seg):
                sum_g = sum_g + row_sums[(t * R + r) * 2]
                sum_gxc = sum_gxc + row_sums[(t * R + r) * 2 + 1]
            coefs = fastbn_row_dx_coefs(coef[R + r], sum_g, sum_gxc, n, center)
            coef[2 * R + r] = coefs.s3
            coef[3 * R + r] = coefs.b
        for t in prange(R * n_runs, num_threads=n_threads, schedule='dynamic'):
            r = t // n_runs
            c0 = (t % n_runs) * run
            _dx_run(x + r * n + c0, dy + r * n + c0, dx + r * n + c0, min(run, n - c0), coef[r],
                    coef[R + r], gamma + c0, 0.0, coef[2 * R + r], coef[3 * R + r], stream)
        _release(&s)
    return 0


def parallel_read(
    x,                             # IN (n,)
    int n_threads,
):
    """Sum of x, read in blocks by n_threads threads: the read-only yardstick of the benchmarks
    (one sweep that reads x and writes nothing, as a statistics pass does). The block sums are
    added in block order (the same bits for any thread count)."""
    cdef Py_ssize_t n = _dim(x, 0)
    if _single(x):
        return _parallel_read(<const float*>_data(x), n, n_threads)
    return _parallel_read(<const double*>_data(x), n, n_threads)


cdef double _parallel_read(const floating* x, Py_ssize_t n, int n_threads) except? -1:
    """parallel_read for one dtype."""
    cdef Py_ssize_t block = 1 << 16, n_blocks = _ceil_div(n, block), b
    cdef double total = 0.0
    cdef Scratch s
    _scratch(&s, _aligned_bytes(n_blocks * 8))
    cdef double* block_sums = <double*>_take(&s, n_blocks * 8)
    with nogil:
        for b in prange(n_blocks, num_threads=n_threads, schedule='dynamic'):
            block_sums[b] = fastbn_sum(x + b * block, min(block, n - b * block)).s1
        for b in range(n_blocks):
            total = total + block_sums[b]
        _release(&s)
    return total


def parallel_copy(
    src,                           # IN (n,)
    dst,                           # OUT (n,)
    int n_threads,
):
    """Copy src into dst with n_threads threads: the memory-bandwidth yardstick of the benchmarks."""
    cdef Py_ssize_t n = _dim(src, 0)
    cdef const void* ps = _data(src)
    cdef void* pd = _data(dst)
    cdef bint single = _single(src)
    with nogil:
        if single:
            _parallel_copy(<const float*>ps, <float*>pd, n, n_threads)
        else:
            _parallel_copy(<const double*>ps, <double*>pd, n, n_threads)


cdef void _parallel_copy(const floating* src, floating* dst, Py_ssize_t n, int n_threads) noexcept nogil:
    """parallel_copy for one dtype."""
    cdef Py_ssize_t block = 1 << 16, n_blocks = _ceil_div(n, block), b, j, j1
    for b in prange(n_blocks, num_threads=n_threads, schedule='dynamic'):
        j1 = min((b + 1) * block, n)
        for j in range(b * block, j1):
            dst[j] = src[j]
