// Planted bugs (b) and (e): y = a * x over n floats, a grid-stride loop. The buggy variant's
// loop bound is `i <= n`, one element past both buffers. The launch-parameter bugs (missing
// argument, n passed as 64 bits, a wrong n) are made by the host side of tests/sim_planted.rs.

template <bool INCLUSIVE_BOUND>
__device__ void scale(const float* __restrict__ x, float* __restrict__ y, float a, int n) {
    const int stride = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; INCLUSIVE_BOUND ? i <= n : i < n; i += stride)
        y[i] = a * x[i];  // SCALE STORE
}

extern "C" __global__ void scale_correct(const float* x, float* y, float a, int n) { scale<false>(x, y, a, n); }
// BUG: `i <= n` reads x[n] and writes y[n].
extern "C" __global__ void scale_off_by_one(const float* x, float* y, float a, int n) { scale<true>(x, y, a, n); }
