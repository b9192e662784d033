// softmax(scale * x) over the last dimension, max-subtracted like torch and the CPU reference
// (src/ops/softmax.rs). One block per row; the row is read three times (max, sum, write),
// from L1/L2 after the first. x, y in T, arithmetic in f32.
#include "common.cuh"

template <typename T>
__device__ void softmax_forward(const T* __restrict__ x, T* __restrict__ y, int cols, float scale) {
    __shared__ float scratch[32];
    const T* xr = x + (size_t)blockIdx.x * cols;
    T* yr = y + (size_t)blockIdx.x * cols;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) mx = fmaxf(mx, to_float(xr[i]) * scale);
    mx = block_max(mx, scratch);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) sum += expf(to_float(xr[i]) * scale - mx);
    const float inv = 1.0f / block_sum(sum, scratch);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) yr[i] = from_float<T>(expf(to_float(xr[i]) * scale - mx) * inv);
}

#define LF_SOFTMAX(S, T)                                                                         \
    extern "C" __global__ void softmax_forward_##S(const T* x, T* y, int cols, float scale) { \
        softmax_forward<T>(x, y, cols, scale);                                                   \
    }
LF_FOR_FLOAT_TYPES(LF_SOFTMAX)
