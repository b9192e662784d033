// LayerNorm over the last dimension (torch.nn.LayerNorm, biased variance).
// One block per row; the row is read once into registers-by-stride, mean and variance come from
// two block reductions (two-pass, like the CPU reference, so long rows of large values keep
// their precision). x, y in T; gamma, beta in f32 (they are tiny and stay exact).
#include "common.cuh"

template <typename T>
__device__ void layernorm_forward(const T* __restrict__ x, const float* __restrict__ gamma,
                                  const float* __restrict__ beta, T* __restrict__ y, int C, float eps) {
    __shared__ float scratch[32];
    const T* xr = x + (size_t)blockIdx.x * C;
    T* yr = y + (size_t)blockIdx.x * C;
    float s = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) s += to_float(xr[i]);
    const float mean = block_sum(s, scratch) / C;
    float v = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) {
        const float d = to_float(xr[i]) - mean;
        v += d * d;
    }
    const float rstd = rsqrtf(block_sum(v, scratch) / C + eps);
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        yr[i] = from_float<T>((to_float(xr[i]) - mean) * rstd * gamma[i] + beta[i]);
}

#define LF_LAYERNORM(S, T)                                                                          \
    extern "C" __global__ void layernorm_forward_##S(const T* x, const float* gamma, const float* beta, \
                                                     T* y, int C, float eps) {                       \
        layernorm_forward<T>(x, gamma, beta, y, C, eps);                                            \
    }
LF_FOR_FLOAT_TYPES(LF_LAYERNORM)
