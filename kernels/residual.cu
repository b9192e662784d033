// The residual add y += x, in storage type T (f32, or bf16 for mixed-precision training; the sum
// itself in f32, rounded once). Memory-bound: four elements per vector access (load4 / store4)
// over the first n/4*4 elements (device buffers are 256-byte aligned), scalar for the tail.
#include "common.cuh"
#include "vec4.cuh"

template <typename T> __device__ void add_inplace(T* __restrict__ y, const T* __restrict__ x, long long n) {
    const long long n4 = n / 4, stride = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n4; i += stride) {
        float4 a = load4(y + 4 * i);
        const float4 b = load4(x + 4 * i);
        a.x += b.x, a.y += b.y, a.z += b.z, a.w += b.w;
        store4(y + 4 * i, a);
    }
    for (long long i = n4 * 4 + blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride)
        y[i] = from_float<T>(to_float(y[i]) + to_float(x[i]));
}

#define LF_ADD_INPLACE(S, T)                                                                               \
    extern "C" __global__ void add_inplace_##S(T* __restrict__ y, const T* __restrict__ x, long long n) { \
        add_inplace<T>(y, x, n);                                                                           \
    }
LF_ADD_INPLACE(f32, float)
LF_ADD_INPLACE(bf16, __nv_bfloat16)
