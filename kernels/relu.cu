// ReLU in place and its backward: dy *= y > 0, y the ReLU's output, as torch's threshold_backward.
// Storage type T (f32, or bf16 for mixed-precision training), arithmetic in f32. Memory-bound:
// four elements per vector access (load4 / store4) over the first n/4*4 elements (device
// buffers are 256-byte aligned), scalar for the tail.
#include "common.cuh"
#include "vec4.cuh"

__device__ __forceinline__ float relu1(float v) { return fmaxf(v, 0.0f); }
// Matches `if v <= 0 { g = 0 }`: a NaN output keeps its gradient.
__device__ __forceinline__ float relu_grad1(float y, float g) { return y <= 0.0f ? 0.0f : g; }

template <typename T> __device__ void relu_inplace(T* __restrict__ x, long long n) {
    const long long n4 = n / 4, stride = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n4; i += stride) {
        float4 v = load4(x + 4 * i);
        v.x = relu1(v.x), v.y = relu1(v.y), v.z = relu1(v.z), v.w = relu1(v.w);
        store4(x + 4 * i, v);
    }
    for (long long i = n4 * 4 + blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride)
        x[i] = from_float<T>(relu1(to_float(x[i])));
}

template <typename T> __device__ void relu_backward_inplace(const T* __restrict__ y, T* __restrict__ dy, long long n) {
    const long long n4 = n / 4, stride = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n4; i += stride) {
        const float4 a = load4(y + 4 * i);
        float4 g = load4(dy + 4 * i);
        g.x = relu_grad1(a.x, g.x), g.y = relu_grad1(a.y, g.y), g.z = relu_grad1(a.z, g.z), g.w = relu_grad1(a.w, g.w);
        store4(dy + 4 * i, g);
    }
    for (long long i = n4 * 4 + blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride)
        dy[i] = from_float<T>(relu_grad1(to_float(y[i]), to_float(dy[i])));
}

// Entry points relu_inplace_{f32,bf16} and relu_backward_inplace_{f32,bf16}.
#define LF_RELU(S, T)                                                                                        \
    extern "C" __global__ void relu_inplace_##S(T* __restrict__ x, long long n) { relu_inplace<T>(x, n); }  \
    extern "C" __global__ void relu_backward_inplace_##S(const T* __restrict__ y, T* __restrict__ dy,         \
                                                         long long n) {                                       \
        relu_backward_inplace<T>(y, dy, n);                                                                   \
    }
LF_RELU(f32, float)
LF_RELU(bf16, __nv_bfloat16)
