/* fastbn's hot loops, written once. loops.h includes this file once per instruction set and
 * element type (T = float or double), under that instruction set's target pragma; FN(name) names
 * each copy (fastbn_<name>_<isa>_<f|d>), and the helpers of simd.h give the few operations vector
 * extensions cannot express. Determinism contract: see simd.h.
 *
 * In this file: T, the element type; VT, a vector of N values of T (64 bytes); fastbn_vd, 8
 * doubles. LOADV/STOREV: a vector of T at any address; LOAD8: 8 values of T as doubles; LOADM and
 * STOREM: the first `count` lanes of a vector; STREAM: a streaming store to a 64-byte aligned
 * address; PUT_PACKED(p, h, stream): the N / 8 vectors of doubles h[] rounded to T and stored at p
 * (streamed when `stream`). POS_BITS, KEEP,
 * RELU: the lane operations of the ReLU epilogue (simd.h).
 *
 * Epilogues (fused batchnorm + residual add + ReLU): the affine sweeps take `relu` (0: none; 1:
 * ReLU; 2: residual add, then ReLU), the residual `res` (indexed as x), and the packed mask
 * `mask` (loops.h: fastbn_put_bits) with `pos`, the flat index of x[0] in the whole array; the
 * gradient sums and dx sweeps read the mask in place of dout's zeros (`relu` 1: train mode, 2:
 * test mode, where x is not read) and may write dout * mask into `dres`. Each public loop picks
 * its specialisation once per call, as `center` does; the plain loops are unchanged.
 *
 * The contiguous-run reductions read n values (n may be 0) and return their two sums by value, so
 * that a caller inside an OpenMP loop keeps them in private variables. RESTRICT: outputs never
 * alias inputs. Streamed outputs (the caller's `stream`): the lines wholly inside a run get
 * streaming stores straight from registers, the partial lines at either end ordinary stores (the
 * neighbouring run may share them); the function fences at its end.
 */

#if FASTBN_FLOAT
#define T float
#define VT fastbn_vf
#define N 16
#define FN(name) FASTBN_CAT4(fastbn, name, FASTBN_ISA_SUFFIX, f)
#define FN_TABLE fastbn_loops_f
#define LOAD8 FASTBN_ISA(load8_f)
#define LOADM FASTBN_ISA(loadm_f)
#define STOREM FASTBN_ISA(storem_f)
#define STREAM FASTBN_ISA(stream_f)
#define PUT_PACKED(p, h, stream) FASTBN_ISA(put_narrow16)((p), (h)[0], (h)[1], (stream))
#define SPLAT FASTBN_ISA(splat_f)
#define POS_BITS FASTBN_ISA(pos_bits_f)
#define KEEP FASTBN_ISA(keep_f)
#define RELU FASTBN_ISA(relu_f)
#else
#define T double
#define VT fastbn_vd
#define N 8
#define FN(name) FASTBN_CAT4(fastbn, name, FASTBN_ISA_SUFFIX, d)
#define FN_TABLE fastbn_loops_d
#define LOAD8 FASTBN_ISA(load8_d)
#define LOADM FASTBN_ISA(loadm_d)
#define STOREM FASTBN_ISA(storem_d)
#define STREAM FASTBN_ISA(stream_d)
#define PUT_PACKED(p, h, stream) FN(put)((p), (h)[0], (stream))
#define SPLAT FASTBN_ISA(splat_d)
#define POS_BITS FASTBN_ISA(pos_bits_d)
#define KEEP FASTBN_ISA(keep_d)
#define RELU FASTBN_ISA(relu_d)
#endif

/* Loop-carried sums of fastbn_vd values (see simd.h): ACC a = ACC_ZERO(); ACC_ADD(a, v);
 * ACC_GET(a) the fastbn_vd. */
#define ACC FASTBN_ISA(acc)
#define ACC_ZERO FASTBN_ISA(acc_zero)
#define ACC_ADD(a, v) FASTBN_ISA(acc_add)(&(a), (v))
#define ACC_GET FASTBN_ISA(acc_get)
/* Loop-invariant vectors of a scalar: SPLAT (a VT of a T), SPLAT8 (a fastbn_vd of a double), made
 * once before a loop (see simd.h). */
#define SPLAT8 FASTBN_ISA(splat_d)

#if FASTBN_ISA_LEVEL == 0 /* the first instruction set: the table's type, once per T */
typedef struct {
    fastbn_sums (*sum)(const T *, ptrdiff_t);
    fastbn_sums (*shifted_sums)(const T *, ptrdiff_t, double);
    fastbn_sums (*sum_pf)(const T *, ptrdiff_t, const T *);
    fastbn_sums (*shifted_sums_pf)(const T *, ptrdiff_t, double, const T *);
    fastbn_sums (*grad_sums_pf)(const T *, const T *, ptrdiff_t, double, const T *, const T *,
                                const uint8_t *, ptrdiff_t);
    fastbn_sums (*row_grad_sums)(const T *, const T *, const T *, ptrdiff_t, double, double,
                                 double *, double *);
    void (*rows4_grad_sums)(const T *, const T *, ptrdiff_t, const T *, ptrdiff_t, const double *,
                            const double *, double *, double *, double *, int);
    void (*plane_affine)(const T *, T *, ptrdiff_t, T, T, T, int, const T *, uint8_t *,
                         ptrdiff_t, ptrdiff_t);
    void (*plane_dx)(const T *, const T *, T *, ptrdiff_t, T, T, T, T, T, int, const uint8_t *,
                     ptrdiff_t, int, T *);
    void (*row_affine)(const T *, T *, ptrdiff_t, T, T, const T *, const T *, int);
    void (*row_dx)(const T *, const T *, T *, ptrdiff_t, double, double, const T *, double, double,
                   double, int);
    void (*cols_shifted_sums)(const T *, ptrdiff_t, ptrdiff_t, ptrdiff_t, const T *, double *,
                              double *, ptrdiff_t);
    void (*cols_grad_sums)(const T *, const T *, ptrdiff_t, ptrdiff_t, ptrdiff_t, const T *,
                           double *, double *, const uint8_t *, ptrdiff_t, ptrdiff_t, int);
    void (*cols_affine)(const T *, T *, ptrdiff_t, ptrdiff_t, ptrdiff_t, const T *, const T *,
                        const T *, int, const T *, uint8_t *, ptrdiff_t, ptrdiff_t);
    void (*cols_dx)(const T *, const T *, T *, ptrdiff_t, ptrdiff_t, ptrdiff_t, const T *,
                    const T *, const T *, const T *, const T *, int, const uint8_t *, ptrdiff_t,
                    int, T *);
    void (*layernorm_rows)(const T *, T *, ptrdiff_t, ptrdiff_t, const T *, const T *, double, int,
                           T *, T *);
    void (*layernorm_rows_grad)(const T *, const T *, T *, ptrdiff_t, ptrdiff_t, const T *,
                                const T *, const T *, int, double *, double *, int);
    void (*finish_moments)(const T *, const T *, ptrdiff_t, double, double *, double *);
    void (*fold)(const T *, const double *, const double *, const double *, ptrdiff_t, ptrdiff_t,
                 double, T *, T *, T *, double *);
    void (*test_fold)(const T *, const T *, const T *, ptrdiff_t, double, T *, T *, T *);
    void (*store_sums)(const double *, const double *, ptrdiff_t, ptrdiff_t, ptrdiff_t, double *,
                       double *);
    void (*grad_coefs)(const T *, const T *, const double *, const double *, ptrdiff_t, ptrdiff_t,
                       ptrdiff_t, double, int, T *, T *, T *, T *, T *);
    void (*update_running)(const T *, const double *, ptrdiff_t, double, T *, T *);
} FN_TABLE;
#endif

FASTBN_INLINE VT FN(loadv)(const T *p) {
    VT v;
    memcpy(&v, p, sizeof v);
    return v;
}
FASTBN_INLINE void FN(storev)(T *p, VT v) { memcpy(p, &v, sizeof v); }
FASTBN_INLINE void FN(put)(T *p, VT v, int stream) {
    if (stream) STREAM(p, v);
    else FN(storev)(p, v);
}

/* The forward epilogue of a vector y of outputs (`count` values when masked) at x's index `at`
 * and flat index `pos`: y + res (relu 2), its bits y > 0 into the mask, then max(y, 0) (NaN stays
 * NaN, -0 becomes +0). relu 0 returns y. */
FASTBN_INLINE VT FN(relu_v)(const int relu, VT y, const T *res, ptrdiff_t at, uint8_t *mask,
                            ptrdiff_t pos, const int masked, unsigned count) {
    if (!relu) return y;
    if (relu == 2) y += masked ? LOADM(res + at, count) : FN(loadv)(res + at);
    fastbn_put_bits(mask, pos, POS_BITS(y), masked ? (int)count : N);
    return RELU(y);
}
/* The same for a whole vector whose bits go to a sink (the next N of its run). */
FASTBN_INLINE VT FN(relu_s)(const int relu, VT y, const T *res, ptrdiff_t at, fastbn_sink *sink) {
    if (!relu) return y;
    if (relu == 2) y += FN(loadv)(res + at);
    fastbn_sink_push(sink, POS_BITS(y), N);
    return RELU(y);
}
FASTBN_INLINE T FN(relu1)(const int relu, T y, const T *res, ptrdiff_t at, uint8_t *mask,
                          ptrdiff_t pos) {
    if (!relu) return y;
    if (relu == 2) y += res[at];
    fastbn_put_bits(mask, pos, y > 0, 1);
    return y <= 0 ? (T)0 : y;
}
/* The backward's dout: dy where the mask's bit at `pos` is set, +0 elsewhere (relu 0: dy). */
FASTBN_INLINE VT FN(masked_dy)(const int relu, VT dy, const uint8_t *mask, ptrdiff_t pos,
                               const int masked, unsigned count) {
    return relu ? KEEP(dy, fastbn_get_bits(mask, pos, masked ? (int)count : N)) : dy;
}
FASTBN_INLINE T FN(masked_dy1)(const int relu, T dy, const uint8_t *mask, ptrdiff_t pos) {
    return relu && !fastbn_get_bits(mask, pos, 1) ? (T)0 : dy;
}

/* Double sums of n contiguous values, element j in lane j % 16 (see simd.h). With `pf`, the
 * matching lines of the next run(s) at next_x, next_dy are prefetched, interleaved with the loads
 * (NCHW planes are far apart in memory, and each would otherwise start by waiting for the hardware
 * prefetcher; a burst of prefetches up front would stall on the fill buffers). kind 0: s1 =
 * sum(x) (s2 = 0); 1: s1 = sum(x - c), s2 = sum((x - c)^2); 2: s1 = sum(dy), s2 = sum(dy * (x - c));
 * 3: as 2 with dy read through the ReLU mask (flat index of element 0: pos).
 * Called with constant kind and pf. */
FASTBN_INLINE fastbn_sums FN(run_sums)(const int kind, const int pf, const T *RESTRICT x,
                                       const T *RESTRICT dy, ptrdiff_t n, double c,
                                       const T *next_x, const T *next_dy, const uint8_t *mask,
                                       ptrdiff_t pos) {
    ACC A0 = ACC_ZERO(), A1 = ACC_ZERO(), B0 = ACC_ZERO(), B1 = ACC_ZERO();
    const fastbn_vd cv = SPLAT8(c);
    fastbn_vd t, g;
    ptrdiff_t j = 0;
    int h;
    for (; j + 16 <= n; j += 16)
        for (h = 0; h < 16; h += 8) {
            if (pf && !((h * sizeof(T)) & 63)) {
                __builtin_prefetch(next_x + j + h, 0, 3);
                if (kind >= 2) __builtin_prefetch(next_dy + j + h, 0, 3);
            }
            if (kind == 0) {
                t = LOAD8(x + j + h);
                if (h) ACC_ADD(A1, t); else ACC_ADD(A0, t);
            } else if (kind == 1) {
                t = LOAD8(x + j + h) - cv;
                if (h) ACC_ADD(A1, t), ACC_ADD(B1, t * t); else ACC_ADD(A0, t), ACC_ADD(B0, t * t);
            } else {
                g = LOAD8(dy + j + h);
                if (kind == 3) g = FASTBN_ISA(keep_d)(g, fastbn_get_bits(mask, pos + j + h, 8));
                t = g * (LOAD8(x + j + h) - cv);
                if (h) ACC_ADD(A1, g), ACC_ADD(B1, t); else ACC_ADD(A0, g), ACC_ADD(B0, t);
            }
        }
    fastbn_sums s = {fastbn_hsum(ACC_GET(A0) + ACC_GET(A1)), fastbn_hsum(ACC_GET(B0) + ACC_GET(B1))};
    for (; j < n; j++) {
        if (kind == 0) {
            s.s1 += (double)x[j];
        } else if (kind == 1) {
            double u = (double)x[j] - c;
            s.s1 += u;
            s.s2 += u * u;
        } else {
            double u = kind == 3 && !fastbn_get_bits(mask, pos + j, 1) ? 0.0 : (double)dy[j];
            s.s1 += u;
            s.s2 += u * ((double)x[j] - c);
        }
    }
    return s;
}
static fastbn_sums FN(sum)(const T *RESTRICT x, ptrdiff_t n) {
    return FN(run_sums)(0, 0, x, NULL, n, 0.0, NULL, NULL, NULL, 0);
}
static fastbn_sums FN(shifted_sums)(const T *RESTRICT x, ptrdiff_t n, double shift) {
    return FN(run_sums)(1, 0, x, NULL, n, shift, NULL, NULL, NULL, 0);
}
/* The same while the next run (n values at next, next_x, next_dy; or NULL) is brought into the
 * cache. */
static fastbn_sums FN(sum_pf)(const T *RESTRICT x, ptrdiff_t n, const T *next) {
    return FN(run_sums)(0, 1, x, NULL, n, 0.0, next ? next : x, NULL, NULL, 0);
}
static fastbn_sums FN(shifted_sums_pf)(const T *RESTRICT x, ptrdiff_t n, double shift,
                                       const T *next) {
    return FN(run_sums)(1, 1, x, NULL, n, shift, next ? next : x, NULL, NULL, 0);
}
/* (mask: the ReLU mask read in place of dout's zeros, or NULL; pos: the flat index of x[0].) */
static fastbn_sums FN(grad_sums_pf)(const T *RESTRICT x, const T *RESTRICT dy, ptrdiff_t n,
                                    double mean, const T *next_x, const T *next_dy,
                                    const uint8_t *mask, ptrdiff_t pos) {
    if (!next_x) next_x = x, next_dy = dy;
    if (mask) return FN(run_sums)(3, 1, x, dy, n, mean, next_x, next_dy, mask, pos);
    return FN(run_sums)(2, 1, x, dy, n, mean, next_x, next_dy, NULL, 0);
}

/* Layernorm backward, one row: per column j, db[j] += dy, dg[j] += dy * (x - mean) * invstd;
 * returns s1 = sum(gamma * dy), s2 = sum(gamma * dy * (x - mean)) (16 lanes). */
static fastbn_sums FN(row_grad_sums)(const T *RESTRICT x, const T *RESTRICT dy,
                                     const T *RESTRICT gamma, ptrdiff_t n, double mean,
                                     double invstd, double *RESTRICT db, double *RESTRICT dg) {
    ACC A[2] = {ACC_ZERO(), ACC_ZERO()}, B[2] = {ACC_ZERO(), ACC_ZERO()};
    const fastbn_vd mv = SPLAT8(mean), sv = SPLAT8(invstd);
    ptrdiff_t j = 0;
    int h;
    for (; j + 16 <= n; j += 16)
        for (h = 0; h < 2; h++) {
            ptrdiff_t k = j + 8 * h;
            fastbn_vd g = LOAD8(dy + k), xc = LOAD8(x + k) - mv;
            FASTBN_ISA(storev_d)(db + k, FASTBN_ISA(load8_d)(db + k) + g);
            FASTBN_ISA(storev_d)(dg + k, FASTBN_ISA(load8_d)(dg + k) + g * xc * sv);
            g *= LOAD8(gamma + k);
            ACC_ADD(A[h], g);
            ACC_ADD(B[h], g * xc);
        }
    fastbn_sums s = {fastbn_hsum(ACC_GET(A[0]) + ACC_GET(A[1])),
                     fastbn_hsum(ACC_GET(B[0]) + ACC_GET(B[1]))};
    for (; j < n; j++) {
        double g = (double)dy[j], xc = (double)x[j] - mean;
        db[j] += g;
        dg[j] += g * xc * invstd;
        g *= (double)gamma[j];
        s.s1 += g;
        s.s2 += g * xc;
    }
    return s;
}

/* Contiguous runs (NCHW planes, rows), in T. out = (x - mean) * scale + beta, then the epilogue
 * (res, mask, pos: see the top of this file), the mask's lines prefetched for writing
 * mask_ahead values ahead. */
FASTBN_INLINE void FN(plane_affine_run)(const int relu, const T *RESTRICT x, T *RESTRICT out,
                                        ptrdiff_t n, T mean, T scale, T beta, int stream,
                                        const T *RESTRICT res, uint8_t *RESTRICT mask,
                                        ptrdiff_t pos, ptrdiff_t mask_ahead) {
    const VT mv = SPLAT(mean), sv = SPLAT(scale), bv = SPLAT(beta);
    ptrdiff_t j = 0;
    if (stream)
        for (; j < n && ((uintptr_t)(out + j) & 63); j++)
            out[j] = FN(relu1)(relu, (x[j] - mean) * scale + beta, res, j, mask, pos + j);
    fastbn_sink sink = fastbn_sink_at(mask, relu ? pos + j : 0);
    for (; j + N <= n; j += N) {
        if (relu && !((pos + j) & 255))
            __builtin_prefetch(mask + ((pos + j + mask_ahead) >> 3), 1, 3);
        FN(put)(out + j, FN(relu_s)(relu, (FN(loadv)(x + j) - mv) * sv + bv, res, j, &sink), stream);
    }
    if (relu) fastbn_sink_end(&sink);
    for (; j < n; j++) out[j] = FN(relu1)(relu, (x[j] - mean) * scale + beta, res, j, mask, pos + j);
    if (stream) FASTBN_ISA(sfence)();
}
static void FN(plane_affine)(const T *RESTRICT x, T *RESTRICT out, ptrdiff_t n, T mean, T scale,
                             T beta, int stream, const T *RESTRICT res, uint8_t *RESTRICT mask,
                             ptrdiff_t pos, ptrdiff_t mask_ahead) {
    if (!mask)
        FN(plane_affine_run)(0, x, out, n, mean, scale, beta, stream, NULL, NULL, 0, 0);
    else if (!res)
        FN(plane_affine_run)(1, x, out, n, mean, scale, beta, stream, NULL, mask, pos, mask_ahead);
    else
        FN(plane_affine_run)(2, x, out, n, mean, scale, beta, stream, res, mask, pos, mask_ahead);
}
/* dx = k_dy * (dy - k_b - (x - mean) * invstd * k_g), dy read through the mask (relu 1); test
 * mode with the mask (relu 2): dx = k_dy * dy, x not read. dres (or NULL): dy as read. */
FASTBN_INLINE void FN(plane_dx_run)(const int relu, const T *RESTRICT x, const T *RESTRICT dy,
                                    T *RESTRICT dx, ptrdiff_t n, T mean, T invstd, T k_dy, T k_b,
                                    T k_g, int stream, const uint8_t *RESTRICT mask, ptrdiff_t pos,
                                    T *RESTRICT dres) {
    const VT mv = SPLAT(mean), sv = SPLAT(invstd), av = SPLAT(k_dy), bv = SPLAT(k_b), gv_ = SPLAT(k_g);
    ptrdiff_t j = 0;
    T g;
    if (stream)
        for (; j < n && ((uintptr_t)(dx + j) & 63); j++) {
            g = FN(masked_dy1)(relu, dy[j], mask, pos + j);
            if (relu && dres) dres[j] = g;
            dx[j] = relu == 2 ? k_dy * g : k_dy * (g - k_b - (x[j] - mean) * invstd * k_g);
        }
    for (; j + N <= n; j += N) {
        VT gv = FN(masked_dy)(relu, FN(loadv)(dy + j), mask, pos + j, 0, 0);
        if (relu && dres) FN(storev)(dres + j, gv);
        FN(put)(dx + j,
                relu == 2 ? av * gv : av * (gv - bv - (FN(loadv)(x + j) - mv) * sv * gv_),
                stream);
    }
    for (; j < n; j++) {
        g = FN(masked_dy1)(relu, dy[j], mask, pos + j);
        if (relu && dres) dres[j] = g;
        dx[j] = relu == 2 ? k_dy * g : k_dy * (g - k_b - (x[j] - mean) * invstd * k_g);
    }
    if (stream) FASTBN_ISA(sfence)();
}
static void FN(plane_dx)(const T *RESTRICT x, const T *RESTRICT dy, T *RESTRICT dx, ptrdiff_t n,
                         T mean, T invstd, T k_dy, T k_b, T k_g, int stream,
                         const uint8_t *RESTRICT mask, ptrdiff_t pos, int train, T *RESTRICT dres) {
    if (!mask)
        FN(plane_dx_run)(0, x, dy, dx, n, mean, invstd, k_dy, k_b, k_g, stream, NULL, 0, NULL);
    else if (train)
        FN(plane_dx_run)(1, x, dy, dx, n, mean, invstd, k_dy, k_b, k_g, stream, mask, pos, dres);
    else
        FN(plane_dx_run)(2, x, dy, dx, n, mean, invstd, k_dy, k_b, k_g, stream, mask, pos, dres);
}
/* out = (x - mean) * (gamma * invstd) + beta with gamma, beta per value (inlined where the
 * short rows call it, with stream a constant 0). */
FASTBN_INLINE void FN(row_affine_run)(const T *RESTRICT x, T *RESTRICT out, ptrdiff_t n, T mean,
                                      T invstd, const T *RESTRICT gamma, const T *RESTRICT beta,
                                      const int stream) {
    const VT mv = SPLAT(mean), sv = SPLAT(invstd);
    ptrdiff_t j = 0;
    if (stream)
        for (; j < n && ((uintptr_t)(out + j) & 63); j++)
            out[j] = (x[j] - mean) * (gamma[j] * invstd) + beta[j];
    for (; j + N <= n; j += N)
        FN(put)(out + j, (FN(loadv)(x + j) - mv) * (FN(loadv)(gamma + j) * sv) + FN(loadv)(beta + j),
                stream);
    for (; j < n; j++) out[j] = (x[j] - mean) * (gamma[j] * invstd) + beta[j];
    if (stream) FASTBN_ISA(sfence)();
}
static void FN(row_affine)(const T *RESTRICT x, T *RESTRICT out, ptrdiff_t n, T mean, T invstd,
                           const T *RESTRICT gamma, const T *RESTRICT beta, int stream) {
    FN(row_affine_run)(x, out, n, mean, invstd, gamma, beta, stream);
}
/* Layernorm/groupnorm dx in double, rounded to T: dx = invstd * gamma * dy - s3 * (x - mean) + b,
 * or a * dy - s3 * (x - mean) + b without gamma (NULL). */
FASTBN_INLINE fastbn_vd FN(row_dx8)(const T *x, const T *dy, const T *gamma, fastbn_vd mean,
                                    fastbn_vd invstd, fastbn_vd a, fastbn_vd s3, fastbn_vd b) {
    fastbn_vd c = gamma ? invstd * LOAD8(gamma) : a;
    return c * LOAD8(dy) - s3 * (LOAD8(x) - mean) + b;
}
FASTBN_INLINE T FN(row_dx1)(const T *x, const T *dy, const T *gamma, ptrdiff_t j, double mean,
                            double invstd, double a, double s3, double b) {
    return (T)((gamma ? invstd * (double)gamma[j] * (double)dy[j] : a * (double)dy[j])
               - s3 * ((double)x[j] - mean) + b);
}
FASTBN_INLINE void FN(row_dx_run)(const int has_gamma, const T *RESTRICT x, const T *RESTRICT dy,
                                  T *RESTRICT dx, ptrdiff_t n, double mean, double invstd,
                                  const T *RESTRICT gamma, double a, double s3, double b,
                                  int stream) {
    const fastbn_vd mv = SPLAT8(mean), sv = SPLAT8(invstd), av = SPLAT8(a), s3v = SPLAT8(s3),
                    bv = SPLAT8(b);
    ptrdiff_t j = 0;
    int k;
    if (stream)
        for (; j < n && ((uintptr_t)(dx + j) & 63); j++)
            dx[j] = FN(row_dx1)(x, dy, has_gamma ? gamma : NULL, j, mean, invstd, a, s3, b);
    for (; j + N <= n; j += N) {
        fastbn_vd h[N / 8];
        for (k = 0; k < N / 8; k++)
            h[k] = FN(row_dx8)(x + j + 8 * k, dy + j + 8 * k, has_gamma ? gamma + j + 8 * k : NULL,
                               mv, sv, av, s3v, bv);
        PUT_PACKED(dx + j, h, stream);
    }
    for (; j < n; j++)
        dx[j] = FN(row_dx1)(x, dy, has_gamma ? gamma : NULL, j, mean, invstd, a, s3, b);
    if (stream) FASTBN_ISA(sfence)();
}
static void FN(row_dx)(const T *RESTRICT x, const T *RESTRICT dy, T *RESTRICT dx, ptrdiff_t n,
                       double mean, double invstd, const T *RESTRICT gamma, double a, double s3,
                       double b, int stream) {
    if (gamma) FN(row_dx_run)(1, x, dy, dx, n, mean, invstd, gamma, a, s3, b, stream);
    else FN(row_dx_run)(0, x, dy, dx, n, mean, invstd, gamma, a, s3, b, stream);
}

/* (M, D) column sums: n_rows rows of w columns, row stride `stride`. Rows in groups of four, then
 * single rows (the grouping depends on n_rows only); per group of four rows, per column,
 * s1[j] += (t0 + t1) + (t2 + t3) and likewise for s2. A pass reads eight rows (the gradient sums:
 * `rows`, 8 or 4; two passes of four give the same bits as one of eight) and loads and stores each
 * column's accumulators once; with `pf` > 0 it also prefetches, line by line, the rows of the
 * pass `pf` rows further on (0: none). The kernels choose `pf` and `rows` from the plan
 * (sums_prefetch_min_bytes, sums_prefetch_max_run_bytes, grad_sums_four_rows_bytes). */
FASTBN_INLINE void FN(prefetch_rows)(const T *p, ptrdiff_t stride, ptrdiff_t j, int rows) {
    int r;
    if (!(j & (64 / (ptrdiff_t)sizeof(T) - 1)))
        for (r = 0; r < rows; r++) __builtin_prefetch(p + r * stride + j, 0, 3);
}
/* s1[j] += sum_i (x[i, j] - shift[j]), s2[j] += sum_i (x[i, j] - shift[j])^2. */
static void FN(cols_shifted_sums)(const T *RESTRICT x, ptrdiff_t stride, ptrdiff_t n_rows,
                                  ptrdiff_t w, const T *RESTRICT shift, double *RESTRICT s1,
                                  double *RESTRICT s2, ptrdiff_t pf) {
    ptrdiff_t i = 0, j, r;
    for (; i + 4 <= n_rows; i += 8) {
        const T *x0 = x + i * stride;
        int two = i + 8 <= n_rows, ahead = pf > 0 && i + pf + 8 <= n_rows;
        for (j = 0; j + 8 <= w; j += 8) {
            fastbn_vd h = LOAD8(shift + j), a = FASTBN_ISA(load8_d)(s1 + j),
                      b = FASTBN_ISA(load8_d)(s2 + j), t0, t1, t2, t3;
            if (ahead) FN(prefetch_rows)(x0 + pf * stride, stride, j, 8);
            t0 = LOAD8(x0 + j) - h;
            t1 = LOAD8(x0 + stride + j) - h;
            t2 = LOAD8(x0 + 2 * stride + j) - h;
            t3 = LOAD8(x0 + 3 * stride + j) - h;
            a += (t0 + t1) + (t2 + t3);
            b += (t0 * t0 + t1 * t1) + (t2 * t2 + t3 * t3);
            if (two) {
                t0 = LOAD8(x0 + 4 * stride + j) - h;
                t1 = LOAD8(x0 + 5 * stride + j) - h;
                t2 = LOAD8(x0 + 6 * stride + j) - h;
                t3 = LOAD8(x0 + 7 * stride + j) - h;
                a += (t0 + t1) + (t2 + t3);
                b += (t0 * t0 + t1 * t1) + (t2 * t2 + t3 * t3);
            }
            FASTBN_ISA(storev_d)(s1 + j, a);
            FASTBN_ISA(storev_d)(s2 + j, b);
        }
        for (; j < w; j++)
            for (r = 0; r < (two ? 8 : 4); r += 4) {
                const T *xr = x0 + r * stride + j;
                double h = (double)shift[j], t0 = (double)xr[0] - h, t1 = (double)xr[stride] - h,
                       t2 = (double)xr[2 * stride] - h, t3 = (double)xr[3 * stride] - h;
                s1[j] += (t0 + t1) + (t2 + t3);
                s2[j] += (t0 * t0 + t1 * t1) + (t2 * t2 + t3 * t3);
            }
        if (!two) i -= 4;
    }
    for (; i < n_rows; i++)
        for (j = 0; j < w; j++) {
            double t = (double)x[i * stride + j] - (double)shift[j];
            s1[j] += t;
            s2[j] += t * t;
        }
}
/* s1[j] += sum_i dy[i, j], s2[j] += sum_i dy[i, j] * (x[i, j] - mean[j]); dy read through the
 * ReLU mask (relu 1; pos: the flat index of x[0]). */
#define FASTBN_DY8(p, at) (relu ? FASTBN_ISA(keep_d)(LOAD8(p), fastbn_get_bits(mask, pos + (at), 8)) : LOAD8(p))
#define FASTBN_DY1(p, at) (relu && !fastbn_get_bits(mask, pos + (at), 1) ? 0.0 : (double)*(p))
FASTBN_INLINE void FN(cols_grad_sums_run)(const int relu, const T *RESTRICT x,
                                          const T *RESTRICT dy, ptrdiff_t stride,
                                          ptrdiff_t n_rows, ptrdiff_t w, const T *RESTRICT mean,
                                          double *RESTRICT s1, double *RESTRICT s2,
                                          const uint8_t *mask, ptrdiff_t pos, ptrdiff_t pf,
                                          int rows) {
    ptrdiff_t i = 0, j, r;
    for (; i + 4 <= n_rows; i += 8) {
        const T *x0 = x + i * stride, *y0 = dy + i * stride;
        int two = rows == 8 && i + 8 <= n_rows, ahead = pf > 0 && i + pf + rows <= n_rows;
        for (j = 0; j + 8 <= w; j += 8) {
            fastbn_vd m = LOAD8(mean + j), a = FASTBN_ISA(load8_d)(s1 + j),
                      b = FASTBN_ISA(load8_d)(s2 + j), g0, g1, g2, g3;
            if (ahead) {
                FN(prefetch_rows)(x0 + pf * stride, stride, j, rows);
                FN(prefetch_rows)(y0 + pf * stride, stride, j, rows);
            }
            for (r = 0; r < (two ? 8 : 4); r += 4) {
                const T *xr = x0 + r * stride + j, *yr = y0 + r * stride + j;
                ptrdiff_t at = (i + r) * stride + j;
                g0 = FASTBN_DY8(yr, at);
                g1 = FASTBN_DY8(yr + stride, at + stride);
                g2 = FASTBN_DY8(yr + 2 * stride, at + 2 * stride);
                g3 = FASTBN_DY8(yr + 3 * stride, at + 3 * stride);
                a += (g0 + g1) + (g2 + g3);
                b += (g0 * (LOAD8(xr) - m) + g1 * (LOAD8(xr + stride) - m))
                   + (g2 * (LOAD8(xr + 2 * stride) - m) + g3 * (LOAD8(xr + 3 * stride) - m));
            }
            FASTBN_ISA(storev_d)(s1 + j, a);
            FASTBN_ISA(storev_d)(s2 + j, b);
        }
        for (; j < w; j++)
            for (r = 0; r < (two ? 8 : 4); r += 4) {
                const T *xr = x0 + r * stride + j, *yr = y0 + r * stride + j;
                ptrdiff_t at = (i + r) * stride + j;
                double m = (double)mean[j], g0 = FASTBN_DY1(yr, at),
                       g1 = FASTBN_DY1(yr + stride, at + stride),
                       g2 = FASTBN_DY1(yr + 2 * stride, at + 2 * stride),
                       g3 = FASTBN_DY1(yr + 3 * stride, at + 3 * stride);
                s1[j] += (g0 + g1) + (g2 + g3);
                s2[j] += (g0 * ((double)xr[0] - m) + g1 * ((double)xr[stride] - m))
                       + (g2 * ((double)xr[2 * stride] - m) + g3 * ((double)xr[3 * stride] - m));
            }
        if (!two) i -= 4;
    }
    for (; i < n_rows; i++)
        for (j = 0; j < w; j++) {
            double g = FASTBN_DY1(dy + i * stride + j, i * stride + j);
            s1[j] += g;
            s2[j] += g * ((double)x[i * stride + j] - (double)mean[j]);
        }
}
#undef FASTBN_DY8
#undef FASTBN_DY1
static void FN(cols_grad_sums)(const T *RESTRICT x, const T *RESTRICT dy, ptrdiff_t stride,
                               ptrdiff_t n_rows, ptrdiff_t w, const T *RESTRICT mean,
                               double *RESTRICT s1, double *RESTRICT s2, const uint8_t *mask,
                               ptrdiff_t pos, ptrdiff_t pf, int rows) {
    if (mask) FN(cols_grad_sums_run)(1, x, dy, stride, n_rows, w, mean, s1, s2, mask, pos, pf, rows);
    else FN(cols_grad_sums_run)(0, x, dy, stride, n_rows, w, mean, s1, s2, NULL, 0, pf, rows);
}

/* (M, D) elementwise sweeps (any order of rows gives the same values). Rows go four at a time, so
 * that each column's coefficients are loaded once per four rows -- when streamed, only if every
 * row starts at the same offset within a cache line; otherwise one row at a time. An affine sweep
 * that is not streamed (its data come from and stay in the caches) goes four at a time only over
 * short runs: parts of rows of fewer than `short_run` bytes (fastbn/_planner.py); over whole
 * rows or long runs one row at a time. */
/* Columns j.. (a vector, or `count` values when masked) of four rows, rows i.. of the call
 * (x0 = x + i * stride; `at` = i * stride, for the residual and the mask). */
FASTBN_INLINE void FN(affine4)(const int relu, const int masked, unsigned count, const T *x0,
                               T *o0, ptrdiff_t stride, ptrdiff_t j, const T *mean, const T *scale,
                               const T *beta, int stream, const T *res, ptrdiff_t at,
                               uint8_t *mask, ptrdiff_t pos, unsigned *bits) {
    VT m = masked ? LOADM(mean + j, count) : FN(loadv)(mean + j);
    VT s = masked ? LOADM(scale + j, count) : FN(loadv)(scale + j);
    VT b = masked ? LOADM(beta + j, count) : FN(loadv)(beta + j);
    int r;
    _Pragma("GCC unroll 4") for (r = 0; r < 4; r++) {
        const T *p = x0 + r * stride + j;
        ptrdiff_t k = at + r * stride + j;
        VT v = ((masked ? LOADM(p, count) : FN(loadv)(p)) - m) * s + b;
        if (masked || !bits) {
            v = FN(relu_v)(relu, v, res, k, mask, pos + k, masked, count);
        } else if (relu) {
            if (relu == 2) v += FN(loadv)(res + k);
            bits[r] = POS_BITS(v);
            v = RELU(v);
        }
        if (masked) STOREM(o0 + r * stride + j, count, v);
        else FN(put)(o0 + r * stride + j, v, stream);
    }
}
FASTBN_INLINE void FN(cols_affine_run)(const int relu, const T *RESTRICT x, T *RESTRICT out,
                                       ptrdiff_t stride, ptrdiff_t n_rows, ptrdiff_t n,
                                       const T *RESTRICT mean, const T *RESTRICT scale,
                                       const T *RESTRICT beta, int stream, const T *RESTRICT res,
                                       uint8_t *RESTRICT mask, ptrdiff_t pos, ptrdiff_t short_run) {
    ptrdiff_t i = 0, j, r, head;
    stream = fastbn_streamable(out, sizeof(T), stream);
    head = fastbn_head(out, n, sizeof(T), stream);
    if (stream ? !((stride * (ptrdiff_t)sizeof(T)) & 63)
               : n < stride && n * (ptrdiff_t)sizeof(T) < short_run)
        for (; i + 4 <= n_rows; i += 4) {
            const T *x0 = x + i * stride;
            T *o0 = out + i * stride;
            ptrdiff_t at = i * stride;
            /* The four rows' mask bits of whole vectors, when their bit offsets agree (stride
             * % 8 == 0): gathered in acc (nb bits, the first lo of them not ours) and written 32
             * at a time at mp (+ rowb per row); in locals, which mask stores cannot alias. */
            int four = relu && !(stride & 7), nb = (int)((pos + at + head) & 7), lo = nb;
            uint8_t *mp = four ? mask + ((pos + at + head) >> 3) : NULL;
            ptrdiff_t rowb = stride / 8;
            uint64_t acc[4] = {0, 0, 0, 0};
            unsigned bits[4];
            if (relu && i + 8 <= n_rows) /* the next four rows' mask lines, for writing: a
                                            store that misses would hold up the others */
                for (r = 4; r < 8; r++) __builtin_prefetch(mask + ((pos + at + r * stride) >> 3), 1, 3);
            if (head) /* the values before the first line boundary: masked ordinary stores */
                FN(affine4)(relu, 1, head, x0, o0, stride, 0, mean, scale, beta, 0, res, at, mask,
                            pos, NULL);
            for (j = head; j + N <= n; j += N) {
                FN(affine4)(relu, 0, 0, x0, o0, stride, j, mean, scale, beta, stream, res, at, mask,
                            pos, four ? bits : NULL);
                if (four) {
                    for (r = 0; r < 4; r++) acc[r] |= (uint64_t)bits[r] << nb;
                    nb += N;
                    if (nb >= 32) {
                        for (r = 0; r < 4; r++) {
                            if (lo) {
                                fastbn_sink one = {mp + r * rowb, acc[r], 32, lo};
                                fastbn_sink_bytes(&one, 32);
                            } else {
                                uint32_t w = (uint32_t)acc[r];
                                memcpy(mp + r * rowb, &w, 4);
                            }
                            acc[r] >>= 32;
                        }
                        lo = 0;
                        mp += 4;
                        nb -= 32;
                    }
                }
            }
            if (four && nb > lo)
                for (r = 0; r < 4; r++) {
                    fastbn_sink one = {mp + r * rowb, acc[r], nb, lo};
                    fastbn_sink_bytes(&one, nb);
                }
            if (j < n)
                FN(affine4)(relu, 1, n - j, x0, o0, stride, j, mean, scale, beta, 0, res, at, mask,
                            pos, NULL);
        }
    for (; i < n_rows; i++) {
        const T *xi = x + i * stride;
        T *oi = out + i * stride;
        ptrdiff_t at = i * stride;
        j = 0;
        if (stream)
            for (; j < n && ((uintptr_t)(oi + j) & 63); j++)
                oi[j] = FN(relu1)(relu, (xi[j] - mean[j]) * scale[j] + beta[j], res, at + j, mask,
                                  pos + at + j);
        fastbn_sink sink = fastbn_sink_at(mask, relu ? pos + at + j : 0);
        for (; j + N <= n; j += N)
            FN(put)(oi + j,
                    FN(relu_s)(relu,
                               (FN(loadv)(xi + j) - FN(loadv)(mean + j)) * FN(loadv)(scale + j)
                                   + FN(loadv)(beta + j),
                               res, at + j, &sink),
                    stream);
        if (relu) fastbn_sink_end(&sink);
        for (; j < n; j++)
            oi[j] = FN(relu1)(relu, (xi[j] - mean[j]) * scale[j] + beta[j], res, at + j, mask,
                              pos + at + j);
    }
    if (stream) FASTBN_ISA(sfence)();
}
/* out[i, j] = (x - mean[j]) * scale[j] + beta[j], then the epilogue (res, mask, pos). */
static void FN(cols_affine)(const T *RESTRICT x, T *RESTRICT out, ptrdiff_t stride,
                            ptrdiff_t n_rows, ptrdiff_t n, const T *RESTRICT mean,
                            const T *RESTRICT scale, const T *RESTRICT beta, int stream,
                            const T *RESTRICT res, uint8_t *RESTRICT mask, ptrdiff_t pos,
                            ptrdiff_t short_run) {
    if (!mask)
        FN(cols_affine_run)(0, x, out, stride, n_rows, n, mean, scale, beta, stream, NULL, NULL, 0,
                            short_run);
    else if (!res)
        FN(cols_affine_run)(1, x, out, stride, n_rows, n, mean, scale, beta, stream, NULL, mask,
                            pos, short_run);
    else
        FN(cols_affine_run)(2, x, out, stride, n_rows, n, mean, scale, beta, stream, res, mask,
                            pos, short_run);
}
/* dx[i, j] = k_dy[j] * (dy - k_b[j] - (x - mean[j]) * invstd[j] * k_g[j]), in T; dy read through
 * the mask (relu 1), or dx = k_dy[j] * dy without reading x (relu 2, test mode); dres (or NULL):
 * dy as read. */
FASTBN_INLINE void FN(dx4)(const int relu, const int masked, unsigned count, const T *x0,
                           const T *g0, T *o0, ptrdiff_t stride, ptrdiff_t j, const T *mean,
                           const T *invstd, const T *k_dy, const T *k_b, const T *k_g, int stream,
                           const uint8_t *mask, ptrdiff_t at, ptrdiff_t pos, T *dres) {
    VT m = masked ? LOADM(mean + j, count) : FN(loadv)(mean + j);
    VT s = masked ? LOADM(invstd + j, count) : FN(loadv)(invstd + j);
    VT a = masked ? LOADM(k_dy + j, count) : FN(loadv)(k_dy + j);
    VT b = masked ? LOADM(k_b + j, count) : FN(loadv)(k_b + j);
    VT g = masked ? LOADM(k_g + j, count) : FN(loadv)(k_g + j);
    int r;
    _Pragma("GCC unroll 4") for (r = 0; r < 4; r++) {
        const T *p = g0 + r * stride + j, *q = x0 + r * stride + j;
        ptrdiff_t k = at + r * stride + j;
        VT gv = masked ? LOADM(p, count) : FN(loadv)(p), v;
        gv = FN(masked_dy)(relu, gv, mask, pos + k, masked, count);
        if (relu && dres) {
            if (masked) STOREM(dres + k, count, gv);
            else FN(storev)(dres + k, gv);
        }
        if (relu == 2) v = a * gv;
        else v = a * (gv - b - ((masked ? LOADM(q, count) : FN(loadv)(q)) - m) * s * g);
        if (masked) STOREM(o0 + r * stride + j, count, v);
        else FN(put)(o0 + r * stride + j, v, stream);
    }
}
FASTBN_INLINE void FN(cols_dx_run)(const int relu, const T *RESTRICT x, const T *RESTRICT dy,
                                   T *RESTRICT dx, ptrdiff_t stride, ptrdiff_t n_rows, ptrdiff_t n,
                                   const T *RESTRICT mean, const T *RESTRICT invstd,
                                   const T *RESTRICT k_dy, const T *RESTRICT k_b,
                                   const T *RESTRICT k_g, int stream, const uint8_t *mask,
                                   ptrdiff_t pos, T *RESTRICT dres) {
    ptrdiff_t i = 0, j, head;
    stream = fastbn_streamable(dx, sizeof(T), stream);
    head = fastbn_head(dx, n, sizeof(T), stream);
    if (!stream || !((stride * (ptrdiff_t)sizeof(T)) & 63))
        for (; i + 4 <= n_rows; i += 4) {
            const T *x0 = x + i * stride, *g0 = dy + i * stride;
            T *o0 = dx + i * stride;
            ptrdiff_t at = i * stride;
            if (head)
                FN(dx4)(relu, 1, head, x0, g0, o0, stride, 0, mean, invstd, k_dy, k_b, k_g, 0, mask,
                        at, pos, dres);
            for (j = head; j + N <= n; j += N)
                FN(dx4)(relu, 0, 0, x0, g0, o0, stride, j, mean, invstd, k_dy, k_b, k_g, stream,
                        mask, at, pos, dres);
            if (j < n)
                FN(dx4)(relu, 1, n - j, x0, g0, o0, stride, j, mean, invstd, k_dy, k_b, k_g, 0,
                        mask, at, pos, dres);
        }
    for (; i < n_rows; i++) {
        const T *x0 = x + i * stride, *g0 = dy + i * stride;
        T *oi = dx + i * stride;
        ptrdiff_t at = i * stride;
        T g1;
        j = 0;
        if (stream)
            for (; j < n && ((uintptr_t)(oi + j) & 63); j++) {
                g1 = FN(masked_dy1)(relu, g0[j], mask, pos + at + j);
                if (relu && dres) dres[at + j] = g1;
                oi[j] = relu == 2 ? k_dy[j] * g1
                                  : k_dy[j] * (g1 - k_b[j] - (x0[j] - mean[j]) * invstd[j] * k_g[j]);
            }
        for (; j + N <= n; j += N) {
            VT gv = FN(masked_dy)(relu, FN(loadv)(g0 + j), mask, pos + at + j, 0, 0);
            if (relu && dres) FN(storev)(dres + at + j, gv);
            FN(put)(oi + j,
                    relu == 2 ? FN(loadv)(k_dy + j) * gv
                    : FN(loadv)(k_dy + j)
                        * (gv - FN(loadv)(k_b + j)
                           - (FN(loadv)(x0 + j) - FN(loadv)(mean + j)) * FN(loadv)(invstd + j)
                                 * FN(loadv)(k_g + j)),
                    stream);
        }
        for (; j < n; j++) {
            g1 = FN(masked_dy1)(relu, g0[j], mask, pos + at + j);
            if (relu && dres) dres[at + j] = g1;
            oi[j] = relu == 2 ? k_dy[j] * g1
                              : k_dy[j] * (g1 - k_b[j] - (x0[j] - mean[j]) * invstd[j] * k_g[j]);
        }
    }
    if (stream) FASTBN_ISA(sfence)();
}
static void FN(cols_dx)(const T *RESTRICT x, const T *RESTRICT dy, T *RESTRICT dx,
                        ptrdiff_t stride, ptrdiff_t n_rows, ptrdiff_t n, const T *RESTRICT mean,
                        const T *RESTRICT invstd, const T *RESTRICT k_dy, const T *RESTRICT k_b,
                        const T *RESTRICT k_g, int stream, const uint8_t *mask, ptrdiff_t pos,
                        int train, T *RESTRICT dres) {
    if (!mask)
        FN(cols_dx_run)(0, x, dy, dx, stride, n_rows, n, mean, invstd, k_dy, k_b, k_g, stream,
                        NULL, 0, NULL);
    else if (train)
        FN(cols_dx_run)(1, x, dy, dx, stride, n_rows, n, mean, invstd, k_dy, k_b, k_g, stream,
                        mask, pos, dres);
    else
        FN(cols_dx_run)(2, x, dy, dx, stride, n_rows, n, mean, invstd, k_dy, k_b, k_g, stream,
                        mask, pos, dres);
}

/* Layernorm backward, four rows at once (row r at x + r * stride): per column j,
 * db[j] += sum_r dy_r, dg[j] += sum_r dy_r * (x_r - mean[r]) * invstd[r], so each column's
 * partials are loaded and stored once per four rows; per row r, out[2r] = sum gamma * dy_r and
 * out[2r+1] = sum gamma * dy_r * (x_r - mean[r]), element j in lane j % 8 (eight lanes, unlike the
 * sixteen of the other sums, so a row summed here and one summed alone may differ in the last
 * bits; which rows go four at a time depends on the shape only). mean, invstd, out: the caller's
 * (thread-private) arrays of 4, 4 and 8 values; ahead: whether the next four rows follow (they
 * are prefetched). */
static void FN(rows4_grad_sums)(const T *RESTRICT x, const T *RESTRICT dy, ptrdiff_t stride,
                                const T *RESTRICT gamma, ptrdiff_t n, const double *mean,
                                const double *invstd, double *RESTRICT db, double *RESTRICT dg,
                                double *out, int ahead) {
    const fastbn_vd zero = {0, 0, 0, 0, 0, 0, 0, 0};
    ACC A[4] = {ACC_ZERO(), ACC_ZERO(), ACC_ZERO(), ACC_ZERO()};
    ACC B[4] = {ACC_ZERO(), ACC_ZERO(), ACC_ZERO(), ACC_ZERO()};
    double sa[4] = {0, 0, 0, 0}, sb[4] = {0, 0, 0, 0};
    ptrdiff_t j = 0, r;
    for (; j + 8 <= n; j += 8) {
        fastbn_vd gm = LOAD8(gamma + j), sdb = zero, sdg = zero;
        if (ahead && !(j & (64 / (ptrdiff_t)sizeof(T) - 1)))
            for (r = 4; r < 8; r++) {
                __builtin_prefetch(x + r * stride + j, 0, 3);
                __builtin_prefetch(dy + r * stride + j, 0, 3);
            }
        for (r = 0; r < 4; r++) {
            fastbn_vd g = LOAD8(dy + r * stride + j), xc = LOAD8(x + r * stride + j) - mean[r];
            sdb += g;
            sdg += g * xc * invstd[r];
            g *= gm;
            ACC_ADD(A[r], g);
            ACC_ADD(B[r], g * xc);
        }
        FASTBN_ISA(storev_d)(db + j, FASTBN_ISA(load8_d)(db + j) + sdb);
        FASTBN_ISA(storev_d)(dg + j, FASTBN_ISA(load8_d)(dg + j) + sdg);
    }
    for (; j < n; j++)
        for (r = 0; r < 4; r++) {
            double g = (double)dy[r * stride + j], xc = (double)x[r * stride + j] - mean[r];
            db[j] += g;
            dg[j] += g * xc * invstd[r];
            g *= (double)gamma[j];
            sa[r] += g;
            sb[r] += g * xc;
        }
    for (r = 0; r < 4; r++) {
        out[2 * r] = fastbn_hsum(ACC_GET(A[r])) + sa[r];
        out[2 * r + 1] = fastbn_hsum(ACC_GET(B[r])) + sb[r];
    }
}

/* Short rows of n = 8 * NV values (NV even, at most FASTBN_REG_MAX / 8), each held in NV
 * registers as doubles: a row is loaded and converted once for both of its sums (and, in the
 * backward, for dx too) instead of once per sweep, which is what bounds rows this short. The
 * arithmetic is that of the per-row functions, operation for operation: element j in lane j % 16
 * (even k: lanes 0-7, odd k: lanes 8-15), the tree of fastbn_hsum, the same scalar steps. Called
 * with constant ROWS and NV, so that the loops unroll and v[] lives in registers; used only where
 * there are enough registers (FASTBN_REG_ROWS: AVX-512's 32 zmm), the per-row path elsewhere. */
FASTBN_INLINE void FN(ln_reg_rows)(const T *RESTRICT x, T *RESTRICT out, const int ROWS,
                                   const int NV, const T *RESTRICT gamma, const T *RESTRICT beta,
                                   double eps, int center, T *RESTRICT mean, T *RESTRICT invstd) {
    const ptrdiff_t n = 8 * NV;
    const fastbn_vd zero = {0, 0, 0, 0, 0, 0, 0, 0};
    fastbn_vd v[2][FASTBN_REG_MAX / 8], A0[2], A1[2], B0[2], B1[2], t;
    double shift[2];
    int k, q;
    _Pragma("GCC unroll 2") for (q = 0; q < ROWS; q++) {
        _Pragma("GCC unroll 16") for (k = 0; k < NV; k++) v[q][k] = LOAD8(x + q * n + 8 * k);
        shift[q] = 0.0;
        if (center) {
            A0[q] = A1[q] = zero;
            _Pragma("GCC unroll 16") for (k = 0; k < NV; k += 2) {
                A0[q] += v[q][k];
                A1[q] += v[q][k + 1];
            }
            shift[q] = fastbn_hsum(A0[q] + A1[q]) / n;
        }
        A0[q] = A1[q] = B0[q] = B1[q] = zero;
        _Pragma("GCC unroll 16") for (k = 0; k < NV; k += 2) {
            t = v[q][k] - shift[q];
            A0[q] += t;
            B0[q] += t * t;
            t = v[q][k + 1] - shift[q];
            A1[q] += t;
            B1[q] += t * t;
        }
    }
    _Pragma("GCC unroll 2") for (q = 0; q < ROWS; q++) {
        fastbn_sums m = {fastbn_hsum(A0[q] + A1[q]), fastbn_hsum(B0[q] + B1[q])};
        m = fastbn_moments(m, shift[q], n, center);
        T mf = (T)m.s1, sf = (T)fastbn_row_invstd(m.s2, n, eps);
        mean[q] = mf;
        invstd[q] = sf;
        FN(row_affine_run)(x + q * n, out + q * n, n, mf, sf, gamma, beta, 0);
    }
}
/* Rows of 8 * NV values, two at a time (their instructions interleave) when both fit in the
 * registers. */
FASTBN_INLINE void FN(ln_reg)(const int NV, const T *RESTRICT x, T *RESTRICT out,
                              ptrdiff_t n_rows, const T *RESTRICT gamma, const T *RESTRICT beta,
                              double eps, int center, T *RESTRICT mean, T *RESTRICT invstd) {
    const ptrdiff_t n = 8 * NV;
    ptrdiff_t r = 0;
    if (NV <= 8)
        for (; r + 2 <= n_rows; r += 2)
            FN(ln_reg_rows)(x + r * n, out + r * n, 2, NV, gamma, beta, eps, center, mean + r,
                            invstd + r);
    for (; r < n_rows; r++)
        FN(ln_reg_rows)(x + r * n, out + r * n, 1, NV, gamma, beta, eps, center, mean + r,
                        invstd + r);
}
/* Layernorm forward of n_rows consecutive rows of n values (short rows, which are not streamed):
 * per row the mean (0 without a pass over the row when not centred), the sums shifted by it,
 * then out = (x - mean) * (gamma * invstd) + beta, all in one function so that nothing is called
 * per row. */
static void FN(layernorm_rows)(const T *RESTRICT x, T *RESTRICT out, ptrdiff_t n_rows,
                               ptrdiff_t n, const T *RESTRICT gamma, const T *RESTRICT beta,
                               double eps, int center, T *RESTRICT mean, T *RESTRICT invstd) {
    ptrdiff_t r;
    switch (FASTBN_REG_ROWS && n % 16 == 0 && n <= FASTBN_REG_MAX ? n / 8 : 0) {
#define FASTBN_REG_CASE(NV) case NV: if (center) FN(ln_reg)(NV, x, out, n_rows, gamma, beta, eps, 1, mean, invstd); else FN(ln_reg)(NV, x, out, n_rows, gamma, beta, eps, 0, mean, invstd); return;
    FASTBN_REG_CASES
#undef FASTBN_REG_CASE
    }
    for (r = 0; r < n_rows; r++) {
        const T *xr = x + r * n;
        double shift = center ? FN(sum)(xr, n).s1 / n : 0.0;
        fastbn_sums m = fastbn_moments(FN(shifted_sums)(xr, n, shift), shift, n, center);
        T mf = (T)m.s1, sf = (T)fastbn_row_invstd(m.s2, n, eps);
        mean[r] = mf;
        invstd[r] = sf;
        FN(row_affine)(xr, out + r * n, n, mf, sf, gamma, beta, 0);
    }
}
/* Layernorm backward of short rows, x and dy in registers: the steps of row_grad_sums (adding the
 * row's dbeta/dgamma terms into db/dg), the coefficients, then dx with gamma as row_dx computes
 * it, from the same registers. */
FASTBN_INLINE void FN(lng_reg)(const int NV, const T *RESTRICT x, const T *RESTRICT dy,
                               T *RESTRICT dx, ptrdiff_t n_rows, const T *RESTRICT gamma,
                               const T *mean, const T *invstd, int center, double *RESTRICT db,
                               double *RESTRICT dg) {
    const ptrdiff_t n = 8 * NV;
    const fastbn_vd zero = {0, 0, 0, 0, 0, 0, 0, 0};
    ptrdiff_t r;
    int k, q;
    for (r = 0; r < n_rows; r++) {
        const T *xr = x + r * n, *yr = dy + r * n;
        double m = center ? (double)mean[r] : 0.0, s = (double)invstd[r];
        fastbn_vd xv[FASTBN_REG_MAX / 8], gv[FASTBN_REG_MAX / 8], A[2], B[2], g, xc;
        A[0] = A[1] = B[0] = B[1] = zero;
        _Pragma("GCC unroll 16") for (k = 0; k < NV; k++) {
            xv[k] = LOAD8(xr + 8 * k);
            gv[k] = LOAD8(yr + 8 * k);
        }
        _Pragma("GCC unroll 16") for (k = 0; k < NV; k++) {
            g = gv[k];
            xc = xv[k] - m;
            FASTBN_ISA(storev_d)(db + 8 * k, FASTBN_ISA(load8_d)(db + 8 * k) + g);
            FASTBN_ISA(storev_d)(dg + 8 * k, FASTBN_ISA(load8_d)(dg + 8 * k) + g * xc * s);
            g *= LOAD8(gamma + 8 * k);
            A[k & 1] += g;
            B[k & 1] += g * xc;
        }
        fastbn_dx_coefs c = fastbn_row_dx_coefs(s, fastbn_hsum(A[0] + A[1]),
                                                fastbn_hsum(B[0] + B[1]), n, center);
        _Pragma("GCC unroll 16") for (k = 0; k < NV; k += N / 8) {
            fastbn_vd h[N / 8];
            for (q = 0; q < N / 8; q++)
                h[q] = s * LOAD8(gamma + 8 * (k + q)) * gv[k + q] - c.s3 * (xv[k + q] - m) + c.b;
            PUT_PACKED(dx + r * n + 8 * k, h, 0);
        }
    }
}
/* Layernorm backward of n_rows consecutive rows of n values, mean and invstd per row: per row
 * the two sums s1 = sum(gamma * dy), s2 = sum(gamma * dy * (x - mean)), adding the row's terms of
 * dbeta and dgamma into db and dg, then dx = invstd * gamma * dy - s3 * (x - mean) + b
 * (fastbn_row_dx_coefs; not centred, the mean array is not read: the mean is 0, and so is b); in
 * one function, so that nothing is called per row. */
static void FN(layernorm_rows_grad)(const T *RESTRICT x, const T *RESTRICT dy, T *RESTRICT dx,
                                    ptrdiff_t n_rows, ptrdiff_t n, const T *RESTRICT gamma,
                                    const T *mean, const T *invstd, int center,
                                    double *RESTRICT db, double *RESTRICT dg, int stream) {
    ptrdiff_t r;
    switch (FASTBN_REG_ROWS && !stream && n % 16 == 0 && n <= FASTBN_REG_MAX ? n / 8 : 0) {
#define FASTBN_REG_CASE(NV) case NV: FN(lng_reg)(NV, x, dy, dx, n_rows, gamma, mean, invstd, center, db, dg); return;
    FASTBN_REG_CASES
#undef FASTBN_REG_CASE
    }
    for (r = 0; r < n_rows; r++) {
        double m = center ? (double)mean[r] : 0.0, s = (double)invstd[r];
        fastbn_sums t = FN(row_grad_sums)(x + r * n, dy + r * n, gamma, n, m, s, db, dg);
        fastbn_dx_coefs k = fastbn_row_dx_coefs(s, t.s1, t.s2, n, center);
        FN(row_dx)(x + r * n, dy + r * n, dx + r * n, n, m, s, gamma, 0.0, k.s3, k.b, stream);
    }
}

/* Per-column constants of the (M, D) and (N, C, L) kernels: the statistics' last step, the
 * folded affine constants of a forward and the dx coefficients of a backward. Eight columns per
 * vector, then the rest one at a time with the same IEEE operations (a vector division or square
 * root rounds each lane as the scalar one does): the same bits either way. One column at a time,
 * the square root and divisions took 13-18 cycles a column (docs/decisions.md). */
FASTBN_INLINE void FN(store8)(T *p, fastbn_vd v) { /* eight values rounded to T */
#if FASTBN_FLOAT
    fastbn_vf8 t = __builtin_convertvector(v, fastbn_vf8);
    memcpy(p, &t, sizeof t);
#else
    memcpy(p, &v, sizeof v);
#endif
}
/* After the column sums shifted by a block's first row (cols_shifted_sums of the other rows):
 * s1 = (first - base) + s1 / count, the mean less `base` (NULL: 0, the mean itself), and
 * s2 = s2 - s1 * s1 / count (the sum of squared deviations). A block that is one chunk of many
 * gives its mean less a base shared by every chunk (the array's first row), exactly: the chunks'
 * merge then works on small numbers, and the base is added once at its end. */
static void FN(finish_moments)(const T *RESTRICT first, const T *RESTRICT base, ptrdiff_t n,
                               double count, double *RESTRICT s1, double *RESTRICT s2) {
    ptrdiff_t j = 0;
    if (n <= 0) return;
    const fastbn_vd c = SPLAT8(count), zero = SPLAT8(0.0);
    for (; j + 8 <= n; j += 8) {
        fastbn_vd t = FASTBN_ISA(load8_d)(s1 + j);
        FASTBN_ISA(storev_d)(s1 + j, (LOAD8(first + j) - (base ? LOAD8(base + j) : zero)) + t / c);
        FASTBN_ISA(storev_d)(s2 + j, FASTBN_ISA(load8_d)(s2 + j) - t * t / c);
    }
    for (; j < n; j++) {
        double t = s1[j];
        s1[j] = ((double)first[j] - (base ? (double)base[j] : 0.0)) + t / count;
        s2[j] = s2[j] - t * t / count;
    }
}
/* From each column's mean and sum of squared deviations m2 over count[j * count_step] values:
 * var = m2 / count (m2 <= 0, from rounding, taken as +0; NaN stays NaN), invstd = 1 / sqrt(var +
 * eps), and, rounded to T, mean_out = mean, invstd_out = invstd, scale = gamma * invstd. */
static void FN(fold)(const T *RESTRICT gamma, const double *RESTRICT mean,
                     const double *RESTRICT m2, const double *RESTRICT count,
                     ptrdiff_t count_step, ptrdiff_t n, double eps, T *RESTRICT mean_out,
                     T *RESTRICT invstd_out, T *RESTRICT scale, double *RESTRICT var) {
    ptrdiff_t j = 0;
    if (n <= 0) return;
    fastbn_vd e = SPLAT8(eps), one = SPLAT8(1.0), c = SPLAT8(count[0]);
    for (; j + 8 <= n; j += 8) {
        fastbn_vd v, s;
        if (count_step) c = FASTBN_ISA(load8_d)(count + j);
        v = FASTBN_ISA(relu_d)(FASTBN_ISA(load8_d)(m2 + j)) / c;
        s = one / FASTBN_ISA(sqrt_d)(v + e);
        FASTBN_ISA(storev_d)(var + j, v);
        FN(store8)(mean_out + j, FASTBN_ISA(load8_d)(mean + j));
        FN(store8)(invstd_out + j, s);
        FN(store8)(scale + j, LOAD8(gamma + j) * s);
    }
    for (; j < n; j++) {
        double v = (m2[j] <= 0 ? 0.0 : m2[j]) / count[j * count_step], s = 1.0 / sqrt(v + eps);
        var[j] = v;
        mean_out[j] = (T)mean[j];
        invstd_out[j] = (T)s;
        scale[j] = (T)((double)gamma[j] * s);
    }
}
/* Test mode's constants from the running statistics: invstd_out = 1 / sqrt(running_var + eps)
 * computed in double and rounded to T, scale = gamma * invstd_out in T, mean_out = running_mean. */
static void FN(test_fold)(const T *RESTRICT gamma, const T *RESTRICT running_mean,
                          const T *RESTRICT running_var, ptrdiff_t n, double eps,
                          T *RESTRICT mean_out, T *RESTRICT invstd_out, T *RESTRICT scale) {
    ptrdiff_t j = 0;
    if (n <= 0) return;
    fastbn_vd e = SPLAT8(eps), one = SPLAT8(1.0);
    memcpy(mean_out, running_mean, (size_t)n * sizeof(T));
    for (; j + 8 <= n; j += 8) {
        fastbn_vd s = one / FASTBN_ISA(sqrt_d)(LOAD8(running_var + j) + e);
#if FASTBN_FLOAT
        fastbn_vf8 sf = __builtin_convertvector(s, fastbn_vf8), g;
        memcpy(&g, gamma + j, sizeof g);
        g = g * sf;
        memcpy(invstd_out + j, &sf, sizeof sf);
        memcpy(scale + j, &g, sizeof g);
#else
        FASTBN_ISA(storev_d)(invstd_out + j, s);
        FASTBN_ISA(storev_d)(scale + j, FASTBN_ISA(load8_d)(gamma + j) * s);
#endif
    }
    for (; j < n; j++) {
        invstd_out[j] = (T)(1.0 / sqrt((double)running_var[j] + eps));
        scale[j] = gamma[j] * invstd_out[j];
    }
}
/* Column j's gradient sums from K chunks' (row k of part_dy and part_dyxc at k * stride), added
 * in chunk order: s1 = sum dy, s2 = sum dy * (x - mean); for the eight columns from j, or one. */
FASTBN_INLINE void FN(partials8)(const double *part_dy, const double *part_dyxc, ptrdiff_t K,
                                 ptrdiff_t stride, ptrdiff_t j, fastbn_vd *s1, fastbn_vd *s2) {
    ptrdiff_t k;
    *s1 = *s2 = SPLAT8(0.0);
    for (k = 0; k < K; k++) {
        *s1 = *s1 + FASTBN_ISA(load8_d)(part_dy + k * stride + j);
        *s2 = *s2 + FASTBN_ISA(load8_d)(part_dyxc + k * stride + j);
    }
}
FASTBN_INLINE void FN(partials1)(const double *part_dy, const double *part_dyxc, ptrdiff_t K,
                                 ptrdiff_t stride, ptrdiff_t j, double *s1, double *s2) {
    ptrdiff_t k;
    *s1 = *s2 = 0.0;
    for (k = 0; k < K; k++) {
        *s1 = *s1 + part_dy[k * stride + j];
        *s2 = *s2 + part_dyxc[k * stride + j];
    }
}
/* The gradient sums of n columns (FN(partials8)) stored in s1 and s2: what the gradient-sums
 * entries return where the backward would fold them into dx coefficients. */
static void FN(store_sums)(const double *RESTRICT part_dy, const double *RESTRICT part_dyxc,
                           ptrdiff_t K, ptrdiff_t stride, ptrdiff_t n, double *RESTRICT s1,
                           double *RESTRICT s2) {
    ptrdiff_t j = 0;
    fastbn_vd v1, v2;
    for (; j + 8 <= n; j += 8) {
        FN(partials8)(part_dy, part_dyxc, K, stride, j, &v1, &v2);
        FASTBN_ISA(storev_d)(s1 + j, v1);
        FASTBN_ISA(storev_d)(s2 + j, v2);
    }
    for (; j < n; j++) FN(partials1)(part_dy, part_dyxc, K, stride, j, s1 + j, s2 + j);
}
/* A backward's constants per column from K chunks' gradient sums (FN(partials8)): dgamma = s2 *
 * invstd, dbeta = s1, k_dy = gamma * invstd, and in train mode k_b = s1 / count and k_g = dgamma /
 * count (else 0), each computed in double and rounded to T (see _backward_coefficients). */
static void FN(grad_coefs)(const T *RESTRICT invstd, const T *RESTRICT gamma,
                           const double *RESTRICT part_dy, const double *RESTRICT part_dyxc,
                           ptrdiff_t K, ptrdiff_t stride, ptrdiff_t n, double count, int train,
                           T *RESTRICT dgamma, T *RESTRICT dbeta, T *RESTRICT k_dy,
                           T *RESTRICT k_b, T *RESTRICT k_g) {
    ptrdiff_t j = 0;
    if (n <= 0) return;
    fastbn_vd c = SPLAT8(count), zero = SPLAT8(0.0);
    for (; j + 8 <= n; j += 8) {
        fastbn_vd s1, s2, iv = LOAD8(invstd + j), dg;
        FN(partials8)(part_dy, part_dyxc, K, stride, j, &s1, &s2);
        dg = s2 * iv;
        FN(store8)(dgamma + j, dg);
        FN(store8)(dbeta + j, s1);
        FN(store8)(k_dy + j, LOAD8(gamma + j) * iv);
        if (train) {
            FN(store8)(k_b + j, s1 / c);
            FN(store8)(k_g + j, dg / c);
        } else {
            FN(store8)(k_b + j, zero);
            FN(store8)(k_g + j, zero);
        }
    }
    for (; j < n; j++) {
        double s1, s2, dg;
        FN(partials1)(part_dy, part_dyxc, K, stride, j, &s1, &s2);
        dg = s2 * (double)invstd[j];
        dgamma[j] = (T)dg;
        dbeta[j] = (T)s1;
        k_dy[j] = (T)((double)gamma[j] * (double)invstd[j]);
        k_b[j] = train ? (T)(s1 / count) : (T)0;
        k_g[j] = train ? (T)(dg / count) : (T)0;
    }
}

/* running = momentum * running + (1 - momentum) * batch, in place, for each running array given
 * (or NULL), with the operations and precisions of NumPy's update (see _update_running): the
 * mean's terms in T, the variance's term (var is double) in double. Elementwise: the compiler's
 * vectors compute each element as the scalar loop would. */
static void FN(update_running)(const T *RESTRICT mean, const double *RESTRICT var, ptrdiff_t n,
                               double momentum, T *RESTRICT running_mean,
                               T *RESTRICT running_var) {
    const T m = (T)momentum, rest = (T)(1.0 - momentum);
    const double rest_d = 1.0 - momentum;
    ptrdiff_t j;
    if (running_mean)
        for (j = 0; j < n; j++) running_mean[j] = m * running_mean[j] + rest * mean[j];
    if (running_var)
        for (j = 0; j < n; j++) running_var[j] = (T)((double)(m * running_var[j]) + rest_d * var[j]);
}

/* This instruction set's table of the loops for T. */
static const FN_TABLE FN(table) = {
    FN(sum), FN(shifted_sums), FN(sum_pf), FN(shifted_sums_pf), FN(grad_sums_pf),
    FN(row_grad_sums), FN(rows4_grad_sums), FN(plane_affine), FN(plane_dx), FN(row_affine),
    FN(row_dx), FN(cols_shifted_sums), FN(cols_grad_sums), FN(cols_affine), FN(cols_dx),
    FN(layernorm_rows), FN(layernorm_rows_grad), FN(finish_moments), FN(fold), FN(test_fold),
    FN(store_sums), FN(grad_coefs), FN(update_running),
};

#undef T
#undef VT
#undef N
#undef FN
#undef FN_TABLE
#undef LOAD8
#undef LOADM
#undef STOREM
#undef STREAM
#undef ACC
#undef ACC_ZERO
#undef ACC_ADD
#undef ACC_GET
#undef SPLAT
#undef SPLAT8
#undef PUT_PACKED
#undef POS_BITS
#undef KEEP
#undef RELU
