// Planted bug (c): a double-buffered cp.async pipeline, in -> shared -> out, whose wait is too
// shallow. One block of 256 threads walks `tiles` tiles of (32, 32) f32; tile t + 1 is in flight
// while tile t is copied out. Each thread copies one 16-byte chunk in and reads other threads'
// chunks out (a column walk), so the barrier after the wait matters too.
#include "planted.cuh"

#define TILE_ROWS 32
#define TILE_COLS 32  // 128 bytes a row: 8 chunks of 16 bytes; 32 x 8 = 256 chunks, one a thread

__device__ __forceinline__ void issue_tile(float (*stage)[TILE_COLS], const float* __restrict__ in, int t) {
    const int r = threadIdx.x / 8, c = (threadIdx.x % 8) * 4;
    cp_async_16(smem_u32(&stage[r][c]), in + ((size_t)t * TILE_ROWS + r) * TILE_COLS + c);
}

// WAIT: the groups left in flight by the wait. Two groups are committed before it (tile t and
// tile t + 1), so 1 retires tile t; 2 retires nothing.
template <int WAIT>
__device__ void tile_copy(const float* __restrict__ in, float* __restrict__ out, int tiles) {
    __shared__ __align__(16) float stage[2][TILE_ROWS][TILE_COLS];
    issue_tile(stage[0], in, 0);
    cp_async_commit();
    for (int t = 0; t < tiles; ++t) {
        if (t + 1 < tiles) issue_tile(stage[(t + 1) % 2], in, t + 1);
        cp_async_commit();  // an empty group on the last tile keeps the count of groups the same
        cp_async_wait<WAIT>();
        __syncthreads();
        for (int e = threadIdx.x; e < TILE_ROWS * TILE_COLS; e += blockDim.x) {
            const int r = e % TILE_ROWS, c = e / TILE_ROWS;
            out[((size_t)t * TILE_ROWS + r) * TILE_COLS + c] = stage[t % 2][r][c];  // TILE READ
        }
        __syncthreads();  // stage t % 2 is refilled with tile t + 2 in the next iteration
    }
    cp_async_wait<0>();
}

extern "C" __global__ void tile_copy_correct(const float* in, float* out, int tiles) { tile_copy<1>(in, out, tiles); }
// BUG: wait_group 2 with two groups in flight retires none of them.
extern "C" __global__ void tile_copy_shallow_wait(const float* in, float* out, int tiles) {
    tile_copy<2>(in, out, tiles);
}
