/* Fused element-wise kernels for the CPU int8 training step (see native.py for why and how it is built).
 *
 * Each kernel does in one pass over a row (the row stays in L1) what the torch path does in three to six
 * passes over the whole tensor: on two cores those passes are memory-bound and cost as much as the int8
 * matmuls themselves. Written with AVX-512F/BW/DQ/VL intrinsics; built with -DPZ_AVX2, native_avx2.h runs
 * them on AVX2 + FMA + F16C. Rows are split between OpenMP threads (torch's own libgomp).
 * Every kernel is deterministic (a row's result does not depend on the thread count).
 */
#include <immintrin.h>
#ifdef PZ_AVX2 /* the same kernels on AVX2 + FMA + F16C: each AVX-512 intrinsic as two 256-bit halves */
#include "native_avx2.h"
#endif
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* e^x for 16 floats: range reduction by ln 2 and a degree-6 polynomial (max rel. error ~2e-7 here). */
static inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f)), _mm512_set1_ps(-103.0f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

static inline __m512 sigmoid16(__m512 x) {
  __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

static inline __mmask16 tail(long n) { return (__mmask16)((1u << n) - 1u); }

/* y[0:n] += sum_t u[t] * v[t * ldv + 0:n] for t < rk (a row of a rank-rk product added in place). Four
 * column blocks at a time: one block's FMAs over t form a dependency chain, four give the FMA units work. */
static inline void add_lowrank(float *y, long n, const float *u, long rk, const float *v, long ldv) {
  long c = 0;
  for (; c + 64 <= n; c += 64) {
    __m512 a0 = _mm512_loadu_ps(y + c), a1 = _mm512_loadu_ps(y + c + 16);
    __m512 a2 = _mm512_loadu_ps(y + c + 32), a3 = _mm512_loadu_ps(y + c + 48);
    for (long t = 0; t < rk; t++) {
      __m512 f = _mm512_set1_ps(u[t]);
      const float *vt = v + t * ldv + c;
      a0 = _mm512_fmadd_ps(f, _mm512_loadu_ps(vt), a0);
      a1 = _mm512_fmadd_ps(f, _mm512_loadu_ps(vt + 16), a1);
      a2 = _mm512_fmadd_ps(f, _mm512_loadu_ps(vt + 32), a2);
      a3 = _mm512_fmadd_ps(f, _mm512_loadu_ps(vt + 48), a3);
    }
    _mm512_storeu_ps(y + c, a0);
    _mm512_storeu_ps(y + c + 16, a1);
    _mm512_storeu_ps(y + c + 32, a2);
    _mm512_storeu_ps(y + c + 48, a3);
  }
  for (; c < n; c += 16) {
    __mmask16 k = n - c >= 16 ? 0xFFFF : tail(n - c);
    __m512 acc = _mm512_maskz_loadu_ps(k, y + c);
    for (long t = 0; t < rk; t++)
      acc = _mm512_fmadd_ps(_mm512_set1_ps(u[t]), _mm512_maskz_loadu_ps(k, v + t * ldv + c), acc);
    _mm512_mask_storeu_ps(y + c, k, acc);
  }
}

/* add_lowrank for four rows y0..y3 (u0..u3 their coefficients) at once: each load of v serves four rows,
 * which matters once v (rank x n) no longer fits in L1. The same FMAs in the same order per element. */
static inline void add_lowrank4(float *const *y, long n, const float *const *u, long rk, const float *v, long ldv) {
  long c = 0;
  for (; c + 32 <= n; c += 32) {
    __m512 a[4][2];
    for (int i = 0; i < 4; i++) {
      a[i][0] = _mm512_loadu_ps(y[i] + c);
      a[i][1] = _mm512_loadu_ps(y[i] + c + 16);
    }
    for (long t = 0; t < rk; t++) {
      __m512 v0 = _mm512_loadu_ps(v + t * ldv + c), v1 = _mm512_loadu_ps(v + t * ldv + c + 16);
      for (int i = 0; i < 4; i++) {
        __m512 f = _mm512_set1_ps(u[i][t]);
        a[i][0] = _mm512_fmadd_ps(f, v0, a[i][0]);
        a[i][1] = _mm512_fmadd_ps(f, v1, a[i][1]);
      }
    }
    for (int i = 0; i < 4; i++) {
      _mm512_storeu_ps(y[i] + c, a[i][0]);
      _mm512_storeu_ps(y[i] + c + 16, a[i][1]);
    }
  }
  if (c < n)
    for (int i = 0; i < 4; i++) add_lowrank(y[i] + c, n - c, u[i], rk, v + c, ldv);
}

/* q[r, :] = round(x[r, :] * cs * 127 / max|x[r, :] * cs|) as int8, s[r] = that max / 127 (cs optional).
 * The same arithmetic as int8.quant_rows' torch expression, bit for bit: x * cs first, then times
 * (1 / m) * 127 (torch computes `127.0 / m` as a reciprocal times 127; 127 / m differs in the last bit,
 * and that flips a value that lands on .5). */
static inline float quant_row(const float *xr, long C, const float *cs, int8_t *qr) {
  __m512 m = _mm512_setzero_ps();
  for (long c = 0; c < C; c += 16) {
    __mmask16 k = C - c >= 16 ? 0xFFFF : tail(C - c);
    __m512 v = _mm512_maskz_loadu_ps(k, xr + c);
    if (cs) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, cs + c));
    m = _mm512_max_ps(m, _mm512_abs_ps(v));
  }
  float mx = _mm512_reduce_max_ps(m);
  if (!(mx >= 1e-30f)) mx = 1e-30f;
  __m512 inv = _mm512_set1_ps((1.0f / mx) * 127.0f);
  for (long c = 0; c < C; c += 16) {
    __mmask16 k = C - c >= 16 ? 0xFFFF : tail(C - c);
    __m512 v = _mm512_maskz_loadu_ps(k, xr + c);
    if (cs) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, cs + c));
    _mm_mask_storeu_epi8(qr + c, k, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv))));
  }
  return mx / 127.0f;
}

void pz_quant_rows(const float *x, long R, long C, long ldx, const float *cs, int8_t *q, long ldq, float *s,
                   int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
  for (long r = 0; r < R; r++) s[r] = quant_row(x + r * ldx, C, cs, q + r * ldq);
}

/* One row of the product before its LoRA parts: y[n] = y32[n] * sx * sw[n]. */
static void dequant_row(const int32_t *a, long N, float sx, const float *sw, float *y) {
  __m512 f = _mm512_set1_ps(sx);
  for (long n = 0; n < N; n += 16) {
    __mmask16 k = N - n >= 16 ? 0xFFFF : tail(N - n);
    __m512 v = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(k, a + n));
    _mm512_mask_storeu_ps(y + n, k, _mm512_mul_ps(_mm512_mul_ps(v, f), _mm512_maskz_loadu_ps(k, sw + n)));
  }
}

/* Rows y[0..nr) (nr <= 4) get sum_k u_i[k] * v[k, :] added over columns c0 .. c0 + n (u_i = u + i * ldu). */
static void lowrank_rows(float *const *y, int nr, long c0, long n, const float *u, long ldu, long rk,
                         const float *v) {
  if (nr == 4) {
    float *yy[4] = {y[0] + c0, y[1] + c0, y[2] + c0, y[3] + c0};
    const float *uu[4] = {u, u + ldu, u + 2 * ldu, u + 3 * ldu};
    add_lowrank4(yy, n, uu, rk, v, n);
  } else {
    for (int i = 0; i < nr; i++) add_lowrank(y[i] + c0, n, u + i * ldu, rk, v, n);
  }
}

/* SwiGLU of one row y = gate | up (ffn each) into o: mode 1 silu(gate) * up [ffn]; mode 2 its gradient
 * times g, d gate | d up [2 ffn]. */
static void swiglu_row(const float *y, long ffn, int mode, const float *g, float *o) {
  __m512 one = _mm512_set1_ps(1.0f);
  for (long n = 0; n < ffn; n += 16) {
    __mmask16 k = ffn - n >= 16 ? 0xFFFF : tail(ffn - n);
    __m512 a = _mm512_maskz_loadu_ps(k, y + n), u = _mm512_maskz_loadu_ps(k, y + ffn + n);
    __m512 sg = sigmoid16(a), silu = _mm512_mul_ps(a, sg);
    if (mode == 1) {
      _mm512_mask_storeu_ps(o + n, k, _mm512_mul_ps(silu, u));
    } else {
      __m512 gg = _mm512_maskz_loadu_ps(k, g + n);
      __m512 d = _mm512_mul_ps(sg, _mm512_fmadd_ps(a, _mm512_sub_ps(one, sg), one)); /* silu' = s (1 + a (1 - s)) */
      _mm512_mask_storeu_ps(o + n, k, _mm512_mul_ps(_mm512_mul_ps(d, gg), u));
      _mm512_mask_storeu_ps(o + ffn + n, k, _mm512_mul_ps(silu, gg));
    }
  }
}

static float *row_buffer(long n) { return (float *)aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64); }

/* The int8 product y with its dequantization (dequant_row) and LoRA parts (lowrank_rows), then by `mode`:
 *   0: out[r, :N] = y
 *   1: out[r, :ffn] = silu(y[:ffn]) * y[ffn:]                      (a fused gate|up, N = 2 ffn)
 * keep (may be NULL): y also stored as fp16 [R, N], clamped to fp16's range, for pz_swiglu_grad_h. */
void pz_product(const int32_t *y32, long R, long N, const float *sx, const float *sw, const float *xa, long ldxa,
                int np, const long *pcol, const long *pn, const long *prank, const long *pxa,
                const float *const *pbt, int mode, long ffn, float *out, long ldo, uint16_t *keep, int nt) {
#pragma omp parallel num_threads(nt)
  {
    float *buf = mode ? row_buffer(4 * N) : 0;
    __m512 hi = _mm512_set1_ps(65504.0f), lo = _mm512_set1_ps(-65504.0f);
#pragma omp for schedule(static)
    for (long r0 = 0; r0 < R; r0 += 4) { /* four rows at a time: see add_lowrank4 */
      int nr = R - r0 < 4 ? (int)(R - r0) : 4;
      float *ys[4];
      for (int i = 0; i < nr; i++) {
        ys[i] = mode ? buf + i * N : out + (r0 + i) * ldo;
        dequant_row(y32 + (r0 + i) * N, N, sx[r0 + i], sw, ys[i]);
      }
      for (int j = 0; j < np; j++) lowrank_rows(ys, nr, pcol[j], pn[j], xa + r0 * ldxa + pxa[j], ldxa, prank[j], pbt[j]);
      for (int i = 0; i < nr; i++) {
        long r = r0 + i;
        if (keep) {
          for (long n = 0; n < N; n += 16) {
            __mmask16 k = N - n >= 16 ? 0xFFFF : tail(N - n);
            __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_maskz_loadu_ps(k, ys[i] + n), lo), hi);
            _mm256_mask_storeu_epi16(keep + r * N + n, k, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
          }
        }
        if (mode) swiglu_row(ys[i], ffn, 1, 0, out + r * ldo);
      }
    }
    free(buf);
  }
}

/* The SwiGLU gradient (swiglu_row's mode 2) from the fp16 gate | up kept by pz_product. */
void pz_swiglu_grad_h(const uint16_t *yh, long R, long ffn, const float *g, long ldg, float *out, long ldo, int nt) {
#pragma omp parallel num_threads(nt)
  {
    float *buf = row_buffer(2 * ffn);
#pragma omp for schedule(static)
    for (long r = 0; r < R; r++) {
      for (long n = 0; n < 2 * ffn; n += 16) {
        __mmask16 k = 2 * ffn - n >= 16 ? 0xFFFF : tail(2 * ffn - n);
        _mm512_mask_storeu_ps(buf + n, k, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, yh + r * 2 * ffn + n)));
      }
      swiglu_row(buf, ffn, 2, g + r * ldg, out + r * ldo);
    }
    free(buf);
  }
}

/* out[r, c] = src[r, c] * s[r] + sum_k u[r, k] * v[k, c]; src int32 (i8 = 0) or int8 (i8 = 1), rank rk >= 0. */
void pz_dequant(const void *src, int i8, long R, long C, long lds, const float *s, const float *u, long ldu,
                long rk, const float *v, float *out, long ldo, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
  for (long r0 = 0; r0 < R; r0 += 4) {
    int nr = R - r0 < 4 ? (int)(R - r0) : 4;
    float *ys[4];
    for (int i = 0; i < nr; i++) {
      long r = r0 + i;
      __m512 f = _mm512_set1_ps(s[r]);
      float *o = ys[i] = out + r * ldo;
      for (long c = 0; c < C; c += 16) {
        __mmask16 k = C - c >= 16 ? 0xFFFF : tail(C - c);
        __m512i raw = i8 ? _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, (const int8_t *)src + r * lds + c))
                         : _mm512_maskz_loadu_epi32(k, (const int32_t *)src + r * lds + c);
        _mm512_mask_storeu_ps(o + c, k, _mm512_mul_ps(_mm512_cvtepi32_ps(raw), f));
      }
    }
    if (rk) lowrank_rows(ys, nr, 0, C, u + r0 * ldu, ldu, rk, v);
  }
}

/* Rotary embedding (half-split layout) of x[t, h, :] written to y[t, h, :], for T x H rows of D floats with
 * any strides of t and h (the last dimension contiguous); cs and sn are [T, D]. inverse = 0: the rotation,
 * x * cos + rotate(x) * sin with rotate(x) = (-x[half:], x[:half]); inverse = 1: its adjoint (backward),
 * g * cos + (gs[half:], -gs[:half]) with gs = g * sin. The same operations in the same order as ops.rope. */
void pz_rope(const float *x, long T, long H, long D, long xs_t, long xs_h, const float *cs, const float *sn,
             float *y, long ys_t, long ys_h, int inverse, int nt) {
  long half = D / 2;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (long t = 0; t < T; t++) {
    const float *c = cs + t * D, *s = sn + t * D;
    for (long h = 0; h < H; h++) {
      const float *a = x + t * xs_t + h * xs_h;
      float *o = y + t * ys_t + h * ys_h;
      for (long d = 0; d < half; d += 16) {
        __mmask16 k = half - d >= 16 ? 0xFFFF : tail(half - d);
        __m512 lo = _mm512_maskz_loadu_ps(k, a + d), hi = _mm512_maskz_loadu_ps(k, a + half + d);
        __m512 clo = _mm512_maskz_loadu_ps(k, c + d), chi = _mm512_maskz_loadu_ps(k, c + half + d);
        __m512 slo = _mm512_maskz_loadu_ps(k, s + d), shi = _mm512_maskz_loadu_ps(k, s + half + d);
        __m512 neg_hi = _mm512_sub_ps(_mm512_setzero_ps(), hi);
        if (!inverse) {
          _mm512_mask_storeu_ps(o + d, k, _mm512_add_ps(_mm512_mul_ps(lo, clo), _mm512_mul_ps(neg_hi, slo)));
          _mm512_mask_storeu_ps(o + half + d, k, _mm512_add_ps(_mm512_mul_ps(hi, chi), _mm512_mul_ps(lo, shi)));
        } else {
          __m512 gs_lo = _mm512_mul_ps(lo, slo), gs_hi = _mm512_mul_ps(hi, shi);
          _mm512_mask_storeu_ps(o + d, k, _mm512_add_ps(_mm512_mul_ps(lo, clo), gs_hi));
          _mm512_mask_storeu_ps(o + half + d, k,
                                _mm512_add_ps(_mm512_mul_ps(hi, chi), _mm512_sub_ps(_mm512_setzero_ps(), gs_lo)));
        }
      }
    }
  }
}

/* RMSNorm forward of R rows of C: y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps); also copies x to
 * kept (for backward, may be NULL) and writes rstd[r]. */
void pz_rms_norm(const float *x, long R, long C, const float *w, float eps, float *y, float *kept, float *rstd,
                 int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
  for (long r = 0; r < R; r++) {
    const float *a = x + r * C;
    __m512 acc = _mm512_setzero_ps();
    for (long c = 0; c < C; c += 16) {
      __mmask16 k = C - c >= 16 ? 0xFFFF : tail(C - c);
      __m512 v = _mm512_maskz_loadu_ps(k, a + c);
      acc = _mm512_fmadd_ps(v, v, acc);
    }
    float rs = 1.0f / sqrtf(_mm512_reduce_add_ps(acc) / (float)C + eps);
    rstd[r] = rs;
    __m512 f = _mm512_set1_ps(rs);
    for (long c = 0; c < C; c += 16) {
      __mmask16 k = C - c >= 16 ? 0xFFFF : tail(C - c);
      __m512 v = _mm512_maskz_loadu_ps(k, a + c);
      _mm512_mask_storeu_ps(y + r * C + c, k, _mm512_mul_ps(_mm512_mul_ps(v, f), _mm512_maskz_loadu_ps(k, w + c)));
      if (kept) _mm512_mask_storeu_ps(kept + r * C + c, k, v);
    }
  }
}

/* Its input gradient: gx = gw * rstd - x * rstd^3 * mean(gw * x), gw = g * w. */
void pz_rms_norm_grad(const float *x, const float *rstd, const float *w, const float *g, long R, long C,
                      float *gx, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
  for (long r = 0; r < R; r++) {
    const float *a = x + r * C, *gr = g + r * C;
    __m512 acc = _mm512_setzero_ps();
    for (long c = 0; c < C; c += 16) {
      __mmask16 k = C - c >= 16 ? 0xFFFF : tail(C - c);
      __m512 gw = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, gr + c), _mm512_maskz_loadu_ps(k, w + c));
      acc = _mm512_fmadd_ps(gw, _mm512_maskz_loadu_ps(k, a + c), acc);
    }
    float rs = rstd[r], coef = _mm512_reduce_add_ps(acc) * rs * rs * rs / (float)C;
    __m512 f = _mm512_set1_ps(rs), cf = _mm512_set1_ps(coef);
    for (long c = 0; c < C; c += 16) {
      __mmask16 k = C - c >= 16 ? 0xFFFF : tail(C - c);
      __m512 gw = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, gr + c), _mm512_maskz_loadu_ps(k, w + c));
      _mm512_mask_storeu_ps(gx + r * C + c, k, _mm512_fnmadd_ps(_mm512_maskz_loadu_ps(k, a + c), cf,
                                                                _mm512_mul_ps(gw, f)));
    }
  }
}

/* splitmix64: a well-mixed 64-bit value from any seed (seeds the per-row random streams below). */
static inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Cross-entropy of R rows of logits x [R, V] (row stride ldx) against targets: loss[r] = logsumexp(x[r]) -
 * x[r, t]. Three passes over a row (max, sum of exponentials, softmax), the row staying in L2. With grad:
 * - q NULL: x[r] is overwritten by softmax(x[r]) minus one-hot(t), the loss's gradient with respect to x;
 * - q given: the softmax times cs (per column) goes to q[r] in int8 with stochastic rounding (round up with
 *   probability equal to the fraction: unbiased, E[q] * qs = p * cs exactly), qs[r] its step; x[r] is
 *   scratch. The one-hot is left to the caller. Random numbers: a xorshift32 stream per lane seeded from
 *   (seed, row), so a row's result does not depend on the thread count. */
void pz_softmax_xent(float *x, long R, long V, long ldx, const int64_t *tgt, int grad, float *loss,
                     const float *cs, int8_t *q, long ldq, float *qs, uint64_t seed, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
  for (long r = 0; r < R; r++) {
    float *a = x + r * ldx;
    __m512 m = _mm512_set1_ps(-INFINITY);
    for (long c = 0; c < V; c += 16) {
      __mmask16 k = V - c >= 16 ? 0xFFFF : tail(V - c);
      m = _mm512_mask_max_ps(m, k, m, _mm512_maskz_loadu_ps(k, a + c));
    }
    float mx = _mm512_reduce_max_ps(m);
    __m512 vm = _mm512_set1_ps(mx), s = _mm512_setzero_ps();
    for (long c = 0; c < V; c += 16) {
      __mmask16 k = V - c >= 16 ? 0xFFFF : tail(V - c);
      s = _mm512_mask_add_ps(s, k, s, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, a + c), vm)));
    }
    float lse = mx + logf(_mm512_reduce_add_ps(s));
    long t = tgt[r];
    loss[r] = lse - a[t];
    if (!grad) continue;
    __m512 vl = _mm512_set1_ps(lse);
    if (!q) {
      for (long c = 0; c < V; c += 16) {
        __mmask16 k = V - c >= 16 ? 0xFFFF : tail(V - c);
        _mm512_mask_storeu_ps(a + c, k, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, a + c), vl)));
      }
      a[t] -= 1.0f;
      continue;
    }
    __m512 pm = _mm512_setzero_ps();
    for (long c = 0; c < V; c += 16) {
      __mmask16 k = V - c >= 16 ? 0xFFFF : tail(V - c);
      __m512 p = _mm512_mul_ps(exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, a + c), vl)),
                               _mm512_maskz_loadu_ps(k, cs + c));
      _mm512_mask_storeu_ps(a + c, k, p);
      pm = _mm512_max_ps(pm, _mm512_abs_ps(p));
    }
    float pmax = _mm512_reduce_max_ps(pm);
    if (!(pmax >= 1e-30f)) pmax = 1e-30f;
    uint32_t init[16];
    uint64_t rs = mix64(seed ^ mix64((uint64_t)r));
    for (int i = 0; i < 16; i++) init[i] = (uint32_t)mix64(rs + (uint64_t)i) | 1u;  /* xorshift: never 0 */
    __m512i st = _mm512_loadu_si512(init);
    __m512 inv = _mm512_set1_ps((1.0f / pmax) * 127.0f), ulp = _mm512_set1_ps(1.0f / 16777216.0f);
    int8_t *qr = q + r * ldq;
    for (long c = 0; c < V; c += 16) {
      __mmask16 k = V - c >= 16 ? 0xFFFF : tail(V - c);
      st = _mm512_xor_si512(st, _mm512_slli_epi32(st, 13));
      st = _mm512_xor_si512(st, _mm512_srli_epi32(st, 17));
      st = _mm512_xor_si512(st, _mm512_slli_epi32(st, 5));
      __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(st, 8)), ulp);  /* [0, 1) */
      __m512 y = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + c), inv, u);
      __m512i v = _mm512_cvt_roundps_epi32(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
      _mm_mask_storeu_epi8(qr + c, k, _mm512_cvtsepi32_epi8(v));
    }
    qs[r] = pmax / 127.0f;
  }
}

/* ---- GGUF block dequantization (blocks.py): ggml's block layouts (ggml-common.h), one block per iteration,
 * the same float operations in the same order as gguf-py's numpy reference (bit for bit: -ffp-contract=off).
 * Plain C: the compiler vectorises the inner loops; blocks are split between threads. */

static inline float h2f(const uint8_t *p) {
  uint16_t h = (uint16_t)(p[0] | (p[1] << 8));
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else { /* subnormal: normalise */
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) { man <<= 1; exp--; }
      bits = sign | (exp << 23) | ((man & 0x3FF) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (man << 13);
  } else {
    bits = sign | ((exp - 15 + 127) << 23) | (man << 13);
  }
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

static void dq_q4_0(const uint8_t *b, float *y) {
  float d = h2f(b);
  for (int j = 0; j < 16; j++) {
    y[j] = (float)((b[2 + j] & 0x0F) - 8) * d;
    y[j + 16] = (float)((b[2 + j] >> 4) - 8) * d;
  }
}

static void dq_q4_1(const uint8_t *b, float *y) {
  float d = h2f(b), m = h2f(b + 2);
  for (int j = 0; j < 16; j++) {
    y[j] = (float)(b[4 + j] & 0x0F) * d + m;
    y[j + 16] = (float)(b[4 + j] >> 4) * d + m;
  }
}

static void dq_q5(const uint8_t *b, float *y, int has_min) {
  float d = h2f(b), m = has_min ? h2f(b + 2) : 0.0f;
  const uint8_t *hb = b + (has_min ? 4 : 2), *qs = hb + 4;
  uint32_t qh = (uint32_t)hb[0] | ((uint32_t)hb[1] << 8) | ((uint32_t)hb[2] << 16) | ((uint32_t)hb[3] << 24);
  for (int j = 0; j < 16; j++) {
    int x0 = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4), x1 = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    if (has_min) {
      y[j] = (float)x0 * d + m;
      y[j + 16] = (float)x1 * d + m;
    } else {
      y[j] = d * (float)(x0 - 16);
      y[j + 16] = d * (float)(x1 - 16);
    }
  }
}

static void dq_q8_0(const uint8_t *b, float *y) {
  float d = h2f(b);
  for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)b[2 + j] * d;
}

static void dq_q2_k(const uint8_t *b, float *y) {
  const uint8_t *sc = b, *qs = b + 16;
  float d = h2f(b + 80), dmin = h2f(b + 82);
  for (int n = 0; n < 2; n++)          /* 128 weights from 32 bytes, 4 shifts */
    for (int s = 0; s < 4; s++)
      for (int h = 0; h < 2; h++) {    /* 16 weights, one scale each */
        int is = n * 8 + s * 2 + h;
        float dl = d * (float)(sc[is] & 0xF), ml = dmin * (float)(sc[is] >> 4);
        const uint8_t *q = qs + n * 32 + h * 16;
        float *o = y + is * 16;
        for (int l = 0; l < 16; l++) o[l] = dl * (float)((q[l] >> (2 * s)) & 3) - ml;
      }
}

static void dq_q3_k(const uint8_t *b, float *y) {
  const uint8_t *hm = b, *qs = b + 32, *sc = b + 96;
  float d = h2f(b + 108);
  for (int is = 0; is < 16; is++) {
    int lo = (sc[is % 8] >> (4 * (is / 8))) & 0x0F, hi = (sc[8 + is % 4] >> (2 * (is / 4))) & 0x03;
    float dl = d * (float)((lo | (hi << 4)) - 32);
    int n = is / 8, s = (is / 2) % 4, h = is % 2, bit = n * 4 + s;
    const uint8_t *q = qs + n * 32 + h * 16, *hh = hm + h * 16;
    float *o = y + is * 16;
    for (int l = 0; l < 16; l++)
      o[l] = dl * (float)((int)((q[l] >> (2 * s)) & 3) - (((hh[l] >> bit) & 1) ? 0 : 4));
  }
}

static inline void k_scale_min(const uint8_t *q, int j, float *sc, float *mn) {
  if (j < 4) {
    *sc = (float)(q[j] & 63);
    *mn = (float)(q[j + 4] & 63);
  } else {
    *sc = (float)((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
    *mn = (float)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

static void dq_q45_k(const uint8_t *b, float *y, int five) {
  float d = h2f(b), dmin = h2f(b + 2);
  const uint8_t *scales = b + 4, *qh = b + 16, *ql = b + (five ? 48 : 16);
  for (int j = 0; j < 8; j++) {    /* 8 groups of 32 weights: a pair of groups shares 32 bytes of nibbles */
    float sc, mn;
    k_scale_min(scales, j, &sc, &mn);
    float d1 = d * sc, m1 = dmin * mn;
    const uint8_t *q = ql + (j / 2) * 32;
    int shift = (j % 2) * 4;
    float *o = y + j * 32;
    for (int l = 0; l < 32; l++) {
      int v = (q[l] >> shift) & 0x0F;
      if (five) v |= ((qh[l] >> j) & 1) << 4;
      o[l] = d1 * (float)v - m1;
    }
  }
}

static void dq_q6_k(const uint8_t *b, float *y) {
  const uint8_t *ql = b, *qh = b + 128;
  const int8_t *sc = (const int8_t *)(b + 192);
  float d = h2f(b + 208);
  for (int is = 0; is < 16; is++) {  /* 16 weights a scale, in gguf-py's order */
    int g = is / 2, half = is % 2;     /* group of 32: g = n * 4 + k (k: which nibble / 2-bit field) */
    int n = g / 4, k = g % 4;
    const uint8_t *lq = ql + n * 64 + (k % 2) * 32 + half * 16, *hq = qh + n * 32 + half * 16;
    int lshift = (k / 2) * 4, hshift = k * 2;
    float dl = d * (float)sc[is];
    float *o = y + is * 16;
    for (int l = 0; l < 16; l++)
      o[l] = dl * (float)((int)(((lq[l] >> lshift) & 0x0F) | (((hq[l] >> hshift) & 3) << 4)) - 32);
  }
}

/* Bytes and weights per block of GGUF type `type` (ggml's numbering); 0 for a type these kernels do not read. */
static int block_info(int type, long *bytes, long *n) {
  switch (type) {
    case 2: *bytes = 18; *n = 32; return 1;
    case 3: *bytes = 20; *n = 32; return 1;
    case 6: *bytes = 22; *n = 32; return 1;
    case 7: *bytes = 24; *n = 32; return 1;
    case 8: *bytes = 34; *n = 32; return 1;
    case 10: *bytes = 84; *n = 256; return 1;
    case 11: *bytes = 110; *n = 256; return 1;
    case 12: *bytes = 144; *n = 256; return 1;
    case 13: *bytes = 176; *n = 256; return 1;
    case 14: *bytes = 210; *n = 256; return 1;
    default: return 0;
  }
}

static void dq_block(int type, const uint8_t *b, float *y) {
  switch (type) {
    case 2: dq_q4_0(b, y); break;
    case 3: dq_q4_1(b, y); break;
    case 6: dq_q5(b, y, 0); break;
    case 7: dq_q5(b, y, 1); break;
    case 8: dq_q8_0(b, y); break;
    case 10: dq_q2_k(b, y); break;
    case 11: dq_q3_k(b, y); break;
    case 12: dq_q45_k(b, y, 0); break;
    case 13: dq_q45_k(b, y, 1); break;
    case 14: dq_q6_k(b, y); break;
  }
}

/* Dequantize nblk blocks of GGUF type `type` (ggml's numbering: 2 Q4_0, 3 Q4_1, 6 Q5_0, 7 Q5_1, 8 Q8_0,
 * 10 Q2_K .. 14 Q6_K) from src into out (nblk x the block's weights, contiguous). */
void pz_dequant_blocks(const uint8_t *src, long nblk, int type, float *out, int nt) {
  long bytes, n;
  if (!block_info(type, &bytes, &n)) return;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (long i = 0; i < nblk; i++) dq_block(type, src + i * bytes, out + i * n);
}

/* R rows of GGUF blocks (`row_bytes` each, C weights) straight to per-row int8: each row dequantized into a
 * buffer that stays in cache, then quantized as pz_quant_rows does (the same values, bit for bit, as
 * pz_dequant_blocks followed by pz_quant_rows, without the fp32 copy of the whole weight between them). */
void pz_blocks_to_i8(const uint8_t *src, long R, long row_bytes, int type, int8_t *q, long ldq, float *s,
                     int nt) {
  long bytes, n;
  if (!block_info(type, &bytes, &n)) return;
  long nb = row_bytes / bytes, C = nb * n;
#pragma omp parallel num_threads(nt)
  {
    float *buf = row_buffer(C);
#pragma omp for schedule(static)
    for (long r = 0; r < R; r++) {
      const uint8_t *row = src + r * row_bytes;
      for (long j = 0; j < nb; j++) dq_block(type, row + j * bytes, buf + j * n);
      s[r] = quant_row(buf, C, NULL, q + r * ldq);
    }
    free(buf);
  }
}
