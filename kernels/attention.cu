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
#include "common.cuh"
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

#define LF_ATTENTION_FLASH(S, T, D)                                                                       \
    extern "C" __global__ void __launch_bounds__(ATTN_BQ)                                                 \
        attention_flash_d##D##_##S(const T* qkv, const float* mask_shared, const float* mask_cls,        \
                                   int causal, T* out, float* lse, int lse_mode, int n_tok, int H,      \
                                   float scale) {                                                         \
        attention_flash<T, D>(qkv, mask_shared, mask_cls, causal, out, lse, lse_mode, n_tok, H, scale); \
    }
// attention_probs: (256, 2) lets ptxas keep its 4x4 tiles in registers without spilling.
#define LF_ATTENTION(S, T)                                                                                \
    LF_ATTENTION_FLASH(S, T, 32)                                                                          \
    LF_ATTENTION_FLASH(S, T, 64)                                                                          \
    extern "C" __global__ void __launch_bounds__(256, 2)                                                  \
        attention_probs_##S(const T* qkv, const float* lse, const float* mask_shared,                    \
                            const float* mask_cls, int causal, int masked, float* probs, int n_tok,     \
                            int H, int D, float scale) {                                                  \
        attention_probs<T>(qkv, lse, mask_shared, mask_cls, causal, masked, probs, n_tok, H, D, scale);  \
    }
LF_FOR_FLOAT_TYPES(LF_ATTENTION)
