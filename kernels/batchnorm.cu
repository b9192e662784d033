// 2-D batch norm (NCHW; x, y, dy, dx in f32 or bf16, everything else f32) for training: torch.nn.BatchNorm2d's training forward (batch
// statistics, biased variance; running statistics moved towards the mean and the UNBIASED
// variance), its eval forward (running statistics) and its backward (dx, dgamma, dbeta).
//
// A channel holds N = B*HW values, up to 64*112*112 = 802816: one block per channel would leave
// most SMs idle on the stem (C = 64), so the reductions are split in two stages. Stage 1: block
// (c, s) reduces chunk s of channel c (elements [s*chunk, min((s+1)*chunk, N)) of the channel's
// flattened (B, HW)) and writes partials to a workspace. Stage 2: one thread per channel
// combines the S partials in f64, in order (deterministic). The elementwise pass is a third
// launch over all of x.
//
// Mixed precision (bf16 training): the activations x / y / dy / dx are read and written in their
// storage type T, every statistic, partial, parameter and gradient of gamma / beta stays f32, and
// all arithmetic is f32 (each T value is widened once on load). One template per kernel, an
// extern "C" entry per storage type (LF_BN_TYPES below).
//
// Statistics partials are (count, mean, M2) with the chunk's own mean (two passes over the chunk,
// the second from L1/L2), combined with Chan's formula: no cancellation for large means.
#include "common.cuh"

// Element j of channel c's flattened (B, HW): x[(b*C + c)*HW + i] with j = b*HW + i.
__device__ __forceinline__ size_t bn_index(int j, int c, int C, int HW) {
    const int b = j / HW;
    return ((size_t)b * C + c) * HW + (j - b * HW);
}

// The storage types the elementwise-facing kernels are instantiated for: f32 (the reference
// path) and bf16 (mixed-precision training).
#define LF_BN_TYPES(M) M(f32, float) M(bf16, __nv_bfloat16)

// grid (C, S); partial (C, S, 3) = (count, mean, M2) of each chunk.
template <typename T>
__device__ void batchnorm_partial_stats(const T* __restrict__ x, int C, int HW, int N, int chunk,
                                        float* __restrict__ partial) {
    __shared__ float scratch[32];
    const int c = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    const int lo = s * chunk;
    const int hi = min(lo + chunk, N);
    const int count = max(hi - lo, 0);
    float sum = 0.0f;
    for (int j = lo + threadIdx.x; j < hi; j += blockDim.x) sum += to_float(x[bn_index(j, c, C, HW)]);
    const float mean = count > 0 ? block_sum(sum, scratch) / count : 0.0f;
    float m2 = 0.0f;
    for (int j = lo + threadIdx.x; j < hi; j += blockDim.x) {
        const float d = to_float(x[bn_index(j, c, C, HW)]) - mean;
        m2 += d * d;
    }
    m2 = block_sum(m2, scratch);  // every thread calls it (count is uniform over the block)
    if (threadIdx.x == 0) {
        float* p = partial + ((size_t)c * S + s) * 3;
        p[0] = (float)count;
        p[1] = mean;
        p[2] = m2;
    }
}

#define LF_BN_PARTIAL_STATS(S, T)                                                                           \
    extern "C" __global__ void batchnorm_partial_stats_##S(const T* __restrict__ x, int C, int HW, int N,   \
                                                           int chunk, float* __restrict__ partial) {        \
        batchnorm_partial_stats<T>(x, C, HW, N, chunk, partial);                                            \
    }
LF_BN_TYPES(LF_BN_PARTIAL_STATS)

// One thread per channel: Chan's combination of the S partials in f64; writes mean, rstd (saved
// for the backward) and updates the running statistics as batch_norm_train_cpu does (the
// variance made unbiased in f64, the update itself in f32).
extern "C" __global__ void batchnorm_finalize_stats_f32(const float* __restrict__ partial, int C, int S,
                                                        float momentum, float eps, float* __restrict__ mean,
                                                        float* __restrict__ rstd, float* __restrict__ running_mean,
                                                        float* __restrict__ running_var) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double n = 0.0, m = 0.0, m2 = 0.0;
    for (int s = 0; s < S; ++s) {
        const float* p = partial + ((size_t)c * S + s) * 3;
        const double nb = p[0];
        if (nb == 0.0) continue;
        const double mb = p[1], m2b = p[2];
        const double nt = n + nb;
        const double delta = mb - m;
        m += delta * nb / nt;
        m2 += m2b + delta * delta * n * nb / nt;
        n = nt;
    }
    const double var = n > 0.0 ? m2 / n : 0.0;
    mean[c] = (float)m;
    rstd[c] = (float)(1.0 / sqrt(var + (double)eps));
    const double unbiased = n > 1.0 ? var * n / (n - 1.0) : var;
    running_mean[c] = (1.0f - momentum) * running_mean[c] + momentum * (float)m;
    running_var[c] = (1.0f - momentum) * running_var[c] + momentum * (float)unbiased;
}

// y = (x - mean) * (rstd * gamma) + beta over all of x (B, C, HW); one thread per element.
template <typename T>
__device__ void batchnorm_apply(const T* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
                                const float* __restrict__ mean, const float* __restrict__ rstd, T* __restrict__ y, int C,
                                int HW, long long total) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const int c = (int)((i / HW) % C);
        y[i] = from_float<T>((to_float(x[i]) - mean[c]) * (rstd[c] * gamma[c]) + beta[c]);
    }
}

// Eval: as batchnorm_apply with rstd = 1 / sqrt(running_var + eps).
template <typename T>
__device__ void batchnorm_eval(const T* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
                               const float* __restrict__ running_mean, const float* __restrict__ running_var, float eps,
                               T* __restrict__ y, int C, int HW, long long total) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const int c = (int)((i / HW) % C);
        const float r = 1.0f / sqrtf(running_var[c] + eps);
        y[i] = from_float<T>((to_float(x[i]) - running_mean[c]) * (r * gamma[c]) + beta[c]);
    }
}

#define LF_BN_APPLY(S, T)                                                                                       \
    extern "C" __global__ void batchnorm_apply_##S(const T* __restrict__ x, const float* __restrict__ gamma,     \
                                                   const float* __restrict__ beta, const float* __restrict__ mean, \
                                                   const float* __restrict__ rstd, T* __restrict__ y, int C,     \
                                                   int HW, long long total) {                                   \
        batchnorm_apply<T>(x, gamma, beta, mean, rstd, y, C, HW, total);                                        \
    }                                                                                                           \
    extern "C" __global__ void batchnorm_eval_##S(const T* __restrict__ x, const float* __restrict__ gamma,      \
                                                  const float* __restrict__ beta,                               \
                                                  const float* __restrict__ running_mean,                       \
                                                  const float* __restrict__ running_var, float eps,             \
                                                  T* __restrict__ y, int C, int HW, long long total) {          \
        batchnorm_eval<T>(x, gamma, beta, running_mean, running_var, eps, y, C, HW, total);                    \
    }
LF_BN_TYPES(LF_BN_APPLY)

// Backward stage 1, grid (C, S): partial (C, S, 2) = (sum dy, sum dy * xhat) of each chunk, with
// xhat = (x - mean) * rstd in f32 as the CPU.
template <typename T>
__device__ void batchnorm_backward_partial(const T* __restrict__ x, const T* __restrict__ dy,
                                           const float* __restrict__ mean, const float* __restrict__ rstd, int C, int HW,
                                           int N, int chunk, float* __restrict__ partial) {
    __shared__ float scratch[32];
    const int c = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    const int lo = s * chunk;
    const int hi = min(lo + chunk, N);
    const float m = mean[c], r = rstd[c];
    float sdy = 0.0f, sdyx = 0.0f;
    for (int j = lo + threadIdx.x; j < hi; j += blockDim.x) {
        const size_t k = bn_index(j, c, C, HW);
        const float g = to_float(dy[k]);
        sdy += g;
        sdyx += g * ((to_float(x[k]) - m) * r);
    }
    sdy = block_sum(sdy, scratch);
    sdyx = block_sum(sdyx, scratch);
    if (threadIdx.x == 0) {
        float* p = partial + ((size_t)c * S + s) * 2;
        p[0] = sdy;
        p[1] = sdyx;
    }
}

#define LF_BN_BACKWARD_PARTIAL(S, T)                                                                            \
    extern "C" __global__ void batchnorm_backward_partial_##S(const T* __restrict__ x, const T* __restrict__ dy, \
                                                              const float* __restrict__ mean,                    \
                                                              const float* __restrict__ rstd, int C, int HW,     \
                                                              int N, int chunk, float* __restrict__ partial) {   \
        batchnorm_backward_partial<T>(x, dy, mean, rstd, C, HW, N, chunk, partial);                             \
    }
LF_BN_TYPES(LF_BN_BACKWARD_PARTIAL)

// Backward stage 2, one thread per channel: sums the partials in f64, in order; dbeta, dgamma
// accumulated; sums (C, 2) = the means (sum dy / N, sum dy*xhat / N) for the dx pass.
extern "C" __global__ void batchnorm_backward_finalize_f32(const float* __restrict__ partial, int C, int S, int N,
                                                           float* __restrict__ dgamma, float* __restrict__ dbeta,
                                                           float* __restrict__ means) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double sdy = 0.0, sdyx = 0.0;
    for (int s = 0; s < S; ++s) {
        const float* p = partial + ((size_t)c * S + s) * 2;
        sdy += p[0];
        sdyx += p[1];
    }
    dbeta[c] += (float)sdy;
    dgamma[c] += (float)sdyx;
    // The CPU divides the f64 sums by N as an f32 widened to f64.
    const double n = (double)(float)N;
    means[2 * c] = (float)(sdy / n);
    means[2 * c + 1] = (float)(sdyx / n);
}

// Backward stage 3: dx = gamma*rstd * (dy - mean(dy) - xhat * mean(dy*xhat)), overwritten.
template <typename T>
__device__ void batchnorm_backward_dx(const T* __restrict__ x, const T* __restrict__ dy, const float* __restrict__ gamma,
                                      const float* __restrict__ mean, const float* __restrict__ rstd,
                                      const float* __restrict__ means, T* __restrict__ dx, int C, int HW, long long total) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const int c = (int)((i / HW) % C);
        const float r = rstd[c];
        const float k = gamma[c] * r;
        dx[i] = from_float<T>(k * (to_float(dy[i]) - means[2 * c] - (to_float(x[i]) - mean[c]) * r * means[2 * c + 1]));
    }
}

#define LF_BN_BACKWARD_DX(S, T)                                                                                  \
    extern "C" __global__ void batchnorm_backward_dx_##S(const T* __restrict__ x, const T* __restrict__ dy,       \
                                                         const float* __restrict__ gamma,                         \
                                                         const float* __restrict__ mean,                          \
                                                         const float* __restrict__ rstd,                          \
                                                         const float* __restrict__ means, T* __restrict__ dx,     \
                                                         int C, int HW, long long total) {                        \
        batchnorm_backward_dx<T>(x, dy, gamma, mean, rstd, means, dx, C, HW, total);                             \
    }
LF_BN_TYPES(LF_BN_BACKWARD_DX)

// ---- Channels-last (NHWC) statistics ----
//
// x (B, H, W, C) is a (N = B*H*W rows, C) matrix with the channel fastest: the NCHW kernels'
// one-block-per-channel walk would stride by C. Here a block is a 32-channel x 8-row-lane tile
// (blockDim (32, 8)): lane x reads channel c0 + x, so a warp reads 32 consecutive channels of one
// row (64 contiguous bytes in bf16, 128 in f32), and the 8 row lanes of the block walk rows
// lo + y, lo + y + 8, ... of the block's chunk. The 8 row-lane partials of a channel are combined
// in shared memory, in order (deterministic, no atomics), and written to the same (C, S, 3) /
// (C, S, 2) partial layout as the NCHW kernels: batchnorm_finalize_stats_f32 and
// batchnorm_backward_finalize_f32 combine them unchanged, and the elementwise passes are the NCHW
// ones with HW = 1 (channel = index mod C), so the NHWC contracts are the NCHW ones exactly.

#define LF_BN_ROW_LANES 8

// Sum over the block's row lanes of v, for this thread's channel; every thread gets the total.
// red holds (8, 32) floats; the lanes are added in lane order.
__device__ __forceinline__ float bn_rows_sum(float v, float* red) {
    red[threadIdx.y * 32 + threadIdx.x] = v;
    __syncthreads();
    float t = 0.0f;
    for (int r = 0; r < LF_BN_ROW_LANES; ++r) t += red[r * 32 + threadIdx.x];
    __syncthreads();  // red is reused by the next call
    return t;
}

// grid (ceil(C / 32), S), block (32, 8): partial (C, S, 3) = (count, mean, M2) of rows
// [s*chunk, min((s+1)*chunk, N)) for each channel.
template <typename T>
__device__ void batchnorm_partial_stats_nhwc(const T* __restrict__ x, int C, int N, int chunk,
                                             float* __restrict__ partial) {
    __shared__ float red[LF_BN_ROW_LANES * 32];
    const int c = blockIdx.x * 32 + threadIdx.x, s = blockIdx.y, S = gridDim.y;
    const bool live = c < C;  // a dead lane still takes part in the block's __syncthreads
    const int lo = s * chunk;
    const int hi = min(lo + chunk, N);
    const int count = max(hi - lo, 0);
    float sum = 0.0f;
    if (live)
        for (int j = lo + threadIdx.y; j < hi; j += LF_BN_ROW_LANES) sum += to_float(x[(size_t)j * C + c]);
    const float mean = count > 0 ? bn_rows_sum(sum, red) / count : 0.0f;
    float m2 = 0.0f;
    if (live)
        for (int j = lo + threadIdx.y; j < hi; j += LF_BN_ROW_LANES) {
            const float d = to_float(x[(size_t)j * C + c]) - mean;
            m2 += d * d;
        }
    m2 = bn_rows_sum(m2, red);
    if (live && threadIdx.y == 0) {
        float* p = partial + ((size_t)c * S + s) * 3;
        p[0] = (float)count;
        p[1] = mean;
        p[2] = m2;
    }
}

// grid (ceil(C / 32), S), block (32, 8): partial (C, S, 2) = (sum dy, sum dy * xhat) of each
// chunk of rows, xhat = (x - mean) * rstd in f32 as the CPU.
template <typename T>
__device__ void batchnorm_backward_partial_nhwc(const T* __restrict__ x, const T* __restrict__ dy,
                                                const float* __restrict__ mean, const float* __restrict__ rstd, int C,
                                                int N, int chunk, float* __restrict__ partial) {
    __shared__ float red[LF_BN_ROW_LANES * 32];
    const int c = blockIdx.x * 32 + threadIdx.x, s = blockIdx.y, S = gridDim.y;
    const bool live = c < C;
    const int lo = s * chunk;
    const int hi = min(lo + chunk, N);
    float sdy = 0.0f, sdyx = 0.0f;
    if (live) {
        const float m = mean[c], r = rstd[c];
        for (int j = lo + threadIdx.y; j < hi; j += LF_BN_ROW_LANES) {
            const size_t k = (size_t)j * C + c;
            const float g = to_float(dy[k]);
            sdy += g;
            sdyx += g * ((to_float(x[k]) - m) * r);
        }
    }
    sdy = bn_rows_sum(sdy, red);
    sdyx = bn_rows_sum(sdyx, red);
    if (live && threadIdx.y == 0) {
        float* p = partial + ((size_t)c * S + s) * 2;
        p[0] = sdy;
        p[1] = sdyx;
    }
}

#define LF_BN_NHWC(S, T)                                                                                         \
    extern "C" __global__ void batchnorm_partial_stats_nhwc_##S(const T* __restrict__ x, int C, int N, int chunk, \
                                                                float* __restrict__ partial) {                    \
        batchnorm_partial_stats_nhwc<T>(x, C, N, chunk, partial);                                                 \
    }                                                                                                             \
    extern "C" __global__ void batchnorm_backward_partial_nhwc_##S(                                               \
        const T* __restrict__ x, const T* __restrict__ dy, const float* __restrict__ mean,                        \
        const float* __restrict__ rstd, int C, int N, int chunk, float* __restrict__ partial) {                   \
        batchnorm_backward_partial_nhwc<T>(x, dy, mean, rstd, C, N, chunk, partial);                              \
    }
LF_BN_TYPES(LF_BN_NHWC)
