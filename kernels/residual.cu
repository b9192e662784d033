// The residual add y += x (f32). Memory-bound: float4 loads and stores over the first n/4*4
// elements (device buffers are 256-byte aligned), scalar for the tail.
#include "common.cuh"

extern "C" __global__ void add_inplace_f32(float* __restrict__ y, const float* __restrict__ x, long long n) {
    const long long n4 = n / 4, stride = (long long)gridDim.x * blockDim.x;
    float4* y4 = reinterpret_cast<float4*>(y);
    const float4* x4 = reinterpret_cast<const float4*>(x);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n4; i += stride) {
        float4 a = y4[i];
        const float4 b = x4[i];
        a.x += b.x, a.y += b.y, a.z += b.z, a.w += b.w;
        y4[i] = a;
    }
    for (long long i = n4 * 4 + blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride) y[i] += x[i];
}
