/* Row-wise top-k selection and sparse-code gradient sums: the native CPU backend of sparse_ops.
 *
 * Plain C (no torch headers: compiles in well under a second), called through ctypes on the
 * data pointers of contiguous tensors; rows are split over POSIX threads. See cpu_native.py.
 *
 * wb_topk_rows    per row of pre [n, row_stride], the k largest values among its first L
 *                 columns (or among the `n_cols` columns listed in `cols`), with their column
 *                 indices, in increasing column order (ties at the k-th value: lowest columns
 *                 first). NaN values are never selected; a row where fewer than k values
 *                 compare gets NaN values.
 * wb_pair_sums   over the (token n, latent l = idx[n, j]) pairs of a sparse code:
 *                 out[l] = sum_n vals[n, j] * G[n] (and bias[l] = sum vals[n, j]): the weight
 *                 gradient of a sparse encode (G = its input) or decode (G = dL/dx_hat); with
 *                 W, also grad_vals[n, j] = <G[n], W[l]> (a sparse decode's code gradient) from
 *                 the same read of G[n].
 *                 Tokens are visited in order, so each G row is read once from memory and
 *                 stays in L1 for its K pairs; each thread owns a range of latents (rows of
 *                 out), so the accumulation needs no locks and no sort of the pairs. With
 *                 `lens`, row n has only its first lens[n] pairs (a ragged code stored padded);
 *                 with `lens` and `starts`, the code is flat bags (row n's pairs at starts[n]).
 * wb_flatten_rows a ragged code stored padded [n, stride] (a trainer's code, or
 *                 wb_topafa_rows' [n, L] workspace) -> the flat bags of embedding_bag.
 * wb_topafa_rows  top-AFA's k(x) per row of pre [n, L] over the whole dictionary, the full-sort
 *                 rule of sparse_ops.encode.topafa_select (s = (relu(pre) * norm)^2 sorted
 *                 descending, ties to the lower latent id; C_j their cumulative sums in
 *                 float64, the last C_L replaced by 1e8; k = the first argmin_j of
 *                 |sqrt(C_j) - ||z|||, found where C first reaches ||z||^2), without sorting
 *                 the row: score bins locate the crossing, the scores above it are collected,
 *                 and only the few keys around the crossing are sorted (none when every
 *                 positive latent is kept). Writes k, the number of kept positive latents, and
 *                 their ids (in increasing order) and activations. */

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 16

static inline float median3(float a, float b, float c) {
    return (a > b) ? ((b > c) ? b : ((a > c) ? c : a)) : ((a > c) ? a : ((b > c) ? c : b));
}

/* Branch-free partition of v[lo:hi] (ids alongside): the values for which `keep` holds (x > p
 * when strict, else x >= p) move to the front, in one pass of swaps; returns the end of them. */
static inline int64_t partition(float *v, int64_t *id, int64_t lo, int64_t hi, float p,
                                int strict) {
    int64_t store = lo;
    for (int64_t i = lo; i < hi; i++) {
        float x = v[i];
        int64_t xi = id[i];
        int keep = strict ? x > p : x >= p;
        v[i] = v[store];
        id[i] = id[store];
        v[store] = x;
        id[store] = xi;
        store += keep;
    }
    return store;
}

/* Move the k largest of v[0:n] (with their ids) into v[0:k] (unordered): quickselect with a
 * median-of-three pivot taken from the values, three-way so runs of equal values end it. */
static void select_top(float *v, int64_t *id, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n;
    while (hi - lo > 1 && lo < k && k < hi) {
        float p = median3(v[lo], v[lo + (hi - lo) / 2], v[hi - 1]);
        int64_t above = partition(v, id, lo, hi, p, 1);  /* [lo, above) > p */
        if (above >= k) {
            hi = above;
            continue;
        }
        int64_t equal = partition(v, id, above, hi, p, 0); /* [above, equal) == p, non-empty */
        if (equal >= k || equal == above) return; /* equal == above: NaN pivot, give up */
        lo = equal;
    }
}

static float min_of(const float *v, int64_t n) {
    float m = v[0];
    for (int64_t j = 1; j < n; j++) m = v[j] < m ? v[j] : m;
    return m;
}

/* max of x[0:CHUNK] and the bit mask of x[t] >= threshold, with the widest vectors the build
 * machine has (-march=native), else plain loops. */
#if defined(__AVX512F__)
#include <immintrin.h>
static inline __m512 chunk_load(const float *x) { return _mm512_loadu_ps(x); }
static inline float run_max(const float *x, int64_t chunks) {
    __m512 m = _mm512_loadu_ps(x);
    for (int64_t c = 1; c < chunks; c++) m = _mm512_max_ps(m, _mm512_loadu_ps(x + c * CHUNK));
    return _mm512_reduce_max_ps(m);
}
static inline unsigned chunk_mask_ge(const float *x, float threshold) {
    return _mm512_cmp_ps_mask(chunk_load(x), _mm512_set1_ps(threshold), _CMP_GE_OQ);
}
#elif defined(__AVX2__)
#include <immintrin.h>
static inline float run_max(const float *x, int64_t chunks) {
    __m256 m = _mm256_max_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8));
    for (int64_t c = 1; c < chunks; c++)
        m = _mm256_max_ps(m, _mm256_max_ps(_mm256_loadu_ps(x + c * CHUNK),
                                           _mm256_loadu_ps(x + c * CHUNK + 8)));
    float lanes[8];
    _mm256_storeu_ps(lanes, m);
    float best = lanes[0];
    for (int t = 1; t < 8; t++) best = lanes[t] > best ? lanes[t] : best;
    return best;
}
static inline unsigned chunk_mask_ge(const float *x, float threshold) {
    __m256 t = _mm256_set1_ps(threshold);
    unsigned lo = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x), t, _CMP_GE_OQ));
    unsigned hi = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + 8), t, _CMP_GE_OQ));
    return lo | (hi << 8);
}
#else
static inline float run_max(const float *x, int64_t chunks) {
    float best = x[0];
    for (int64_t j = 1; j < chunks * CHUNK; j++) best = x[j] > best ? x[j] : best;
    return best;
}
static inline unsigned chunk_mask_ge(const float *x, float threshold) {
    unsigned mask = 0;
    for (int t = 0; t < CHUNK; t++) mask |= (unsigned)(x[t] >= threshold) << t;
    return mask;
}
#endif

/* Candidate buffer of `cap` slots; `threshold` only rises. */
typedef struct {
    float *v;
    int64_t *id;
    int64_t cap, n, k;
    float threshold;
} candidates;

/* Keep the top k of the buffer; the k-th largest becomes the entry threshold. */
static void shrink(candidates *c) {
    select_top(c->v, c->id, c->n, c->k);
    c->n = c->k;
    c->threshold = min_of(c->v, c->k);
}

static inline void push(candidates *c, float v, int64_t id) {
    if (!(v >= c->threshold)) return;
    c->v[c->n] = v;
    c->id[c->n] = id;
    if (++c->n == c->cap) shrink(c);
}

/* A lower bound of the k-th largest of x[0:W]. Cut into m >= k segments, the k-th largest of
 * the segment maxima is one (k distinct values reach it). Wide segments (>= 2 chunks each):
 * m = k and the bound is the smallest maximum, vectorized. Narrow ones: m = min(4k, W/2) for a
 * tighter bound, found by a selection over the m maxima (in the candidate buffer's slots). */
static float lower_bound_kth(const float *x, int64_t W, candidates *c) {
    int64_t k = c->k;
    int64_t seg_chunks = W / k / CHUNK;
    if (seg_chunks >= 2) {
        float bound = run_max(x, seg_chunks);
        for (int64_t s = 1; s < k; s++) {
            float m = run_max(x + s * seg_chunks * CHUNK, seg_chunks);
            bound = m < bound ? m : bound;
        }
        return bound;
    }
    int64_t segments = W / 2 < 4 * k ? W / 2 : 4 * k;
    if (segments < k || segments > c->cap) return -INFINITY;
    int64_t seg = W / segments;
    for (int64_t s = 0; s < segments; s++) {
        const float *xs = x + s * seg;
        float m = xs[0];
        for (int64_t j = 1; j < seg; j++) m = xs[j] > m ? xs[j] : m;
        c->v[s] = m;
        c->id[s] = s;
    }
    select_top(c->v, c->id, segments, k);
    return min_of(c->v, k);
}

/* Collect the values of x[0:W] that reach `threshold` (one vectorized compare per CHUNK
 * values; the buffer is cut back to its top k whenever it fills, raising the threshold). */
static void collect(const float *x, int64_t W, float threshold, candidates *c) {
    c->threshold = threshold;
    c->n = 0;
    int64_t j = 0;
    for (; j + CHUNK <= W; j += CHUNK) {
        unsigned mask = chunk_mask_ge(x + j, c->threshold);
        while (mask) {
            int t = __builtin_ctz(mask);
            mask &= mask - 1;
            push(c, x[j + t], j + t);
        }
    }
    for (; j < W; j++) push(c, x[j], j);
}

/* Top k of x[0:W] into the first k buffer slots. First with `guess` (the smallest k-th largest
 * value of the last few rows; NaN for none): when at least k values reach it, the top k are
 * among them. Otherwise with a proven lower bound of the k-th largest value. Collected are a
 * few percent of the row, then cut to the top k. Returns 0, or -1 when fewer than k values
 * could be compared (NaN). */
static int topk_row(const float *x, int64_t W, float guess, candidates *c) {
    if (guess == guess) {
        collect(x, W, guess, c);
        if (c->n >= c->k) {
            shrink(c);
            return 0;
        }
    }
    float bound = lower_bound_kth(x, W, c);
    if (bound != bound) return -1;
    collect(x, W, bound, c);
    if (c->n < c->k) return -1;
    shrink(c);
    return 0;
}

/* Write the top k found by topk_row in canonical order: the row's values above the k-th largest
 * t, and the first (lowest-column) ones equal to t, in increasing column order. The result then
 * depends on the row alone, not on which search path found it. */
static void emit_in_order(const float *x, int64_t W, const candidates *c, float *values,
                          int64_t *ids) {
    int64_t k = c->k, ties = k;
    float t = c->threshold;
    for (int64_t j = 0; j < k; j++) ties -= c->v[j] > t;
    int64_t out = 0;
    int64_t j = 0;
    for (; j + CHUNK <= W && out < k; j += CHUNK) {
        unsigned mask = chunk_mask_ge(x + j, t);
        while (mask && out < k) {
            int b = __builtin_ctz(mask);
            mask &= mask - 1;
            float v = x[j + b];
            if (v > t || ties-- > 0) {
                values[out] = v;
                ids[out++] = j + b;
            }
        }
    }
    for (; j < W && out < k; j++) {
        float v = x[j];
        if (v > t || (v == t && ties-- > 0)) {
            values[out] = v;
            ids[out++] = j;
        }
    }
}

/* Run fn(ctx, bounds[t], bounds[t + 1]) for t < parts on `parts` POSIX threads (the caller's
 * thread takes part 0; a part whose thread cannot start runs on the caller's too). */
typedef void (*range_fn)(void *ctx, int64_t begin, int64_t end);

typedef struct {
    range_fn fn;
    void *ctx;
    int64_t begin, end;
} range_call;

static void *run_range(void *arg) {
    range_call *call = (range_call *)arg;
    call->fn(call->ctx, call->begin, call->end);
    return NULL;
}

#define MAX_THREADS 64

static int clamp_threads(int n_threads, int64_t work) {
    if (n_threads > MAX_THREADS) n_threads = MAX_THREADS;
    if (n_threads > work) n_threads = (int)work;
    return n_threads < 1 ? 1 : n_threads;
}

static void parallel_ranges(range_fn fn, void *ctx, const int64_t *bounds, int parts) {
    range_call calls[MAX_THREADS];
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 0; t < parts; t++) calls[t] = (range_call){fn, ctx, bounds[t], bounds[t + 1]};
    for (int t = 1; t < parts; t++)
        started[t] = pthread_create(&threads[t], NULL, run_range, &calls[t]) == 0;
    run_range(&calls[0]);
    for (int t = 1; t < parts; t++) {
        if (started[t])
            pthread_join(threads[t], NULL);
        else
            run_range(&calls[t]);
    }
}

static void even_bounds(int64_t n, int parts, int64_t *bounds) {
    for (int t = 0; t <= parts; t++) bounds[t] = n * t / parts;
}

typedef struct {
    const float *pre;
    int64_t row_stride, L, k, n_cols;
    const int64_t *cols;
    float *values;
    int64_t *indices;
    int failed;
} topk_job;

#define GUESS_ROWS 4

static void topk_range(void *arg, int64_t row_begin, int64_t row_end) {
    topk_job *job = (topk_job *)arg;
    int64_t k = job->k, cap = 8 * k + 256;
    candidates c = {malloc((size_t)cap * sizeof(float)), malloc((size_t)cap * sizeof(int64_t)),
                    cap, 0, k, 0.0f};
    float *gathered = job->cols ? malloc((size_t)job->n_cols * sizeof(float)) : NULL;
    float recent[GUESS_ROWS];
    for (int g = 0; g < GUESS_ROWS; g++) recent[g] = NAN;
    if (!c.v || !c.id || (job->cols && !gathered)) {
        job->failed = 1;
    } else {
        for (int64_t r = row_begin; r < row_end; r++) {
            const float *row = job->pre + r * job->row_stride;
            float *values = job->values + r * k;
            int64_t *indices = job->indices + r * k;
            const float *x = row;
            int64_t W = job->L;
            if (job->cols) {
                for (int64_t j = 0; j < job->n_cols; j++) gathered[j] = row[job->cols[j]];
                x = gathered;
                W = job->n_cols;
            }
            float guess = recent[0];
            for (int g = 1; g < GUESS_ROWS; g++) guess = fminf(guess, recent[g]);
            if (topk_row(x, W, guess, &c) != 0) { /* NaN in the row: NaN out, so the loss shows it */
                for (int64_t j = 0; j < k; j++) {
                    values[j] = NAN;
                    indices[j] = job->cols ? job->cols[j] : j;
                }
                continue;
            }
            recent[r % GUESS_ROWS] = c.threshold;
            emit_in_order(x, W, &c, values, indices);
            if (job->cols)
                for (int64_t j = 0; j < k; j++) indices[j] = job->cols[indices[j]];
        }
    }
    free(c.v);
    free(c.id);
    free(gathered);
}

/* Returns 0 on success, -1 on bad arguments, -2 when out of memory. cols may be NULL (all L
 * columns). */
int wb_topk_rows(const float *pre, int64_t n, int64_t row_stride, int64_t L, const int64_t *cols,
                 int64_t n_cols, int64_t k, float *values, int64_t *indices, int n_threads) {
    int64_t width = cols ? n_cols : L;
    if (k < 1 || k > width || n < 0) return -1;
    if (n == 0) return 0;
    topk_job job = {pre, row_stride, L, k, n_cols, cols, values, indices, 0};
    int parts = clamp_threads(n_threads, n);
    int64_t bounds[MAX_THREADS + 1];
    even_bounds(n, parts, bounds);
    parallel_ranges(topk_range, &job, bounds, parts);
    return job.failed ? -2 : 0;
}

typedef struct {
    const float *vals, *G, *W;
    const int64_t *idx, *lens, *starts;
    int64_t n, K, L, D;
    float *out, *bias, *grad_vals;
    int bad_index; /* set by the part owning latent 0 when an index lies outside [0, L) */
} pairs_job;

static inline float dot_row(const float *restrict g, const float *restrict w, int64_t D) {
    float part[CHUNK] = {0};
    int64_t d = 0;
    for (; d + CHUNK <= D; d += CHUNK)
        for (int e = 0; e < CHUNK; e++) part[e] += g[d + e] * w[d + e];
    float dot = 0.0f;
    for (; d < D; d++) dot += g[d] * w[d];
    for (int e = 0; e < CHUNK; e++) dot += part[e];
    return dot;
}

/* The pairs whose latent lies in [l0, l1), over all tokens in order. */
static void pairs_range(void *arg, int64_t l0, int64_t l1) {
    pairs_job *job = (pairs_job *)arg;
    int64_t D = job->D, K = job->K;
    if (job->out) memset(job->out + l0 * D, 0, (size_t)((l1 - l0) * D) * sizeof(float));
    if (job->bias) memset(job->bias + l0, 0, (size_t)(l1 - l0) * sizeof(float));
    for (int64_t n = 0; n < job->n; n++) {
        const float *restrict g = job->G + n * D;
        int64_t start = job->starts ? job->starts[n] : n * K;
        const int64_t *ids = job->idx + start;
        int64_t row_len = job->lens ? job->lens[n] : K;
        for (int64_t j = 0; j < row_len; j++) {
            int64_t l = ids[j];
            if (l < l0 || l >= l1) {
                if (l0 == 0 && (l < 0 || l >= job->L)) job->bad_index = 1;
                continue;
            }
            float v = job->vals[start + j];
            if (job->grad_vals) job->grad_vals[start + j] = dot_row(g, job->W + l * D, D);
            if (job->bias) job->bias[l] += v;
            if (job->out) {
                float *restrict o = job->out + l * D;
                for (int64_t d = 0; d < D; d++) o[d] += v * g[d];
            }
        }
    }
}

/* vals, idx [n, K] (idx in [0, L)), G [n, D]; lens [n] (each <= K) or NULL; out [L, D] or
 * NULL, bias [L] or NULL; with W [L, D], grad_vals [n, K] (entries past a row's length are not
 * written). With starts [n] (and lens), vals, idx, grad_vals are flat bags instead: row n's
 * pairs at starts[n] .. starts[n] + lens[n] (K unused). Returns 0, or -1 when an index is
 * outside [0, L) (outputs are then incomplete). */
int wb_pair_sums(const float *vals, const int64_t *idx, const int64_t *lens,
                 const int64_t *starts, const float *G, const float *W, int64_t n, int64_t K,
                 int64_t L, int64_t D, float *out, float *bias, float *grad_vals, int n_threads) {
    if (starts && !lens) return -2;
    pairs_job job = {vals, G, W, idx, lens, starts, n, K, L, D, out, bias,
                     W ? grad_vals : NULL, 0};
    int parts = clamp_threads(n_threads, L);
    int64_t bounds[MAX_THREADS + 1];
    even_bounds(L, parts, bounds);
    parallel_ranges(pairs_range, &job, bounds, parts);
    return job.bad_index ? -1 : 0;
}

/* ---------------------------------------------------------------------------------------------
 * top-AFA: each row's own k(x) */

/* A score and its latent as one sortable key: non-negative floats order like their bits, and
 * the low word 0xFFFFFFFF - id puts the lower id first among equal scores (keys descending). */
static inline uint64_t score_key(float s, int64_t id) {
    uint32_t bits;
    memcpy(&bits, &s, sizeof bits);
    return ((uint64_t)bits << 32) | (uint64_t)(0xFFFFFFFFu - (uint32_t)id);
}
static inline float key_score(uint64_t key) {
    uint32_t bits = (uint32_t)(key >> 32);
    float s;
    memcpy(&s, &bits, sizeof s);
    return s;
}
static inline int64_t key_id(uint64_t key) { return (int64_t)(0xFFFFFFFFu - (uint32_t)key); }

/* The median of a[0], a[n / 2] and a[n - 1] (distinct keys for n >= 3: a strict split). */
static inline uint64_t median3_key(const uint64_t *a, int64_t n) {
    uint64_t x = a[0], y = a[n / 2], z = a[n - 1];
    return (x > y) ? ((y > z) ? y : ((x > z) ? z : x)) : ((x > z) ? x : ((y > z) ? z : y));
}

/* Sort keys descending: quicksort (median of three) down to runs of 16, then insertion. */
static void sort_keys_desc(uint64_t *a, int64_t n) {
    while (n > 16) {
        uint64_t p = median3_key(a, n);
        int64_t i = 0, j = n - 1;
        for (;;) {
            while (a[i] > p) i++;
            while (a[j] < p) j--;
            if (i >= j) break;
            uint64_t t = a[i];
            a[i++] = a[j];
            a[j--] = t;
        }
        /* [0, j] >= p >= [j + 1, n): recurse on the smaller side, loop on the larger */
        int64_t left = j + 1;
        if (left < n - left) {
            sort_keys_desc(a, left);
            a += left;
            n -= left;
        } else {
            sort_keys_desc(a + left, n - left);
            n = left;
        }
    }
    for (int64_t i = 1; i < n; i++) {
        uint64_t v = a[i];
        int64_t j = i;
        while (j > 0 && a[j - 1] < v) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = v;
    }
}

#define TOPAFA_GUARD 1e8 /* C_L's stand-in when the candidates are the whole dictionary */

/* The rule as an exact search: over positions 0 .. L - 2, C is non-decreasing, so the first
 * argmin of |sqrt(C_i) - ||z||| is where C first reaches ||z||^2 (position b) or the position
 * before it (a, the first of its run of equal C): one comparison of two gaps. The guard C_L at
 * position L - 1 wins only when strictly closer. No gap is compared to another that rounding
 * alone could make equal, so this agrees with sparse_ops.encode._topafa_cut exactly. */
static double guard_gap(double zn) { return fabs(sqrt(TOPAFA_GUARD) - zn); }

/* k (1-based) when position i first has C_i = c >= zn^2, the previous C being prev (the first
 * position of its run at run); *best gets the gap there. */
static int64_t cut_at_crossing(int64_t i, double c, double prev, int64_t run, double zn,
                               double *best) {
    double gap_b = sqrt(c) - zn;
    if (i > 0) {
        double gap_a = zn - sqrt(prev);
        if (gap_a <= gap_b) {
            *best = gap_a;
            return run + 1;
        }
    }
    *best = gap_b;
    return i + 1;
}

/* The rule on the first j sorted scores f[0:j] of a row with L latents: returns k, or 0 when
 * the front does not settle it (no C_j within it reaches ||z|| and more positive scores exist).
 * all_in: f holds every positive score of the row (the rest are 0). */
static int64_t topafa_cut(const uint64_t *f, int64_t j, int64_t L, double zn, int all_in) {
    if (zn != zn) return all_in ? 1 : 0; /* a NaN norm: torch's argmin takes the first gap */
    double z2 = zn * zn, acc = 0.0, prev = 0.0, best;
    int64_t run = 0, k;
    int64_t walk = j < L - 1 ? j : L - 1; /* position L - 1 holds the guard, not a score */
    for (int64_t i = 0; i < walk; i++) {
        acc += key_score(f[i]);
        if (acc >= z2) {
            k = cut_at_crossing(i, acc, prev, run, zn, &best);
            return guard_gap(zn) < best ? L : k;
        }
        if (i == 0 || acc != prev) run = i;
        prev = acc;
    }
    if (!all_in) return 0;
    if (L == 1) return 1; /* the guard is the only position */
    /* positions walk .. L - 2 repeat the last C (zero scores after the positive ones) */
    if (walk == 0 && z2 <= 0.0) return 1; /* an all-zero row with ||z|| = 0 */
    best = zn - sqrt(prev);
    return guard_gap(zn) < best ? L : run + 1;
}

typedef struct {
    const float *pre, *norms, *zn;
    int64_t n, L, cap;
    int64_t *k_out, *len_out, *ids;
    float *vals;
    int failed;
} topafa_job;

/* Score bins: the top 10 bits of a positive float (exponent and 2 mantissa bits), so a bin
 * spans a factor of 2^(1/4) and every score in a higher bin is larger. */
#define SCORE_BIN_SHIFT 21
#define SCORE_BINS (1 << (31 - SCORE_BIN_SHIFT))

#define SCORE_BANKS 4
#define SCORE_WINDOW 64 /* bins kept apart below the top score's: a factor 2^16 in score */

typedef struct {
    float sum[(SCORE_WINDOW + 1) * SCORE_BANKS]; /* slot b, bank q at b * SCORE_BANKS + q */
} score_bins;

/* A score's slot: its bin (the top bits of a positive float) - base + 1, or 0 for every score
 * below the window (zeros included). */
static inline int score_slot(float s, int base) {
    uint32_t bits;
    memcpy(&bits, &s, sizeof bits);
    int slot = (int)((bits >> SCORE_BIN_SHIFT) & (SCORE_BINS - 1)) - base + 1;
    return slot > 0 ? slot : 0;
}

/* The collected scores as keys in front[0:c->n], bucketed by slot (a higher slot holds only
 * larger scores; bucket q, q = 0 the top slot, at start[q] .. start[q + 1]), unsorted within. */
static void bucket_by_slot(const candidates *c, uint64_t *front, int base, int top_slot,
                           int64_t *start) {
    memset(start, 0, (size_t)(top_slot + 2) * sizeof(int64_t));
    for (int64_t i = 0; i < c->n; i++) start[top_slot - score_slot(c->v[i], base) + 1]++;
    for (int q = 1; q <= top_slot + 1; q++) start[q] += start[q - 1];
    int64_t fill[SCORE_WINDOW + 2];
    memcpy(fill, start, (size_t)(top_slot + 2) * sizeof(int64_t));
    for (int64_t i = 0; i < c->n; i++)
        front[fill[top_slot - score_slot(c->v[i], base)]++] = score_key(c->v[i], c->id[i]);
}

/* Collected sets up to this size have exact double sums in any order: their scores lie within
 * 2^17 of each other (the bin window), so 24 + 17 + 11 bits fit a double's 53. */
#define EXACT_SUM_MAX 2048

/* The rule when its crossing lies in one bucket of front (bucketed as bucket_by_slot leaves it;
 * every score within the window). The cumulative sum before each bucket is exact without
 * sorting (EXACT_SUM_MAX), so the bucket where C first reaches ||z||^2 is found from bucket
 * sums alone; within it, splits at pivots (a weighted quickselect) narrow the crossing to a run
 * of at most 32 keys, and only that run is sorted and walked (the kept set is everything
 * before the cut, in any order). Returns k; 0 when no crossing lies within front (a lower
 * threshold is needed); -1 when the full sort must decide (the guard within reach, too many
 * scores for exact sums, a NaN norm). */
static int64_t cut_in_one_bucket(uint64_t *front, const int64_t *start, int top_slot,
                                 int64_t n_front, int64_t L, double zn) {
    if (n_front > EXACT_SUM_MAX || n_front >= L || zn != zn) return -1;
    double acc = 0.0, z2 = zn * zn;
    for (int q = 0; q <= top_slot; q++) {
        int64_t b0 = start[q], b1 = start[q + 1];
        if (b1 == b0) continue;
        double sum = 0.0;
        for (int64_t i = b0; i < b1; i++) sum += key_score(front[i]);
        if (acc + sum < z2) {
            acc += sum;
            continue;
        }
        /* narrow [b0, b1) to a short run holding the crossing: split at a pivot key (keys
         * above it to the front), keep the half where C reaches ||z||^2, adding the
         * upper half's sum when the crossing lies below it; then sort only that run */
        while (b1 - b0 > 32) {
            uint64_t p = median3_key(front + b0, b1 - b0);
            int64_t mid = b0;
            double upper = 0.0;
            for (int64_t i = b0; i < b1; i++)
                if (front[i] > p) {
                    uint64_t t = front[i];
                    front[i] = front[mid];
                    front[mid++] = t;
                    upper += key_score(t);
                }
            if (acc + upper < z2) {
                acc += upper;
                b0 = mid; /* the pivot itself heads the lower part: it is never lost */
            } else {
                b1 = mid;
            }
        }
        sort_keys_desc(front + b0, b1 - b0);
        /* the scores lie within the window, so C rises strictly (no run of equal C) */
        for (int64_t i = b0; i < b1; i++) {
            double prev = acc;
            acc += key_score(front[i]);
            if (acc >= z2) {
                double best;
                int64_t k = cut_at_crossing(i, acc, prev, i - 1, zn, &best);
                return guard_gap(zn) < best ? -1 : k;
            }
        }
        return -1;
    }
    return 0;
}

/* The rule when front holds every positive score (all_in), unsorted, and their total stays
 * below ||z||^2: C then never reaches ||z||^2 before the guard, so the first argmin is the
 * first position of the last run of equal C, which is the last score whenever that score
 * moves the float64 sum (k = n), or the guard (k = L) where it is closer; every positive latent
 * is kept either way, and no sort is needed. The total here is summed in another order than
 * the rule's, so every decision keeps a margin for that rounding; returns k, or -1 when a
 * margin is not met (the full sort decides). */
static int64_t cut_all_in(const uint64_t *front, int64_t n, int64_t L, double zn) {
    if (n < 1 || n >= L || zn != zn) return -1;
    double total = 0.0, s_min = INFINITY;
    for (int64_t i = 0; i < n; i++) {
        double v = key_score(front[i]);
        total += v;
        s_min = v < s_min ? v : s_min;
    }
    if (!(total * (1.0 + 1e-12) < zn * zn)) return -1;  /* a crossing may lie within */
    if (!(s_min > 4.0 * DBL_EPSILON * total)) return -1; /* the last score may not move C */
    double best = zn - sqrt(total), guard = guard_gap(zn), margin = 1e-9 * zn;
    if (guard < best - margin) return L;
    return guard > best + margin ? n : -1;
}

/* One row: s = (relu(pre) * norm)^2 into s[0:L], summed per score bin; walking the bins from
 * the top gives the highest threshold whose scores sum to ||z||^2. The scores >= it are
 * collected (one vectorized compare per CHUNK) and only they are sorted; every score left out
 * is strictly below the threshold, so no tie straddles the collected set. Should rounding keep
 * the crossing out of it, the next bin down is added. Returns k and fills front[0:*n_front]. */
static int64_t topafa_row(const float *row, const float *norms, int64_t L, float zn, float *s,
                          candidates *c, uint64_t *front, int64_t *n_front, score_bins *bins) {
    uint32_t top_bits = 0; /* scores are >= 0, so their bits order like them */
    for (int64_t l = 0; l < L; l++) {
        float a = row[l] > 0.0f ? row[l] : 0.0f;
        float t = a * norms[l];
        s[l] = t * t;
        uint32_t bits;
        memcpy(&bits, &s[l], sizeof bits);
        top_bits = bits > top_bits ? bits : top_bits;
    }
    /* every score into its bin, branch-free, over SCORE_BANKS interleaved copies of the bins so
     * that runs of scores in one bin (the zeros above all) do not wait on each other. Only the
     * SCORE_WINDOW bins below the top one are kept apart (slot = bin - base + 1); all lower
     * scores, zeros included, share slot 0, which is never walked: a crossing that low takes
     * every positive score. */
    const int hi = (int)((top_bits >> SCORE_BIN_SHIFT) & (SCORE_BINS - 1));
    const int base = hi - SCORE_WINDOW + 1 > 1 ? hi - SCORE_WINDOW + 1 : 1;
    const int top_slot = hi - base + 1, lo = 1;
    memset(bins->sum, 0, (size_t)(top_slot + 1) * SCORE_BANKS * sizeof(float));
    int64_t l = 0;
    for (; l + SCORE_BANKS <= L; l += SCORE_BANKS)
        for (int q = 0; q < SCORE_BANKS; q++)
            bins->sum[score_slot(s[l + q], base) * SCORE_BANKS + q] += s[l + q];
    for (; l < L; l++) bins->sum[score_slot(s[l], base) * SCORE_BANKS] += s[l];
    int b = top_slot;
    double target = (double)zn * (double)zn, acc = 0.0;
    for (; b >= lo; b--) { /* b < lo at the end: ||z|| out of reach (or NaN): every score */
        for (int q = 0; q < SCORE_BANKS; q++) acc += bins->sum[b * SCORE_BANKS + q];
        if (acc >= target) break;
    }
    for (;;) {
        int all_in = b < lo;
        /* slot b holds bin b + base - 1; 1u: the least float > 0 */
        uint32_t bits = all_in ? 1u : (uint32_t)(b + base - 1) << SCORE_BIN_SHIFT;
        float threshold;
        memcpy(&threshold, &bits, sizeof threshold);
        collect(s, L, threshold, c);
        int64_t k;
        if (all_in) {
            for (int64_t i = 0; i < c->n; i++) front[i] = score_key(c->v[i], c->id[i]);
            k = cut_all_in(front, c->n, L, zn);
            if (k < 0) sort_keys_desc(front, c->n);
        } else {
            int64_t start[SCORE_WINDOW + 2];
            bucket_by_slot(c, front, base, top_slot, start);
            k = cut_in_one_bucket(front, start, top_slot, c->n, L, zn);
            if (k < 0) /* every bucket sorted: front sorted descending */
                for (int q = 0; q <= top_slot; q++)
                    sort_keys_desc(front + start[q], start[q + 1] - start[q]);
        }
        if (k < 0) k = topafa_cut(front, c->n, L, zn, all_in); /* the rule over the sorted front */
        if (all_in || (k > 0 && k <= c->n)) {
            *n_front = c->n;
            return k;
        }
        for (b--; b >= lo; b--) { /* the next non-empty bin down */
            float any = 0.0f;
            for (int q = 0; q < SCORE_BANKS; q++) any += bins->sum[b * SCORE_BANKS + q];
            if (any > 0.0f) break;
        }
    }
}

static void topafa_range(void *arg, int64_t row_begin, int64_t row_end) {
    topafa_job *job = (topafa_job *)arg;
    int64_t L = job->L;
    float *s = malloc((size_t)L * sizeof(float));
    candidates c = {malloc((size_t)(L + 1) * sizeof(float)),
                    malloc((size_t)(L + 1) * sizeof(int64_t)), L + 1, 0, 1, 0.0f};
    uint64_t *front = malloc((size_t)(L + 1) * sizeof(uint64_t));
    score_bins *bins = malloc(sizeof(score_bins));
    int64_t words = (L + 63) / 64;
    uint64_t *keep = malloc((size_t)words * sizeof(uint64_t));
    if (!s || !c.v || !c.id || !front || !bins || !keep) {
        job->failed = 1;
        free(s), free(c.v), free(c.id), free(front), free(bins), free(keep);
        return;
    }
    for (int64_t r = row_begin; r < row_end; r++) {
        const float *row = job->pre + r * L;
        int64_t n_front = 0;
        int64_t k = topafa_row(row, job->norms, L, job->zn[r], s, &c, front, &n_front, bins);
        if (k > n_front) { /* the guard kept the whole dictionary: every positive latent */
            n_front = 0;
            for (int64_t l = 0; l < L; l++)
                if (row[l] > 0.0f) front[n_front++] = score_key(s[l], l); /* a set: no sort */
        }
        /* the kept latents in increasing id order (a bitmap walk): the sparse passes that
         * follow (pair_sums' latent ranges, the decode's row reads) go through W in order */
        int64_t kept = 0, upto = k < n_front ? k : n_front;
        memset(keep, 0, (size_t)words * sizeof(uint64_t));
        for (int64_t i = 0; i < upto; i++) {
            int64_t id = key_id(front[i]);
            keep[id >> 6] |= 1ull << (id & 63);
        }
        for (int64_t w = 0; w < words; w++)
            for (uint64_t bits = keep[w]; bits; bits &= bits - 1) {
                int64_t id = (w << 6) + __builtin_ctzll(bits);
                float a = row[id];
                if (!(a > 0.0f)) continue; /* a zero activation (e.g. a zero decoder norm) */
                if (kept == job->cap) {
                    job->failed = 2;
                    break;
                }
                job->ids[r * job->cap + kept] = id;
                job->vals[r * job->cap + kept++] = a;
            }
        job->k_out[r] = k;
        job->len_out[r] = kept;
    }
    free(s), free(c.v), free(c.id), free(front), free(bins), free(keep);
}

/* pre [n, L] (row stride L), norms [L], zn [n] -> k_out [n], len_out [n] (kept positive
 * latents, <= cap), ids [n, cap], vals [n, cap] (row r's first len_out[r] entries written, in
 * increasing id order). Returns 0, -1 on bad arguments, -2 when out of memory, -3 when a row
 * keeps more than cap latents. */
int wb_topafa_rows(const float *pre, const float *norms, const float *zn, int64_t n, int64_t L,
                   int64_t cap, int64_t *k_out, int64_t *len_out, int64_t *ids, float *vals,
                   int n_threads) {
    if (n < 0 || L < 1 || cap < 0) return -1;
    if (n == 0) return 0;
    topafa_job job = {pre, norms, zn, n, L, cap, k_out, len_out, ids, vals, 0};
    int parts = clamp_threads(n_threads, n);
    int64_t bounds[MAX_THREADS + 1];
    even_bounds(n, parts, bounds);
    parallel_ranges(topafa_range, &job, bounds, parts);
    return job.failed == 1 ? -2 : (job.failed == 2 ? -3 : 0);
}

/* ---------------------------------------------------------------------------------------------
 * ragged rows to flat bags */

typedef struct {
    const float *vals;
    const int64_t *idx, *lens, *offsets;
    int64_t stride;
    float *out_vals;
    int64_t *out_idx;
} flatten_job;

static void flatten_range(void *arg, int64_t row_begin, int64_t row_end) {
    flatten_job *job = (flatten_job *)arg;
    for (int64_t r = row_begin; r < row_end; r++) {
        size_t len = (size_t)job->lens[r];
        memcpy(job->out_vals + job->offsets[r], job->vals + r * job->stride, len * sizeof(float));
        memcpy(job->out_idx + job->offsets[r], job->idx + r * job->stride, len * sizeof(int64_t));
    }
}

/* vals, idx [n, stride] (row r's first lens[r] entries used), offsets [n] (exclusive prefix
 * sums of lens) -> out_vals, out_idx [sum lens]: row r's pairs at offsets[r] (embedding_bag's
 * flat input). */
void wb_flatten_rows(const float *vals, const int64_t *idx, const int64_t *lens,
                     const int64_t *offsets, int64_t n, int64_t stride, float *out_vals,
                     int64_t *out_idx, int n_threads) {
    if (n <= 0) return;
    flatten_job job = {vals, idx, lens, offsets, stride, out_vals, out_idx};
    int parts = clamp_threads(n_threads, n);
    int64_t bounds[MAX_THREADS + 1];
    even_bounds(n, parts, bounds);
    parallel_ranges(flatten_range, &job, bounds, parts);
}
