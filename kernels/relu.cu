// ReLU in place and its backward (f32): dy *= y > 0, y the ReLU's output, as torch's
// threshold_backward. Memory-bound: float4 loads and stores over the first n/4*4 elements
// (device buffers are 256-byte aligned), scalar for the tail.
#include "common.cuh"

__device__ __forceinline__ float relu1(float v) { return fmaxf(v, 0.0f); }
// Matches `if v <= 0 { g = 0 }`: a NaN output keeps its gradient.
__device__ __forceinline__ float relu_grad1(float y, float g) { return y <= 0.0f ? 0.0f : g; }

extern "C" __global__ void relu_inplace_f32(float* __restrict__ x, long long n) {
    const long long n4 = n / 4, stride = (long long)gridDim.x * blockDim.x;
    float4* x4 = reinterpret_cast<float4*>(x);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n4; i += stride) {
        float4 v = x4[i];
        v.x = relu1(v.x), v.y = relu1(v.y), v.z = relu1(v.z), v.w = relu1(v.w);
        x4[i] = v;
    }
    for (long long i = n4 * 4 + blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride) x[i] = relu1(x[i]);
}

extern "C" __global__ void relu_backward_inplace_f32(const float* __restrict__ y, float* __restrict__ dy, long long n) {
    const long long n4 = n / 4, stride = (long long)gridDim.x * blockDim.x;
    const float4* y4 = reinterpret_cast<const float4*>(y);
    float4* d4 = reinterpret_cast<float4*>(dy);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n4; i += stride) {
        const float4 a = y4[i];
        float4 g = d4[i];
        g.x = relu_grad1(a.x, g.x), g.y = relu_grad1(a.y, g.y), g.z = relu_grad1(a.z, g.z), g.w = relu_grad1(a.w, g.w);
        d4[i] = g;
    }
    for (long long i = n4 * 4 + blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride)
        dy[i] = relu_grad1(y[i], dy[i]);
}
