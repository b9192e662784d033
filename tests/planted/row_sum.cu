// Planted bug (a): a shared-memory tree reduction with the barrier between its steps missing.
// y[row] = sum of x[row, :], x (rows, n) f32; one block per row, blockDim.x a power of two, and
// blockDim.x floats of dynamic shared memory.
#include "common.cuh"

template <bool SYNC_EACH_STEP>
__device__ void row_sum(const float* __restrict__ x, float* __restrict__ y, int n) {
    extern __shared__ float partial[];  // (blockDim.x)
    const float* xr = x + (size_t)blockIdx.x * n;
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += xr[i];
    partial[threadIdx.x] = s;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];  // REDUCE STEP
        // The next step reads what other threads (of other warps) wrote in this one.
        if (SYNC_EACH_STEP) __syncthreads();
    }
    if (threadIdx.x == 0) y[blockIdx.x] = partial[0];
}

extern "C" __global__ void row_sum_correct(const float* x, float* y, int n) { row_sum<true>(x, y, n); }
// BUG: no __syncthreads() between the reduction steps.
extern "C" __global__ void row_sum_no_sync(const float* x, float* y, int n) { row_sum<false>(x, y, n); }
