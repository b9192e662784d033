// Casts between storage types for mixed-precision training (src/ops/cast.rs):
//   cast_{f32_bf16, bf16_f32}: y = x elementwise, rounded to nearest even when narrowing.
//   cast_segments_f32_bf16: many (source offset, destination offset, length) runs of one f32
//     buffer into one bf16 buffer in a single launch: the per-step bf16 copy of a network's
//     convolution weights, each run placed where the bf16 kernels want it (16-byte aligned).
#include "common.cuh"
#include "vec4.cuh"

// Four elements per vector access over the first n/4*4 (device buffers are 256-byte aligned),
// then the scalar tail.
template <typename S, typename D> __device__ void cast(const S* __restrict__ x, D* __restrict__ y, long long n) {
    const long long n4 = n / 4, stride = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n4; i += stride)
        store4(y + 4 * i, load4(x + 4 * i));
    for (long long i = n4 * 4 + blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += stride)
        y[i] = from_float<D>(to_float(x[i]));
}

extern "C" __global__ void cast_f32_bf16(const float* __restrict__ x, __nv_bfloat16* __restrict__ y, long long n) {
    cast(x, y, n);
}

extern "C" __global__ void cast_bf16_f32(const __nv_bfloat16* __restrict__ x, float* __restrict__ y, long long n) {
    cast(x, y, n);
}

// Grid (blocks, segments): blockIdx.y is the run, table[3 * run ..] = (src, dst, len) in
// elements; the x blocks stride over the run. Scalar accesses: the runs start anywhere in src.
extern "C" __global__ void cast_segments_f32_bf16(const float* __restrict__ src, __nv_bfloat16* __restrict__ dst,
                                                  const int* __restrict__ table) {
    const int* run = table + 3 * blockIdx.y;
    const long long s = run[0], d = run[1], len = run[2];
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < len; i += (long long)gridDim.x * blockDim.x)
        dst[d + i] = __float2bfloat16(src[s + i]);
}
