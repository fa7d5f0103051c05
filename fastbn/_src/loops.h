/* Hot reduction loops of fastbn's kernels, for float (suffix _f) and double (suffix _d).
 *
 * Why C: a double-precision sum is a loop-carried dependency that compilers do not vectorise
 * without -ffast-math (reassociation), and float -> double conversion defeats their
 * auto-vectorisation of hand-split sums. Here the sums use GCC/Clang vector extensions: four
 * independent 2-wide double accumulators (8 lanes), element j going to lane j % 8, added in a fixed
 * order at the end. The summation order depends only on n -- never on the thread count or on the
 * address of the data -- so results are reproducible bit for bit. Other compilers get the same
 * lanes as plain scalar loops (same results, slower).
 *
 * Every function reads n contiguous values (n may be 0) and returns its two sums by value, so that
 * a caller inside an OpenMP loop keeps them in private variables. FASTBN_RESTRICT: outputs never
 * alias inputs.
 */
#ifndef FASTBN_LOOPS_H
#define FASTBN_LOOPS_H

#include <stddef.h>
#include <string.h>

typedef struct { double s1, s2; } fastbn_sums;

#if defined(_MSC_VER) && !defined(__clang__)
#define FASTBN_RESTRICT __restrict
#else
#define FASTBN_RESTRICT __restrict__
#endif

#if defined(__GNUC__) || defined(__clang__)
typedef double fastbn_v2d __attribute__((vector_size(16)));
typedef float fastbn_v2f __attribute__((vector_size(8)));

#if defined(__SSE2__)
#include <emmintrin.h>
/* GCC lowers the generic 2-float conversion to scalar code: use cvtps2pd directly. */
static inline fastbn_v2d fastbn_load2_f(const float *p) {
    return (fastbn_v2d)_mm_cvtps_pd(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)p)));
}
#else
static inline fastbn_v2d fastbn_load2_f(const float *p) {
    fastbn_v2f v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, fastbn_v2d);
}
#endif
static inline fastbn_v2d fastbn_load2_d(const double *p) {
    fastbn_v2d v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void fastbn_store2(double *p, fastbn_v2d v) { memcpy(p, &v, sizeof v); }
/* Lanes 0..7 held in four vectors, added in a fixed order. */
static inline double fastbn_hsum(fastbn_v2d a0, fastbn_v2d a1, fastbn_v2d a2, fastbn_v2d a3) {
    fastbn_v2d s = (a0 + a1) + (a2 + a3);
    return s[0] + s[1];
}
#define FASTBN_VEC(BODY4, BODY1)                                                           \
    fastbn_v2d a0 = {0, 0}, a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;         \
    ptrdiff_t j = 0;                                                                               \
    for (; j + 8 <= n; j += 8) {                                                                   \
        BODY4(0, a0, b0) BODY4(2, a1, b1) BODY4(4, a2, b2) BODY4(6, a3, b3)                        \
    }                                                                                              \
    double sa = fastbn_hsum(a0, a1, a2, a3), sb = fastbn_hsum(b0, b1, b2, b3);                     \
    for (; j < n; j++) { BODY1 }                                                                   \
    fastbn_sums r = {sa, sb};                                                                      \
    return r;
#else
#define FASTBN_VEC(BODY4, BODY1)                                                           \
    double sa = 0.0, sb = 0.0;                                                                     \
    ptrdiff_t j = 0;                                                                               \
    for (; j < n; j++) { BODY1 }                                                                   \
    fastbn_sums r = {sa, sb};                                                                      \
    return r;
#endif

/* Two elements j+o, j+o+1 into accumulators A (first sum) and B (second sum). */
#define FASTBN_SHIFTED2(o, A, B)                                                                   \
    { fastbn_v2d t = LOAD2(x + j + o) - shift; A += t; B += t * t; }
#define FASTBN_SHIFTED1 { double t = (double)x[j] - shift; sa += t; sb += t * t; }
#define FASTBN_GRAD2(o, A, B)                                                                      \
    { fastbn_v2d g = LOAD2(dy + j + o); A += g; B += g * (LOAD2(x + j + o) - mean); }
#define FASTBN_GRAD1 { double g = (double)dy[j]; sa += g; sb += g * ((double)x[j] - mean); }
#define FASTBN_ROW2(o, A, B)                                                                       \
    { fastbn_v2d g = LOAD2(dy + j + o), xc = LOAD2(x + j + o) - mean;                               \
      fastbn_store2(db + j + o, fastbn_load2_d(db + j + o) + g);                                   \
      fastbn_store2(dg + j + o, fastbn_load2_d(dg + j + o) + g * xc * invstd);                     \
      g *= LOAD2(gamma + j + o); A += g; B += g * xc; }
#define FASTBN_ROW1 { double g = (double)dy[j], xc = (double)x[j] - mean;                          \
      db[j] += g; dg[j] += g * xc * invstd; g *= (double)gamma[j]; sa += g; sb += g * xc; }

#define FASTBN_DEFINE_LOOPS(T, SUF)                                                                \
/* s1 = sum(x - shift), s2 = sum((x - shift)^2). */                                                \
static inline fastbn_sums fastbn_shifted_sums_##SUF(const T *FASTBN_RESTRICT x, ptrdiff_t n,       \
                                                    double shift) {                                \
    FASTBN_VEC(FASTBN_SHIFTED2, FASTBN_SHIFTED1)                                           \
}                                                                                                  \
/* s1 = sum(dy), s2 = sum(dy * (x - mean)). */                                                     \
static inline fastbn_sums fastbn_grad_sums_##SUF(const T *FASTBN_RESTRICT x,                       \
                                                 const T *FASTBN_RESTRICT dy, ptrdiff_t n,         \
                                                 double mean) {                                    \
    FASTBN_VEC(FASTBN_GRAD2, FASTBN_GRAD1)                                                 \
}                                                                                                  \
/* Layernorm backward, one row: per column j, db[j] += dy, dg[j] += dy * (x - mean) * invstd;      \
 * returns s1 = sum(gamma * dy), s2 = sum(gamma * dy * (x - mean)). */                             \
static inline fastbn_sums fastbn_row_grad_sums_##SUF(                                              \
        const T *FASTBN_RESTRICT x, const T *FASTBN_RESTRICT dy, const T *FASTBN_RESTRICT gamma,   \
        ptrdiff_t n, double mean, double invstd,                                                   \
        double *FASTBN_RESTRICT db, double *FASTBN_RESTRICT dg) {                                  \
    FASTBN_VEC(FASTBN_ROW2, FASTBN_ROW1)                                                   \
}

#define LOAD2 fastbn_load2_f
FASTBN_DEFINE_LOOPS(float, f)
#undef LOAD2
#define LOAD2 fastbn_load2_d
FASTBN_DEFINE_LOOPS(double, d)
#undef LOAD2

#endif
