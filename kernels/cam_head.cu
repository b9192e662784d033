// The classifier heads on the final feature map F (B, K, HW), f32, forward and backward.
//
// CAM head (CCD): cam_b (C, HW) = W (C, K) @ F_b (K, HW) + bias, positive part times alpha;
// logits = spatial mean of cam (the launcher runs gap_forward_f32 on cam). Three GEMM shapes:
//   forward  cam_b = W @ F_b                      M = C,  N = HW, R = K       per image
//   dW      += dcam (C, B*HW) @ F^T (B*HW, K)      M = C,  N = K,  R = B*HW    all images
//   dF_b     = W^T (K, C) @ dcam_b (C, HW)         M = K,  N = HW, R = C       per image
// with dcam[b, c, p] = dlogits[b, c] / HW * (cam > 0 ? alpha : 1) computed where it is loaded
// (no dcam buffer). C is 20-80, HW = 196, K = 2048: small GEMMs, so one plain shared-memory tiled
// kernel serves all three through a "problem" struct that says how to load A and B and where the
// result goes.
//
// Linear head: pooled = mean_hw F (gap_forward_f32), logits = pooled @ W^T + bias (one warp per
// logit); backward: dW += dlogits^T @ pooled, dbias += sum_b dlogits, dF = (dlogits @ W) / HW
// broadcast over HW.
#include "common.cuh"

#define TILE 32
#define THREADS 256
#define ROWS_PER_THREAD (TILE * TILE / THREADS)  // 4

// C-tile (TILE x TILE) of P.a (M x R) @ P.b (R x N) at block (blockIdx.y, blockIdx.x); thread
// (ty, tx) = (threadIdx.x / 32, threadIdx.x % 32) owns rows ty, ty+8, ty+16, ty+24 of column tx.
// P::A_R_FAST / P::B_R_FAST: whether consecutive threads should load consecutive r (coalesced
// when r is the contiguous index in memory) or consecutive m / n. Out-of-range loads are 0.
template <class P>
__device__ void tiled_gemm(const P& p, int M, int N, int R) {
    __shared__ float As[TILE][TILE + 1];  // [r][m]
    __shared__ float Bs[TILE][TILE + 1];  // [r][n]
    const int tx = threadIdx.x % TILE, ty = threadIdx.x / TILE;
    const int m0 = blockIdx.y * TILE, n0 = blockIdx.x * TILE;
    float acc[ROWS_PER_THREAD] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int r0 = 0; r0 < R; r0 += TILE) {
#pragma unroll
        for (int e0 = 0; e0 < TILE * TILE; e0 += THREADS) {
            const int e = e0 + threadIdx.x;
            const int fast = e % TILE, slow = e / TILE;
            {
                const int rl = P::A_R_FAST ? fast : slow, ml = P::A_R_FAST ? slow : fast;
                const int m = m0 + ml, r = r0 + rl;
                As[rl][ml] = (m < M && r < R) ? p.a(m, r) : 0.0f;
            }
            {
                const int rl = P::B_R_FAST ? fast : slow, nl = P::B_R_FAST ? slow : fast;
                const int n = n0 + nl, r = r0 + rl;
                Bs[rl][nl] = (n < N && r < R) ? p.b(r, n) : 0.0f;
            }
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < TILE; ++k) {
            const float bv = Bs[k][tx];
#pragma unroll
            for (int i = 0; i < ROWS_PER_THREAD; ++i) acc[i] += As[k][ty + i * (THREADS / TILE)] * bv;
        }
        __syncthreads();  // the next iteration overwrites the tiles
    }
    const int n = n0 + tx;
    if (n >= N) return;
#pragma unroll
    for (int i = 0; i < ROWS_PER_THREAD; ++i) {
        const int m = m0 + ty + i * (THREADS / TILE);
        if (m < M) p.store(m, n, acc[i]);
    }
}

// Forward, image b = blockIdx.z: A = W (C x K), B = F_b (K x HW); cam = boost(acc + bias).
struct CamForward {
    static constexpr bool A_R_FAST = true, B_R_FAST = false;
    const float *w, *f, *bias;
    float* cam;
    int K, HW, C, img;
    float alpha;
    __device__ float a(int c, int k) const { return w[(size_t)c * K + k]; }
    __device__ float b(int k, int p) const { return f[((size_t)img * K + k) * HW + p]; }
    __device__ void store(int c, int p, float acc) const {
        float v = acc + bias[c];
        if (v > 0.0f) v *= alpha;
        cam[((size_t)img * C + c) * HW + p] = v;
    }
};

extern "C" __global__ void __launch_bounds__(THREADS) cam_head_forward_f32(const float* f, const float* w, const float* bias,
                                                                          float alpha, float* cam, int K, int HW, int C) {
    const CamForward p{w, f, bias, cam, K, HW, C, (int)blockIdx.z, alpha};
    tiled_gemm(p, C, HW, K);
}

// dcam[b, c, p] from the saved (boosted) cam: its sign is the pre-boost sign.
__device__ __forceinline__ float cam_dcam(const float* cam, const float* dlogits, float inv_hw, float alpha, int C,
                                          int HW, int b, int c, int p) {
    const float g = dlogits[b * C + c] * inv_hw;
    return cam[((size_t)b * C + c) * HW + p] > 0.0f ? g * alpha : g;
}

// dW (C x K) += dcam (C x B*HW) @ F^T (B*HW x K); r = b*HW + p.
struct CamBackwardW {
    static constexpr bool A_R_FAST = true, B_R_FAST = true;
    const float *f, *cam, *dlogits;
    float* dw;
    int K, HW, C;
    float inv_hw, alpha;
    __device__ float a(int c, int r) const {
        const int b = r / HW;
        return cam_dcam(cam, dlogits, inv_hw, alpha, C, HW, b, c, r - b * HW);
    }
    __device__ float b(int r, int k) const {
        const int bi = r / HW;
        return f[((size_t)bi * K + k) * HW + (r - bi * HW)];
    }
    __device__ void store(int c, int k, float acc) const { dw[(size_t)c * K + k] += acc; }
};

extern "C" __global__ void __launch_bounds__(THREADS) cam_head_backward_w_f32(const float* f, const float* cam,
                                                                             const float* dlogits, float alpha, float* dw,
                                                                             int B, int K, int HW, int C) {
    const CamBackwardW p{f, cam, dlogits, dw, K, HW, C, 1.0f / HW, alpha};
    tiled_gemm(p, C, K, B * HW);
}

// dF_b (K x HW) = W^T (K x C) @ dcam_b (C x HW), image b = blockIdx.z, overwritten.
struct CamBackwardF {
    static constexpr bool A_R_FAST = false, B_R_FAST = false;
    const float *w, *cam, *dlogits;
    float* df;
    int K, HW, C, img;
    float inv_hw, alpha;
    __device__ float a(int k, int c) const { return w[(size_t)c * K + k]; }
    __device__ float b(int c, int p) const { return cam_dcam(cam, dlogits, inv_hw, alpha, C, HW, img, c, p); }
    __device__ void store(int k, int p, float acc) const { df[((size_t)img * K + k) * HW + p] = acc; }
};

extern "C" __global__ void __launch_bounds__(THREADS) cam_head_backward_f_f32(const float* w, const float* cam,
                                                                             const float* dlogits, float alpha, float* df,
                                                                             int K, int HW, int C) {
    const CamBackwardF p{w, cam, dlogits, df, K, HW, C, (int)blockIdx.z, 1.0f / HW, alpha};
    tiled_gemm(p, K, HW, C);
}

// dbias[c] += sum over b (in order) of the f32 sum of dcam_b[c, :]; one warp per class.
extern "C" __global__ void cam_head_backward_bias_f32(const float* __restrict__ cam, const float* __restrict__ dlogits,
                                                      float alpha, float* __restrict__ dbias, int B, int HW, int C) {
    const int lane = threadIdx.x & 31;
    const int c = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (c >= C) return;  // whole warps
    const float inv_hw = 1.0f / HW;
    float total = dbias[c];
    for (int b = 0; b < B; ++b) {
        float s = 0.0f;
        for (int p = lane; p < HW; p += 32) s += cam_dcam(cam, dlogits, inv_hw, alpha, C, HW, b, c, p);
        total += warp_sum(s);
    }
    if (lane == 0) dbias[c] = total;
}

// logits (B, C) = pooled (B, K) @ W^T + bias: one warp per logit, lanes over K (coalesced).
extern "C" __global__ void linear_head_logits_f32(const float* __restrict__ pooled, const float* __restrict__ w,
                                                  const float* __restrict__ bias, float* __restrict__ logits, int B,
                                                  int K, int C) {
    const int lane = threadIdx.x & 31;
    const int o = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (o >= B * C) return;  // whole warps
    const int b = o / C, c = o - b * C;
    const float* pr = pooled + (size_t)b * K;
    const float* wr = w + (size_t)c * K;
    float s = 0.0f;
    for (int k = lane; k < K; k += 32) s += pr[k] * wr[k];
    s = warp_sum(s);
    if (lane == 0) logits[o] = s + bias[c];
}

// dW (C, K) += sum_b dlogits[b, c] * pooled[b, k]; the threads with k == 0 also do
// dbias[c] += sum_b dlogits[b, c] (in b order, as the CPU).
extern "C" __global__ void linear_head_backward_w_f32(const float* __restrict__ pooled, const float* __restrict__ dlogits,
                                                      float* __restrict__ dw, float* __restrict__ dbias, int B, int K,
                                                      int C) {
    const long long total = (long long)C * K;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(i / K), k = (int)(i - (long long)c * K);
        float s = 0.0f;
        for (int b = 0; b < B; ++b) s += dlogits[b * C + c] * pooled[(size_t)b * K + k];
        dw[i] += s;
        if (k == 0) {
            float db = dbias[c];
            for (int b = 0; b < B; ++b) db += dlogits[b * C + c];
            dbias[c] = db;
        }
    }
}

// dF (B, K, HW) = (dlogits @ W)[b, k] / HW broadcast, overwritten. Block (k-tile, b): the first
// warp computes the TILE dpooled values of channels k0.. into shared memory (lanes over k,
// coalesced reads of W), then the block writes the contiguous TILE*HW floats of dF.
extern "C" __global__ void linear_head_backward_f_f32(const float* __restrict__ w, const float* __restrict__ dlogits,
                                                      float* __restrict__ df, int K, int HW, int C) {
    __shared__ float dpooled[TILE];
    const int b = blockIdx.y, k0 = blockIdx.x * TILE;
    if (threadIdx.x < TILE) {
        const int k = k0 + threadIdx.x;
        float s = 0.0f;
        if (k < K)
            for (int c = 0; c < C; ++c) s += dlogits[b * C + c] * w[(size_t)c * K + k];
        dpooled[threadIdx.x] = s * (1.0f / HW);
    }
    __syncthreads();
    const int kn = min(TILE, K - k0);
    float* out = df + ((size_t)b * K + k0) * HW;
    for (int i = threadIdx.x; i < kn * HW; i += blockDim.x) out[i] = dpooled[i / HW];
}
