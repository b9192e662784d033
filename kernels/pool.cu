// Pooling for ModifiedResNet: average pooling (kernel = stride, its anti-aliased downsampling)
// and the token matrix of its attention pool (mean token, then the grid channels-last, plus
// the positional embedding).
#include "common.cuh"

// y (BC, H/k, W/k) = mean over k x k windows of x (BC, H, W) (nn.AvgPool2d(k), floor mode).
// One thread per output; consecutive threads take consecutive output columns. Sums in the CPU
// reference's order (each window row, then the rows), in f32.
template <typename T>
__device__ void avg_pool2d(const T* __restrict__ x, T* __restrict__ y, long long total, int H, int W, int k) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const int Ho = H / k, Wo = W / k;
    const long long plane = idx / ((long long)Ho * Wo);
    const int p = (int)(idx - plane * Ho * Wo);
    const int oy = p / Wo, ox = p - oy * Wo;
    const T* xp = x + (size_t)plane * H * W + (size_t)(oy * k) * W + ox * k;
    float s = 0.0f;
    for (int ky = 0; ky < k; ++ky) {
        float row = 0.0f;
        for (int kx = 0; kx < k; ++kx) row += to_float(xp[(size_t)ky * W + kx]);
        s += row;
    }
    y[idx] = from_float<T>(s * (1.0f / (float)(k * k)));
}

#define LF_AVG_POOL(S, T)                                                                                  \
    extern "C" __global__ void avg_pool2d_##S(const T* x, T* y, long long total, int H, int W, int k) { \
        avg_pool2d<T>(x, y, total, H, W, k);                                                             \
    }
LF_FOR_FLOAT_TYPES(LF_AVG_POOL)

// tokens (B, 1 + HW, C) from x (B, C, HW) and pos (1 + HW, C) f32:
//   tokens[b, 0, c]     = mean_p x[b, c, p] + pos[0, c]
//   tokens[b, 1 + p, c] = x[b, c, p] + pos[1 + p, c]
// Grid (ceil(C / 32), B), block (32, 8). A block transposes 32 channels x 32 pixels at a time
// through shared memory (reads coalesced along pixels, writes along channels) and keeps each
// channel's running sum for the mean token.
constexpr int AP_TILE = 32, AP_ROWS = 8;

template <typename T>
__device__ void attnpool_tokens(const T* __restrict__ x, const float* __restrict__ pos, T* __restrict__ tokens, int C,
                                int HW) {
    __shared__ float tile[AP_TILE][AP_TILE + 1];  // (channel, pixel); +1: conflict-free transpose
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int b = blockIdx.y, c0 = blockIdx.x * AP_TILE;
    const int T_ = HW + 1;
    const T* xb = x + (size_t)b * C * HW;
    T* tb = tokens + (size_t)b * T_ * C;
    float sum[AP_TILE / AP_ROWS];  // channel c0 + ty + 8 r, this thread's pixels
#pragma unroll
    for (int r = 0; r < AP_TILE / AP_ROWS; ++r) sum[r] = 0.0f;

    for (int p0 = 0; p0 < HW; p0 += AP_TILE) {
#pragma unroll
        for (int r = 0; r < AP_TILE / AP_ROWS; ++r) {
            const int cl = ty + AP_ROWS * r, c = c0 + cl, p = p0 + tx;
            const float v = (c < C && p < HW) ? to_float(xb[(size_t)c * HW + p]) : 0.0f;
            tile[cl][tx] = v;
            sum[r] += v;
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < AP_TILE / AP_ROWS; ++r) {
            const int pl = ty + AP_ROWS * r, p = p0 + pl, c = c0 + tx;
            if (c < C && p < HW) tb[(size_t)(1 + p) * C + c] = from_float<T>(tile[tx][pl] + pos[(size_t)(1 + p) * C + c]);
        }
        __syncthreads();  // the next chunk overwrites the tile
    }
    // Row ty of the block is one warp (blockDim.x = 32): its lanes hold pixel-partial sums of
    // the same channels.
#pragma unroll
    for (int r = 0; r < AP_TILE / AP_ROWS; ++r) {
        const float total = warp_sum(sum[r]);
        const int c = c0 + ty + AP_ROWS * r;
        if (tx == 0 && c < C) tb[c] = from_float<T>(total / (float)HW + pos[c]);
    }
}

#define LF_ATTNPOOL_TOKENS(S, T)                                                                              \
    extern "C" __global__ void __launch_bounds__(AP_TILE * AP_ROWS)                                         \
        attnpool_tokens_##S(const T* x, const float* pos, T* tokens, int C, int HW) {                       \
        attnpool_tokens<T>(x, pos, tokens, C, HW);                                                          \
    }
LF_FOR_FLOAT_TYPES(LF_ATTNPOOL_TOKENS)
