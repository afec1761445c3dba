/* Quiver's native kernels for the exact filtered search (server/quiver/server/core/
 * row_scan.py). quiver_dot_rows_f32: the float32 products of chosen rows of a matrix with
 * the query, read in place. quiver_scan_bounds, the first pass: for each chosen row of an
 * int8 matrix, read in
 * place (no gathered copy): the exact integer product of its codes with the query's int16
 * codes, turned into a lower and an upper bound of the row's float32 product with the
 * query as row_scan.py's docstring derives them.
 *
 * Loaded with ctypes, which drops the GIL around the call. Built by hatch_build.py with
 * -O3 -march=native: with AVX2, 32 codes per step through vpmaddwd (int16 pairs multiplied
 * and summed into int32); without, a plain loop the compiler vectorises as it can. The
 * caller keeps |codes| <= 127 and |query| small enough that no int32 sum overflows. */
#include <stdint.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define PREFETCH_AHEAD 4

static int32_t dot_i8_i16(const int8_t *row, const int16_t *query, int64_t dim) {
    int64_t j = 0;
    int32_t total = 0;
#if defined(__AVX2__)
    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
    for (; j + 32 <= dim; j += 32) {
        __m256i a0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(row + j)));
        __m256i a1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(row + j + 16)));
        __m256i b0 = _mm256_loadu_si256((const __m256i *)(query + j));
        __m256i b1 = _mm256_loadu_si256((const __m256i *)(query + j + 16));
        acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(a0, b0));
        acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(a1, b1));
    }
    __m256i acc = _mm256_add_epi32(acc0, acc1);
    __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    sum = _mm_hadd_epi32(sum, sum);
    sum = _mm_hadd_epi32(sum, sum);
    total = _mm_cvtsi128_si32(sum);
#endif
    for (; j < dim; j++) total += (int32_t)row[j] * (int32_t)query[j];
    return total;
}

void quiver_scan_bounds(const int8_t *codes, int64_t dim, const int64_t *rows, int64_t n,
                        const int16_t *query, double step, const float *scale,
                        const float *residual, const float *norm, float reach, float rounding,
                        float slack, float *lower, float *upper) {
    for (int64_t i = 0; i < n; i++) {
        if (i + PREFETCH_AHEAD < n) {
            const int8_t *next = codes + rows[i + PREFETCH_AHEAD] * dim;
            for (int64_t at = 0; at < dim; at += 64) __builtin_prefetch(next + at);
        }
        const int64_t r = rows[i];
        const float approx = (float)(dot_i8_i16(codes + r * dim, query, dim) * step) * scale[r];
        const float bound = residual[r] * reach + norm[r] * rounding + slack;
        lower[i] = approx - bound;
        upper[i] = approx + bound;
    }
}

void quiver_dot_rows_f32(const float *matrix, int64_t dim, const int64_t *rows, int64_t n,
                         const float *query, float *out) {
    for (int64_t i = 0; i < n; i++) {
        if (i + PREFETCH_AHEAD < n) {
            const float *next = matrix + rows[i + PREFETCH_AHEAD] * dim;
            for (int64_t at = 0; at < dim; at += 16) __builtin_prefetch(next + at);
        }
        const float *row = matrix + rows[i] * dim;
        int64_t j = 0;
        float total = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
        for (; j + 32 <= dim; j += 32) {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + j), _mm256_loadu_ps(query + j), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(row + j + 8), _mm256_loadu_ps(query + j + 8), acc1);
            acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(row + j + 16), _mm256_loadu_ps(query + j + 16), acc2);
            acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(row + j + 24), _mm256_loadu_ps(query + j + 24), acc3);
        }
        __m256 acc = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
        __m128 sum = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        sum = _mm_hadd_ps(sum, sum);
        sum = _mm_hadd_ps(sum, sum);
        total = _mm_cvtss_f32(sum);
#endif
        for (; j < dim; j++) total += row[j] * query[j];
        out[i] = total;
    }
}
