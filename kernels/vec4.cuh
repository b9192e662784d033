// Four consecutive elements of a storage type as one float4: one 16-byte (f32) or 8-byte
// (bf16/f16) memory access instead of four. The address must be aligned to 4 elements; device
// allocations are 256-byte aligned, so offsets that are multiples of 4 elements qualify.
#pragma once
#include "common.cuh"

struct __align__(8) lf_bf16x4 { __nv_bfloat162 lo, hi; };
struct __align__(8) lf_f16x4 { __half2 lo, hi; };

__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }

__device__ __forceinline__ float4 load4(const __nv_bfloat16* p) {
    const lf_bf16x4 v = *reinterpret_cast<const lf_bf16x4*>(p);
    const float2 a = __bfloat1622float2(v.lo), b = __bfloat1622float2(v.hi);
    return make_float4(a.x, a.y, b.x, b.y);
}

__device__ __forceinline__ float4 load4(const __half* p) {
    const lf_f16x4 v = *reinterpret_cast<const lf_f16x4*>(p);
    const float2 a = __half22float2(v.lo), b = __half22float2(v.hi);
    return make_float4(a.x, a.y, b.x, b.y);
}

__device__ __forceinline__ void store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }

__device__ __forceinline__ void store4(__nv_bfloat16* p, float4 v) {
    lf_bf16x4 s;
    s.lo = __floats2bfloat162_rn(v.x, v.y);
    s.hi = __floats2bfloat162_rn(v.z, v.w);
    *reinterpret_cast<lf_bf16x4*>(p) = s;
}

__device__ __forceinline__ void store4(__half* p, float4 v) {
    lf_f16x4 s;
    s.lo = __floats2half2_rn(v.x, v.y);
    s.hi = __floats2half2_rn(v.z, v.w);
    *reinterpret_cast<lf_f16x4*>(p) = s;
}
