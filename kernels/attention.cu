// Multi-head scaled dot-product attention over a packed qkv tensor (B, T, 3C) = [q | k | v],
// heads splitting C into head dim D; out (B, T, C). The CPU reference is
// src/ops/attention.rs `attention_forward_cpu`.
//
// attention_flash: flash-style forward. One thread owns one query row (its q and output
// accumulator live in registers); the block's 64 queries walk the keys in tiles of 32 staged in
// shared memory, with an online softmax, so the (T, T) scores never reach global memory.
// Masks are additive: `shared` (T, T) for every sample and head, `cls` (B, T) on query row 0
// of sample b, and `causal` (key j > query i excluded). Arithmetic is f32 whatever the
// storage type. When asked (lse_mode), it also writes each row's log-sum-exp (B, H, T) of the
// masked scores or of the unmasked ones.
//
// attention_probs: the head-averaged probability map (B, T, T) f32 from that log-sum-exp:
// probs[b, i, j] = mean_h exp(s_h(i, j) - lse_h(i)), recomputing q.k. One block owns a 64x64
// (i, j) tile and loops over heads, so every output is written once, without atomics.
//
// attention_flash_tc: attention_flash on the tensor cores for bf16 / f16 (head dims 32, 64),
// same masks and log-sum-exp modes, so attention_probs serves both; see its section below.
// attention_flash itself is instantiated for f32 only.
#include "common.cuh"
#include "mma.cuh"
#include "vec4.cuh"

constexpr int ATTN_BQ = 64;  // queries per block, one per thread (= blockDim.x)
constexpr int ATTN_BK = 32;  // keys per shared-memory tile

// What attention_flash writes to `lse` (matches ProbsRecord in src/ops/attention.rs).
constexpr int LSE_NONE = 0;
constexpr int LSE_MASKED = 1;
constexpr int LSE_UNMASKED = 2;

// Online log-sum-exp over tiles of scores: a running max m and a running sum l of exp(s - m).
// A row whose scores are all -inf so far keeps m = -inf and l = 0 (its exps are taken against
// 0, so never -inf - -inf). lse_reference: the max of m and the tile.
template <int N>
__device__ __forceinline__ float lse_reference(const float (&s)[N], float m) {
#pragma unroll
    for (int j = 0; j < N; ++j) m = fmaxf(m, s[j]);
    return m;
}

// Unmasked running log-sum-exp: (m, l) only, s[] untouched.
template <int N>
__device__ __forceinline__ void online_lse_tile(const float (&s)[N], float& m, float& l) {
    const float m_new = lse_reference(s, m);
    const float ref = m_new == -INFINITY ? 0.0f : m_new;
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < N; ++j) sum += expf(s[j] - ref);
    l = l * expf(m - ref) + sum;
    m = m_new;
}

// The softmax step: as online_lse_tile, and s[] becomes exp(s - m_new), the tile's weights.
// Returns alpha = exp(m_old - m_new), the factor for the output accumulated so far.
template <int N>
__device__ __forceinline__ float online_softmax_tile(float (&s)[N], float& m, float& l) {
    const float m_new = lse_reference(s, m);
    const float ref = m_new == -INFINITY ? 0.0f : m_new;
    const float alpha = expf(m - ref);
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < N; ++j) {
        s[j] = expf(s[j] - ref);
        sum += s[j];
    }
    l = l * alpha + sum;
    m = m_new;
    return alpha;
}

// Grid (ceil(T / 64), H, B), block 64 threads. D: head dim, a multiple of 4.
template <typename T, int D>
__device__ void attention_flash(const T* __restrict__ qkv, const float* __restrict__ mask_shared,
                                const float* __restrict__ mask_cls, int causal, T* __restrict__ out,
                                float* __restrict__ lse, int lse_mode, int n_tok, int H, float scale) {
    __shared__ __align__(16) float ks[ATTN_BK][D];
    __shared__ __align__(16) float vs[ATTN_BK][D];
    const int b = blockIdx.z, h = blockIdx.y;
    const int q0 = blockIdx.x * ATTN_BQ;
    const int i = q0 + threadIdx.x;
    const bool q_valid = i < n_tok;
    const int C = H * D;
    const size_t row_stride = 3 * (size_t)C;
    // q of (sample b, token 0, head h); k and v are C and 2C further along each row.
    const T* base = qkv + (size_t)b * n_tok * row_stride + (size_t)h * D;

    // Rows past T hold zeros: they take part in the tile loads and __syncthreads, store nothing.
    float q[D];
#pragma unroll
    for (int d = 0; d < D; d += 4) {
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (q_valid) v = load4(base + (size_t)i * row_stride + d);
        q[d] = v.x * scale;
        q[d + 1] = v.y * scale;
        q[d + 2] = v.z * scale;
        q[d + 3] = v.w * scale;
    }
    float o[D];
#pragma unroll
    for (int d = 0; d < D; ++d) o[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;          // running max and sum of the masked scores
    float m_raw = -INFINITY, l_raw = 0.0f;  // the same without masks (LSE_UNMASKED only)

    // Causal: keys past the block's last query are masked for all its rows, unless the
    // unmasked log-sum-exp (which sees every key) is wanted.
    const int n_keys = (causal && lse_mode != LSE_UNMASKED) ? min(n_tok, q0 + ATTN_BQ) : n_tok;
    for (int k0 = 0; k0 < n_keys; k0 += ATTN_BK) {
        __syncthreads();  // every thread is done with the previous tile
        for (int idx = threadIdx.x; idx < ATTN_BK * (D / 4); idx += ATTN_BQ) {
            const int r = idx / (D / 4), d = (idx % (D / 4)) * 4;
            const int key = k0 + r;
            float4 kv = make_float4(0.0f, 0.0f, 0.0f, 0.0f), vv = kv;
            if (key < n_tok) {
                const T* p = base + (size_t)key * row_stride + d;
                kv = load4(p + C);
                vv = load4(p + 2 * C);
            }
            *reinterpret_cast<float4*>(&ks[r][d]) = kv;
            *reinterpret_cast<float4*>(&vs[r][d]) = vv;
        }
        __syncthreads();

        // s[j] = (scale q) . k_j; d outer so the 32 dot products are independent chains.
        float s[ATTN_BK];
#pragma unroll
        for (int j = 0; j < ATTN_BK; ++j) s[j] = 0.0f;
#pragma unroll
        for (int d = 0; d < D; d += 4) {
#pragma unroll
            for (int j = 0; j < ATTN_BK; ++j) {
                const float4 kk = *reinterpret_cast<const float4*>(&ks[j][d]);  // broadcast
                s[j] = fmaf(q[d], kk.x, s[j]);
                s[j] = fmaf(q[d + 1], kk.y, s[j]);
                s[j] = fmaf(q[d + 2], kk.z, s[j]);
                s[j] = fmaf(q[d + 3], kk.w, s[j]);
            }
        }
#pragma unroll
        for (int j = 0; j < ATTN_BK; ++j)
            if (k0 + j >= n_tok) s[j] = -INFINITY;

        if (lse_mode == LSE_UNMASKED) online_lse_tile(s, m_raw, l_raw);

        if (q_valid) {
#pragma unroll
            for (int j = 0; j < ATTN_BK; ++j) {
                const int key = k0 + j;
                if (key < n_tok) {
                    if (mask_shared) s[j] += mask_shared[(size_t)i * n_tok + key];
                    if (mask_cls && i == 0) s[j] += mask_cls[(size_t)b * n_tok + key];
                    if (causal && key > i) s[j] = -INFINITY;
                }
            }
        }

        const float alpha = online_softmax_tile(s, m, l);
#pragma unroll
        for (int d = 0; d < D; ++d) o[d] *= alpha;
#pragma unroll
        for (int j = 0; j < ATTN_BK; ++j) {
#pragma unroll
            for (int d = 0; d < D; d += 4) {
                const float4 vv = *reinterpret_cast<const float4*>(&vs[j][d]);  // broadcast
                o[d] = fmaf(s[j], vv.x, o[d]);
                o[d + 1] = fmaf(s[j], vv.y, o[d + 1]);
                o[d + 2] = fmaf(s[j], vv.z, o[d + 2]);
                o[d + 3] = fmaf(s[j], vv.w, o[d + 3]);
            }
        }
    }

    if (!q_valid) return;
    const float inv_l = 1.0f / l;
    T* orow = out + ((size_t)b * n_tok + i) * C + (size_t)h * D;
#pragma unroll
    for (int d = 0; d < D; d += 4)
        store4(orow + d, make_float4(o[d] * inv_l, o[d + 1] * inv_l, o[d + 2] * inv_l, o[d + 3] * inv_l));
    if (lse_mode == LSE_MASKED) lse[((size_t)b * H + h) * n_tok + i] = m + logf(l);
    if (lse_mode == LSE_UNMASKED) lse[((size_t)b * H + h) * n_tok + i] = m_raw + logf(l_raw);
}

constexpr int PROBS_TILE = 64;  // (i, j) tile per block; 256 threads, a 4x4 grid of outputs each
constexpr int PROBS_DK = 32;    // head-dim chunk staged in shared memory

// Grid (ceil(T / 64) key tiles, ceil(T / 64) query tiles, B), block 256 threads.
// Thread (tx, ty) = (tid % 16, tid / 16) owns queries i0 + ty + 16a and keys j0 + tx + 16c,
// a, c in 0..4. `masked`: add the masks (ProbsRecord::Masked), else the raw scores.
// D: head dim, a multiple of PROBS_DK.
template <typename T>
__device__ void attention_probs(const T* __restrict__ qkv, const float* __restrict__ lse,
                                const float* __restrict__ mask_shared, const float* __restrict__ mask_cls,
                                int causal, int masked, float* __restrict__ probs, int n_tok, int H, int D,
                                float scale) {
    // Transposed (dim-major) with one float of padding: the tile loads write consecutive dims
    // to distinct banks, and the 4x4 reads are broadcasts (q) or consecutive (k).
    __shared__ float qt[PROBS_DK][PROBS_TILE + 1];
    __shared__ float kt[PROBS_DK][PROBS_TILE + 1];
    const int b = blockIdx.z;
    const int i0 = blockIdx.y * PROBS_TILE, j0 = blockIdx.x * PROBS_TILE;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int C = H * D;
    const size_t row_stride = 3 * (size_t)C;
    const T* base = qkv + (size_t)b * n_tok * row_stride;

    // Mask terms do not depend on the head: read once, up front. They are added to the scores
    // in attention_flash's order (shared, then CLS row), and the dot products below run in its
    // order too, so each score is bitwise the one its lse was summed from.
    float add_shared[4][4], add_cls[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
        const int j = j0 + tx + 16 * c;
        add_cls[c] = (masked && mask_cls && j < n_tok) ? mask_cls[(size_t)b * n_tok + j] : 0.0f;
#pragma unroll
        for (int a = 0; a < 4; ++a) {
            const int i = i0 + ty + 16 * a;
            add_shared[a][c] = (masked && mask_shared && i < n_tok && j < n_tok) ? mask_shared[(size_t)i * n_tok + j] : 0.0f;
        }
    }

    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[a][c] = 0.0f;

    for (int h = 0; h < H; ++h) {
        float dot[4][4];
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int c = 0; c < 4; ++c) dot[a][c] = 0.0f;
        for (int d0 = 0; d0 < D; d0 += PROBS_DK) {
            __syncthreads();  // the previous chunk has been read
            for (int idx = threadIdx.x; idx < PROBS_TILE * PROBS_DK; idx += blockDim.x) {
                const int r = idx / PROBS_DK, dd = idx % PROBS_DK;
                const int qi = i0 + r, kj = j0 + r;
                const size_t col = (size_t)h * D + d0 + dd;
                // Same pre-scaled q as attention_flash, so the scores match its lse.
                qt[dd][r] = qi < n_tok ? to_float(base[(size_t)qi * row_stride + col]) * scale : 0.0f;
                kt[dd][r] = kj < n_tok ? to_float(base[(size_t)kj * row_stride + C + col]) : 0.0f;
            }
            __syncthreads();
#pragma unroll 8
            for (int dd = 0; dd < PROBS_DK; ++dd) {
                float qa[4], kc[4];
#pragma unroll
                for (int a = 0; a < 4; ++a) qa[a] = qt[dd][ty + 16 * a];
#pragma unroll
                for (int c = 0; c < 4; ++c) kc[c] = kt[dd][tx + 16 * c];
#pragma unroll
                for (int a = 0; a < 4; ++a)
#pragma unroll
                    for (int c = 0; c < 4; ++c) dot[a][c] = fmaf(qa[a], kc[c], dot[a][c]);
            }
        }
#pragma unroll
        for (int a = 0; a < 4; ++a) {
            const int i = i0 + ty + 16 * a;
            const float row_lse = i < n_tok ? lse[((size_t)b * H + h) * n_tok + i] : 0.0f;
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int j = j0 + tx + 16 * c;
                float s = dot[a][c];
                if (masked && mask_shared) s += add_shared[a][c];
                if (masked && mask_cls && i == 0) s += add_cls[c];
                if (!(masked && causal && j > i)) acc[a][c] += expf(s - row_lse);
            }
        }
    }

    const float inv_h = 1.0f / H;
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const int i = i0 + ty + 16 * a;
        if (i >= n_tok) continue;
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int j = j0 + tx + 16 * c;
            if (j < n_tok) probs[((size_t)b * n_tok + i) * n_tok + j] = acc[a][c] * inv_h;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// attention_flash_tc: the same forward (masks, lse modes) on the tensor cores, bf16 / f16 only.
// FlashAttention-2's layout: a block of 4 warps owns 64 queries, each warp 16 of them, and walks
// the keys in tiles of 64. Q.K^T and P.V run on mma.sync m16n8k16 with f32 accumulators; the
// online softmax stays in the accumulator registers (each thread holds 2 rows of the warp's 16:
// g = lane / 4 and g + 8, at columns 2 * (lane % 4) + {0, 1} of every 8-column tile), its row
// max reduced over the 4 lanes that share a row. The K and V tiles are double-buffered in
// shared memory through cp.async: tile j + 1 is in flight while tile j is computed on.
// Scores are kept in log2 units (scaled by log2(e)) so that exp2f is the only transcendental.
// ---------------------------------------------------------------------------------------------
constexpr int TC_WARPS = 4;
constexpr int TC_BQ = 16 * TC_WARPS;  // queries per block
constexpr int TC_BK = 64;             // keys per K / V tile
// Shared rows are D + 8 elements: the stride (D + 8) * 2 bytes is an odd multiple of 16 bytes, so
// the 8 row addresses of every ldmatrix phase hit 8 different 16-byte bank groups, and rows stay
// 16-byte aligned for cp.async.
constexpr int TC_PAD = 8;
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

// Two floats as one packed b16x2 word, `lo` in the low half (the lower column of a fragment).
__device__ __forceinline__ uint32_t attn_pack(float lo, float hi, __nv_bfloat16) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t attn_pack(float lo, float hi, __half) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
}
// Which 16-byte chunk (row, column) of a tile of CHUNKS chunks a row the idx-th copy moves.
// Shared memory serves 16-byte accesses a quarter warp (8 lanes) at a time. With 8 or more chunks
// a row those 8 lanes take 8 consecutive chunks of one row (8 bank groups). With D = 32 (4 chunks)
// row-major order would put two rows in a phase, and at the padded stride of 5 chunks the last
// chunk of the second row lands on the first chunk's bank group (2 wavefronts); so the 8 lanes
// take one chunk of 8 consecutive rows instead, which the odd stride spreads over 8 groups. A
// warp still covers whole rows (8 rows x 64 bytes), so global sectors are used in full.
template <int CHUNKS>
__device__ __forceinline__ int2 attn_tile_chunk(int idx) {
    if constexpr (CHUNKS >= 8) {
        return make_int2(idx / CHUNKS, (idx % CHUNKS) * 8);
    } else {
        return make_int2((idx / (8 * CHUNKS)) * 8 + (idx & 7), ((idx >> 3) % CHUNKS) * 8);
    }
}
// ROWS token rows from `row0` of one head's D columns at `src` (row stride `row_stride`) into
// shared rows of D + TC_PAD, 16 bytes per cp.async; rows at or past n_tok are zero-filled.
template <typename T, int D, int ROWS>
__device__ __forceinline__ void attn_load_rows_async(T* __restrict__ dst, const T* __restrict__ src,
                                                     size_t row_stride, int row0, int n_tok) {
    constexpr int CHUNKS = D / 8;  // 16-byte chunks per row
    static_assert((ROWS * CHUNKS) % (TC_WARPS * 32) == 0, "chunks must divide among the threads");
    static_assert(CHUNKS >= 8 || ROWS % 8 == 0, "attn_tile_chunk spreads a quarter warp over 8 rows");
#pragma unroll
    for (int k = 0; k < ROWS * CHUNKS / (TC_WARPS * 32); ++k) {
        const int2 rc = attn_tile_chunk<CHUNKS>(threadIdx.x + k * TC_WARPS * 32);
        const int r = rc.x, c = rc.y;
        const bool in = row0 + r < n_tok;
        const T* p = in ? src + (size_t)(row0 + r) * row_stride + c : src;
        cp_async_16(smem_u32(dst + r * (D + TC_PAD) + c), p, in ? 16 : 0);
    }
}

// Masked launches stage each key tile's mask values in dynamic shared memory: per warp its 16
// query rows of the shared mask (rows TC_MASK_LDS floats apart: 8 bytes read per lane at
// columns 8n + 2 tq land the 16 lanes of a half-warp on distinct banks), then the CLS row's
// TC_BK keys. The launcher sizes it (attention.rs, FLASH_TC_MASK_TILE_FLOATS).
constexpr int TC_MASK_LDS = TC_BK + 8;

// Copies `count` (<= TC_BK) floats of a mask row from global `src` to shared `dst` and zeroes
// the rest of the TC_BK (keys past T: never used, but read in pairs). The warp's lanes read whole
// 32-byte sectors: the first read starts at the sector holding src, so a row of 64 keys costs
// the 8 or 9 sectors it spans instead of two 128-byte reads that each straddle a sector edge
// (mask rows are T floats long, so they start anywhere within a sector).
__device__ __forceinline__ void attn_stage_mask_row(float* __restrict__ dst, const float* __restrict__ src, int count,
                                                    int lane) {
    const int skew = (int)((reinterpret_cast<uintptr_t>(src) & 31) >> 2);  // floats before src in its sector
    for (int base = -skew; base < TC_BK; base += 32) {
        const int k = base + lane;
        if (k >= 0 && k < TC_BK) dst[k] = k < count ? src[k] : 0.0f;
    }
}

// Online softmax step for one of the thread's two rows (`half` 0: row g, 1: row g + 8) over a
// tile of scores s (log2 units); as online_softmax_tile, with the max taken over the 4 lanes of
// the row. `l` stays this thread's partial sum (summed over the 4 lanes at the end). With P set,
// s becomes the tile's weights exp2(s - m_new) and the return value is alpha.
template <int NK, bool P>
__device__ __forceinline__ float attn_online_rows(float (&s)[NK][4], int half, float& m, float& l) {
    float mx = m;
#pragma unroll
    for (int n = 0; n < NK; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * half], s[n][2 * half + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float ref = mx == -INFINITY ? 0.0f : mx;
    const float alpha = exp2f(m - ref);
    float sum = 0.0f;
#pragma unroll
    for (int n = 0; n < NK; ++n)
#pragma unroll
        for (int e = 2 * half; e < 2 * half + 2; ++e) {
            const float p = exp2f(s[n][e] - ref);
            if (P) s[n][e] = p;
            sum += p;
        }
    l = l * alpha + sum;
    m = mx;
    return alpha;
}

// Grid (ceil(T / 64), H, B), block 128 threads. D: head dim, 32 or 64. qkv rows 16-byte aligned
// (C a multiple of 8, qkv base 16-byte aligned): the launcher checks.
template <typename T, int D>
__device__ void attention_flash_tc(const T* __restrict__ qkv, const float* __restrict__ mask_shared,
                                   const float* __restrict__ mask_cls, int causal, T* __restrict__ out,
                                   float* __restrict__ lse, int lse_mode, int n_tok, int H, float scale) {
    static_assert(D % 16 == 0, "head dim: a multiple of the mma k-step");
    constexpr int LDS = D + TC_PAD;
    constexpr int NK = TC_BK / 8;  // 8-key tiles of a score tile
    constexpr int ND = D / 8;      // 8-column tiles of the output
    __shared__ __align__(16) T qs[TC_BQ * LDS];
    __shared__ __align__(16) T ks[2][TC_BK * LDS];
    __shared__ __align__(16) T vs[2][TC_BK * LDS];
    // Masked launches only (dynamic, sized by the launcher): the warps' mask tiles, the CLS row.
    extern __shared__ __align__(16) float attn_tc_mask_smem[];
    float* mask_tile = attn_tc_mask_smem + (threadIdx.x >> 5) * 16 * TC_MASK_LDS;
    float* cls_tile = attn_tc_mask_smem + (mask_shared ? TC_WARPS * 16 * TC_MASK_LDS : 0);

    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * TC_BQ;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3;
    const int C = H * D;
    const size_t row_stride = 3 * (size_t)C;
    const T* base = qkv + (size_t)b * n_tok * row_stride + (size_t)h * D;
    const int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};  // this thread's query rows
    const float scale2 = scale * LOG2E;

    const int n_keys = (causal && lse_mode != LSE_UNMASKED) ? min(n_tok, q0 + TC_BQ) : n_tok;
    const int n_tiles = (n_keys + TC_BK - 1) / TC_BK;

    attn_load_rows_async<T, D, TC_BQ>(qs, base, row_stride, q0, n_tok);
    attn_load_rows_async<T, D, TC_BK>(ks[0], base + C, row_stride, 0, n_tok);
    attn_load_rows_async<T, D, TC_BK>(vs[0], base + 2 * C, row_stride, 0, n_tok);
    cp_async_commit();

    float o[ND][4];
#pragma unroll
    for (int n = 0; n < ND; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[n][e] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float m_raw[2] = {-INFINITY, -INFINITY}, l_raw[2] = {0.0f, 0.0f};

    for (int j = 0; j < n_tiles; ++j) {
        // Tile j has landed for this thread; the barrier makes every thread's copies visible and
        // guarantees every warp is done with buffer (j + 1) % 2 (read in iteration j - 1).
        cp_async_wait<0>();
        __syncthreads();
        if (j + 1 < n_tiles) {
            const int buf = (j + 1) & 1;
            attn_load_rows_async<T, D, TC_BK>(ks[buf], base + C, row_stride, (j + 1) * TC_BK, n_tok);
            attn_load_rows_async<T, D, TC_BK>(vs[buf], base + 2 * C, row_stride, (j + 1) * TC_BK, n_tok);
        }
        cp_async_commit();
        if (mask_shared || mask_cls) {
            // The masks' values for this key tile, read row by row in whole sectors into shared
            // memory (attn_stage_mask_row), then picked up in the accumulator layout after Q.K^T;
            // staged before it, while the score registers are free.
            // Every warp passes the same __syncwarp()s (the tile of iteration j - 1 is read).
            const int count = min(TC_BK, n_tok - j * TC_BK);
            __syncwarp();
            if (mask_shared)
                for (int r = 0; r < 16; ++r) {
                    const int i = q0 + warp * 16 + r;
                    if (i < n_tok) attn_stage_mask_row(mask_tile + r * TC_MASK_LDS, mask_shared + (size_t)i * n_tok + j * TC_BK, count, lane);
                }
            if (mask_cls && q0 == 0 && warp == 0) attn_stage_mask_row(cls_tile, mask_cls + (size_t)b * n_tok + j * TC_BK, count, lane);
            __syncwarp();
        }
        const T* kt = ks[j & 1];
        const T* vt = vs[j & 1];
        const int k0 = j * TC_BK;

        // S (16 x 64) = Q K^T. K is stored (key, dim), the col-major B operand: a plain x4 load
        // gives b0, b1 of two adjacent 8-key tiles.
        float s[NK][4];
#pragma unroll
        for (int n = 0; n < NK; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[n][e] = 0.0f;
#pragma unroll
        for (int k = 0; k < D / 16; ++k) {
            // The warp's 16 query rows, columns 16k..16k + 15, as the A fragment: lanes 0-15
            // address rows 0-15 at column 16k, lanes 16-31 the same rows at 16k + 8, so a0..a3 =
            // (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15). Reloaded from shared
            // memory at every tile rather than held: the D / 4 registers it would pin keep D = 64
            // within the 128 that 4 blocks an SM allow, without spilling.
            uint32_t qa[4];
            ldmatrix_x4(qa, smem_u32(qs + (warp * 16 + (lane & 15)) * LDS + 16 * k + (lane >> 4) * 8));
#pragma unroll
            for (int n = 0; n < NK; n += 2) {
                uint32_t r[4];
                ldmatrix_x4(
                    r, smem_u32(kt + (n * 8 + (lane & 7) + (lane >> 4) * 8) * LDS + 16 * k + ((lane >> 3) & 1) * 8));
                mma_16816(s[n], qa, r, T());
                mma_16816(s[n + 1], qa, r + 2, T());
            }
        }

        // Scale, drop keys past T, record the unmasked running lse, then the masks, in
        // attention_flash's order (shared, CLS row, causal).
#pragma unroll
        for (int n = 0; n < NK; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = k0 + n * 8 + 2 * tq + (e & 1);
                s[n][e] = key < n_tok ? s[n][e] * scale2 : -INFINITY;
            }
        if (lse_mode == LSE_UNMASKED) {
            attn_online_rows<NK, false>(s, 0, m_raw[0], l_raw[0]);
            attn_online_rows<NK, false>(s, 1, m_raw[1], l_raw[1]);
        }
        if (mask_shared || mask_cls || causal) {
#pragma unroll
            for (int n = 0; n < NK; ++n)
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int i = row[half];
                    const int c = n * 8 + 2 * tq;  // the pair's first key within the tile
                    if (i >= n_tok) continue;
                    // Conflict-free 8-byte reads: a half-warp's rows g = 0..3 sit 72 floats apart.
                    float2 add_shared = make_float2(0.0f, 0.0f), add_cls = make_float2(0.0f, 0.0f);
                    if (mask_shared) add_shared = *reinterpret_cast<const float2*>(mask_tile + (g + 8 * half) * TC_MASK_LDS + c);
                    if (mask_cls && i == 0) add_cls = *reinterpret_cast<const float2*>(cls_tile + c);
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const int key = k0 + c + e;
                        if (key >= n_tok) continue;
                        float v = s[n][2 * half + e];
                        if (mask_shared) v += (e ? add_shared.y : add_shared.x) * LOG2E;
                        if (mask_cls && i == 0) v += (e ? add_cls.y : add_cls.x) * LOG2E;
                        if (causal && key > i) v = -INFINITY;
                        s[n][2 * half + e] = v;
                    }
                    // Keeps ptxas from hoisting all 32 pairs of reads ahead (64 registers live
                    // beside the 64 of S and O: a spill at D = 64).
                    asm volatile("" ::: "memory");
                }
        }

        const float alpha0 = attn_online_rows<NK, true>(s, 0, m[0], l[0]);
        const float alpha1 = attn_online_rows<NK, true>(s, 1, m[1], l[1]);
#pragma unroll
        for (int n = 0; n < ND; ++n) {
            o[n][0] *= alpha0;
            o[n][1] *= alpha0;
            o[n][2] *= alpha1;
            o[n][3] *= alpha1;
        }

        // O += P V. The accumulators of two adjacent 8-key tiles are the A fragment of one
        // 16-key step; V is stored (key, dim), so its B operand comes from ldmatrix .trans:
        // matrices (keys 0-7, dims 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15) = b0, b1 of two
        // adjacent 8-dim tiles.
        // bf16 keeps 8 bits of P: alone, its rounding moves an output by up to 2^-9 of |V|, which
        // is ~1e-2 of a row that averages many keys (the tolerance). So bf16 sends P as a sum of
        // two bf16 terms, P = hi + lo with lo the rounding residual (16 bits together), through
        // two products with V: 2x the P.V tensor work. The lo pass reloads its V fragments
        // rather than keep both P terms live (that spilled at D = 64 on sm_80). f16 (11 bits)
        // keeps one term.
        constexpr int P_TERMS = std::is_same<T, __nv_bfloat16>::value ? 2 : 1;
#pragma unroll
        for (int kk = 0; kk < NK / 2; ++kk) {
#pragma unroll
            for (int term = 0; term < P_TERMS; ++term) {
                float* p0 = s[2 * kk];
                float* p1 = s[2 * kk + 1];
                const uint32_t pa[4] = {attn_pack(p0[0], p0[1], T()), attn_pack(p0[2], p0[3], T()),
                                        attn_pack(p1[0], p1[1], T()), attn_pack(p1[2], p1[3], T())};
                if (term + 1 < P_TERMS) {  // leave the residual for the next term
#pragma unroll
                    for (int w = 0; w < 4; ++w) {
                        float* q = w < 2 ? p0 : p1;
                        const int e = 2 * (w & 1);
                        q[e] -= __uint_as_float(pa[w] << 16);
                        q[e + 1] -= __uint_as_float(pa[w] & 0xffff0000u);
                    }
                }
#pragma unroll
                for (int n = 0; n < ND; n += 2) {
                    uint32_t r[4];
                    ldmatrix_x4_trans(r, smem_u32(vt + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS + n * 8 +
                                                  (lane >> 4) * 8));
                    mma_16816(o[n], pa, r, T());
                    mma_16816(o[n + 1], pa, r + 2, T());
                }
            }
        }
    }
    cp_async_wait<0>();  // only an empty group remains; leave nothing in flight at exit

    // The output goes through the warp's own 16 rows of qs (read by this warp alone, all reads
    // done: ldmatrix is warp-synchronous) so that global stores are whole 16-byte chunks of a row rather than 4-byte pairs.
    T* stage = qs + warp * 16 * LDS;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        float lt = l[half];
        lt += __shfl_xor_sync(0xffffffffu, lt, 1);
        lt += __shfl_xor_sync(0xffffffffu, lt, 2);
        float lr = l_raw[half];
        lr += __shfl_xor_sync(0xffffffffu, lr, 1);
        lr += __shfl_xor_sync(0xffffffffu, lr, 2);
        const float inv_l = 1.0f / lt;
#pragma unroll
        for (int n = 0; n < ND; ++n)
            store_pair(stage + (g + 8 * half) * LDS + n * 8 + 2 * tq, o[n][2 * half] * inv_l,
                            o[n][2 * half + 1] * inv_l);
        const int i = row[half];
        if (tq == 0 && i < n_tok && lse_mode == LSE_MASKED)
            lse[((size_t)b * H + h) * n_tok + i] = (m[half] + log2f(lt)) * LN2;
        if (tq == 0 && i < n_tok && lse_mode == LSE_UNMASKED)
            lse[((size_t)b * H + h) * n_tok + i] = (m_raw[half] + log2f(lr)) * LN2;
    }
    __syncwarp();
    constexpr int CHUNKS = D / 8;  // 16-byte chunks per output row
#pragma unroll
    for (int k = 0; k < 16 * CHUNKS / 32; ++k) {
        const int2 rc = attn_tile_chunk<CHUNKS>(lane + 32 * k);
        const int r = rc.x, c = rc.y;
        const int i = q0 + warp * 16 + r;
        if (i < n_tok)
            *reinterpret_cast<uint4*>(out + ((size_t)b * n_tok + i) * C + (size_t)h * D + c) =
                *reinterpret_cast<const uint4*>(stage + r * LDS + c);
    }
}

// (128, 4): 128 registers a thread, so 4 blocks (16 warps) share an SM on sm_90 (and 3 on sm_80,
// where 45 KB of shared memory a block caps it). D = 64 fits without spilling because Q's
// fragments are reloaded from shared memory at every key tile instead of held in 16 registers.
#define LF_ATTENTION_FLASH_TC(S, T, D)                                                                     \
    extern "C" __global__ void __launch_bounds__(TC_WARPS * 32, 4)                                         \
        attention_flash_tc_d##D##_##S(const T* qkv, const float* mask_shared, const float* mask_cls,      \
                                      int causal, T* out, float* lse, int lse_mode, int n_tok, int H,    \
                                      float scale) {                                                       \
        attention_flash_tc<T, D>(qkv, mask_shared, mask_cls, causal, out, lse, lse_mode, n_tok, H, scale); \
    }
LF_ATTENTION_FLASH_TC(bf16, __nv_bfloat16, 32)
LF_ATTENTION_FLASH_TC(bf16, __nv_bfloat16, 64)
LF_ATTENTION_FLASH_TC(f16, __half, 32)
LF_ATTENTION_FLASH_TC(f16, __half, 64)

#define LF_ATTENTION_FLASH(S, T, D)                                                                       \
    extern "C" __global__ void __launch_bounds__(ATTN_BQ)                                                 \
        attention_flash_d##D##_##S(const T* qkv, const float* mask_shared, const float* mask_cls,        \
                                   int causal, T* out, float* lse, int lse_mode, int n_tok, int H,      \
                                   float scale) {                                                         \
        attention_flash<T, D>(qkv, mask_shared, mask_cls, causal, out, lse, lse_mode, n_tok, H, scale); \
    }
// The SIMT flash kernel serves f32 only: bf16 / f16 run attention_flash_tc.
LF_ATTENTION_FLASH(f32, float, 32)
LF_ATTENTION_FLASH(f32, float, 64)
// attention_probs: (256, 2) lets ptxas keep its 4x4 tiles in registers without spilling.
#define LF_ATTENTION_PROBS(S, T)                                                                          \
    extern "C" __global__ void __launch_bounds__(256, 2)                                                  \
        attention_probs_##S(const T* qkv, const float* lse, const float* mask_shared,                    \
                            const float* mask_cls, int causal, int masked, float* probs, int n_tok,     \
                            int H, int D, float scale) {                                                  \
        attention_probs<T>(qkv, lse, mask_shared, mask_cls, causal, masked, probs, n_tok, H, D, scale);  \
    }
LF_FOR_FLOAT_TYPES(LF_ATTENTION_PROBS)
