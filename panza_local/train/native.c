/* Fused element-wise kernels for the CPU int8 training step (see native.py for why and how it is built).
 *
 * Each kernel does in one pass over a row (the row stays in L1) what the torch path does in three to six
 * passes over the whole tensor: on two cores those passes are memory-bound and cost as much as the int8
 * matmuls themselves. AVX-512F/BW/DQ/VL; rows are split between OpenMP threads (torch's own libgomp).
 * Every kernel is deterministic (a row's result does not depend on the thread count).
 */
#include <immintrin.h>
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

/* q[r, :] = round(x[r, :] * cs * 127 / max|x[r, :] * cs|) as int8, s[r] = that max / 127 (cs optional).
 * The same arithmetic as int8.quant_rows' torch expression, bit for bit: x * cs first, then times
 * (1 / m) * 127 (torch computes `127.0 / m` as a reciprocal times 127; 127 / m differs in the last bit,
 * and that flips a value that lands on .5). */
void pz_quant_rows(const float *x, long R, long C, long ldx, const float *cs, int8_t *q, long ldq, float *s,
                   int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
  for (long r = 0; r < R; r++) {
    const float *xr = x + r * ldx;
    int8_t *qr = q + r * ldq;
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
    s[r] = mx / 127.0f;
  }
}

/* One row of the product: y[n] = y32[n] * sx * sw[n] + sum_j sum_k xa[xa_j + k] * bt_j[k, n - col_j]
 * (LoRA part j covers columns col_j .. col_j + n_j; bt_j is scale * B_j^T, [rank_j, n_j]). */
static void product_row(const int32_t *a, long N, float sx, const float *sw, const float *xa, int np,
                        const long *pcol, const long *pn, const long *prank, const long *pxa,
                        const float *const *pbt, float *y) {
  __m512 f = _mm512_set1_ps(sx);
  for (long n = 0; n < N; n += 16) {
    __mmask16 k = N - n >= 16 ? 0xFFFF : tail(N - n);
    __m512 v = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(k, a + n));
    _mm512_mask_storeu_ps(y + n, k, _mm512_mul_ps(_mm512_mul_ps(v, f), _mm512_maskz_loadu_ps(k, sw + n)));
  }
  for (int j = 0; j < np; j++) {
    long c0 = pcol[j], nj = pn[j], rk = prank[j];
    const float *bt = pbt[j], *u = xa + pxa[j];
    for (long n = 0; n < nj; n += 16) {
      __mmask16 k = nj - n >= 16 ? 0xFFFF : tail(nj - n);
      __m512 acc = _mm512_maskz_loadu_ps(k, y + c0 + n);
      for (long t = 0; t < rk; t++)
        acc = _mm512_fmadd_ps(_mm512_set1_ps(u[t]), _mm512_maskz_loadu_ps(k, bt + t * nj + n), acc);
      _mm512_mask_storeu_ps(y + c0 + n, k, acc);
    }
  }
}

/* The int8 product with its dequantization and LoRA parts (product_row), then by `mode`:
 *   0: out[r, :N] = y
 *   1: out[r, :ffn] = silu(y[:ffn]) * y[ffn:]                      (a fused gate|up, N = 2 ffn)
 *   2: out[r, :ffn], out[r, ffn:2ffn] = d/d(gate, up) of silu(gate) * up, times g[r, :ffn]  */
void pz_product(const int32_t *y32, long R, long N, const float *sx, const float *sw, const float *xa, long ldxa,
                int np, const long *pcol, const long *pn, const long *prank, const long *pxa,
                const float *const *pbt, int mode, long ffn, const float *g, long ldg, float *out, long ldo,
                int nt) {
#pragma omp parallel num_threads(nt)
  {
    float *buf = mode ? (float *)aligned_alloc(64, ((N * sizeof(float) + 63) / 64) * 64) : 0;
#pragma omp for schedule(static)
    for (long r = 0; r < R; r++) {
      float *o = out + r * ldo;
      float *y = mode ? buf : o;
      product_row(y32 + r * N, N, sx[r], sw, xa ? xa + r * ldxa : 0, np, pcol, pn, prank, pxa, pbt, y);
      if (mode == 0) continue;
      const float *gr = g ? g + r * ldg : 0;
      for (long n = 0; n < ffn; n += 16) {
        __mmask16 k = ffn - n >= 16 ? 0xFFFF : tail(ffn - n);
        __m512 a = _mm512_maskz_loadu_ps(k, y + n), u = _mm512_maskz_loadu_ps(k, y + ffn + n);
        __m512 sg = sigmoid16(a), silu = _mm512_mul_ps(a, sg);
        if (mode == 1) {
          _mm512_mask_storeu_ps(o + n, k, _mm512_mul_ps(silu, u));
        } else {
          __m512 gg = _mm512_maskz_loadu_ps(k, gr + n), one = _mm512_set1_ps(1.0f);
          /* silu'(a) = s (1 + a (1 - s)) */
          __m512 d = _mm512_mul_ps(sg, _mm512_fmadd_ps(a, _mm512_sub_ps(one, sg), one));
          _mm512_mask_storeu_ps(o + n, k, _mm512_mul_ps(_mm512_mul_ps(d, gg), u));
          _mm512_mask_storeu_ps(o + ffn + n, k, _mm512_mul_ps(silu, gg));
        }
      }
    }
    free(buf);
  }
}

/* out[r, c] = src[r, c] * s[r] + sum_k u[r, k] * v[k, c]; src int32 (i8 = 0) or int8 (i8 = 1), rank rk >= 0. */
void pz_dequant(const void *src, int i8, long R, long C, long lds, const float *s, const float *u, long ldu,
                long rk, const float *v, float *out, long ldo, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
  for (long r = 0; r < R; r++) {
    __m512 f = _mm512_set1_ps(s[r]);
    float *o = out + r * ldo;
    for (long c = 0; c < C; c += 16) {
      __mmask16 k = C - c >= 16 ? 0xFFFF : tail(C - c);
      __m512i raw = i8 ? _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, (const int8_t *)src + r * lds + c))
                       : _mm512_maskz_loadu_epi32(k, (const int32_t *)src + r * lds + c);
      __m512 acc = _mm512_mul_ps(_mm512_cvtepi32_ps(raw), f);
      for (long t = 0; t < rk; t++)
        acc = _mm512_fmadd_ps(_mm512_set1_ps(u[r * ldu + t]), _mm512_maskz_loadu_ps(k, v + t * C + c), acc);
      _mm512_mask_storeu_ps(o + c, k, acc);
    }
  }
}
