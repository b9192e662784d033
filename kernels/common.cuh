// Shared helpers for labelfree's kernels: element-type conversion, warp and block reductions.
// Every kernel file includes this; it holds no kernels itself (build.rs compiles only *.cu).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// Loads and stores in the storage type T, arithmetic in float.
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block; every thread gets the result. `scratch` holds 32 floats. blockDim.x must
// be a multiple of 32.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

// Instantiates an extern "C" entry point per storage type from a templated kernel body:
//   LF_FOR_FLOAT_TYPES(MACRO) expands MACRO(f32, float), MACRO(bf16, __nv_bfloat16), MACRO(f16, __half)
#define LF_FOR_FLOAT_TYPES(M) M(f32, float) M(bf16, __nv_bfloat16) M(f16, __half)

// Bilinear source taps (align_corners=False, no antialias) of output index o along an axis
// n_in -> n_out, exactly as ops::interpolate::bilinear_resize_cpu computes them in f32:
// src = max((o + 0.5) * (n_in / n_out) - 0.5, 0) with every operation rounded on its own (no
// contraction), i0 = min(floor(src), n_in - 1), i1 = min(i0 + 1, n_in - 1), frac = src - i0.
__device__ __forceinline__ void bilinear_taps_exact(int o, int n_in, int n_out, int& i0, int& i1, float& frac) {
    const float scale = __fdiv_rn((float)n_in, (float)n_out);
    const float src = fmaxf(__fsub_rn(__fmul_rn(__fadd_rn((float)o, 0.5f), scale), 0.5f), 0.0f);
    i0 = min((int)floorf(src), n_in - 1);
    i1 = min(i0 + 1, n_in - 1);
    frac = __fsub_rn(src, (float)i0);
}

// a * (1 - t) + b * t rounded as the CPU reference (two products, one sum; no FMA).
__device__ __forceinline__ float lerp_exact(float a, float b, float t) {
    return __fadd_rn(__fmul_rn(a, __fsub_rn(1.0f, t)), __fmul_rn(b, t));
}
