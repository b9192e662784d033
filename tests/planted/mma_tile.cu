// Planted bug (d): one warp computes d (16, 8) = a (16, 16) · w (8, 16)^T with one
// mma.sync.m16n8k16 bf16, loading its fragments straight from global memory (row-major a and
// w, f32 d). Fragment layout (PTX ISA, m16n8k16 .bf16), g = lane / 4, q = lane % 4:
//   a regs 0..3: (row g, k 2q..2q+1), (row g + 8, k 2q..), (row g, k 2q + 8..), (row g + 8, k 2q + 8..)
//   b regs 0..1: (k 2q..2q+1, col g), (k 2q + 8.., col g)
//   d 0..3:      (row g, col 2q), (row g, col 2q + 1), (row g + 8, col 2q), (row g + 8, col 2q + 1)
#include "planted.cuh"

template <bool WRONG_ROW>
__device__ void mma_tile(const __nv_bfloat16* __restrict__ a, const __nv_bfloat16* __restrict__ w,
                         float* __restrict__ d) {
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    // Two adjacent bf16 along k are one 32-bit register.
    const uint32_t* a2 = reinterpret_cast<const uint32_t*>(a);  // (16, 8) pairs
    const uint32_t* w2 = reinterpret_cast<const uint32_t*>(w);  // (8, 8) pairs
    const int hi = WRONG_ROW ? g : g + 8;  // FRAGMENT ROW
    uint32_t af[4] = {a2[g * 8 + q], a2[hi * 8 + q], a2[g * 8 + q + 4], a2[(g + 8) * 8 + q + 4]};
    uint32_t bf[2] = {w2[g * 8 + q], w2[g * 8 + q + 4]};
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_16816_bf16(acc, af, bf);
    d[g * 8 + 2 * q] = acc[0];
    d[g * 8 + 2 * q + 1] = acc[1];
    d[(g + 8) * 8 + 2 * q] = acc[2];
    d[(g + 8) * 8 + 2 * q + 1] = acc[3];
}

extern "C" __global__ void mma_tile_correct(const __nv_bfloat16* a, const __nv_bfloat16* w, float* d) {
    mma_tile<false>(a, w, d);
}
// BUG: the second A register loads row g again instead of row g + 8.
extern "C" __global__ void mma_tile_wrong_fragment(const __nv_bfloat16* a, const __nv_bfloat16* w, float* d) {
    mma_tile<true>(a, w, d);
}
