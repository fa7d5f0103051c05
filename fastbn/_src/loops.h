/* Hot reduction loops of fastbn's kernels, for float (suffix _f) and double (suffix _d).
 *
 * Why C: a double-precision sum is a loop-carried dependency that the compiler may not vectorise
 * without -ffast-math (reassociation). Here each sum is split into FASTBN_LANES independent
 * partial sums, lane k taking elements j with j % FASTBN_LANES == k, which GCC and Clang vectorise
 * at -O3 with any instruction set; the lanes are then added in a fixed order. The summation order
 * therefore depends only on n, never on the thread count: results are reproducible bit for bit.
 *
 * Every function reads n contiguous values (n may be 0) and returns its two sums by value, so that
 * a caller inside an OpenMP loop keeps them in private variables. `restrict`: outputs never alias
 * inputs.
 */
#ifndef FASTBN_LOOPS_H
#define FASTBN_LOOPS_H

#include <stddef.h>

#define FASTBN_LANES 8

typedef struct { double s1, s2; } fastbn_sums;

#if defined(_MSC_VER)
#define FASTBN_RESTRICT __restrict
#else
#define FASTBN_RESTRICT __restrict__
#endif

#define FASTBN_DEFINE_LOOPS(T, SUF)                                                                \
/* s1 = sum(x - shift), s2 = sum((x - shift)^2). */                                                \
static inline fastbn_sums fastbn_shifted_sums_##SUF(const T *FASTBN_RESTRICT x, ptrdiff_t n,       \
                                                    double shift) {                                \
    double a[FASTBN_LANES] = {0}, b[FASTBN_LANES] = {0}, sa = 0.0, sb = 0.0, t;                    \
    ptrdiff_t j = 0, k;                                                                            \
    for (; j + FASTBN_LANES <= n; j += FASTBN_LANES)                                               \
        for (k = 0; k < FASTBN_LANES; k++) {                                                       \
            t = (double)x[j + k] - shift;                                                          \
            a[k] += t;                                                                             \
            b[k] += t * t;                                                                         \
        }                                                                                          \
    for (k = 0; k < FASTBN_LANES; k++) { sa += a[k]; sb += b[k]; }                                 \
    for (; j < n; j++) { t = (double)x[j] - shift; sa += t; sb += t * t; }                         \
    fastbn_sums r = {sa, sb};                                                                      \
    return r;                                                                                      \
}                                                                                                  \
                                                                                                   \
/* s1 = sum(w * dy), s2 = sum(w * dy * (x - mean)) with a scalar weight w. */                      \
static inline fastbn_sums fastbn_grad_sums_##SUF(const T *FASTBN_RESTRICT x,                       \
                                          const T *FASTBN_RESTRICT dy, ptrdiff_t n,                \
                                          double mean) {                                           \
    double a[FASTBN_LANES] = {0}, b[FASTBN_LANES] = {0}, sa = 0.0, sb = 0.0, g;                    \
    ptrdiff_t j = 0, k;                                                                            \
    for (; j + FASTBN_LANES <= n; j += FASTBN_LANES)                                               \
        for (k = 0; k < FASTBN_LANES; k++) {                                                       \
            g = (double)dy[j + k];                                                                 \
            a[k] += g;                                                                             \
            b[k] += g * ((double)x[j + k] - mean);                                                 \
        }                                                                                          \
    for (k = 0; k < FASTBN_LANES; k++) { sa += a[k]; sb += b[k]; }                                 \
    for (; j < n; j++) { g = (double)dy[j]; sa += g; sb += g * ((double)x[j] - mean); }            \
    fastbn_sums r = {sa, sb};                                                                      \
    return r;                                                                                      \
}                                                                                                  \
                                                                                                   \
/* Layernorm backward, one row: per column c, db[c] += dy, dg[c] += dy * (x - mean) * invstd;      \
 * returns s1 = sum(gamma * dy) and s2 = sum(gamma * dy * (x - mean)). */                          \
static inline fastbn_sums fastbn_row_grad_sums_##SUF(const T *FASTBN_RESTRICT x,                   \
                                              const T *FASTBN_RESTRICT dy,                         \
                                              const T *FASTBN_RESTRICT gamma, ptrdiff_t n,         \
                                              double mean, double invstd,                          \
                                              double *FASTBN_RESTRICT db,                          \
                                              double *FASTBN_RESTRICT dg) {                        \
    double a[FASTBN_LANES] = {0}, b[FASTBN_LANES] = {0}, sa = 0.0, sb = 0.0, g, xc;                \
    ptrdiff_t j = 0, k;                                                                            \
    for (; j + FASTBN_LANES <= n; j += FASTBN_LANES)                                               \
        for (k = 0; k < FASTBN_LANES; k++) {                                                       \
            g = (double)dy[j + k];                                                                 \
            xc = (double)x[j + k] - mean;                                                          \
            db[j + k] += g;                                                                        \
            dg[j + k] += g * xc * invstd;                                                          \
            g *= (double)gamma[j + k];                                                             \
            a[k] += g;                                                                             \
            b[k] += g * xc;                                                                        \
        }                                                                                          \
    for (k = 0; k < FASTBN_LANES; k++) { sa += a[k]; sb += b[k]; }                                 \
    for (; j < n; j++) {                                                                           \
        g = (double)dy[j];                                                                         \
        xc = (double)x[j] - mean;                                                                  \
        db[j] += g;                                                                                \
        dg[j] += g * xc * invstd;                                                                  \
        g *= (double)gamma[j];                                                                     \
        sa += g;                                                                                   \
        sb += g * xc;                                                                              \
    }                                                                                              \
    fastbn_sums r = {sa, sb};                                                                      \
    return r;                                                                                      \
}

FASTBN_DEFINE_LOOPS(float, f)
FASTBN_DEFINE_LOOPS(double, d)

#endif
