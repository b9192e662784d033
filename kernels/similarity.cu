// CLIP's zero-shot head (src/ops/similarity.rs): row L2 normalisation, and the fused class
// probabilities softmax_c(scale * cos(img_b, txt_c)). Rows of zero norm stay as they are, like
// the CPU reference.
#include "common.cuh"

// One block per row of `cols`. x, y in T.
template <typename T>
__device__ void l2_normalize(const T* __restrict__ x, T* __restrict__ y, int cols) {
    __shared__ float scratch[32];
    const T* xr = x + (size_t)blockIdx.x * cols;
    T* yr = y + (size_t)blockIdx.x * cols;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = to_float(xr[i]);
        ss += v * v;
    }
    const float norm = sqrtf(block_sum(ss, scratch));
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = to_float(xr[i]);
        yr[i] = from_float<T>(norm > 0.0f ? v / norm : v);
    }
}

// One block per image row b (blockDim a multiple of 32), dynamic shared memory D floats.
// img (B, D), txt (C, D) in T; probs (B, C) f32. The normalised image row is staged in shared
// memory; each warp takes classes warp, warp + nwarps, ...: dot and squared norm of txt_c in
// one pass, logit = scale * dot / (|img| |txt_c|). The logits go to the block's own probs row,
// which then becomes their softmax.
template <typename T>
__device__ void class_probabilities(const T* __restrict__ img, const T* __restrict__ txt, float* __restrict__ probs,
                                    int C, int D, float scale) {
    extern __shared__ float img_n[];  // (D,)
    __shared__ float scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const T* ir = img + (size_t)blockIdx.x * D;
    float* pr = probs + (size_t)blockIdx.x * C;

    float ss = 0.0f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        const float v = to_float(ir[d]);
        img_n[d] = v;
        ss += v * v;
    }
    const float inorm = sqrtf(block_sum(ss, scratch));
    // Each thread rescales the entries it wrote; the barrier then publishes the whole row.
    if (inorm > 0.0f)
        for (int d = threadIdx.x; d < D; d += blockDim.x) img_n[d] /= inorm;
    __syncthreads();

    float mx = -INFINITY;
    for (int c = warp; c < C; c += nwarps) {
        const T* tr = txt + (size_t)c * D;
        float dot = 0.0f, tt = 0.0f;
        for (int d = lane; d < D; d += 32) {
            const float t = to_float(tr[d]);
            dot += img_n[d] * t;
            tt += t * t;
        }
        dot = warp_sum(dot);
        const float tnorm = sqrtf(warp_sum(tt));
        const float logit = scale * (tnorm > 0.0f ? dot / tnorm : dot);
        if (lane == 0) pr[c] = logit;
        mx = fmaxf(mx, logit);
    }
    // block_max starts with a barrier, which also makes the logits written above (global
    // memory, this block's row) visible to every thread of the block.
    mx = block_max(mx, scratch);
    float sum = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const float e = expf(pr[c] - mx);
        pr[c] = e;
        sum += e;
    }
    const float inv = 1.0f / block_sum(sum, scratch);
    for (int c = threadIdx.x; c < C; c += blockDim.x) pr[c] *= inv;  // entries this thread wrote
}

#define LF_SIMILARITY(S, T)                                                                               \
    extern "C" __global__ void l2_normalize_##S(const T* x, T* y, int cols) { l2_normalize<T>(x, y, cols); } \
    extern "C" __global__ void class_probabilities_##S(const T* img, const T* txt, float* probs, int C,   \
                                                       int D, float scale) {                              \
        class_probabilities<T>(img, txt, probs, C, D, scale);                                             \
    }
LF_FOR_FLOAT_TYPES(LF_SIMILARITY)
