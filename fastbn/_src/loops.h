/* Hot loops of fastbn's kernels: the double-precision reductions, the (M, D) block sums, the
 * elementwise sweeps (affine, dx) with streaming stores, for float and double.
 *
 * Why C: a double-precision sum is a loop-carried dependency that compilers do not vectorise
 * without -ffast-math (reassociation), and float -> double conversion defeats their
 * auto-vectorisation of hand-split sums; streaming stores, masked partial vectors and prefetches
 * are not expressible in Cython.
 *
 * Layout (NumPy's *.dispatch.c.src model, bottleneck's templates):
 * - simd.h: 64-byte vector types (GCC vector extensions), the few operations they cannot express
 *   (per instruction set), and the determinism contract: every instruction set gives the same bits.
 * - loops_template.c: every loop, written once over an element type T.
 * - this file: the scalar steps shared by the loops, then loops_template.c compiled for each
 *   instruction set (baseline, AVX2, AVX-512) and each T, under `#pragma GCC target`; each copy
 *   fills a table of function pointers, and fastbn_simd_init() picks one table per T once, at
 *   import, from the CPU (FASTBN_DISABLE_AVX512=1 stops at AVX2, FASTBN_DISABLE_AVX2=1 at the
 *   baseline). Callers name a loop without its type: fastbn_sum(x, n) is a _Generic macro on the first pointer's type (float or double; a
 *   wrong type is a compile error).
 * GCC on x86-64 builds the three instruction sets; other compilers and CPUs build the baseline.
 */
#ifndef FASTBN_LOOPS_H
#define FASTBN_LOOPS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__GNUC__)
#error "fastbn's loops need GCC vector extensions (GCC or Clang)"
#endif
#define RESTRICT __restrict__

typedef struct { double s1, s2; } fastbn_sums;

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
 * -invstd * sum_g / n, the mean's gradient (0 when not centred). s3 multiplies invstd into
 * sum_gxc / n one factor at a time, which keeps it at the scale of gamma * dy times invstd^2:
 * invstd^3 alone underflows for a row's std above about 1e103 and overflows for one below
 * about 1e-103 (a constant row with eps 1e-300, whose sum_gxc is 0, then gave NaN). */
typedef struct { double s3, b; } fastbn_dx_coefs;
static inline fastbn_dx_coefs fastbn_row_dx_coefs(double invstd, double sum_g, double sum_gxc,
                                                  ptrdiff_t n, int center) {
    fastbn_dx_coefs k;
    k.s3 = invstd * (invstd * (invstd * sum_gxc / n));
    k.b = center ? -invstd * sum_g / n : 0.0;
    return k;
}

/* Register-resident short rows (AVX-512, see ln_reg_rows): rows of up to FASTBN_REG_MAX values, a
 * multiple of 16 from 16 to 128 (x and dy of a row of 128 values, as doubles, take 32 registers).
 * The value is fastbn/_planner.py's (COMPILED), which setup.py passes to the compiler; the
 * planner's runtime constants reach the loops as arguments. FASTBN_REG_CASES: a switch case per
 * register-resident row length, 8 * NV values (NV even). */
#ifndef FASTBN_REG_MAX
#error "FASTBN_REG_MAX is set by setup.py from fastbn/_planner.py (COMPILED)"
#endif
#if FASTBN_REG_MAX % 16 || FASTBN_REG_MAX < 16 || FASTBN_REG_MAX > 128
#error "FASTBN_REG_MAX must be a multiple of 16 from 16 to 128"
#endif
#define FASTBN_REG_CASES_16 FASTBN_REG_CASE(2)
#define FASTBN_REG_CASES_32 FASTBN_REG_CASES_16 FASTBN_REG_CASE(4)
#define FASTBN_REG_CASES_48 FASTBN_REG_CASES_32 FASTBN_REG_CASE(6)
#define FASTBN_REG_CASES_64 FASTBN_REG_CASES_48 FASTBN_REG_CASE(8)
#define FASTBN_REG_CASES_80 FASTBN_REG_CASES_64 FASTBN_REG_CASE(10)
#define FASTBN_REG_CASES_96 FASTBN_REG_CASES_80 FASTBN_REG_CASE(12)
#define FASTBN_REG_CASES_112 FASTBN_REG_CASES_96 FASTBN_REG_CASE(14)
#define FASTBN_REG_CASES_128 FASTBN_REG_CASES_112 FASTBN_REG_CASE(16)
#define FASTBN_REG_CASES_UPTO_(max) FASTBN_REG_CASES_##max
#define FASTBN_REG_CASES_UPTO(max) FASTBN_REG_CASES_UPTO_(max)
#define FASTBN_REG_CASES FASTBN_REG_CASES_UPTO(FASTBN_REG_MAX)

/* Streaming stores (an output much larger than the caches): they skip reading each destination
 * cache line before overwriting it, so a sweep moves 2 bytes of memory traffic per output byte
 * instead of 3, as a memcpy does. Whole 64-byte lines only: values before the first line boundary
 * of a run at p get ordinary stores (0 if not streamed); p must be aligned to its element size. */
static inline ptrdiff_t fastbn_head(const void *p, ptrdiff_t n, size_t size, int stream) {
    ptrdiff_t h = stream ? (ptrdiff_t)(((64 - ((uintptr_t)p & 63)) & 63) / size) : 0;
    return h < n ? h : n;
}
/* Whether an output at p may be streamed: an array not aligned to its element size (possible
 * with a caller's out= buffer) never reaches a 64-byte boundary at an element. */
static inline int fastbn_streamable(const void *p, size_t size, int stream) {
    return stream && !((uintptr_t)p & (size - 1));
}

/* The packed ReLU mask of the fused ops: bit k of byte b is element 8 * b + k of the flattened
 * array (np.packbits(flat, bitorder='little')). put_bits writes n <= 16 bits at bit position pos,
 * the bytes it fills whole with plain stores and the others by read-modify-write of their own
 * bits only; so two threads never write one byte as long as the runs they are given start and
 * end at multiples of 8 elements (the kernels cut their tasks so), and one thread writes runs
 * that share bytes in sequence. get_bits reads n <= 16 bits (only the bytes that hold them). */
static inline __attribute__((always_inline)) void fastbn_put_bits(uint8_t *mask, ptrdiff_t pos, unsigned bits, int n) {
    uint8_t *p = mask + (pos >> 3);
    int o = (int)(pos & 7);
    uint32_t keep = ((1u << n) - 1) << o, v = (bits << o) & keep;
    for (; keep; keep >>= 8, v >>= 8, p++) {
        uint32_t k = keep & 0xff;
        *p = k == 0xff ? (uint8_t)v : (uint8_t)((*p & ~k) | (v & k));
    }
}
/* A run's bits written in order, 32 at a time: the long runs of the affine sweeps push each
 * vector's bits into a sink (at flat index pos) instead of calling put_bits per vector. Only the
 * run's own bits of its first and last bytes are written (read-modify-write), the bytes between
 * them with plain stores. */
typedef struct { uint8_t *p; uint64_t acc; int n, lo; } fastbn_sink;
static inline __attribute__((always_inline)) fastbn_sink fastbn_sink_at(uint8_t *mask, ptrdiff_t pos) {
    fastbn_sink s;
    s.p = mask ? mask + (pos >> 3) : NULL;
    s.n = s.lo = (int)(pos & 7);
    s.acc = 0;
    return s;
}
static inline __attribute__((always_inline)) void fastbn_sink_bytes(fastbn_sink *s, int nbits) {
    int k;
    for (k = 0; 8 * k < nbits; k++) {
        unsigned own = (k == 0 ? 0xffu << s->lo : 0xffu) & (nbits - 8 * k < 8 ? (1u << (nbits - 8 * k)) - 1 : 0xffu);
        uint8_t v = (uint8_t)(s->acc >> (8 * k));
        s->p[k] = own == 0xff ? v : (uint8_t)((s->p[k] & ~own) | (v & own));
    }
}
static inline __attribute__((always_inline)) void fastbn_sink_push(fastbn_sink *s, unsigned bits, int n) {
    s->acc |= (uint64_t)bits << s->n;
    s->n += n;
    if (s->n >= 32) {
        if (s->lo) {
            fastbn_sink_bytes(s, 32);
            s->lo = 0;
        } else {
            uint32_t w = (uint32_t)s->acc;
            memcpy(s->p, &w, 4);
        }
        s->p += 4;
        s->acc >>= 32;
        s->n -= 32;
    }
}
static inline __attribute__((always_inline)) void fastbn_sink_end(fastbn_sink *s) {
    if (s->n > s->lo) fastbn_sink_bytes(s, s->n);
}
static inline __attribute__((always_inline)) unsigned fastbn_get_bits(const uint8_t *mask, ptrdiff_t pos, int n) {
    const uint8_t *p = mask + (pos >> 3);
    int o = (int)(pos & 7);
    uint32_t v = p[0];
    if (o + n > 8) v |= (uint32_t)p[1] << 8;
    if (o + n > 16) v |= (uint32_t)p[2] << 16;
    return (v >> o) & ((1u << n) - 1);
}

#if defined(__x86_64__) && !defined(__clang__)
#define FASTBN_MULTI_ISA 1
#else
#define FASTBN_MULTI_ISA 0
#endif

/* Baseline: the compiler's default target (SSE2 on x86-64). */
#define FASTBN_ISA_LEVEL 0
#define FASTBN_ISA_SUFFIX baseline
#define FASTBN_REG_ROWS 0 /* 16 xmm: the register-resident rows would spill */
#include "loops_isa.h"

#if FASTBN_MULTI_ISA
/* AVX2 (no FMA: -ffp-contract=off would not contract anyway). */
#pragma GCC push_options
#pragma GCC target("avx2")
#if !defined(__AVX2__)
#error "#pragma GCC target did not define __AVX2__"
#endif
#define FASTBN_ISA_LEVEL 1
#define FASTBN_ISA_SUFFIX avx2
#define FASTBN_REG_ROWS 0 /* 16 ymm */
#include "loops_isa.h"
#pragma GCC pop_options

/* AVX-512 F, DQ, VL, BW. */
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw")
#if !defined(__AVX512F__) || !defined(__AVX512DQ__)
#error "#pragma GCC target did not define __AVX512F__"
#endif
#define FASTBN_ISA_LEVEL 2
#define FASTBN_ISA_SUFFIX avx512
#define FASTBN_REG_ROWS 1 /* 32 zmm: rows of up to FASTBN_REG_MAX values stay in registers */
#include "loops_isa.h"
#pragma GCC pop_options
#endif

/* The loops in use, per element type: chosen once, at import. */
static fastbn_loops_f fastbn_f;
static fastbn_loops_d fastbn_d;
static const char *fastbn_isa_name = "baseline";

static void fastbn_simd_init(void) {
    const char *off = getenv("FASTBN_DISABLE_AVX512"), *off2 = getenv("FASTBN_DISABLE_AVX2");
    int no_avx2 = off2 && *off2 && *off2 != '0';
    fastbn_f = fastbn_table_baseline_f;
    fastbn_d = fastbn_table_baseline_d;
    fastbn_isa_name = "baseline";
#if FASTBN_MULTI_ISA
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")
        && !(off && *off && *off != '0') && !no_avx2) {
        fastbn_f = fastbn_table_avx512_f;
        fastbn_d = fastbn_table_avx512_d;
        fastbn_isa_name = "avx512";
    } else if (__builtin_cpu_supports("avx2") && !no_avx2) {
        fastbn_f = fastbn_table_avx2_f;
        fastbn_d = fastbn_table_avx2_d;
        fastbn_isa_name = "avx2";
    }
#else
    (void)off;
    (void)no_avx2;
#endif
}
/* The instruction set the hot loops use, for fastbn.show_config(). */
static const char *fastbn_simd_name(void) { return fastbn_isa_name; }

/* fastbn_<loop>(x, ...): the float or the double version of a loop, by the type of x. */
#define FASTBN_PICK(x, name) _Generic((x), float *: fastbn_f.name, const float *: fastbn_f.name, double *: fastbn_d.name, const double *: fastbn_d.name)
#define fastbn_sum(x, ...) FASTBN_PICK(x, sum)(x, __VA_ARGS__)
#define fastbn_shifted_sums(x, ...) FASTBN_PICK(x, shifted_sums)(x, __VA_ARGS__)
#define fastbn_sum_pf(x, ...) FASTBN_PICK(x, sum_pf)(x, __VA_ARGS__)
#define fastbn_shifted_sums_pf(x, ...) FASTBN_PICK(x, shifted_sums_pf)(x, __VA_ARGS__)
#define fastbn_grad_sums_pf(x, ...) FASTBN_PICK(x, grad_sums_pf)(x, __VA_ARGS__)
#define fastbn_row_grad_sums(x, ...) FASTBN_PICK(x, row_grad_sums)(x, __VA_ARGS__)
#define fastbn_rows4_grad_sums(x, ...) FASTBN_PICK(x, rows4_grad_sums)(x, __VA_ARGS__)
#define fastbn_plane_affine(x, ...) FASTBN_PICK(x, plane_affine)(x, __VA_ARGS__)
#define fastbn_plane_dx(x, ...) FASTBN_PICK(x, plane_dx)(x, __VA_ARGS__)
#define fastbn_row_affine(x, ...) FASTBN_PICK(x, row_affine)(x, __VA_ARGS__)
#define fastbn_row_dx(x, ...) FASTBN_PICK(x, row_dx)(x, __VA_ARGS__)
#define fastbn_cols_shifted_sums(x, ...) FASTBN_PICK(x, cols_shifted_sums)(x, __VA_ARGS__)
#define fastbn_cols_grad_sums(x, ...) FASTBN_PICK(x, cols_grad_sums)(x, __VA_ARGS__)
#define fastbn_cols_affine(x, ...) FASTBN_PICK(x, cols_affine)(x, __VA_ARGS__)
#define fastbn_cols_dx(x, ...) FASTBN_PICK(x, cols_dx)(x, __VA_ARGS__)
#define fastbn_layernorm_rows(x, ...) FASTBN_PICK(x, layernorm_rows)(x, __VA_ARGS__)
#define fastbn_layernorm_rows_grad(x, ...) FASTBN_PICK(x, layernorm_rows_grad)(x, __VA_ARGS__)
#define fastbn_finish_moments(x, ...) FASTBN_PICK(x, finish_moments)(x, __VA_ARGS__)
#define fastbn_fold(x, ...) FASTBN_PICK(x, fold)(x, __VA_ARGS__)
#define fastbn_test_fold(x, ...) FASTBN_PICK(x, test_fold)(x, __VA_ARGS__)
#define fastbn_store_sums(x, ...) FASTBN_PICK(x, store_sums)(x, __VA_ARGS__) /* double partials */
#define fastbn_grad_coefs(x, ...) FASTBN_PICK(x, grad_coefs)(x, __VA_ARGS__)
#define fastbn_update_running(x, ...) FASTBN_PICK(x, update_running)(x, __VA_ARGS__)

#endif
