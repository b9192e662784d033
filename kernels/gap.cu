// Global average pooling (NCHW -> NC, f32) and its backward (the gradient spread evenly).
#include "common.cuh"

// One warp per plane: y[plane] = mean of x[plane, 0..HW). Lanes read consecutive elements
// (coalesced); each lane's partial sum covers HW/32 values, then a warp sum.
extern "C" __global__ void gap_forward_f32(const float* __restrict__ x, float* __restrict__ y, int HW, int planes) {
    const int lane = threadIdx.x & 31;
    const int plane = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (plane >= planes) return;  // whole warps leave together: warp_sum below stays full
    const float* xp = x + (size_t)plane * HW;
    float s = 0.0f;
    for (int i = lane; i < HW; i += 32) s += xp[i];
    s = warp_sum(s);
    if (lane == 0) y[plane] = s / HW;
}

// dx (planes, HW) = dy[plane] * (1/HW), or added to dx with `accumulate` (as the CPU: g * inv).
extern "C" __global__ void gap_backward_f32(const float* __restrict__ dy, float* __restrict__ dx, int HW, float inv,
                                            int accumulate, long long total) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const float g = dy[i / HW] * inv;
        dx[i] = accumulate ? dx[i] + g : g;
    }
}
