// Elementwise activations (src/ops/activation.rs): QuickGELU x * sigmoid(1.702 x) and exact GELU
// 0.5 x (1 + erf(x / sqrt 2)). Four elements per thread through one vector access (device
// buffers are 256-byte aligned, so every 4-element group is), then a scalar tail.
#include "common.cuh"
#include "vec4.cuh"

// Matches crate::ops::activation::Activation (the launcher passes these codes).
constexpr int ACT_QUICK_GELU = 0;
constexpr int ACT_GELU = 1;

__device__ __forceinline__ float activate(float x, int act) {
    if (act == ACT_GELU) return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    return x / (1.0f + expf(-1.702f * x));
}

// Grid-stride over n / 4 vectors, then the n % 4 tail elements.
template <typename T>
__device__ void activation_forward(const T* __restrict__ x, T* __restrict__ y, int n, int act) {
    const int stride = gridDim.x * blockDim.x;
    const int tid = blockIdx.x * blockDim.x + threadIdx.x;
    const int n4 = n / 4;
    for (int v = tid; v < n4; v += stride) {
        const float4 a = load4(x + 4 * (size_t)v);
        store4(y + 4 * (size_t)v, make_float4(activate(a.x, act), activate(a.y, act), activate(a.z, act), activate(a.w, act)));
    }
    for (int i = 4 * n4 + tid; i < n; i += stride) y[i] = from_float<T>(activate(to_float(x[i]), act));
}

#define LF_ACTIVATION(S, T)                                                                     \
    extern "C" __global__ void activation_forward_##S(const T* x, T* y, int n, int act) { \
        activation_forward<T>(x, y, n, act);                                                    \
    }
LF_FOR_FLOAT_TYPES(LF_ACTIVATION)
