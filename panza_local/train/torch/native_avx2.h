/* The AVX-512 intrinsics native.c uses, for CPUs with AVX2 + FMA + F16C but no AVX-512 (most laptops:
 * Intel since Alder Lake, AMD before Zen 4). Included by native.c when built with -DPZ_AVX2.
 *
 * A 16-float vector is two 256-bit halves; a 16-bit lane mask selects lanes as in AVX-512. Every operation
 * is the same IEEE operation per lane as its AVX-512 original (the same FMAs, the same rounding), so the
 * kernels give the same bits in both builds; tests/test_native.py runs every kernel test on both. Masked
 * loads and stores only ever touch the selected lanes' memory (maskload/maskstore, or a lane-by-lane copy
 * for 8- and 16-bit data), like AVX-512's. Only the two rounding modes native.c asks for are provided.
 */
#ifndef PZ_NATIVE_AVX2_H
#define PZ_NATIVE_AVX2_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

typedef struct { __m256 lo, hi; } pz_ps;
typedef struct { __m256i lo, hi; } pz_si;
typedef uint16_t pz_mask;

/* AVX-512 names mapped onto this file's (after <immintrin.h>, so its own declarations are untouched). */
#define __m512 pz_ps
#define __m512i pz_si
#define __mmask16 pz_mask

static inline pz_ps pz_pair(__m256 lo, __m256 hi) { pz_ps r = {lo, hi}; return r; }
static inline pz_si pz_ipair(__m256i lo, __m256i hi) { pz_si r = {lo, hi}; return r; }

/* The lanes of an 8-bit mask as a 256-bit all-ones / all-zeros lane mask. */
static inline __m256i pz_lanes(unsigned k8) {
  const __m256i bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)k8), bits), bits);
}

#define PZ_OP2(name, op) \
  static inline pz_ps name(pz_ps a, pz_ps b) { return pz_pair(op(a.lo, b.lo), op(a.hi, b.hi)); }
PZ_OP2(pz_add, _mm256_add_ps)
PZ_OP2(pz_sub, _mm256_sub_ps)
PZ_OP2(pz_mul, _mm256_mul_ps)
PZ_OP2(pz_div, _mm256_div_ps)
PZ_OP2(pz_min, _mm256_min_ps)
PZ_OP2(pz_max, _mm256_max_ps)
#define _mm512_add_ps pz_add
#define _mm512_sub_ps pz_sub
#define _mm512_mul_ps pz_mul
#define _mm512_div_ps pz_div
#define _mm512_min_ps pz_min
#define _mm512_max_ps pz_max

static inline pz_ps pz_set1(float x) { return pz_pair(_mm256_set1_ps(x), _mm256_set1_ps(x)); }
static inline pz_ps pz_zero(void) { return pz_pair(_mm256_setzero_ps(), _mm256_setzero_ps()); }
static inline pz_ps pz_fmadd(pz_ps a, pz_ps b, pz_ps c) {
  return pz_pair(_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi));
}
static inline pz_ps pz_fnmadd(pz_ps a, pz_ps b, pz_ps c) {
  return pz_pair(_mm256_fnmadd_ps(a.lo, b.lo, c.lo), _mm256_fnmadd_ps(a.hi, b.hi, c.hi));
}
static inline pz_ps pz_abs(pz_ps a) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  return pz_pair(_mm256_andnot_ps(sign, a.lo), _mm256_andnot_ps(sign, a.hi));
}
#define _mm512_set1_ps pz_set1
#define _mm512_setzero_ps pz_zero
#define _mm512_fmadd_ps pz_fmadd
#define _mm512_fnmadd_ps pz_fnmadd
#define _mm512_abs_ps pz_abs

static inline float pz_hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}
/* AVX-512's reduce_add sums halves pairwise (16 -> 8 -> 4 -> 2 -> 1); the same tree here. */
static inline float pz_hadd8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
static inline float pz_reduce_max(pz_ps a) { return pz_hmax8(_mm256_max_ps(a.lo, a.hi)); }
static inline float pz_reduce_add(pz_ps a) { return pz_hadd8(_mm256_add_ps(a.lo, a.hi)); }
#define _mm512_reduce_max_ps pz_reduce_max
#define _mm512_reduce_add_ps pz_reduce_add

static inline pz_ps pz_loadu(const float *p) { return pz_pair(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)); }
static inline void pz_storeu(float *p, pz_ps a) { _mm256_storeu_ps(p, a.lo); _mm256_storeu_ps(p + 8, a.hi); }
static inline pz_ps pz_maskz_loadu(pz_mask k, const float *p) {
  if (k == 0xFFFF) return pz_loadu(p);
  return pz_pair(_mm256_maskload_ps(p, pz_lanes(k & 0xFF)), _mm256_maskload_ps(p + 8, pz_lanes(k >> 8)));
}
static inline void pz_mask_storeu(float *p, pz_mask k, pz_ps a) {
  if (k == 0xFFFF) { pz_storeu(p, a); return; }
  _mm256_maskstore_ps(p, pz_lanes(k & 0xFF), a.lo);
  _mm256_maskstore_ps(p + 8, pz_lanes(k >> 8), a.hi);
}
#define _mm512_loadu_ps pz_loadu
#define _mm512_storeu_ps pz_storeu
#define _mm512_maskz_loadu_ps pz_maskz_loadu
#define _mm512_mask_storeu_ps pz_mask_storeu

/* src where the lane is off, op(a, b) where it is on. */
static inline pz_ps pz_blend(pz_ps src, pz_mask k, pz_ps v) {
  return pz_pair(_mm256_blendv_ps(src.lo, v.lo, _mm256_castsi256_ps(pz_lanes(k & 0xFF))),
                 _mm256_blendv_ps(src.hi, v.hi, _mm256_castsi256_ps(pz_lanes(k >> 8))));
}
static inline pz_ps pz_mask_max(pz_ps src, pz_mask k, pz_ps a, pz_ps b) { return pz_blend(src, k, pz_max(a, b)); }
static inline pz_ps pz_mask_add(pz_ps src, pz_mask k, pz_ps a, pz_ps b) { return pz_blend(src, k, pz_add(a, b)); }
#define _mm512_mask_max_ps pz_mask_max
#define _mm512_mask_add_ps pz_mask_add

/* Rounding: to nearest even (what native.c asks of roundscale) and toward -inf (of cvt_roundps_epi32). */
static inline pz_ps pz_round_nearest(pz_ps a, int imm) {
  (void)imm;
  return pz_pair(_mm256_round_ps(a.lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                 _mm256_round_ps(a.hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
static inline pz_si pz_cvt_floor_epi32(pz_ps a, int imm) {
  (void)imm;
  return pz_ipair(_mm256_cvtps_epi32(_mm256_floor_ps(a.lo)), _mm256_cvtps_epi32(_mm256_floor_ps(a.hi)));
}
#define _mm512_roundscale_ps pz_round_nearest
#define _mm512_cvt_roundps_epi32 pz_cvt_floor_epi32

/* a * 2^n for integral n in [-149, 128] (exp16's range), exact like scalef: two power-of-two factors, each
 * a normal float, so only the last multiplication can round (once, as scalef does). */
static inline __m256 pz_scalef8(__m256 a, __m256 n) {
  __m256i ni = _mm256_cvtps_epi32(n), h = _mm256_srai_epi32(ni, 1), rest = _mm256_sub_epi32(ni, h);
  const __m256i bias = _mm256_set1_epi32(127);
  __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, bias), 23));
  __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(rest, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(a, f1), f2);
}
static inline pz_ps pz_scalef(pz_ps a, pz_ps n) { return pz_pair(pz_scalef8(a.lo, n.lo), pz_scalef8(a.hi, n.hi)); }
#define _mm512_scalef_ps pz_scalef

/* Integer lanes. */
static inline pz_si pz_loadu_si(const void *p) {
  return pz_ipair(_mm256_loadu_si256((const __m256i *)p), _mm256_loadu_si256((const __m256i *)p + 1));
}
static inline pz_si pz_xor(pz_si a, pz_si b) { return pz_ipair(_mm256_xor_si256(a.lo, b.lo), _mm256_xor_si256(a.hi, b.hi)); }
static inline pz_si pz_slli(pz_si a, int s) { return pz_ipair(_mm256_slli_epi32(a.lo, s), _mm256_slli_epi32(a.hi, s)); }
static inline pz_si pz_srli(pz_si a, int s) { return pz_ipair(_mm256_srli_epi32(a.lo, s), _mm256_srli_epi32(a.hi, s)); }
static inline pz_ps pz_cvtepi32_ps(pz_si a) { return pz_pair(_mm256_cvtepi32_ps(a.lo), _mm256_cvtepi32_ps(a.hi)); }
static inline pz_si pz_cvtps_epi32(pz_ps a) { return pz_ipair(_mm256_cvtps_epi32(a.lo), _mm256_cvtps_epi32(a.hi)); }
static inline pz_si pz_maskz_loadu_epi32(pz_mask k, const int32_t *p) {
  if (k == 0xFFFF) return pz_loadu_si(p);
  return pz_ipair(_mm256_maskload_epi32((const int *)p, pz_lanes(k & 0xFF)),
                  _mm256_maskload_epi32((const int *)p + 8, pz_lanes(k >> 8)));
}
#define _mm512_loadu_si512 pz_loadu_si
#define _mm512_xor_si512 pz_xor
#define _mm512_slli_epi32 pz_slli
#define _mm512_srli_epi32 pz_srli
#define _mm512_cvtepi32_ps pz_cvtepi32_ps
#define _mm512_cvtps_epi32 pz_cvtps_epi32
#define _mm512_maskz_loadu_epi32 pz_maskz_loadu_epi32

/* 8- and 16-bit data: 16 int32 lanes saturated to int8 (in lane order), int8 lanes widened; fp16. */
static inline __m128i pz_cvtsepi32_epi8(pz_si a) {
  __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(a.lo, a.hi), 0xD8); /* 16 int16, in order */
  return _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
}
static inline pz_si pz_cvtepi8_epi32(__m128i b) {
  return pz_ipair(_mm256_cvtepi8_epi32(b), _mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
}
static inline __m256i pz_cvtps_ph(pz_ps a, int imm) {
  (void)imm; /* to nearest even, the only mode native.c uses */
  return _mm256_set_m128i(_mm256_cvtps_ph(a.hi, _MM_FROUND_TO_NEAREST_INT),
                          _mm256_cvtps_ph(a.lo, _MM_FROUND_TO_NEAREST_INT));
}
static inline pz_ps pz_cvtph_ps(__m256i h) {
  return pz_pair(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)));
}
/* Masked 8- and 16-bit loads and stores: whole vectors when every lane is on, else lane by lane through a
 * buffer (only the selected lanes' memory is touched; the others load as 0). */
static inline void pz_copy_lanes(void *dst, const void *src, pz_mask k, int width) {
  for (int i = 0; i < 16; i++)
    if (k >> i & 1) memcpy((char *)dst + i * width, (const char *)src + i * width, (size_t)width);
}
#define PZ_MASKED_INT(bits, vec, type, load, store)                                         \
  static inline void pz_mask_storeu_epi##bits(void *p, pz_mask k, vec a) {                  \
    if (k == 0xFFFF) { store((vec *)p, a); return; }                                        \
    type t[16];                                                                             \
    store((vec *)t, a);                                                                     \
    pz_copy_lanes(p, t, k, sizeof(type));                                                   \
  }                                                                                         \
  static inline vec pz_maskz_loadu_epi##bits(pz_mask k, const void *p) {                    \
    if (k == 0xFFFF) return load((const vec *)p);                                           \
    type t[16] = {0};                                                                       \
    pz_copy_lanes(t, p, k, sizeof(type));                                                   \
    return load((const vec *)t);                                                            \
  }
PZ_MASKED_INT(8, __m128i, int8_t, _mm_loadu_si128, _mm_storeu_si128)
PZ_MASKED_INT(16, __m256i, uint16_t, _mm256_loadu_si256, _mm256_storeu_si256)
#define _mm512_cvtsepi32_epi8 pz_cvtsepi32_epi8
#define _mm512_cvtepi8_epi32 pz_cvtepi8_epi32
#define _mm512_cvtps_ph pz_cvtps_ph
#define _mm512_cvtph_ps pz_cvtph_ps
#define _mm_mask_storeu_epi8 pz_mask_storeu_epi8
#define _mm_maskz_loadu_epi8 pz_maskz_loadu_epi8
#define _mm256_mask_storeu_epi16 pz_mask_storeu_epi16
#define _mm256_maskz_loadu_epi16 pz_maskz_loadu_epi16

#endif
