/* The vector layer of fastbn's hot loops: fixed-width vector types and the few operations that GCC
 * vector extensions cannot express. Every intrinsic of the kernels is in this file.
 *
 * Determinism contract (every instruction set computes the same bits):
 * - A loop is written once (loops_template.c) over 64-byte vectors: fastbn_vd (8 doubles) and
 *   fastbn_vf (16 floats). GCC lowers each vector operation to 1 zmm, 2 ymm or 4 xmm instructions
 *   per instruction set; lane for lane the operations are the same IEEE operations.
 * - Double sums of a contiguous run use 16 fixed lanes: element j goes to lane j % 16 (lanes 0-7 in
 *   one fastbn_vd, 8-15 in another), the two vectors are added (lanes l and l + 8 first), then the
 *   eight lanes by fastbn_hsum's fixed tree, then the n % 16 last elements one by one. The order
 *   depends on n only: never on the thread count, the address of the data or the instruction set.
 * - Combine orders are written out in the loops (parentheses), never left to the compiler.
 * - No fused multiply-add: the build passes -ffp-contract=off (AVX2 and AVX-512 have FMA; a
 *   contracted a * b + c rounds once instead of twice).
 * - Partial vectors are read and written with masked loads and stores (emulated through a small
 *   buffer below AVX-512): lanes past the end are neither read nor written.
 *
 * This header is included once per instruction set (see loops.h): the types once, the functions
 * each time, named by FASTBN_ISA(name) and compiled under that instruction set's target pragma.
 * FASTBN_ISA_LEVEL: 0 baseline (SSE2 on x86-64, or any CPU), 1 AVX2, 2 AVX-512 (F, DQ, VL, BW).
 */
#ifndef FASTBN_SIMD_TYPES
#define FASTBN_SIMD_TYPES

#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi" /* 64-byte vectors only pass between inlined helpers */
#endif

#define FASTBN_INLINE static inline __attribute__((always_inline))
typedef double fastbn_vd __attribute__((vector_size(64))); /* 8 doubles */
typedef float fastbn_vf __attribute__((vector_size(64)));  /* 16 floats */
typedef float fastbn_vf8 __attribute__((vector_size(32))); /* 8 floats */
typedef double fastbn_vd4 __attribute__((vector_size(32))); /* 4 doubles (accumulators, AVX2) */
typedef double fastbn_vd2 __attribute__((vector_size(16))); /* 2 doubles (accumulators, baseline) */

/* The eight lanes of a, added in a fixed order: ((0 + 4) + (1 + 5)) + ((2 + 6) + (3 + 7)). */
FASTBN_INLINE double fastbn_hsum(fastbn_vd a) {
    double s0 = a[0] + a[4], s1 = a[1] + a[5], s2 = a[2] + a[6], s3 = a[3] + a[7];
    return (s0 + s1) + (s2 + s3);
}
/* fastbn_<name>_<suffix>: the names of one instruction set's copies. */
#define FASTBN_CAT3_(a, b, c) a##_##b##_##c
#define FASTBN_CAT3(a, b, c) FASTBN_CAT3_(a, b, c)
#define FASTBN_CAT4_(a, b, c, d) a##_##b##_##c##_##d
#define FASTBN_CAT4(a, b, c, d) FASTBN_CAT4_(a, b, c, d)
#define FASTBN_ISA(name) FASTBN_CAT3(fastbn, name, FASTBN_ISA_SUFFIX)
#endif /* FASTBN_SIMD_TYPES */


/* A sum of fastbn_vd values carried from one loop iteration to the next (an accumulator), held
 * as this instruction set's own vectors: below AVX-512, GCC keeps a carried 64-byte vector in
 * memory and moves its lanes through general registers on every iteration (the AVX2 sums took
 * 2-3x as long; docs/decisions.md). Lane for lane, acc_add makes the additions of fastbn_vd's +=. */
#if FASTBN_ISA_LEVEL >= 2
typedef struct { fastbn_vd v; } FASTBN_ISA(acc);
FASTBN_INLINE void FASTBN_ISA(acc_add)(FASTBN_ISA(acc) *a, fastbn_vd x) { a->v += x; }
FASTBN_INLINE fastbn_vd FASTBN_ISA(acc_get)(FASTBN_ISA(acc) a) { return a.v; }
#elif FASTBN_ISA_LEVEL == 1
typedef struct { fastbn_vd4 lo, hi; } FASTBN_ISA(acc);
FASTBN_INLINE void FASTBN_ISA(acc_add)(FASTBN_ISA(acc) *a, fastbn_vd x) {
    a->lo += __builtin_shufflevector(x, x, 0, 1, 2, 3);
    a->hi += __builtin_shufflevector(x, x, 4, 5, 6, 7);
}
FASTBN_INLINE fastbn_vd FASTBN_ISA(acc_get)(FASTBN_ISA(acc) a) {
    return __builtin_shufflevector(a.lo, a.hi, 0, 1, 2, 3, 4, 5, 6, 7);
}
#else
typedef struct { fastbn_vd2 p0, p1, p2, p3; } FASTBN_ISA(acc);
FASTBN_INLINE void FASTBN_ISA(acc_add)(FASTBN_ISA(acc) *a, fastbn_vd x) {
    a->p0 += __builtin_shufflevector(x, x, 0, 1);
    a->p1 += __builtin_shufflevector(x, x, 2, 3);
    a->p2 += __builtin_shufflevector(x, x, 4, 5);
    a->p3 += __builtin_shufflevector(x, x, 6, 7);
}
FASTBN_INLINE fastbn_vd FASTBN_ISA(acc_get)(FASTBN_ISA(acc) a) {
    fastbn_vd4 lo = __builtin_shufflevector(a.p0, a.p1, 0, 1, 2, 3);
    fastbn_vd4 hi = __builtin_shufflevector(a.p2, a.p3, 0, 1, 2, 3);
    return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
}
#endif
FASTBN_INLINE FASTBN_ISA(acc) FASTBN_ISA(acc_zero)(void) {
    FASTBN_ISA(acc) a;
    memset(&a, 0, sizeof a);
    return a;
}

/* Vectors of one value in every lane, made by this instruction set's own broadcast: below
 * AVX-512, GCC builds a 64-byte vector from a scalar (wherever a scalar meets a vector) through
 * eight or sixteen scalar stores and wider loads, a stalled store forward per vector half, in
 * every call of a loop (short rows and planes call them once per row or plane). */
FASTBN_INLINE fastbn_vd FASTBN_ISA(splat_d)(double a) {
#if FASTBN_ISA_LEVEL >= 2
    return (fastbn_vd)_mm512_set1_pd(a);
#elif FASTBN_ISA_LEVEL == 1
    __m256d h = _mm256_set1_pd(a);
    fastbn_vd v;
    memcpy(&v, &h, 32);
    memcpy((char *)&v + 32, &h, 32);
    return v;
#elif defined(__SSE2__)
    __m128d q = _mm_set1_pd(a);
    fastbn_vd v;
    int k;
    for (k = 0; k < 4; k++) memcpy((char *)&v + 16 * k, &q, 16);
    return v;
#else
    return (fastbn_vd){a, a, a, a, a, a, a, a};
#endif
}
FASTBN_INLINE fastbn_vf FASTBN_ISA(splat_f)(float a) {
#if FASTBN_ISA_LEVEL >= 2
    return (fastbn_vf)_mm512_set1_ps(a);
#elif FASTBN_ISA_LEVEL == 1
    __m256 h = _mm256_set1_ps(a);
    fastbn_vf v;
    memcpy(&v, &h, 32);
    memcpy((char *)&v + 32, &h, 32);
    return v;
#elif defined(__SSE2__)
    __m128 q = _mm_set1_ps(a);
    fastbn_vf v;
    int k;
    for (k = 0; k < 4; k++) memcpy((char *)&v + 16 * k, &q, 16);
    return v;
#else
    return (fastbn_vf){a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a};
#endif
}

/* Eight floats (or doubles) at p as doubles. */
FASTBN_INLINE fastbn_vd FASTBN_ISA(load8_f)(const float *p) {
#if FASTBN_ISA_LEVEL >= 2
    return (fastbn_vd)_mm512_cvtps_pd(_mm256_loadu_ps(p));
#else
    fastbn_vf8 v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, fastbn_vd);
#endif
}
FASTBN_INLINE fastbn_vd FASTBN_ISA(load8_d)(const double *p) {
    fastbn_vd v;
    memcpy(&v, p, sizeof v);
    return v;
}
FASTBN_INLINE void FASTBN_ISA(storev_d)(double *p, fastbn_vd v) { memcpy(p, &v, sizeof v); }
/* 16 doubles (lo: values 0-7, hi: 8-15) rounded to floats. */
FASTBN_INLINE fastbn_vf FASTBN_ISA(narrow16)(fastbn_vd lo, fastbn_vd hi) {
#if FASTBN_ISA_LEVEL >= 2
    __m256 l = _mm512_cvtpd_ps((__m512d)lo), h = _mm512_cvtpd_ps((__m512d)hi);
    return (fastbn_vf)_mm512_insertf32x8(_mm512_castps256_ps512(l), h, 1);
#else
    fastbn_vf8 l = __builtin_convertvector(lo, fastbn_vf8), h = __builtin_convertvector(hi, fastbn_vf8);
    return __builtin_shufflevector(l, h, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#endif
}

/* Sixteen doubles (lo: values 0-7, hi: 8-15) rounded to floats and stored at p, streamed when
 * `stream` (p 64-byte aligned): below AVX-512 each half is stored as it is converted, not first
 * gathered into one 64-byte vector (which GCC moves through general registers there). */
FASTBN_INLINE void FASTBN_ISA(put_narrow16)(float *p, fastbn_vd lo, fastbn_vd hi, int stream) {
#if FASTBN_ISA_LEVEL >= 2
    fastbn_vf v = FASTBN_ISA(narrow16)(lo, hi);
    if (stream) _mm512_stream_ps(p, (__m512)v);
    else memcpy(p, &v, sizeof v);
#else
    fastbn_vf8 l = __builtin_convertvector(lo, fastbn_vf8), h = __builtin_convertvector(hi, fastbn_vf8);
#if FASTBN_ISA_LEVEL == 1
    if (stream) {
        _mm256_stream_ps(p, (__m256)l);
        _mm256_stream_ps(p + 8, (__m256)h);
        return;
    }
#elif defined(__SSE2__)
    if (stream) {
        __m128 q[4];
        int k;
        memcpy(q, &l, 32);
        memcpy(q + 2, &h, 32);
        for (k = 0; k < 4; k++) _mm_stream_ps(p + 4 * k, q[k]);
        return;
    }
#endif
    memcpy(p, &l, sizeof l);
    memcpy(p + 8, &h, sizeof h);
#endif
}

/* Streaming (non-temporal) store of one 64-byte vector at a 64-byte aligned p: the line is written
 * without being read first. */
FASTBN_INLINE void FASTBN_ISA(stream_f)(float *p, fastbn_vf v) {
#if FASTBN_ISA_LEVEL >= 2
    _mm512_stream_ps(p, (__m512)v);
#elif FASTBN_ISA_LEVEL >= 1
    _mm256_stream_ps(p, (__m256)__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7));
    _mm256_stream_ps(p + 8, (__m256)__builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
#elif defined(__SSE2__)
    __m128 a[4];
    int k;
    memcpy(a, &v, 64);
    for (k = 0; k < 4; k++) _mm_stream_ps(p + 4 * k, a[k]);
#else
    memcpy(p, &v, sizeof v);
#endif
}
FASTBN_INLINE void FASTBN_ISA(stream_d)(double *p, fastbn_vd v) {
#if FASTBN_ISA_LEVEL >= 2
    _mm512_stream_pd(p, (__m512d)v);
#elif FASTBN_ISA_LEVEL >= 1
    _mm256_stream_pd(p, (__m256d)__builtin_shufflevector(v, v, 0, 1, 2, 3));
    _mm256_stream_pd(p + 4, (__m256d)__builtin_shufflevector(v, v, 4, 5, 6, 7));
#elif defined(__SSE2__)
    __m128d a[4];
    int k;
    memcpy(a, &v, 64);
    for (k = 0; k < 4; k++) _mm_stream_pd(p + 2 * k, a[k]);
#else
    memcpy(p, &v, sizeof v);
#endif
}
/* Orders the streamed stores before what the thread does next (once at the end of a sweep). */
FASTBN_INLINE void FASTBN_ISA(sfence)(void) {
#if defined(__SSE__) || FASTBN_ISA_LEVEL >= 1
    _mm_sfence();
#endif
}

/* The first `count` (< lanes) values at p, zeros after them; and their store. AVX2: masked moves
 * of each 32-byte half (the lanes past the end are not touched; a variable-length memcpy there
 * cost more than the vector loop it ends). */
#if FASTBN_ISA_LEVEL == 1
FASTBN_INLINE __m256i FASTBN_ISA(lanes32)(unsigned count, int first) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count),
                              _mm256_setr_epi32(first, first + 1, first + 2, first + 3, first + 4,
                                                first + 5, first + 6, first + 7));
}
FASTBN_INLINE __m256i FASTBN_ISA(lanes64)(unsigned count, int first) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x((long long)count),
                              _mm256_setr_epi64x(first, first + 1, first + 2, first + 3));
}
#endif
FASTBN_INLINE fastbn_vf FASTBN_ISA(loadm_f)(const float *p, unsigned count) {
#if FASTBN_ISA_LEVEL >= 2
    return (fastbn_vf)_mm512_maskz_loadu_ps((__mmask16)((1u << count) - 1), p);
#elif FASTBN_ISA_LEVEL == 1
    __m256 l = _mm256_maskload_ps(p, FASTBN_ISA(lanes32)(count, 0));
    __m256 h = _mm256_maskload_ps(p + 8, FASTBN_ISA(lanes32)(count, 8));
    fastbn_vf v;
    memcpy(&v, &l, 32);
    memcpy((char *)&v + 32, &h, 32);
    return v;
#else
    fastbn_vf v = {0};
    memcpy(&v, p, count * sizeof *p);
    return v;
#endif
}
FASTBN_INLINE fastbn_vd FASTBN_ISA(loadm_d)(const double *p, unsigned count) {
#if FASTBN_ISA_LEVEL >= 2
    return (fastbn_vd)_mm512_maskz_loadu_pd((__mmask8)((1u << count) - 1), p);
#elif FASTBN_ISA_LEVEL == 1
    __m256d l = _mm256_maskload_pd(p, FASTBN_ISA(lanes64)(count, 0));
    __m256d h = _mm256_maskload_pd(p + 4, FASTBN_ISA(lanes64)(count, 4));
    fastbn_vd v;
    memcpy(&v, &l, 32);
    memcpy((char *)&v + 32, &h, 32);
    return v;
#else
    fastbn_vd v = {0};
    memcpy(&v, p, count * sizeof *p);
    return v;
#endif
}
FASTBN_INLINE void FASTBN_ISA(storem_f)(float *p, unsigned count, fastbn_vf v) {
#if FASTBN_ISA_LEVEL >= 2
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << count) - 1), (__m512)v);
#elif FASTBN_ISA_LEVEL == 1
    __m256 h[2];
    memcpy(h, &v, sizeof v);
    _mm256_maskstore_ps(p, FASTBN_ISA(lanes32)(count, 0), h[0]);
    _mm256_maskstore_ps(p + 8, FASTBN_ISA(lanes32)(count, 8), h[1]);
#else
    memcpy(p, &v, count * sizeof *p);
#endif
}
FASTBN_INLINE void FASTBN_ISA(storem_d)(double *p, unsigned count, fastbn_vd v) {
#if FASTBN_ISA_LEVEL >= 2
    _mm512_mask_storeu_pd(p, (__mmask8)((1u << count) - 1), (__m512d)v);
#elif FASTBN_ISA_LEVEL == 1
    __m256d h[2];
    memcpy(h, &v, sizeof v);
    _mm256_maskstore_pd(p, FASTBN_ISA(lanes64)(count, 0), h[0]);
    _mm256_maskstore_pd(p + 4, FASTBN_ISA(lanes64)(count, 4), h[1]);
#else
    memcpy(p, &v, count * sizeof *p);
#endif
}

/* The ReLU epilogue's lane operations (see loops_template.c). pos_bits: bit k set where lane k is
 * > 0 (NaN is not); keep: lanes whose bit is clear become +0; relu: lanes <= 0 become +0 (NaN
 * stays NaN, -0 becomes +0). Below AVX-512, on the 256- or 128-bit halves or quarters of a vector
 * (GCC lowers comparisons of 64-byte vectors lane by lane there). */
#if FASTBN_ISA_LEVEL == 1
#define FASTBN_PARTS 2
#define fastbn_pf __m256
#define fastbn_pd __m256d
#define fastbn_pi __m256i
#define FASTBN_F_LE0(a) _mm256_cmp_ps((a), _mm256_setzero_ps(), _CMP_LE_OQ)
#define FASTBN_F_GT0(a) _mm256_cmp_ps((a), _mm256_setzero_ps(), _CMP_GT_OQ)
#define FASTBN_D_LE0(a) _mm256_cmp_pd((a), _mm256_setzero_pd(), _CMP_LE_OQ)
#define FASTBN_D_GT0(a) _mm256_cmp_pd((a), _mm256_setzero_pd(), _CMP_GT_OQ)
#define FASTBN_SQRT_D _mm256_sqrt_pd
#define FASTBN_ANDNOT_F _mm256_andnot_ps
#define FASTBN_ANDNOT_D _mm256_andnot_pd
#define FASTBN_AND_F _mm256_and_ps
#define FASTBN_AND_D _mm256_and_pd
#define FASTBN_MOVEMASK_F _mm256_movemask_ps
#define FASTBN_MOVEMASK_D _mm256_movemask_pd
#elif FASTBN_ISA_LEVEL == 0 && defined(__SSE2__)
#define FASTBN_PARTS 4
#define fastbn_pf __m128
#define fastbn_pd __m128d
#define fastbn_pi __m128i
#define FASTBN_F_LE0(a) _mm_cmple_ps((a), _mm_setzero_ps())
#define FASTBN_F_GT0(a) _mm_cmpgt_ps((a), _mm_setzero_ps())
#define FASTBN_D_LE0(a) _mm_cmple_pd((a), _mm_setzero_pd())
#define FASTBN_D_GT0(a) _mm_cmpgt_pd((a), _mm_setzero_pd())
#define FASTBN_SQRT_D _mm_sqrt_pd
#define FASTBN_ANDNOT_F _mm_andnot_ps
#define FASTBN_ANDNOT_D _mm_andnot_pd
#define FASTBN_AND_F _mm_and_ps
#define FASTBN_AND_D _mm_and_pd
#define FASTBN_MOVEMASK_F _mm_movemask_ps
#define FASTBN_MOVEMASK_D _mm_movemask_pd
#else
#define FASTBN_PARTS 0
#endif

FASTBN_INLINE unsigned FASTBN_ISA(pos_bits_f)(fastbn_vf v) {
#if FASTBN_ISA_LEVEL >= 2
    return _mm512_cmp_ps_mask((__m512)v, _mm512_setzero_ps(), _CMP_GT_OQ);
#elif FASTBN_PARTS
    fastbn_pf a[FASTBN_PARTS];
    unsigned bits = 0;
    int k;
    memcpy(a, &v, sizeof v);
    for (k = 0; k < FASTBN_PARTS; k++)
        bits |= (unsigned)FASTBN_MOVEMASK_F(FASTBN_F_GT0(a[k])) << (k * 16 / FASTBN_PARTS);
    return bits;
#else
    unsigned bits = 0;
    int k;
    for (k = 0; k < 16; k++) bits |= (unsigned)(v[k] > 0) << k;
    return bits;
#endif
}
FASTBN_INLINE unsigned FASTBN_ISA(pos_bits_d)(fastbn_vd v) {
#if FASTBN_ISA_LEVEL >= 2
    return _mm512_cmp_pd_mask((__m512d)v, _mm512_setzero_pd(), _CMP_GT_OQ);
#elif FASTBN_PARTS
    fastbn_pd a[FASTBN_PARTS];
    unsigned bits = 0;
    int k;
    memcpy(a, &v, sizeof v);
    for (k = 0; k < FASTBN_PARTS; k++)
        bits |= (unsigned)FASTBN_MOVEMASK_D(FASTBN_D_GT0(a[k])) << (k * 8 / FASTBN_PARTS);
    return bits;
#else
    unsigned bits = 0;
    int k;
    for (k = 0; k < 8; k++) bits |= (unsigned)(v[k] > 0) << k;
    return bits;
#endif
}
FASTBN_INLINE fastbn_vf FASTBN_ISA(relu_f)(fastbn_vf v) {
#if FASTBN_ISA_LEVEL >= 2
    return (fastbn_vf)_mm512_maskz_mov_ps(_mm512_cmp_ps_mask((__m512)v, _mm512_setzero_ps(), _CMP_NLE_UQ), (__m512)v);
#elif FASTBN_PARTS
    fastbn_pf a[FASTBN_PARTS];
    int k;
    memcpy(a, &v, sizeof v);
    for (k = 0; k < FASTBN_PARTS; k++) a[k] = FASTBN_ANDNOT_F(FASTBN_F_LE0(a[k]), a[k]);
    memcpy(&v, a, sizeof v);
    return v;
#else
    int k;
    for (k = 0; k < 16; k++) v[k] = v[k] <= 0 ? 0.0f : v[k];
    return v;
#endif
}
FASTBN_INLINE fastbn_vd FASTBN_ISA(relu_d)(fastbn_vd v) {
#if FASTBN_ISA_LEVEL >= 2
    return (fastbn_vd)_mm512_maskz_mov_pd(_mm512_cmp_pd_mask((__m512d)v, _mm512_setzero_pd(), _CMP_NLE_UQ), (__m512d)v);
#elif FASTBN_PARTS
    fastbn_pd a[FASTBN_PARTS];
    int k;
    memcpy(a, &v, sizeof v);
    for (k = 0; k < FASTBN_PARTS; k++) a[k] = FASTBN_ANDNOT_D(FASTBN_D_LE0(a[k]), a[k]);
    memcpy(&v, a, sizeof v);
    return v;
#else
    int k;
    for (k = 0; k < 8; k++) v[k] = v[k] <= 0 ? 0.0 : v[k];
    return v;
#endif
}
/* The IEEE square root of every lane, as sqrt() of each (loops_template.c, fold). */
FASTBN_INLINE fastbn_vd FASTBN_ISA(sqrt_d)(fastbn_vd v) {
#if FASTBN_ISA_LEVEL >= 2
    return (fastbn_vd)_mm512_sqrt_pd((__m512d)v);
#elif FASTBN_PARTS
    fastbn_pd a[FASTBN_PARTS];
    int k;
    memcpy(a, &v, sizeof v);
    for (k = 0; k < FASTBN_PARTS; k++) a[k] = FASTBN_SQRT_D(a[k]);
    memcpy(&v, a, sizeof v);
    return v;
#else
    int k;
    for (k = 0; k < 8; k++) v[k] = sqrt(v[k]);
    return v;
#endif
}
/* keep: the lanes of bit k set become all-ones masks (a lane's bit, tested as an integer). */
FASTBN_INLINE fastbn_vf FASTBN_ISA(keep_f)(fastbn_vf v, unsigned bits) {
#if FASTBN_ISA_LEVEL >= 2
    return (fastbn_vf)_mm512_maskz_mov_ps((__mmask16)bits, (__m512)v);
#elif FASTBN_PARTS
    static const int32_t lane[16] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768};
    fastbn_pf a[FASTBN_PARTS];
    int k;
    memcpy(a, &v, sizeof v);
    for (k = 0; k < FASTBN_PARTS; k++) {
        fastbn_pi l;
        memcpy(&l, lane + k * 16 / FASTBN_PARTS, sizeof l);
#if FASTBN_ISA_LEVEL == 1
        fastbn_pi m = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)bits), l), l);
        a[k] = FASTBN_AND_F(_mm256_castsi256_ps(m), a[k]);
#else
        fastbn_pi m = _mm_cmpeq_epi32(_mm_and_si128(_mm_set1_epi32((int)bits), l), l);
        a[k] = FASTBN_AND_F(_mm_castsi128_ps(m), a[k]);
#endif
    }
    memcpy(&v, a, sizeof v);
    return v;
#else
    int k;
    for (k = 0; k < 16; k++) v[k] = (bits >> k) & 1 ? v[k] : 0.0f;
    return v;
#endif
}
FASTBN_INLINE fastbn_vd FASTBN_ISA(keep_d)(fastbn_vd v, unsigned bits) {
#if FASTBN_ISA_LEVEL >= 2
    return (fastbn_vd)_mm512_maskz_mov_pd((__mmask8)bits, (__m512d)v);
#elif FASTBN_PARTS
    static const int64_t lane[8] = {1, 2, 4, 8, 16, 32, 64, 128};
    fastbn_pd a[FASTBN_PARTS];
    int k;
    memcpy(a, &v, sizeof v);
    for (k = 0; k < FASTBN_PARTS; k++) {
        fastbn_pi l;
        memcpy(&l, lane + k * 8 / FASTBN_PARTS, sizeof l);
#if FASTBN_ISA_LEVEL == 1
        fastbn_pi m = _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_set1_epi64x((long long)bits), l), l);
        a[k] = FASTBN_AND_D(_mm256_castsi256_pd(m), a[k]);
#else
        /* (SSE2 has no 64-bit compare: both 32-bit halves of a lane hold its bit's test) */
        __m128i b = _mm_set1_epi64x((long long)bits);
        __m128i e = _mm_cmpeq_epi32(_mm_and_si128(b, l), l);
        e = _mm_and_si128(e, _mm_shuffle_epi32(e, _MM_SHUFFLE(2, 3, 0, 1)));
        a[k] = FASTBN_AND_D(_mm_castsi128_pd(e), a[k]);
#endif
    }
    memcpy(&v, a, sizeof v);
    return v;
#else
    int k;
    for (k = 0; k < 8; k++) v[k] = (bits >> k) & 1 ? v[k] : 0.0;
    return v;
#endif
}
#undef FASTBN_PARTS
#undef fastbn_pf
#undef fastbn_pd
#undef fastbn_pi
#undef FASTBN_F_LE0
#undef FASTBN_F_GT0
#undef FASTBN_D_LE0
#undef FASTBN_D_GT0
#undef FASTBN_SQRT_D
#undef FASTBN_ANDNOT_F
#undef FASTBN_ANDNOT_D
#undef FASTBN_AND_F
#undef FASTBN_AND_D
#undef FASTBN_MOVEMASK_F
#undef FASTBN_MOVEMASK_D
