// Every element of a buffer set to one value, as a kernel rather than a memset: a graph capture
// (Gpu::capture) holds kernel launches only, and the training step zeroes its gradients and loss
// gradients inside its graph. The value is the element's bit pattern (4 or 2 bytes), so one
// kernel serves every dtype of that width. Memory-bound: 16-byte stores over the aligned bulk
// (device buffers are 256-byte aligned; a view into a flat buffer may not be), scalar for the
// unaligned head and the tail.
#include "common.cuh"

// pattern32: `value` repeated over 32 bits.
template <typename W>
__device__ void fill_words(W* __restrict__ p, long long n, W value, unsigned pattern32) {
    constexpr int per16 = 16 / sizeof(W);
    const long long tid = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    // Elements before the first 16-byte boundary.
    const long long mis = (long long)(((uintptr_t)p / sizeof(W)) % per16);
    const long long head = mis == 0 ? 0 : (per16 - mis < n ? per16 - mis : n);
    const long long n16 = (n - head) / per16;
    const uint4 v = make_uint4(pattern32, pattern32, pattern32, pattern32);
    uint4* body = reinterpret_cast<uint4*>(p + head);
    for (long long i = tid; i < n16; i += stride) body[i] = v;
    if (tid < head) p[tid] = value;
    for (long long i = head + n16 * per16 + tid; i < n; i += stride) p[i] = value;
}

// fill_b32: f32 / i32 (value: the 32-bit pattern); fill_b16: bf16 / f16 (value: the 16-bit
// pattern twice, as the host builds it, so the kernel needs no byte permute).
extern "C" __global__ void fill_b32(unsigned* __restrict__ p, long long n, unsigned value) {
    fill_words<unsigned>(p, n, value, value);
}
extern "C" __global__ void fill_b16(unsigned short* __restrict__ p, long long n, unsigned value) {
    fill_words<unsigned short>(p, n, (unsigned short)(value & 0xFFFFu), value);
}
