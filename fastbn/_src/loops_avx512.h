/* AVX-512 versions of the hottest loops of loops.h, chosen at run time (fastbn_x512_enabled).
 *
 * Why: on CPUs with 512-bit vectors, the baseline/AVX2 loops are limited by instruction count
 * rather than memory bandwidth (a float -> double conversion, one 4-wide vector at a time), and
 * their streaming stores go through a staging buffer and 16-byte stores. Here every store of a
 * streamed output is a full 64-byte line written straight from a register, conversions take
 * 8 values per instruction, and the (M, D) column sums take eight rows per pass over their
 * per-column accumulators, prefetching the next eight.
 *
 * Same values as loops.h, bit for bit: every function below performs the same floating-point
 * operations, in the same order, as its baseline twin -- the double sums keep element j in lane
 * j % 16 (two 8-wide vectors instead of four 4-wide ones, added in the same fixed order), the
 * column sums add rows in the same groups of four, and elementwise expressions are written
 * exactly as in loops.h. Together with -ffp-contract=off (no fused multiply-add anywhere) this
 * makes the choice of instruction set invisible in the results; tests compare the two paths bit
 * for bit. Compiled only with GCC or Clang for x86-64; the functions carry a target attribute, so
 * the rest of the module stays baseline code, and they are called only after fastbn_simd_init()
 * found AVX-512F/DQ/VL/BW and FASTBN_DISABLE_AVX512 was not set.
 */
#ifndef FASTBN_LOOPS_AVX512_H
#define FASTBN_LOOPS_AVX512_H

#include <stdlib.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))                               \
    && (defined(__clang__) || __GNUC__ >= 7)
#define FASTBN_HAVE_X512 1
#include <immintrin.h>

#define FASTBN_X512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw")))
#define FASTBN_X512_INLINE static inline __attribute__((always_inline)) FASTBN_X512

static int fastbn_x512_enabled = 0;

/* Decide once, at module import, whether the AVX-512 loops run. */
static void fastbn_simd_init(void) {
    const char *off = getenv("FASTBN_DISABLE_AVX512");
    __builtin_cpu_init();
    fastbn_x512_enabled = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
                          && __builtin_cpu_supports("avx512vl")
                          && __builtin_cpu_supports("avx512bw") && !(off && *off && *off != '0');
}

typedef double fastbn_x8d __attribute__((vector_size(64)));
typedef float fastbn_x16f __attribute__((vector_size(64)));

/* Eight values of T as doubles. */
FASTBN_X512_INLINE fastbn_x8d fastbn_x_load8_f(const float *p) {
    return (fastbn_x8d)_mm512_cvtps_pd(_mm256_loadu_ps(p));
}
FASTBN_X512_INLINE fastbn_x8d fastbn_x_load8_d(const double *p) {
    return (fastbn_x8d)_mm512_loadu_pd(p);
}
/* A full vector of T (16 floats or 8 doubles). */
FASTBN_X512_INLINE fastbn_x16f fastbn_x_loadv_f(const float *p) {
    return (fastbn_x16f)_mm512_loadu_ps(p);
}
FASTBN_X512_INLINE fastbn_x8d fastbn_x_loadv_d(const double *p) {
    return (fastbn_x8d)_mm512_loadu_pd(p);
}
FASTBN_X512_INLINE void fastbn_x_storev_f(float *p, fastbn_x16f v) {
    _mm512_storeu_ps(p, (__m512)v);
}
FASTBN_X512_INLINE void fastbn_x_storev_d(double *p, fastbn_x8d v) {
    _mm512_storeu_pd(p, (__m512d)v);
}
FASTBN_X512_INLINE void fastbn_x_streamv_f(float *p, fastbn_x16f v) {
    _mm512_stream_ps(p, (__m512)v);
}
FASTBN_X512_INLINE void fastbn_x_streamv_d(double *p, fastbn_x8d v) {
    _mm512_stream_pd(p, (__m512d)v);
}
/* The first `count` (< lanes) values at p, zeros after them; and their store. Masked-off lanes
 * are neither read nor written, so the partial vectors at either end of a run stay in bounds. */
FASTBN_X512_INLINE fastbn_x16f fastbn_x_loadm_f(const float *p, unsigned count) {
    return (fastbn_x16f)_mm512_maskz_loadu_ps((__mmask16)((1u << count) - 1), p);
}
FASTBN_X512_INLINE fastbn_x8d fastbn_x_loadm_d(const double *p, unsigned count) {
    return (fastbn_x8d)_mm512_maskz_loadu_pd((__mmask8)((1u << count) - 1), p);
}
FASTBN_X512_INLINE void fastbn_x_storem_f(float *p, unsigned count, fastbn_x16f v) {
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << count) - 1), (__m512)v);
}
FASTBN_X512_INLINE void fastbn_x_storem_d(double *p, unsigned count, fastbn_x8d v) {
    _mm512_mask_storeu_pd(p, (__mmask8)((1u << count) - 1), (__m512d)v);
}
/* Store a vector, streaming it when asked (the caller then passes a 64-byte aligned p). */
FASTBN_X512_INLINE void fastbn_x_put_f(float *p, fastbn_x16f v, int stream) {
    if (stream) fastbn_x_streamv_f(p, v);
    else fastbn_x_storev_f(p, v);
}
FASTBN_X512_INLINE void fastbn_x_put_d(double *p, fastbn_x8d v, int stream) {
    if (stream) fastbn_x_streamv_d(p, v);
    else fastbn_x_storev_d(p, v);
}
/* Values before the first 64-byte boundary of a streamed run of n values at p (0 if not
 * streamed): they get ordinary stores. p must be aligned to its element size (see
 * fastbn_x_streamable). */
static inline ptrdiff_t fastbn_x_head(const void *p, ptrdiff_t n, size_t size, int stream) {
    ptrdiff_t h = stream ? (ptrdiff_t)(((64 - ((uintptr_t)p & 63)) & 63) / size) : 0;
    return h < n ? h : n;
}
/* Whether an output at p may be streamed: an array not aligned to its element size (possible
 * with a caller's out= buffer) never reaches a 64-byte boundary at an element. */
static inline int fastbn_x_streamable(const void *p, size_t size, int stream) {
    return stream && !((uintptr_t)p & (size - 1));
}
FASTBN_X512_INLINE double fastbn_x_hsum(fastbn_x8d a) {
    /* as fastbn_hsum(a0, a1) with a0 = lanes 0..3 and a1 = lanes 4..7 */
    double s0 = a[0] + a[4], s1 = a[1] + a[5], s2 = a[2] + a[6], s3 = a[3] + a[7];
    return (s0 + s1) + (s2 + s3);
}

/* Double sums of n contiguous values, element j in lane j % 16 (as FASTBN_VEC): lanes 0-7 in A0
 * and B0, 8-15 in A1 and B1. BODY8(o, A, B) adds elements j + o .. j + o + 7 to A and B. */
#define FASTBN_X_VEC(BODY8, BODY1)                                                                 \
    fastbn_x8d A0 = {0, 0, 0, 0, 0, 0, 0, 0}, A1 = A0, B0 = A0, B1 = A0;                           \
    ptrdiff_t j = 0;                                                                               \
    for (; j + 16 <= n; j += 16) { BODY8(0, A0, B0) BODY8(8, A1, B1) }                             \
    double sa = fastbn_x_hsum(A0 + A1), sb = fastbn_x_hsum(B0 + B1);                               \
    for (; j < n; j++) { BODY1 }                                                                   \
    fastbn_sums r = {sa, sb};                                                                      \
    return r;

/* A contiguous run out[0..n): VEXPR gives the vector at j, SEXPR the value at j. With `stream`,
 * the lines wholly inside the run get streaming stores and the partial lines at either end
 * ordinary ones (the neighbouring run may share them); the caller fences at the end. */
#define FASTBN_X_RUN(T, SUF, N, OUT, VEXPR, SEXPR) FASTBN_X_RUN_PF(T, SUF, N, OUT, VEXPR, SEXPR, )
/* The same, running the statement PF (prefetches of the inputs) once per vector of a streamed
 * output (an output small enough to stay in cache comes from inputs that are there too). */
#define FASTBN_X_RUN_PF(T, SUF, N, OUT, VEXPR, SEXPR, PF)                                          \
    {                                                                                              \
        ptrdiff_t j = 0;                                                                           \
        if (stream) {                                                                              \
            for (; j < n && ((uintptr_t)(OUT + j) & 63); j++) OUT[j] = SEXPR;                      \
            for (; j + N <= n; j += N) { PF fastbn_x_streamv_##SUF(OUT + j, VEXPR); }              \
        } else {                                                                                   \
            for (; j + N <= n; j += N) fastbn_x_storev_##SUF(OUT + j, VEXPR);                      \
        }                                                                                          \
        for (; j < n; j++) OUT[j] = SEXPR;                                                         \
    }
/* Software prefetch of p[j + d] with d about FASTBN_X_AHEAD bytes ahead: the (M, D) sweeps read
 * one line per vector per row from memory, and the hardware prefetchers alone fall behind. */
#define FASTBN_X_AHEAD 2048
#define FASTBN_X_PREFETCH(p, d) _mm_prefetch((const char *)((p) + (d)), _MM_HINT_T0);

/* Bodies of FASTBN_X_VEC, as FASTBN_SUM4 .. FASTBN_ROW4 of loops.h (LOAD8: T -> doubles). */
#define FASTBN_X_SUM8(o, A, B) { A += LOAD8(x + j + o); }
#define FASTBN_X_SHIFTED8(o, A, B) { fastbn_x8d t = LOAD8(x + j + o) - shift; A += t; B += t * t; }
#define FASTBN_X_GRAD8(o, A, B)                                                                    \
    { fastbn_x8d g = LOAD8(dy + j + o); A += g; B += g * (LOAD8(x + j + o) - mean); }
#define FASTBN_X_ROW8(o, A, B)                                                                     \
    { fastbn_x8d g = LOAD8(dy + j + o), xc = LOAD8(x + j + o) - mean;                              \
      fastbn_x_storev_d(db + j + o, fastbn_x_loadv_d(db + j + o) + g);                             \
      fastbn_x_storev_d(dg + j + o, fastbn_x_loadv_d(dg + j + o) + g * xc * invstd);               \
      g *= LOAD8(gamma + j + o); A += g; B += g * xc; }

/* The same, prefetching the matching line of the next run(s) of the caller (interleaved with
 * the loads: a burst of prefetches up front would stall on the fill buffers). */
#define FASTBN_X_NEXT(p, o)                                                                        \
    if (!(((o) * sizeof *(p)) & 63)) _mm_prefetch((const char *)((p) + j + (o)), _MM_HINT_T0);
#define FASTBN_X_SUM8_PF(o, A, B) FASTBN_X_NEXT(next, o) FASTBN_X_SUM8(o, A, B)
#define FASTBN_X_SHIFTED8_PF(o, A, B) FASTBN_X_NEXT(next, o) FASTBN_X_SHIFTED8(o, A, B)
#define FASTBN_X_GRAD8_PF(o, A, B)                                                                 \
    FASTBN_X_NEXT(next_x, o) FASTBN_X_NEXT(next_dy, o) FASTBN_X_GRAD8(o, A, B)

/* One vector of columns j.. of four rows of the (M, D) sweeps (x0, g0, o0: row i of x, dy, out),
 * each value loaded with LOAD (p as the address) and stored with STORE (p, v). */
#define FASTBN_X_AFFINE4(T, V, SUF, j, LOAD, STORE)                                                \
    {                                                                                              \
        const T *p;                                                                                \
        V m_, s_, b_, v;                                                                           \
        p = mean + (j); m_ = LOAD;                                                                 \
        p = scale + (j); s_ = LOAD;                                                                \
        p = beta + (j); b_ = LOAD;                                                                 \
        for (r = 0; r < 4; r++) {                                                                  \
            p = x0 + r * stride + (j);                                                             \
            v = (LOAD - m_) * s_ + b_;                                                             \
            {                                                                                      \
                T *p = o0 + r * stride + (j);                                                      \
                STORE;                                                                             \
            }                                                                                      \
        }                                                                                          \
    }
#define FASTBN_X_DX4(T, V, SUF, j, LOAD, STORE)                                                    \
    {                                                                                              \
        const T *p;                                                                                \
        V m_, s_, a_, b_, g_, v, gv;                                                               \
        p = mean + (j); m_ = LOAD;                                                                 \
        p = invstd + (j); s_ = LOAD;                                                               \
        p = k_dy + (j); a_ = LOAD;                                                                 \
        p = k_b + (j); b_ = LOAD;                                                                  \
        p = k_g + (j); g_ = LOAD;                                                                  \
        for (r = 0; r < 4; r++) {                                                                  \
            p = g0 + r * stride + (j);                                                             \
            gv = LOAD;                                                                             \
            p = x0 + r * stride + (j);                                                             \
            v = a_ * (gv - b_ - (LOAD - m_) * s_ * g_);                                            \
            {                                                                                      \
                T *p = o0 + r * stride + (j);                                                      \
                STORE;                                                                             \
            }                                                                                      \
        }                                                                                          \
    }

#define FASTBN_DEFINE_X512(T, SUF, N, V)                                                           \
static FASTBN_X512 fastbn_sums fastbn_x_sum_##SUF(const T *FASTBN_RESTRICT x, ptrdiff_t n) {       \
    FASTBN_X_VEC(FASTBN_X_SUM8, sa += (double)x[j];)                                               \
}                                                                                                  \
static FASTBN_X512 fastbn_sums fastbn_x_shifted_sums_##SUF(const T *FASTBN_RESTRICT x,             \
                                                           ptrdiff_t n, double shift) {            \
    FASTBN_X_VEC(FASTBN_X_SHIFTED8, double t = (double)x[j] - shift; sa += t; sb += t * t;)        \
}                                                                                                  \
static FASTBN_X512 fastbn_sums fastbn_x_grad_sums_##SUF(const T *FASTBN_RESTRICT x,                \
                                                        const T *FASTBN_RESTRICT dy, ptrdiff_t n,  \
                                                        double mean) {                             \
    FASTBN_X_VEC(FASTBN_X_GRAD8,                                                                   \
                 double g = (double)dy[j]; sa += g; sb += g * ((double)x[j] - mean);)              \
}                                                                                                  \
static FASTBN_X512 fastbn_sums fastbn_x_sum_pf_##SUF(const T *FASTBN_RESTRICT x, ptrdiff_t n,      \
                                                    const T *next) {                               \
    if (!next) next = x;                                                                           \
    FASTBN_X_VEC(FASTBN_X_SUM8_PF, sa += (double)x[j];)                                            \
}                                                                                                  \
static FASTBN_X512 fastbn_sums fastbn_x_shifted_sums_pf_##SUF(                                     \
        const T *FASTBN_RESTRICT x, ptrdiff_t n, double shift, const T *next) {                    \
    if (!next) next = x;                                                                           \
    FASTBN_X_VEC(FASTBN_X_SHIFTED8_PF, double t = (double)x[j] - shift; sa += t; sb += t * t;)     \
}                                                                                                  \
static FASTBN_X512 fastbn_sums fastbn_x_grad_sums_pf_##SUF(                                        \
        const T *FASTBN_RESTRICT x, const T *FASTBN_RESTRICT dy, ptrdiff_t n, double mean,         \
        const T *next_x, const T *next_dy) {                                                       \
    if (!next_x) next_x = x, next_dy = dy;                                                         \
    FASTBN_X_VEC(FASTBN_X_GRAD8_PF,                                                                \
                 double g = (double)dy[j]; sa += g; sb += g * ((double)x[j] - mean);)              \
}                                                                                                  \
static FASTBN_X512 fastbn_sums fastbn_x_row_grad_sums_##SUF(                                       \
        const T *FASTBN_RESTRICT x, const T *FASTBN_RESTRICT dy, const T *FASTBN_RESTRICT gamma,   \
        ptrdiff_t n, double mean, double invstd,                                                   \
        double *FASTBN_RESTRICT db, double *FASTBN_RESTRICT dg) {                                  \
    FASTBN_X_VEC(FASTBN_X_ROW8,                                                                    \
                 double g = (double)dy[j]; double xc = (double)x[j] - mean; db[j] += g;            \
                 dg[j] += g * xc * invstd; g *= (double)gamma[j]; sa += g; sb += g * xc;)          \
}                                                                                                  \
static FASTBN_X512 void fastbn_x_plane_affine_##SUF(                                               \
        const T *FASTBN_RESTRICT x, T *FASTBN_RESTRICT out, ptrdiff_t n, T mean, T scale, T beta,  \
        int stream) {                                                                              \
    FASTBN_X_RUN(T, SUF, N, out, (fastbn_x_loadv_##SUF(x + j) - mean) * scale + beta,              \
                 (x[j] - mean) * scale + beta)                                                     \
    if (stream) _mm_sfence();                                                                      \
}                                                                                                  \
static FASTBN_X512 void fastbn_x_plane_dx_##SUF(                                                   \
        const T *FASTBN_RESTRICT x, const T *FASTBN_RESTRICT dy, T *FASTBN_RESTRICT dx,            \
        ptrdiff_t n, T mean, T invstd, T k_dy, T k_b, T k_g, int stream) {                         \
    FASTBN_X_RUN(T, SUF, N, dx,                                                                    \
                 k_dy * (fastbn_x_loadv_##SUF(dy + j) - k_b                                        \
                         - (fastbn_x_loadv_##SUF(x + j) - mean) * invstd * k_g),                   \
                 k_dy * (dy[j] - k_b - (x[j] - mean) * invstd * k_g))                              \
    if (stream) _mm_sfence();                                                                      \
}                                                                                                  \
static FASTBN_X512 void fastbn_x_row_affine_##SUF(                                                 \
        const T *FASTBN_RESTRICT x, T *FASTBN_RESTRICT out, ptrdiff_t n, T mean, T invstd,         \
        const T *FASTBN_RESTRICT gamma, const T *FASTBN_RESTRICT beta, int stream) {               \
    FASTBN_X_RUN(T, SUF, N, out,                                                                   \
                 (fastbn_x_loadv_##SUF(x + j) - mean) * (fastbn_x_loadv_##SUF(gamma + j) * invstd) \
                     + fastbn_x_loadv_##SUF(beta + j),                                             \
                 (x[j] - mean) * (gamma[j] * invstd) + beta[j])                                    \
    if (stream) _mm_sfence();                                                                      \
}                                                                                                  \
/* (M, D) blocks as in loops.h: rows i..i+7 in two groups of four, then one group of four, then    \
 * single rows -- the same grouping as the baseline's groups of four. */                           \
static FASTBN_X512 void fastbn_x_cols_shifted_sums_##SUF(                                          \
        const T *FASTBN_RESTRICT x, ptrdiff_t stride, ptrdiff_t n_rows, ptrdiff_t w,               \
        const T *FASTBN_RESTRICT shift, double *FASTBN_RESTRICT s1, double *FASTBN_RESTRICT s2) {  \
    ptrdiff_t i = 0, j, r;                                                                         \
    for (; i + 4 <= n_rows; i += 8) {                                                              \
        const T *x0 = x + i * stride;                                                              \
        int two = i + 8 <= n_rows, ahead = i + 16 <= n_rows;                                       \
        for (j = 0; j + 8 <= w; j += 8) {                                                          \
            fastbn_x8d h = fastbn_x_load8_##SUF(shift + j), a = fastbn_x_loadv_d(s1 + j),          \
                       b = fastbn_x_loadv_d(s2 + j), t0, t1, t2, t3;                               \
            if (ahead && !(j & (64 / (ptrdiff_t)sizeof(T) - 1)))                                   \
                for (r = 8; r < 16; r++)                                                           \
                    _mm_prefetch((const char *)(x0 + r * stride + j), _MM_HINT_T0);                \
            t0 = fastbn_x_load8_##SUF(x0 + j) - h;                                                 \
            t1 = fastbn_x_load8_##SUF(x0 + stride + j) - h;                                        \
            t2 = fastbn_x_load8_##SUF(x0 + 2 * stride + j) - h;                                    \
            t3 = fastbn_x_load8_##SUF(x0 + 3 * stride + j) - h;                                    \
            a += (t0 + t1) + (t2 + t3);                                                            \
            b += (t0 * t0 + t1 * t1) + (t2 * t2 + t3 * t3);                                        \
            if (two) {                                                                             \
                t0 = fastbn_x_load8_##SUF(x0 + 4 * stride + j) - h;                                \
                t1 = fastbn_x_load8_##SUF(x0 + 5 * stride + j) - h;                                \
                t2 = fastbn_x_load8_##SUF(x0 + 6 * stride + j) - h;                                \
                t3 = fastbn_x_load8_##SUF(x0 + 7 * stride + j) - h;                                \
                a += (t0 + t1) + (t2 + t3);                                                        \
                b += (t0 * t0 + t1 * t1) + (t2 * t2 + t3 * t3);                                    \
            }                                                                                      \
            fastbn_x_storev_d(s1 + j, a);                                                          \
            fastbn_x_storev_d(s2 + j, b);                                                          \
        }                                                                                          \
        for (; j < w; j++)                                                                         \
            for (r = 0; r < (two ? 8 : 4); r += 4) {                                               \
                const T *xr = x0 + r * stride;                                                     \
                FASTBN_SHIFTED_COL4(xr, xr + stride, xr + 2 * stride, xr + 3 * stride)             \
            }                                                                                      \
        if (!two) i -= 4;                                                                          \
    }                                                                                              \
    FASTBN_SHIFTED_ROWS1                                                                           \
}                                                                                                  \
static FASTBN_X512 void fastbn_x_cols_grad_sums_##SUF(                                             \
        const T *FASTBN_RESTRICT x, const T *FASTBN_RESTRICT dy, ptrdiff_t stride,                 \
        ptrdiff_t n_rows, ptrdiff_t w, const T *FASTBN_RESTRICT mean,                              \
        double *FASTBN_RESTRICT s1, double *FASTBN_RESTRICT s2) {                                  \
    ptrdiff_t i = 0, j, r, k;                                                                      \
    for (; i + 4 <= n_rows; i += 8) {                                                              \
        const T *x0 = x + i * stride, *y0 = dy + i * stride;                                       \
        int two = i + 8 <= n_rows, ahead = i + 16 <= n_rows;                                       \
        for (j = 0; j + 8 <= w; j += 8) {                                                          \
            fastbn_x8d m = fastbn_x_load8_##SUF(mean + j), a = fastbn_x_loadv_d(s1 + j),           \
                       b = fastbn_x_loadv_d(s2 + j), g0, g1, g2, g3;                               \
            if (ahead && !(j & (64 / (ptrdiff_t)sizeof(T) - 1)))                                   \
                for (r = 8; r < 16; r++) {                                                         \
                    _mm_prefetch((const char *)(x0 + r * stride + j), _MM_HINT_T0);                \
                    _mm_prefetch((const char *)(y0 + r * stride + j), _MM_HINT_T0);                \
                }                                                                                  \
            for (k = 0; k < (two ? 8 : 4); k += 4) {                                               \
                const T *xk = x0 + k * stride + j, *yk = y0 + k * stride + j;                      \
                g0 = fastbn_x_load8_##SUF(yk);                                                     \
                g1 = fastbn_x_load8_##SUF(yk + stride);                                            \
                g2 = fastbn_x_load8_##SUF(yk + 2 * stride);                                        \
                g3 = fastbn_x_load8_##SUF(yk + 3 * stride);                                        \
                a += (g0 + g1) + (g2 + g3);                                                        \
                b += (g0 * (fastbn_x_load8_##SUF(xk) - m)                                          \
                      + g1 * (fastbn_x_load8_##SUF(xk + stride) - m))                              \
                   + (g2 * (fastbn_x_load8_##SUF(xk + 2 * stride) - m)                             \
                      + g3 * (fastbn_x_load8_##SUF(xk + 3 * stride) - m));                         \
            }                                                                                      \
            fastbn_x_storev_d(s1 + j, a);                                                          \
            fastbn_x_storev_d(s2 + j, b);                                                          \
        }                                                                                          \
        for (; j < w; j++)                                                                         \
            for (r = 0; r < (two ? 8 : 4); r += 4) {                                               \
                const T *xr = x0 + r * stride, *yr = y0 + r * stride;                              \
                FASTBN_GRAD_COL4(xr, xr + stride, xr + 2 * stride, xr + 3 * stride, yr,            \
                                 yr + stride, yr + 2 * stride, yr + 3 * stride)                    \
            }                                                                                      \
        if (!two) i -= 4;                                                                          \
    }                                                                                              \
    FASTBN_GRAD_ROWS1                                                                              \
}                                                                                                  \
/* (M, D) elementwise sweeps (any order of rows gives the same values). Rows go four at a time,    \
 * so that each column's coefficients are loaded once per four rows -- when streamed, only if      \
 * every row starts at the same offset within a cache line; otherwise one row at a time. An affine \
 * sweep that is not streamed, four at a time only over short runs (see FASTBN_SHORT_RUN). */      \
static FASTBN_X512 void fastbn_x_cols_affine_##SUF(                                                \
        const T *FASTBN_RESTRICT x, T *FASTBN_RESTRICT out, ptrdiff_t stride, ptrdiff_t n_rows,    \
        ptrdiff_t n, const T *FASTBN_RESTRICT mean, const T *FASTBN_RESTRICT scale,                \
        const T *FASTBN_RESTRICT beta, int stream) {                                               \
    ptrdiff_t i = 0, j, r, head;                                                                   \
    stream = fastbn_x_streamable(out, sizeof(T), stream);                                          \
    head = fastbn_x_head(out, n, sizeof(T), stream);                                               \
    ptrdiff_t near = FASTBN_X_AHEAD / (ptrdiff_t)sizeof(T), far = 2 * near;                        \
    int ahead = stream && n >= 4 * near; /* runs of a block of columns: the prefetches would     \
                                            fetch another block's columns */                       \
    if (stream ? !((stride * (ptrdiff_t)sizeof(T)) & 63)                                           \
               : FASTBN_AFFINE_FOURS(n, stride, sizeof(T)))                                        \
        for (; i + 4 <= n_rows; i += 4) {                                                          \
            const T *x0 = x + i * stride;                                                          \
            T *o0 = out + i * stride;                                                              \
            if (head) /* the values before the first line boundary: masked ordinary stores */      \
                FASTBN_X_AFFINE4(T, V, SUF, 0, fastbn_x_loadm_##SUF(p, head),                      \
                                 fastbn_x_storem_##SUF(p, head, v))                                \
            for (j = head; j + N <= n; j += N) {                                                   \
                if (ahead)                                                                         \
                    for (r = 0; r < 4; r++) FASTBN_X_PREFETCH(x0 + r * stride + j, near)           \
                FASTBN_X_AFFINE4(T, V, SUF, j, fastbn_x_loadv_##SUF(p),                            \
                                 fastbn_x_put_##SUF(p, v, stream))                                 \
            }                                                                                      \
            if (j < n)                                                                             \
                FASTBN_X_AFFINE4(T, V, SUF, j, fastbn_x_loadm_##SUF(p, n - j),                     \
                                 fastbn_x_storem_##SUF(p, n - j, v))                               \
        }                                                                                          \
    for (; i < n_rows; i++) {                                                                      \
        const T *xi = x + i * stride;                                                              \
        T *oi = out + i * stride;                                                                  \
        FASTBN_X_RUN_PF(T, SUF, N, oi,                                                             \
                        (fastbn_x_loadv_##SUF(xi + j) - fastbn_x_loadv_##SUF(mean + j))            \
                            * fastbn_x_loadv_##SUF(scale + j) + fastbn_x_loadv_##SUF(beta + j),    \
                        (xi[j] - mean[j]) * scale[j] + beta[j],                                    \
                        if (ahead) FASTBN_X_PREFETCH(xi + j, far))                                 \
    }                                                                                              \
    if (stream) _mm_sfence();                                                                      \
}                                                                                                  \
static FASTBN_X512 void fastbn_x_cols_dx_##SUF(                                                    \
        const T *FASTBN_RESTRICT x, const T *FASTBN_RESTRICT dy, T *FASTBN_RESTRICT dx,            \
        ptrdiff_t stride, ptrdiff_t n_rows, ptrdiff_t n, const T *FASTBN_RESTRICT mean,            \
        const T *FASTBN_RESTRICT invstd, const T *FASTBN_RESTRICT k_dy,                            \
        const T *FASTBN_RESTRICT k_b, const T *FASTBN_RESTRICT k_g, int stream) {                  \
    ptrdiff_t i = 0, j, r, head;                                                                   \
    stream = fastbn_x_streamable(dx, sizeof(T), stream);                                           \
    head = fastbn_x_head(dx, n, sizeof(T), stream);                                                \
    ptrdiff_t far = 2 * FASTBN_X_AHEAD / (ptrdiff_t)sizeof(T);                                     \
    int ahead = stream && n >= 2 * far; /* (as in fastbn_x_cols_affine_*) */                       \
    if (!stream || !((stride * (ptrdiff_t)sizeof(T)) & 63))                                        \
        for (; i + 4 <= n_rows; i += 4) {                                                          \
            const T *x0 = x + i * stride, *g0 = dy + i * stride;                                   \
            T *o0 = dx + i * stride;                                                               \
            if (head)                                                                              \
                FASTBN_X_DX4(T, V, SUF, 0, fastbn_x_loadm_##SUF(p, head),                          \
                             fastbn_x_storem_##SUF(p, head, v))                                    \
            for (j = head; j + N <= n; j += N)                                                     \
                FASTBN_X_DX4(T, V, SUF, j, fastbn_x_loadv_##SUF(p),                                \
                             fastbn_x_put_##SUF(p, v, stream))                                     \
            if (j < n)                                                                             \
                FASTBN_X_DX4(T, V, SUF, j, fastbn_x_loadm_##SUF(p, n - j),                         \
                             fastbn_x_storem_##SUF(p, n - j, v))                                   \
        }                                                                                          \
    for (; i < n_rows; i++) {                                                                      \
        const T *x0 = x + i * stride, *g0 = dy + i * stride;                                       \
        T *oi = dx + i * stride;                                                                   \
        FASTBN_X_RUN_PF(T, SUF, N, oi,                                                             \
                        fastbn_x_loadv_##SUF(k_dy + j)                                             \
                            * (fastbn_x_loadv_##SUF(g0 + j) - fastbn_x_loadv_##SUF(k_b + j)        \
                               - (fastbn_x_loadv_##SUF(x0 + j) - fastbn_x_loadv_##SUF(mean + j))   \
                                     * fastbn_x_loadv_##SUF(invstd + j)                            \
                                     * fastbn_x_loadv_##SUF(k_g + j)),                             \
                        FASTBN_X_COLS_DX1(j, j),                                                   \
                        if (ahead) {                                                       \
                            FASTBN_X_PREFETCH(x0 + j, far) FASTBN_X_PREFETCH(g0 + j, far)          \
                        })                                                                         \
    }                                                                                              \
    if (stream) _mm_sfence();                                                                      \
}

/* dx of (M, D) at offset `at` from x0/g0, column c (the expression of fastbn_cols_dx_*). */
#define FASTBN_X_COLS_DX1(at, c)                                                                   \
    k_dy[c] * (g0[at] - k_b[c] - (x0[at] - mean[c]) * invstd[c] * k_g[c])

#define LOAD8 fastbn_x_load8_f
FASTBN_DEFINE_X512(float, f, 16, fastbn_x16f)
#undef LOAD8
#define LOAD8 fastbn_x_load8_d
FASTBN_DEFINE_X512(double, d, 8, fastbn_x8d)
#undef LOAD8

/* Layernorm backward, four rows at once: fastbn_rows4_grad_sums_* with each row's eight lanes in
 * one vector. */
#define FASTBN_DEFINE_X512_ROWS4(T, SUF)                                                           \
static FASTBN_X512 void fastbn_x_rows4_grad_sums_##SUF(                                            \
        const T *FASTBN_RESTRICT x, const T *FASTBN_RESTRICT dy, ptrdiff_t stride,                 \
        const T *FASTBN_RESTRICT gamma, ptrdiff_t n, const double *mean, const double *invstd,     \
        double *FASTBN_RESTRICT db, double *FASTBN_RESTRICT dg, double *out, int ahead) {          \
    fastbn_x8d zero = {0, 0, 0, 0, 0, 0, 0, 0}, A[4], B[4];                                        \
    double sa[4] = {0, 0, 0, 0}, sb[4] = {0, 0, 0, 0};                                             \
    ptrdiff_t j = 0, r;                                                                            \
    for (r = 0; r < 4; r++) A[r] = B[r] = zero;                                                    \
    for (; j + 8 <= n; j += 8) {                                                                   \
        fastbn_x8d gm = fastbn_x_load8_##SUF(gamma + j), sdb = zero, sdg = zero;                   \
        if (ahead && !(j & (64 / (ptrdiff_t)sizeof(T) - 1)))                                       \
            for (r = 4; r < 8; r++) {                                                              \
                _mm_prefetch((const char *)(x + r * stride + j), _MM_HINT_T0);                     \
                _mm_prefetch((const char *)(dy + r * stride + j), _MM_HINT_T0);                    \
            }                                                                                      \
        for (r = 0; r < 4; r++) {                                                                  \
            fastbn_x8d g = fastbn_x_load8_##SUF(dy + r * stride + j),                              \
                       xc = fastbn_x_load8_##SUF(x + r * stride + j) - mean[r];                    \
            sdb += g;                                                                              \
            sdg += g * xc * invstd[r];                                                             \
            g *= gm;                                                                               \
            A[r] += g;                                                                             \
            B[r] += g * xc;                                                                        \
        }                                                                                          \
        fastbn_x_storev_d(db + j, fastbn_x_loadv_d(db + j) + sdb);                                 \
        fastbn_x_storev_d(dg + j, fastbn_x_loadv_d(dg + j) + sdg);                                 \
    }                                                                                              \
    FASTBN_ROWS4_TAIL                                                                              \
    for (r = 0; r < 4; r++) {                                                                      \
        out[2 * r] = fastbn_x_hsum(A[r]) + sa[r];                                                  \
        out[2 * r + 1] = fastbn_x_hsum(B[r]) + sb[r];                                              \
    }                                                                                              \
}

/* Store 16 floats or 8 doubles computed as doubles: the rounding of fastbn_x_row_dx_*. */
FASTBN_X512_INLINE void fastbn_x_put2_f(float *p, fastbn_x8d lo, fastbn_x8d hi) {
    __m256 l = _mm512_cvtpd_ps((__m512d)lo), h = _mm512_cvtpd_ps((__m512d)hi);
    _mm512_storeu_ps(p, _mm512_insertf32x8(_mm512_castps256_ps512(l), h, 1));
}
FASTBN_X512_INLINE void fastbn_x_put2_d(double *p, fastbn_x8d lo, fastbn_x8d hi) {
    fastbn_x_storev_d(p, lo);
    fastbn_x_storev_d(p + 8, hi);
}

/* Short layernorm rows of n = 8 * NV values (NV even, at most FASTBN_X_REG_MAX / 8), each held
 * in NV registers as doubles: a row is loaded and converted once for both of its sums (and, in
 * the backward, for dx too) instead of once per sweep, which is what bounds rows this short.
 * The arithmetic is that of the per-row functions, operation for operation: element j in lane
 * j % 16 (even k: lanes 0-7, odd k: lanes 8-15), the tree of fastbn_x_hsum, the same scalar
 * steps. Called with a constant NV, so that the loops unroll and v[] lives in registers. */
#define FASTBN_X_REG_MAX 128
/* switch (NV) over the register paths' even NV up to FASTBN_X_REG_MAX / 8: FN(NV, ...); RET. */
#define FASTBN_X_REG_SWITCH(NV, RET, FN, ...)                                                      \
    switch (NV) {                                                                                  \
    case 2: FN(2, __VA_ARGS__); RET;                                                               \
    case 4: FN(4, __VA_ARGS__); RET;                                                               \
    case 6: FN(6, __VA_ARGS__); RET;                                                               \
    case 8: FN(8, __VA_ARGS__); RET;                                                               \
    case 10: FN(10, __VA_ARGS__); RET;                                                             \
    case 12: FN(12, __VA_ARGS__); RET;                                                             \
    case 14: FN(14, __VA_ARGS__); RET;                                                             \
    case 16: FN(16, __VA_ARGS__); RET;                                                             \
    }
#define FASTBN_DEFINE_X512_LAYERNORM(T, SUF)                                                       \
FASTBN_X512_INLINE void fastbn_x_ln_reg_rows_##SUF(                                                \
        const T *FASTBN_RESTRICT x, T *FASTBN_RESTRICT out, const int ROWS, const int NV,          \
        const T *FASTBN_RESTRICT gamma, const T *FASTBN_RESTRICT beta, double eps, int center,     \
        T *FASTBN_RESTRICT mean, T *FASTBN_RESTRICT invstd) {                                      \
    const ptrdiff_t n = 8 * NV;                                                                    \
    const fastbn_x8d zero = {0, 0, 0, 0, 0, 0, 0, 0};                                              \
    fastbn_x8d v[2][FASTBN_X_REG_MAX / 8], A0[2], A1[2], B0[2], B1[2], t;                          \
    double shift[2];                                                                               \
    int k, q;                                                                                      \
    _Pragma("GCC unroll 2") for (q = 0; q < ROWS; q++) {                                           \
        _Pragma("GCC unroll 16") for (k = 0; k < NV; k++)                                          \
            v[q][k] = fastbn_x_load8_##SUF(x + q * n + 8 * k);                                     \
        shift[q] = 0.0;                                                                            \
        if (center) {                                                                              \
            A0[q] = A1[q] = zero;                                                                  \
            _Pragma("GCC unroll 16") for (k = 0; k < NV; k += 2) {                                 \
                A0[q] += v[q][k];                                                                  \
                A1[q] += v[q][k + 1];                                                              \
            }                                                                                      \
            shift[q] = fastbn_x_hsum(A0[q] + A1[q]) / n;                                           \
        }                                                                                          \
        A0[q] = A1[q] = B0[q] = B1[q] = zero;                                                      \
        _Pragma("GCC unroll 16") for (k = 0; k < NV; k += 2) {                                     \
            t = v[q][k] - shift[q]; A0[q] += t; B0[q] += t * t;                                    \
            t = v[q][k + 1] - shift[q]; A1[q] += t; B1[q] += t * t;                                \
        }                                                                                          \
    }                                                                                              \
    _Pragma("GCC unroll 2") for (q = 0; q < ROWS; q++) {                                           \
        fastbn_sums m = {fastbn_x_hsum(A0[q] + A1[q]), fastbn_x_hsum(B0[q] + B1[q])};              \
        m = fastbn_moments(m, shift[q], n, center);                                                \
        T mf = (T)m.s1, sf = (T)fastbn_row_invstd(m.s2, n, eps);                                   \
        mean[q] = mf;                                                                              \
        invstd[q] = sf;                                                                            \
        fastbn_x_row_affine_##SUF(x + q * n, out + q * n, n, mf, sf, gamma, beta, 0);              \
    }                                                                                              \
}                                                                                                  \
/* Rows of 8 * NV values, two at a time (their instructions interleave) when both fit in the      \
 * registers. */                                                                                   \
FASTBN_X512_INLINE void fastbn_x_ln_reg_##SUF(                                                     \
        const int NV, const T *FASTBN_RESTRICT x, T *FASTBN_RESTRICT out, ptrdiff_t n_rows,        \
        const T *FASTBN_RESTRICT gamma, const T *FASTBN_RESTRICT beta, double eps, int center,     \
        T *FASTBN_RESTRICT mean, T *FASTBN_RESTRICT invstd) {                                      \
    const ptrdiff_t n = 8 * NV;                                                                    \
    ptrdiff_t r = 0;                                                                               \
    if (NV <= 8)                                                                                   \
        for (; r + 2 <= n_rows; r += 2)                                                            \
            fastbn_x_ln_reg_rows_##SUF(x + r * n, out + r * n, 2, NV, gamma, beta, eps, center,    \
                                       mean + r, invstd + r);                                      \
    for (; r < n_rows; r++)                                                                        \
        fastbn_x_ln_reg_rows_##SUF(x + r * n, out + r * n, 1, NV, gamma, beta, eps, center,        \
                                   mean + r, invstd + r);                                          \
}                                                                                                  \
/* Short layernorm rows, as fastbn_layernorm_rows_* (same arithmetic). */                         \
static FASTBN_X512 void fastbn_x_layernorm_rows_##SUF(                                             \
        const T *FASTBN_RESTRICT x, T *FASTBN_RESTRICT out, ptrdiff_t n_rows, ptrdiff_t n,         \
        const T *FASTBN_RESTRICT gamma, const T *FASTBN_RESTRICT beta, double eps, int center,     \
        T *FASTBN_RESTRICT mean, T *FASTBN_RESTRICT invstd) {                                      \
    ptrdiff_t r;                                                                                   \
    FASTBN_X_REG_SWITCH(n % 16 == 0 && n <= FASTBN_X_REG_MAX ? n / 8 : 0, return,                  \
                        fastbn_x_ln_reg_##SUF, x, out, n_rows, gamma, beta, eps, center, mean,     \
                        invstd)                                                                    \
    for (r = 0; r < n_rows; r++) {                                                                 \
        const T *xr = x + r * n;                                                                   \
        double shift = center ? fastbn_x_sum_##SUF(xr, n).s1 / n : 0.0;                            \
        fastbn_sums m = fastbn_moments(fastbn_x_shifted_sums_##SUF(xr, n, shift), shift, n,        \
                                       center);                                                    \
        T mf = (T)m.s1, sf = (T)fastbn_row_invstd(m.s2, n, eps);                                   \
        mean[r] = mf;                                                                              \
        invstd[r] = sf;                                                                            \
        fastbn_x_row_affine_##SUF(xr, out + r * n, n, mf, sf, gamma, beta, 0);                     \
    }                                                                                              \
}                                                                                                  \
/* Layernorm backward of short rows (see fastbn_layernorm_rows_grad_*), x and dy in registers:   \
 * fastbn_x_row_grad_sums_* (adding the row's dbeta/dgamma terms into db/dg), the coefficients,   \
 * then fastbn_x_row_dx_* with gamma, from the same registers. */                                 \
FASTBN_X512_INLINE void fastbn_x_lng_reg_##SUF(                                                    \
        const int NV, const T *FASTBN_RESTRICT x, const T *FASTBN_RESTRICT dy,                     \
        T *FASTBN_RESTRICT dx, ptrdiff_t n_rows, const T *FASTBN_RESTRICT gamma, const T *mean,    \
        const T *invstd, int center, double *FASTBN_RESTRICT db, double *FASTBN_RESTRICT dg) {     \
    const ptrdiff_t n = 8 * NV;                                                                    \
    const fastbn_x8d zero = {0, 0, 0, 0, 0, 0, 0, 0};                                              \
    ptrdiff_t r;                                                                                   \
    int k;                                                                                         \
    for (r = 0; r < n_rows; r++) {                                                                 \
        const T *xr = x + r * n, *yr = dy + r * n;                                                 \
        double m = center ? (double)mean[r] : 0.0, s = (double)invstd[r];                         \
        fastbn_x8d xv[FASTBN_X_REG_MAX / 8], gv[FASTBN_X_REG_MAX / 8], A[2], B[2], g, xc;          \
        A[0] = A[1] = B[0] = B[1] = zero;                                                          \
        _Pragma("GCC unroll 16") for (k = 0; k < NV; k++) {                                        \
            xv[k] = fastbn_x_load8_##SUF(xr + 8 * k);                                              \
            gv[k] = fastbn_x_load8_##SUF(yr + 8 * k);                                              \
        }                                                                                          \
        _Pragma("GCC unroll 16") for (k = 0; k < NV; k++) {                                        \
            g = gv[k];                                                                             \
            xc = xv[k] - m;                                                                        \
            fastbn_x_storev_d(db + 8 * k, fastbn_x_loadv_d(db + 8 * k) + g);                       \
            fastbn_x_storev_d(dg + 8 * k, fastbn_x_loadv_d(dg + 8 * k) + g * xc * s);              \
            g *= fastbn_x_load8_##SUF(gamma + 8 * k);                                              \
            A[k & 1] += g;                                                                         \
            B[k & 1] += g * xc;                                                                    \
        }                                                                                          \
        fastbn_dx_coefs c = fastbn_row_dx_coefs(s, fastbn_x_hsum(A[0] + A[1]),                     \
                                                fastbn_x_hsum(B[0] + B[1]), n, center);            \
        _Pragma("GCC unroll 16") for (k = 0; k < NV; k += 2)                                       \
            fastbn_x_put2_##SUF(                                                                   \
                dx + r * n + 8 * k,                                                                \
                s * fastbn_x_load8_##SUF(gamma + 8 * k) * gv[k] - c.s3 * (xv[k] - m) + c.b,        \
                s * fastbn_x_load8_##SUF(gamma + 8 * k + 8) * gv[k + 1]                            \
                    - c.s3 * (xv[k + 1] - m) + c.b);                                               \
    }                                                                                              \
}                                                                                                  \
/* The AVX-512 part of fastbn_layernorm_rows_grad_*: rows short enough for the registers (1), or  \
 * nothing (0: the per-row loop there does them). */                                              \
static FASTBN_X512 int fastbn_x_layernorm_rows_grad_reg_##SUF(                                     \
        const T *FASTBN_RESTRICT x, const T *FASTBN_RESTRICT dy, T *FASTBN_RESTRICT dx,            \
        ptrdiff_t n_rows, ptrdiff_t n, const T *FASTBN_RESTRICT gamma, const T *mean,              \
        const T *invstd, int center, double *FASTBN_RESTRICT db, double *FASTBN_RESTRICT dg) {     \
    FASTBN_X_REG_SWITCH(n % 16 == 0 && n <= FASTBN_X_REG_MAX ? n / 8 : 0, return 1,                \
                        fastbn_x_lng_reg_##SUF, x, dy, dx, n_rows, gamma, mean, invstd, center,    \
                        db, dg)                                                                    \
    return 0;                                                                                      \
}

FASTBN_DEFINE_X512_LAYERNORM(float, f)
FASTBN_DEFINE_X512_LAYERNORM(double, d)
FASTBN_DEFINE_X512_ROWS4(float, f)
FASTBN_DEFINE_X512_ROWS4(double, d)

/* Layernorm/groupnorm dx in double from T: out = invstd * gamma * dy - s3 * (x - mean) + b, or
 * a * dy - s3 * (x - mean) + b without gamma (the expressions of fastbn_row_dx_*). */
#define FASTBN_X_ROW_DX8(SUF, j)                                                                   \
    ((gamma ? invstd * fastbn_x_load8_##SUF(gamma + (j)) : (fastbn_x8d)_mm512_set1_pd(a))          \
     * fastbn_x_load8_##SUF(dy + (j)) - s3 * (fastbn_x_load8_##SUF(x + (j)) - mean) + b)
#define FASTBN_X_ROW_DX1(T, j)                                                                     \
    (T)((gamma ? invstd * (double)gamma[j] * (double)dy[j] : a * (double)dy[j])                    \
        - s3 * ((double)x[j] - mean) + b)

static FASTBN_X512 void fastbn_x_row_dx_f(
        const float *FASTBN_RESTRICT x, const float *FASTBN_RESTRICT dy, float *FASTBN_RESTRICT dx,
        ptrdiff_t n, double mean, double invstd, const float *FASTBN_RESTRICT gamma, double a,
        double s3, double b, int stream) {
    ptrdiff_t j = 0;
    if (stream)
        for (; j < n && ((uintptr_t)(dx + j) & 63); j++) dx[j] = FASTBN_X_ROW_DX1(float, j);
    for (; j + 16 <= n; j += 16) {
        __m256 lo = _mm512_cvtpd_ps((__m512d)(FASTBN_X_ROW_DX8(f, j)));
        __m256 hi = _mm512_cvtpd_ps((__m512d)(FASTBN_X_ROW_DX8(f, j + 8)));
        __m512 v = _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
        if (stream) _mm512_stream_ps(dx + j, v);
        else _mm512_storeu_ps(dx + j, v);
    }
    for (; j < n; j++) dx[j] = FASTBN_X_ROW_DX1(float, j);
    if (stream) _mm_sfence();
}

static FASTBN_X512 void fastbn_x_row_dx_d(
        const double *FASTBN_RESTRICT x, const double *FASTBN_RESTRICT dy,
        double *FASTBN_RESTRICT dx, ptrdiff_t n, double mean, double invstd,
        const double *FASTBN_RESTRICT gamma, double a, double s3, double b, int stream) {
    ptrdiff_t j = 0;
    if (stream)
        for (; j < n && ((uintptr_t)(dx + j) & 63); j++) dx[j] = FASTBN_X_ROW_DX1(double, j);
    for (; j + 8 <= n; j += 8) {
        __m512d v = (__m512d)(FASTBN_X_ROW_DX8(d, j));
        if (stream) _mm512_stream_pd(dx + j, v);
        else _mm512_storeu_pd(dx + j, v);
    }
    for (; j < n; j++) dx[j] = FASTBN_X_ROW_DX1(double, j);
    if (stream) _mm_sfence();
}

#define FASTBN_X_NAME "avx512"
#else
#define FASTBN_HAVE_X512 0
static const int fastbn_x512_enabled = 0;
static void fastbn_simd_init(void) {}
#endif

/* The instruction set the hot loops use, for fastbn.show_config(). */
static const char *fastbn_simd_name(void) {
#if FASTBN_HAVE_X512
    if (fastbn_x512_enabled) return "avx512";
#endif
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 6 && defined(__x86_64__)               \
    && defined(__linux__) && defined(__GLIBC__)
    return __builtin_cpu_supports("avx2") ? "avx2" : "baseline";
#else
    return "baseline";
#endif
}

#endif
