/* Hot loops of fastbn's kernels, for float (suffix _f) and double (suffix _d): the double-precision
 * reductions, the (M, D) block sums, the elementwise sweeps (affine, dx) and streaming stores.
 *
 * Why C: a double-precision sum is a loop-carried dependency that compilers do not vectorise
 * without -ffast-math (reassociation), and float -> double conversion defeats their
 * auto-vectorisation of hand-split sums. Here the sums use GCC/Clang vector extensions: four
 * independent 4-wide double accumulators (16 lanes), element j going to lane j % 16, added in a
 * fixed order at the end. The summation order depends only on n -- never on the thread count or
 * on the address of the data -- so results are reproducible bit for bit. Other compilers get
 * plain scalar loops (reproducible too, in a different summation order, slower).
 *
 * On CPUs with AVX-512, most functions hand over to a twin in loops_avx512.h that computes the
 * same bits with 512-bit vectors (FASTBN_X512_VALUE / FASTBN_X512_VOID at their top).
 *
 * The contiguous-run reductions read n values (n may be 0) and return their two sums by value, so
 * that a caller inside an OpenMP loop keeps them in private variables; the block functions below
 * document their own layouts. FASTBN_RESTRICT: outputs never alias inputs.
 */
#ifndef FASTBN_LOOPS_H
#define FASTBN_LOOPS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

typedef struct { double s1, s2; } fastbn_sums;

/* FASTBN_HOT: on x86-64 glibc Linux with GCC >= 6, compile a function twice, for AVX2 and for
 * the baseline, and pick the version at load time (function multiversioning through an ifunc):
 * the build stays portable. The two versions compute the same values (no FMA contraction: "avx2"
 * does not enable FMA). Elsewhere FASTBN_HOT is empty (baseline code only). */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 6 && defined(__x86_64__)               \
    && defined(__linux__) && defined(__GLIBC__)
#define FASTBN_HOT __attribute__((target_clones("avx2", "default")))
#else
#define FASTBN_HOT
#endif

#if defined(_MSC_VER) && !defined(__clang__)
#define FASTBN_RESTRICT __restrict
#else
#define FASTBN_RESTRICT __restrict__
#endif

/* Scalar arithmetic written once for the baseline loops below and their AVX-512 twins in
 * loops_avx512.h, which must compute the same bits. */
/* (M, D) column sums into s1[j], s2[j], column j of four rows of x at A, B, C, E: the sums of
 * x - shift[j] and of its square; with dy's rows at GA..GE, the sums of dy and of
 * dy * (x - mean[j]). */
#define FASTBN_SHIFTED_COL4(A, B, C, E)                                                            \
    {                                                                                              \
        double h = (double)shift[j], t0 = (double)(A)[j] - h, t1 = (double)(B)[j] - h,             \
               t2 = (double)(C)[j] - h, t3 = (double)(E)[j] - h;                                   \
        s1[j] += (t0 + t1) + (t2 + t3);                                                            \
        s2[j] += (t0 * t0 + t1 * t1) + (t2 * t2 + t3 * t3);                                        \
    }
#define FASTBN_GRAD_COL4(A, B, C, E, GA, GB, GC, GE)                                               \
    {                                                                                              \
        double m = (double)mean[j], g0 = (GA)[j], g1 = (GB)[j], g2 = (GC)[j], g3 = (GE)[j];        \
        s1[j] += (g0 + g1) + (g2 + g3);                                                            \
        s2[j] += (g0 * ((double)(A)[j] - m) + g1 * ((double)(B)[j] - m))                           \
               + (g2 * ((double)(C)[j] - m) + g3 * ((double)(E)[j] - m));                          \
    }
/* The rows i..n_rows-1 left after the groups of four, one at a time. */
#define FASTBN_SHIFTED_ROWS1                                                                       \
    for (; i < n_rows; i++)                                                                        \
        for (j = 0; j < w; j++) {                                                                  \
            double t = (double)x[i * stride + j] - (double)shift[j];                               \
            s1[j] += t;                                                                            \
            s2[j] += t * t;                                                                        \
        }
#define FASTBN_GRAD_ROWS1                                                                          \
    for (; i < n_rows; i++)                                                                        \
        for (j = 0; j < w; j++) {                                                                  \
            double g = dy[i * stride + j];                                                         \
            s1[j] += g;                                                                            \
            s2[j] += g * ((double)x[i * stride + j] - (double)mean[j]);                            \
        }
/* The last n % 8 columns of fastbn_rows4_grad_sums_*. */
#define FASTBN_ROWS4_TAIL                                                                          \
    for (; j < n; j++)                                                                             \
        for (r = 0; r < 4; r++) {                                                                  \
            double g = (double)dy[r * stride + j], xc = (double)x[r * stride + j] - mean[r];       \
            db[j] += g;                                                                            \
            dg[j] += g * xc * invstd[r];                                                           \
            g *= (double)gamma[j];                                                                 \
            sa[r] += g;                                                                            \
            sb[r] += g * xc;                                                                       \
        }

/* The affine sweep of an (M, D) output that is not streamed (its data come from and stay in the
 * caches) takes rows four at a time -- each column's coefficients loaded once per four rows --
 * only over short runs: parts of rows of fewer than FASTBN_SHORT_RUN bytes. Over whole rows or
 * long runs it goes one row at a time, which was faster there (AVX-512 loops, one thread: test
 * mode of 200x500 float64 60 us by fours, 36 us by single rows; 1000x100 83 and 37 us; with the
 * baseline loops 47 and 33 us, 70 and 43 us), while the forward's column blocks of 512x512
 * float32 (runs of 512 bytes) took 89 us by fours and 99 us by single rows. */
#define FASTBN_SHORT_RUN 2048
#define FASTBN_AFFINE_FOURS(n, stride, size)                                                       \
    ((n) < (stride) && (n) * (ptrdiff_t)(size) < FASTBN_SHORT_RUN)

/* Rows (layernorm, groupnorm, RMSNorm): the statistics and dx coefficients of one row of n values,
 * written once for every path of the kernels. `center` = 1 normalises by the row's mean and
 * variance, 0 by its root mean square (RMSNorm: the mean is a constant 0, and no gradient flows
 * through it). */
/* The mean (s1) and the sum of squared deviations from it (s2) of n values from t, their sums
 * shifted by `shift` (a value near the mean): t.s1 = sum(x - shift), t.s2 = sum((x - shift)^2).
 * Not centred, the shift is 0 and the result is 0 and the sum of squares t.s2. */
static inline fastbn_sums fastbn_moments(fastbn_sums t, double shift, ptrdiff_t n, int center) {
    fastbn_sums m;
    m.s1 = center ? shift + t.s1 / n : 0.0;
    m.s2 = center ? t.s2 - t.s1 * t.s1 / n : t.s2;
    return m;
}
/* 1/sqrt(m2 / n + eps) for a sum of squared deviations m2 of n values (rounding may make m2
 * slightly negative, which is clipped; a NaN stays NaN). */
static inline double fastbn_row_invstd(double m2, ptrdiff_t n, double eps) {
    double v = m2 / n;
    return 1.0 / sqrt((v < 0 ? 0.0 : v) + eps);
}
/* dx = invstd * gamma * dy - s3 * (x - mean) + b for a row whose sums are sum_g = sum(gamma * dy)
 * and sum_gxc = sum(gamma * dy * (x - mean)): s3 = invstd^3 * sum_gxc / n and b =
 * -invstd * sum_g / n, the mean's gradient (0 when not centred). */
typedef struct { double s3, b; } fastbn_dx_coefs;
static inline fastbn_dx_coefs fastbn_row_dx_coefs(double invstd, double sum_g, double sum_gxc,
                                                  ptrdiff_t n, int center) {
    fastbn_dx_coefs k;
    k.s3 = invstd * invstd * invstd * sum_gxc / n;
    k.b = center ? -invstd * sum_g / n : 0.0;
    return k;
}

#include "loops_avx512.h"
/* Hand a call to the AVX-512 twin of a function when that path is enabled (see
 * loops_avx512.h): VALUE for functions returning a value, VOID for the others. */
#if FASTBN_HAVE_X512
#define FASTBN_X512_VALUE(CALL) if (fastbn_x512_enabled) return CALL;
#define FASTBN_X512_VOID(CALL) if (fastbn_x512_enabled) { CALL; return; }
/* For a twin that handles only some inputs: CALL returns whether it did. */
#define FASTBN_X512_TRY(CALL) if (fastbn_x512_enabled && (CALL)) return;
#else
#define FASTBN_X512_VALUE(CALL)
#define FASTBN_X512_VOID(CALL)
#define FASTBN_X512_TRY(CALL)
#endif

#if defined(__GNUC__) || defined(__clang__)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi" /* 32-byte vectors only pass between inlined helpers */
#endif
#define FASTBN_INLINE static inline __attribute__((always_inline))
typedef double fastbn_v4d __attribute__((vector_size(32)));
typedef float fastbn_v4f __attribute__((vector_size(16)));

FASTBN_INLINE fastbn_v4d fastbn_load4_f(const float *p) {
    fastbn_v4f v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, fastbn_v4d);
}
FASTBN_INLINE fastbn_v4d fastbn_load4_d(const double *p) {
    fastbn_v4d v;
    memcpy(&v, p, sizeof v);
    return v;
}
FASTBN_INLINE void fastbn_store4(double *p, fastbn_v4d v) { memcpy(p, &v, sizeof v); }
/* Lanes 0..7 held in two vectors, added in a fixed order. */
FASTBN_INLINE double fastbn_hsum(fastbn_v4d a0, fastbn_v4d a1) {
    fastbn_v4d s = a0 + a1;
    return (s[0] + s[1]) + (s[2] + s[3]);
}
/* Sixteen lanes, element j in lane j % 16: lanes 0-3 in a0, 4-7 in a1, 8-11 in a2, 12-15 in a3
 * (four independent dependency chains); lanes l and l + 8 are added first, then as above. */
#define FASTBN_VEC(BODY4, BODY1)                                                                   \
    fastbn_v4d a0 = {0, 0, 0, 0}, a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;   \
    ptrdiff_t j = 0;                                                                               \
    for (; j + 16 <= n; j += 16) {                                                                 \
        BODY4(0, a0, b0) BODY4(4, a1, b1) BODY4(8, a2, b2) BODY4(12, a3, b3)                       \
    }                                                                                              \
    double sa = fastbn_hsum(a0 + a2, a1 + a3), sb = fastbn_hsum(b0 + b2, b1 + b3);                 \
    for (; j < n; j++) { BODY1 }                                                                   \
    fastbn_sums r = {sa, sb};                                                                      \
    return r;
#else
#define FASTBN_VEC(BODY4, BODY1)                                                                   \
    double sa = 0.0, sb = 0.0;                                                                     \
    ptrdiff_t j = 0;                                                                               \
    for (; j < n; j++) { BODY1 }                                                                   \
    fastbn_sums r = {sa, sb};                                                                      \
    return r;
#endif

/* Four elements j+o..j+o+3 into accumulators A (first sum) and B (second sum). */
#define FASTBN_SHIFTED4(o, A, B)                                                                   \
    { fastbn_v4d t = LOAD4(x + j + o) - shift; A += t; B += t * t; }
#define FASTBN_SHIFTED1 { double t = (double)x[j] - shift; sa += t; sb += t * t; }
#define FASTBN_SUM4(o, A, B) { A += LOAD4(x + j + o); }
#define FASTBN_SUM1 { sa += (double)x[j]; }
#define FASTBN_GRAD4(o, A, B)                                                                      \
    { fastbn_v4d g = LOAD4(dy + j + o); A += g; B += g * (LOAD4(x + j + o) - mean); }
#define FASTBN_GRAD1 { double g = (double)dy[j]; sa += g; sb += g * ((double)x[j] - mean); }
#define FASTBN_ROW4(o, A, B)                                                                       \
    { fastbn_v4d g = LOAD4(dy + j + o), xc = LOAD4(x + j + o) - mean;                              \
      fastbn_store4(db + j + o, fastbn_load4_d(db + j + o) + g);                                   \
      fastbn_store4(dg + j + o, fastbn_load4_d(dg + j + o) + g * xc * invstd);                     \
      g *= LOAD4(gamma + j + o); A += g; B += g * xc; }
#define FASTBN_ROW1 { double g = (double)dy[j], xc = (double)x[j] - mean;                          \
      db[j] += g; dg[j] += g * xc * invstd; g *= (double)gamma[j]; sa += g; sb += g * xc; }

#define FASTBN_DEFINE_LOOPS(T, SUF)                                                                \
/* s1 = sum(x) (s2 = 0). */                                                                        \
static inline fastbn_sums fastbn_sum_inl_##SUF(const T *FASTBN_RESTRICT x, ptrdiff_t n) {          \
    FASTBN_VEC(FASTBN_SUM4, FASTBN_SUM1)                                                           \
}                                                                                                  \
static FASTBN_HOT fastbn_sums fastbn_sum_##SUF(const T *FASTBN_RESTRICT x, ptrdiff_t n) {          \
    FASTBN_X512_VALUE(fastbn_x_sum_##SUF(x, n))                                                    \
    return fastbn_sum_inl_##SUF(x, n);                                                             \
}                                                                                                  \
/* s1 = sum(x - shift), s2 = sum((x - shift)^2). */                                                \
static inline fastbn_sums fastbn_shifted_sums_inl_##SUF(const T *FASTBN_RESTRICT x, ptrdiff_t n,   \
                                                        double shift) {                            \
    FASTBN_VEC(FASTBN_SHIFTED4, FASTBN_SHIFTED1)                                                   \
}                                                                                                  \
static FASTBN_HOT fastbn_sums fastbn_shifted_sums_##SUF(const T *FASTBN_RESTRICT x, ptrdiff_t n,   \
                                                        double shift) {                            \
    FASTBN_X512_VALUE(fastbn_x_shifted_sums_##SUF(x, n, shift))                                    \
    return fastbn_shifted_sums_inl_##SUF(x, n, shift);                                             \
}                                                                                                  \
/* s1 = sum(dy), s2 = sum(dy * (x - mean)). */                                                     \
static FASTBN_HOT fastbn_sums fastbn_grad_sums_##SUF(const T *FASTBN_RESTRICT x,                   \
                                                 const T *FASTBN_RESTRICT dy, ptrdiff_t n,         \
                                                 double mean) {                                    \
    FASTBN_X512_VALUE(fastbn_x_grad_sums_##SUF(x, dy, n, mean))                                    \
    FASTBN_VEC(FASTBN_GRAD4, FASTBN_GRAD1)                                                         \
}                                                                                                  \
/* Layernorm backward, one row: per column j, db[j] += dy, dg[j] += dy * (x - mean) * invstd;      \
 * returns s1 = sum(gamma * dy), s2 = sum(gamma * dy * (x - mean)). */                             \
static FASTBN_HOT fastbn_sums fastbn_row_grad_sums_##SUF(                                          \
        const T *FASTBN_RESTRICT x, const T *FASTBN_RESTRICT dy, const T *FASTBN_RESTRICT gamma,   \
        ptrdiff_t n, double mean, double invstd,                                                   \
        double *FASTBN_RESTRICT db, double *FASTBN_RESTRICT dg) {                                  \
    FASTBN_X512_VALUE(fastbn_x_row_grad_sums_##SUF(x, dy, gamma, n, mean, invstd, db, dg))         \
    FASTBN_VEC(FASTBN_ROW4, FASTBN_ROW1)                                                           \
}

/* Ask for `bytes` bytes at p to be brought into the cache ahead of use: the start of each of
 * many separate runs (NCHW planes) otherwise waits for the hardware prefetcher to ramp up. */
static inline void fastbn_prefetch(const void *p, ptrdiff_t bytes) {
#if defined(__GNUC__) || defined(__clang__)
    const char *c = (const char *)p;
    ptrdiff_t i;
    for (i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, 0, 3);
#else
    (void)p;
    (void)bytes;
#endif
}

/* Streaming stores. An output much larger than the caches is written with non-temporal stores:
 * they skip reading each destination cache line before overwriting it (which ordinary stores do),
 * so a sweep moves 2 bytes of memory traffic per output byte instead of 3 -- as a memcpy does.
 * fastbn_stream_* copy an L1-resident buffer to dst that way, whole 64-byte lines only: the
 * partial lines at either end get ordinary stores (a partially streamed line costs a
 * read-modify-write in memory, and the neighbouring run may share it). fastbn_stream_fence, once
 * at the end of a sweep, orders the streamed data before anything the thread does next. */
#define FASTBN_BLOCK 256 /* values per row of a staging buffer */

static inline void fastbn_stream_f(float *FASTBN_RESTRICT dst, const float *FASTBN_RESTRICT src,
                                   ptrdiff_t n) {
#if defined(__SSE2__)
    ptrdiff_t j = 0;
    for (; j < n && ((uintptr_t)(dst + j) & 63); j++) dst[j] = src[j];
    for (; j + 16 <= n; j += 16) {
        _mm_stream_ps(dst + j, _mm_loadu_ps(src + j));
        _mm_stream_ps(dst + j + 4, _mm_loadu_ps(src + j + 4));
        _mm_stream_ps(dst + j + 8, _mm_loadu_ps(src + j + 8));
        _mm_stream_ps(dst + j + 12, _mm_loadu_ps(src + j + 12));
    }
    for (; j < n; j++) dst[j] = src[j];
#else
    memcpy(dst, src, (size_t)n * sizeof *dst);
#endif
}

static inline void fastbn_stream_fence(void) {
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

static inline void fastbn_stream_d(double *FASTBN_RESTRICT dst, const double *FASTBN_RESTRICT src,
                                   ptrdiff_t n) {
#if defined(__SSE2__)
    ptrdiff_t j = 0;
    for (; j < n && ((uintptr_t)(dst + j) & 63); j++) dst[j] = src[j];
    for (; j + 8 <= n; j += 8) {
        _mm_stream_pd(dst + j, _mm_loadu_pd(src + j));
        _mm_stream_pd(dst + j + 2, _mm_loadu_pd(src + j + 2));
        _mm_stream_pd(dst + j + 4, _mm_loadu_pd(src + j + 4));
        _mm_stream_pd(dst + j + 6, _mm_loadu_pd(src + j + 6));
    }
    for (; j < n; j++) dst[j] = src[j];
#else
    memcpy(dst, src, (size_t)n * sizeof *dst);
#endif
}

/* (M, D) blocks: n_rows rows of w columns, row stride `stride`. Rows are taken four at a time so
 * that each per-column value (shift, accumulators, coefficients) is loaded once per four rows;
 * the loops over columns are elementwise, which compilers vectorise without reassociating. The
 * grouping of rows depends only on n_rows. */
#define FASTBN_ROWS4(T, X)                                                                         \
    const T *FASTBN_RESTRICT X##0 = X + i * stride, *FASTBN_RESTRICT X##1 = X##0 + stride,         \
            *FASTBN_RESTRICT X##2 = X##1 + stride, *FASTBN_RESTRICT X##3 = X##2 + stride;

/* Prefetch the w values of each of the next four rows (each run starts a new page). */
#define FASTBN_PREFETCH_ROWS(X)                                                                    \
    if (i + 8 <= n_rows) {                                                                         \
        ptrdiff_t q;                                                                               \
        for (q = 4; q < 8; q++) fastbn_prefetch(X + (i + q) * stride, w * (ptrdiff_t)sizeof *X);   \
    }

#define FASTBN_DEFINE_COLS(T, SUF)                                                                 \
/* s1[j] += sum_i (x[i, j] - shift[j]), s2[j] += sum_i (x[i, j] - shift[j])^2. */                  \
static FASTBN_HOT void fastbn_cols_shifted_sums_##SUF(                                             \
        const T *FASTBN_RESTRICT x, ptrdiff_t stride, ptrdiff_t n_rows, ptrdiff_t w,               \
        const T *FASTBN_RESTRICT shift, double *FASTBN_RESTRICT s1, double *FASTBN_RESTRICT s2) {  \
    FASTBN_X512_VOID(fastbn_x_cols_shifted_sums_##SUF(x, stride, n_rows, w, shift, s1, s2))        \
    ptrdiff_t i = 0, j;                                                                            \
    for (; i + 4 <= n_rows; i += 4) {                                                              \
        FASTBN_ROWS4(T, x)                                                                         \
        FASTBN_PREFETCH_ROWS(x)                                                                    \
        for (j = 0; j < w; j++) FASTBN_SHIFTED_COL4(x0, x1, x2, x3)                                \
    }                                                                                              \
    FASTBN_SHIFTED_ROWS1                                                                           \
}                                                                                                  \
/* s1[j] += sum_i dy[i, j], s2[j] += sum_i dy[i, j] * (x[i, j] - mean[j]). */                      \
static FASTBN_HOT void fastbn_cols_grad_sums_##SUF(                                                \
        const T *FASTBN_RESTRICT x, const T *FASTBN_RESTRICT dy, ptrdiff_t stride,                 \
        ptrdiff_t n_rows, ptrdiff_t w, const T *FASTBN_RESTRICT mean,                              \
        double *FASTBN_RESTRICT s1, double *FASTBN_RESTRICT s2) {                                  \
    FASTBN_X512_VOID(fastbn_x_cols_grad_sums_##SUF(x, dy, stride, n_rows, w, mean, s1, s2))        \
    ptrdiff_t i = 0, j;                                                                            \
    for (; i + 4 <= n_rows; i += 4) {                                                              \
        FASTBN_ROWS4(T, x)                                                                         \
        FASTBN_ROWS4(T, dy)                                                                        \
        FASTBN_PREFETCH_ROWS(x)                                                                    \
        FASTBN_PREFETCH_ROWS(dy)                                                                   \
        for (j = 0; j < w; j++) FASTBN_GRAD_COL4(x0, x1, x2, x3, dy0, dy1, dy2, dy3)               \
    }                                                                                              \
    FASTBN_GRAD_ROWS1                                                                              \
}

/* The elementwise sweeps write rows i..i+r-1 (r <= 4), columns c0..c0+cw-1 (cw <= FASTBN_BLOCK):
 * straight to the output, or with `stream` through a staging buffer and streaming stores. */
#define FASTBN_SWEEP(T, SUF, OUT, FOURS, EXPR4, EXPR1)                                             \
    T buf[4 * FASTBN_BLOCK];                                                                       \
    ptrdiff_t i, j, c0, k;                                                                         \
    for (i = 0; i < n_rows; i += 4) {                                                              \
        ptrdiff_t r = n_rows - i < 4 ? n_rows - i : 4;                                             \
        for (c0 = 0; c0 < w; c0 += FASTBN_BLOCK) {                                                 \
            ptrdiff_t cw = w - c0 < FASTBN_BLOCK ? w - c0 : FASTBN_BLOCK;                          \
            int whole = cw == stride; /* full rows: the r rows are one contiguous run */           \
            ptrdiff_t ostride = stream ? (whole ? cw : FASTBN_BLOCK) : stride;                     \
            T *FASTBN_RESTRICT o = stream ? buf : OUT + i * stride + c0;                           \
            ptrdiff_t at = i * stride + c0;                                                        \
            if (r == 4 && (FOURS)) {                                                               \
                T *FASTBN_RESTRICT o0 = o, *FASTBN_RESTRICT o1 = o + ostride,                      \
                  *FASTBN_RESTRICT o2 = o1 + ostride, *FASTBN_RESTRICT o3 = o2 + ostride;          \
                for (j = 0; j < cw; j++) { EXPR4 }                                                 \
            } else {                                                                               \
                for (k = 0; k < r; k++)                                                            \
                    for (j = 0; j < cw; j++) { EXPR1 }                                             \
            }                                                                                      \
            if (stream && whole)                                                                   \
                fastbn_stream_##SUF(OUT + at, buf, r * cw);                                        \
            else if (stream)                                                                       \
                for (k = 0; k < r; k++)                                                            \
                    fastbn_stream_##SUF(OUT + at + k * stride, buf + k * FASTBN_BLOCK, cw);        \
        }                                                                                          \
    }                                                                                              \
    if (stream) fastbn_stream_fence();

#define FASTBN_DEFINE_SWEEPS(T, SUF)                                                               \
/* out[i, j] = (x[i, j] - mean[j]) * scale[j] + beta[j], in T. */                                  \
static FASTBN_HOT void fastbn_cols_affine_##SUF(                                                   \
        const T *FASTBN_RESTRICT x, T *FASTBN_RESTRICT out, ptrdiff_t stride, ptrdiff_t n_rows,    \
        ptrdiff_t w, const T *FASTBN_RESTRICT mean, const T *FASTBN_RESTRICT scale,                \
        const T *FASTBN_RESTRICT beta, int stream) {                                               \
    FASTBN_X512_VOID(fastbn_x_cols_affine_##SUF(x, out, stride, n_rows, w, mean, scale, beta,      \
                                                stream))                                           \
    FASTBN_SWEEP(T, SUF, out, stream || FASTBN_AFFINE_FOURS(w, stride, sizeof(T)),                 \
        const T *x0 = x + at + j; T m = mean[c0 + j]; T s = scale[c0 + j]; T b = beta[c0 + j];     \
        o0[j] = (x0[0] - m) * s + b;                                                               \
        o1[j] = (x0[stride] - m) * s + b;                                                          \
        o2[j] = (x0[2 * stride] - m) * s + b;                                                      \
        o3[j] = (x0[3 * stride] - m) * s + b;,                                                     \
        o[k * ostride + j] = (x[at + k * stride + j] - mean[c0 + j]) * scale[c0 + j]               \
                             + beta[c0 + j];)                                                      \
}                                                                                                  \
/* dx[i, j] = k_dy[j] * (dy - k_b[j] - (x - mean[j]) * invstd[j] * k_g[j]), in T. */               \
static FASTBN_HOT void fastbn_cols_dx_##SUF(                                                       \
        const T *FASTBN_RESTRICT x, const T *FASTBN_RESTRICT dy, T *FASTBN_RESTRICT dx,            \
        ptrdiff_t stride, ptrdiff_t n_rows, ptrdiff_t w, const T *FASTBN_RESTRICT mean,            \
        const T *FASTBN_RESTRICT invstd, const T *FASTBN_RESTRICT k_dy,                            \
        const T *FASTBN_RESTRICT k_b, const T *FASTBN_RESTRICT k_g, int stream) {                  \
    FASTBN_X512_VOID(fastbn_x_cols_dx_##SUF(x, dy, dx, stride, n_rows, w, mean, invstd, k_dy, k_b, \
                                            k_g, stream))                                          \
    FASTBN_SWEEP(T, SUF, dx, 1,                                                                    \
        const T *x0 = x + at + j; const T *g0 = dy + at + j;                                       \
        T m = mean[c0 + j]; T s = invstd[c0 + j]; T a = k_dy[c0 + j]; T b = k_b[c0 + j];           \
        T g = k_g[c0 + j];                                                                         \
        o0[j] = a * (g0[0] - b - (x0[0] - m) * s * g);                                             \
        o1[j] = a * (g0[stride] - b - (x0[stride] - m) * s * g);                                   \
        o2[j] = a * (g0[2 * stride] - b - (x0[2 * stride] - m) * s * g);                           \
        o3[j] = a * (g0[3 * stride] - b - (x0[3 * stride] - m) * s * g);,                          \
        o[k * ostride + j] = k_dy[c0 + j] * (dy[at + k * stride + j] - k_b[c0 + j]                 \
            - (x[at + k * stride + j] - mean[c0 + j]) * invstd[c0 + j] * k_g[c0 + j]);)            \
}

/* Contiguous runs of n values: out[j] from EXPR (inputs indexed with at + j), straight to the
 * output or, with `stream`, through a staging buffer and streaming stores. */
#define FASTBN_RUN(T, SUF, OUT, EXPR)                                                              \
    T buf[FASTBN_BLOCK];                                                                           \
    ptrdiff_t at, j;                                                                               \
    for (at = 0; at < n; at += FASTBN_BLOCK) {                                                     \
        ptrdiff_t cw = n - at < FASTBN_BLOCK ? n - at : FASTBN_BLOCK;                              \
        T *FASTBN_RESTRICT o = stream ? buf : OUT + at;                                            \
        for (j = 0; j < cw; j++) { EXPR }                                                          \
        if (stream) fastbn_stream_##SUF(OUT + at, buf, cw);                                        \
    }                                                                                              \
    if (stream) fastbn_stream_fence();

#define FASTBN_DEFINE_RUNS(T, SUF)                                                                 \
/* out = (x - mean) * scale + beta, in T. */                                                       \
static FASTBN_HOT void fastbn_plane_affine_##SUF(                                                  \
        const T *FASTBN_RESTRICT x, T *FASTBN_RESTRICT out, ptrdiff_t n, T mean, T scale, T beta,  \
        int stream) {                                                                              \
    FASTBN_X512_VOID(fastbn_x_plane_affine_##SUF(x, out, n, mean, scale, beta, stream))            \
    FASTBN_RUN(T, SUF, out, o[j] = (x[at + j] - mean) * scale + beta;)                             \
}                                                                                                  \
/* dx = k_dy * (dy - k_b - (x - mean) * invstd * k_g), in T. */                                    \
static FASTBN_HOT void fastbn_plane_dx_##SUF(                                                      \
        const T *FASTBN_RESTRICT x, const T *FASTBN_RESTRICT dy, T *FASTBN_RESTRICT dx,            \
        ptrdiff_t n, T mean, T invstd, T k_dy, T k_b, T k_g, int stream) {                         \
    FASTBN_X512_VOID(fastbn_x_plane_dx_##SUF(x, dy, dx, n, mean, invstd, k_dy, k_b, k_g, stream))  \
    FASTBN_RUN(T, SUF, dx, o[j] = k_dy * (dy[at + j] - k_b - (x[at + j] - mean) * invstd * k_g);)  \
}                                                                                                  \
/* out = (x - mean) * (gamma * invstd) + beta with gamma, beta per value, in T. */                 \
static FASTBN_HOT void fastbn_row_affine_##SUF(                                                    \
        const T *FASTBN_RESTRICT x, T *FASTBN_RESTRICT out, ptrdiff_t n, T mean, T invstd,         \
        const T *FASTBN_RESTRICT gamma, const T *FASTBN_RESTRICT beta, int stream) {               \
    FASTBN_X512_VOID(fastbn_x_row_affine_##SUF(x, out, n, mean, invstd, gamma, beta, stream))      \
    FASTBN_RUN(T, SUF, out, o[j] = (x[at + j] - mean) * (gamma[at + j] * invstd) + beta[at + j];)  \
}                                                                                                  \
/* dx = a * dy - s3 * (x - mean) + b in double, with a = invstd * gamma[j] when gamma is given. */ \
static FASTBN_HOT void fastbn_row_dx_##SUF(                                                        \
        const T *FASTBN_RESTRICT x, const T *FASTBN_RESTRICT dy, T *FASTBN_RESTRICT dx,            \
        ptrdiff_t n, double mean, double invstd, const T *FASTBN_RESTRICT gamma, double a,         \
        double s3, double b, int stream) {                                                         \
    FASTBN_X512_VOID(fastbn_x_row_dx_##SUF(x, dy, dx, n, mean, invstd, gamma, a, s3, b, stream))   \
    if (gamma) {                                                                                   \
        FASTBN_RUN(T, SUF, dx, o[j] = (T)(invstd * (double)gamma[at + j] * (double)dy[at + j]      \
                                          - s3 * ((double)x[at + j] - mean) + b);)                 \
    } else {                                                                                       \
        FASTBN_RUN(T, SUF, dx, o[j] = (T)(a * (double)dy[at + j]                                   \
                                          - s3 * ((double)x[at + j] - mean) + b);)                 \
    }                                                                                              \
}

FASTBN_DEFINE_RUNS(float, f)
FASTBN_DEFINE_RUNS(double, d)
FASTBN_DEFINE_COLS(float, f)
FASTBN_DEFINE_COLS(double, d)
FASTBN_DEFINE_SWEEPS(float, f)
FASTBN_DEFINE_SWEEPS(double, d)

#if defined(__GNUC__) || defined(__clang__)
/* Layernorm backward, four rows at once (row r at x + r * stride): per column j,
 * db[j] += sum_r dy_r, dg[j] += sum_r dy_r * (x_r - mean[r]) * invstd[r], so each column's
 * partials are loaded and stored once per four rows; per row r, out[2r] = sum gamma * dy_r and
 * out[2r+1] = sum gamma * dy_r * (x_r - mean[r]), element j in lane j % 8 (two 4-wide halves,
 * added as by fastbn_hsum: eight lanes, unlike the sixteen of FASTBN_VEC, so a row summed here
 * and one summed alone may differ in the last bits; which rows go four at a time depends on the
 * shape only). mean, invstd, out: the caller's (thread-private) arrays of 4, 4 and 8 values;
 * ahead: whether the next four rows follow (the AVX-512 twin prefetches them). */
#define FASTBN_DEFINE_ROWS4(T, SUF)                                                                \
static FASTBN_HOT void fastbn_rows4_grad_sums_##SUF(                                               \
        const T *FASTBN_RESTRICT x, const T *FASTBN_RESTRICT dy, ptrdiff_t stride,                 \
        const T *FASTBN_RESTRICT gamma, ptrdiff_t n, const double *mean, const double *invstd,     \
        double *FASTBN_RESTRICT db, double *FASTBN_RESTRICT dg, double *out, int ahead) {          \
    FASTBN_X512_VOID(fastbn_x_rows4_grad_sums_##SUF(x, dy, stride, gamma, n, mean, invstd, db, dg, \
                                                    out, ahead))                                   \
    fastbn_v4d zero = {0, 0, 0, 0}, A[8], B[8]; /* row r: lanes 0-3 in [2r], 4-7 in [2r + 1] */    \
    double sa[4] = {0, 0, 0, 0}, sb[4] = {0, 0, 0, 0};                                             \
    ptrdiff_t j = 0, r, h;                                                                         \
    for (r = 0; r < 8; r++) A[r] = B[r] = zero;                                                    \
    for (; j + 8 <= n; j += 8)                                                                     \
        for (h = 0; h < 8; h += 4) {                                                               \
            fastbn_v4d gm = LOAD4(gamma + j + h), sdb = zero, sdg = zero;                          \
            for (r = 0; r < 4; r++) {                                                              \
                fastbn_v4d g = LOAD4(dy + r * stride + j + h),                                     \
                           xc = LOAD4(x + r * stride + j + h) - mean[r];                           \
                sdb += g;                                                                          \
                sdg += g * xc * invstd[r];                                                         \
                g *= gm;                                                                           \
                A[2 * r + h / 4] += g;                                                             \
                B[2 * r + h / 4] += g * xc;                                                        \
            }                                                                                      \
            fastbn_store4(db + j + h, fastbn_load4_d(db + j + h) + sdb);                           \
            fastbn_store4(dg + j + h, fastbn_load4_d(dg + j + h) + sdg);                           \
        }                                                                                          \
    FASTBN_ROWS4_TAIL                                                                              \
    for (r = 0; r < 4; r++) {                                                                      \
        out[2 * r] = fastbn_hsum(A[2 * r], A[2 * r + 1]) + sa[r];                                  \
        out[2 * r + 1] = fastbn_hsum(B[2 * r], B[2 * r + 1]) + sb[r];                              \
    }                                                                                              \
}
#else
#define FASTBN_DEFINE_ROWS4(T, SUF)                                                                \
static void fastbn_rows4_grad_sums_##SUF(                                                          \
        const T *x, const T *dy, ptrdiff_t stride, const T *gamma, ptrdiff_t n,                    \
        const double *mean, const double *invstd, double *db, double *dg, double *out,             \
        int ahead) {                                                                               \
    ptrdiff_t r;                                                                                   \
    (void)ahead;                                                                                   \
    for (r = 0; r < 4; r++) {                                                                      \
        fastbn_sums t = fastbn_row_grad_sums_##SUF(x + r * stride, dy + r * stride, gamma, n,      \
                                                   mean[r], invstd[r], db, dg);                    \
        out[2 * r] = t.s1;                                                                         \
        out[2 * r + 1] = t.s2;                                                                     \
    }                                                                                              \
}
#endif

#define LOAD4 fastbn_load4_f
FASTBN_DEFINE_LOOPS(float, f)
FASTBN_DEFINE_ROWS4(float, f)
#undef LOAD4
#define LOAD4 fastbn_load4_d
FASTBN_DEFINE_LOOPS(double, d)
FASTBN_DEFINE_ROWS4(double, d)
#undef LOAD4

/* Layernorm forward of n_rows consecutive rows of n values (short rows, which are not streamed):
 * per row the mean (0 without a pass over the row when not centred), the sums shifted by it,
 * then out = (x - mean) * (gamma * invstd) + beta, all in one function so that nothing is called
 * per row. The same arithmetic as the per-row path. */
#define FASTBN_DEFINE_LAYERNORM(T, SUF)                                                            \
static FASTBN_HOT void fastbn_layernorm_rows_##SUF(                                                \
        const T *FASTBN_RESTRICT x, T *FASTBN_RESTRICT out, ptrdiff_t n_rows, ptrdiff_t n,         \
        const T *FASTBN_RESTRICT gamma, const T *FASTBN_RESTRICT beta, double eps, int center,     \
        T *FASTBN_RESTRICT mean, T *FASTBN_RESTRICT invstd) {                                      \
    FASTBN_X512_VOID(fastbn_x_layernorm_rows_##SUF(x, out, n_rows, n, gamma, beta, eps, center,    \
                                                   mean, invstd))                                  \
    ptrdiff_t r, j;                                                                                \
    for (r = 0; r < n_rows; r++) {                                                                 \
        const T *xr = x + r * n;                                                                   \
        T *yr = out + r * n;                                                                       \
        double shift = center ? fastbn_sum_inl_##SUF(xr, n).s1 / n : 0.0;                          \
        fastbn_sums m = fastbn_moments(fastbn_shifted_sums_inl_##SUF(xr, n, shift), shift, n,      \
                                       center);                                                    \
        T mf = (T)m.s1, sf = (T)fastbn_row_invstd(m.s2, n, eps);                                   \
        mean[r] = mf;                                                                              \
        invstd[r] = sf;                                                                            \
        for (j = 0; j < n; j++) yr[j] = (xr[j] - mf) * (gamma[j] * sf) + beta[j];                  \
    }                                                                                              \
}

FASTBN_DEFINE_LAYERNORM(float, f)
FASTBN_DEFINE_LAYERNORM(double, d)

/* Layernorm backward of n_rows consecutive rows of n values, mean and invstd per row: per row
 * the two sums s1 = sum(gamma * dy), s2 = sum(gamma * dy * (x - mean)), adding the row's terms of
 * dbeta and dgamma into db and dg, then dx = invstd * gamma * dy - s3 * (x - mean) + b with
 * s3 = invstd^3 * s2 / n and b = -invstd * s1 / n (fastbn_row_dx_coefs; not centred, the mean
 * array is not read: the mean is 0, and so is b); in one function, so that nothing is called per
 * row (on the AVX-512 path, short rows are kept in registers; the per-row functions called here
 * have AVX-512 twins of their own). */
#define FASTBN_DEFINE_LAYERNORM_GRAD(T, SUF)                                                       \
static FASTBN_HOT void fastbn_layernorm_rows_grad_##SUF(                                           \
        const T *FASTBN_RESTRICT x, const T *FASTBN_RESTRICT dy, T *FASTBN_RESTRICT dx,            \
        ptrdiff_t n_rows, ptrdiff_t n, const T *FASTBN_RESTRICT gamma, const T *mean,              \
        const T *invstd, int center, double *FASTBN_RESTRICT db, double *FASTBN_RESTRICT dg,       \
        int stream) {                                                                              \
    FASTBN_X512_TRY(!stream && fastbn_x_layernorm_rows_grad_reg_##SUF(x, dy, dx, n_rows, n, gamma, \
                                                                      mean, invstd, center, db,    \
                                                                      dg))                         \
    ptrdiff_t r;                                                                                   \
    for (r = 0; r < n_rows; r++) {                                                                 \
        double m = center ? (double)mean[r] : 0.0, s = (double)invstd[r];                          \
        fastbn_sums t = fastbn_row_grad_sums_##SUF(x + r * n, dy + r * n, gamma, n, m, s, db, dg); \
        fastbn_dx_coefs k = fastbn_row_dx_coefs(s, t.s1, t.s2, n, center);                         \
        fastbn_row_dx_##SUF(x + r * n, dy + r * n, dx + r * n, n, m, s, gamma, 0.0, k.s3, k.b,     \
                            stream);                                                               \
    }                                                                                              \
}

FASTBN_DEFINE_LAYERNORM_GRAD(float, f)
FASTBN_DEFINE_LAYERNORM_GRAD(double, d)

/* fastbn_sum_*, fastbn_shifted_sums_* and fastbn_grad_sums_* of one run (an NCHW plane, a row)
 * while the next run (n values at next / next_x and next_dy, or NULL) is brought into the cache:
 * NCHW planes are far apart in memory, and each would otherwise start by waiting for the hardware
 * prefetcher. The baseline prefetches planes in one burst up front (not for fastbn_sum_pf_*, used
 * on consecutive rows, which the hardware prefetcher follows); the AVX-512 twins prefetch line by
 * line, interleaved with the loads. */
#define FASTBN_DEFINE_PF(T, SUF)                                                                   \
static fastbn_sums fastbn_sum_pf_##SUF(const T *x, ptrdiff_t n, const T *next) {                   \
    FASTBN_X512_VALUE(fastbn_x_sum_pf_##SUF(x, n, next))                                           \
    (void)next;                                                                                    \
    return fastbn_sum_##SUF(x, n);                                                                 \
}                                                                                                  \
static fastbn_sums fastbn_shifted_sums_pf_##SUF(const T *x, ptrdiff_t n, double shift,             \
                                                const T *next) {                                   \
    FASTBN_X512_VALUE(fastbn_x_shifted_sums_pf_##SUF(x, n, shift, next))                           \
    if (next) fastbn_prefetch(next, n * (ptrdiff_t)sizeof(T));                                     \
    return fastbn_shifted_sums_##SUF(x, n, shift);                                                 \
}                                                                                                  \
static fastbn_sums fastbn_grad_sums_pf_##SUF(const T *x, const T *dy, ptrdiff_t n, double mean,    \
                                             const T *next_x, const T *next_dy) {                  \
    FASTBN_X512_VALUE(fastbn_x_grad_sums_pf_##SUF(x, dy, n, mean, next_x, next_dy))                \
    if (next_x) {                                                                                  \
        fastbn_prefetch(next_x, n * (ptrdiff_t)sizeof(T));                                         \
        fastbn_prefetch(next_dy, n * (ptrdiff_t)sizeof(T));                                        \
    }                                                                                              \
    return fastbn_grad_sums_##SUF(x, dy, n, mean);                                                 \
}

FASTBN_DEFINE_PF(float, f)
FASTBN_DEFINE_PF(double, d)

#endif
