// Max pooling (NCHW, f32) with padding, as torch.nn.MaxPool2d, for training: the forward saves
// each window's argmax (index inside its input plane; ties go to the first in raster order, a
// NaN wins), the backward routes the gradient through it.
//
// The backward is a gather, not a scatter: overlapping windows (3x3 stride 2) send several
// outputs to one input, so one thread per INPUT pixel loops over the (at most
// ceil(k/stride)^2) windows that cover it and adds the gradients whose argmax is this pixel, in
// output raster order — the CPU's order, deterministic, no atomics.
#include "common.cuh"

// One thread per output (planes, Ho, Wo).
extern "C" __global__ void maxpool_forward_f32(const float* __restrict__ x, float* __restrict__ y,
                                               int* __restrict__ argmax, int H, int W, int Ho, int Wo, int kernel,
                                               int stride, int pad, long long total) {
    for (long long o = blockIdx.x * (long long)blockDim.x + threadIdx.x; o < total; o += (long long)gridDim.x * blockDim.x) {
        const int ox = (int)(o % Wo);
        const int oy = (int)((o / Wo) % Ho);
        const long long plane = o / ((long long)Wo * Ho);
        const float* xp = x + plane * H * W;
        float best = -INFINITY;
        int idx = -1;
        for (int ky = 0; ky < kernel; ++ky) {
            const int iy = oy * stride + ky - pad;
            if (iy < 0 || iy >= H) continue;
            for (int kx = 0; kx < kernel; ++kx) {
                const int ix = ox * stride + kx - pad;
                if (ix < 0 || ix >= W) continue;
                const int i = iy * W + ix;
                const float v = xp[i];
                if (v > best || isnan(v) || idx < 0) {
                    best = v;
                    idx = i;
                }
            }
        }
        y[o] = best;
        argmax[o] = idx;
    }
}

// One thread per input (planes, H, W): dx = sum of dy over the windows covering this pixel whose
// argmax it is (overwrites dx).
extern "C" __global__ void maxpool_backward_f32(const float* __restrict__ dy, const int* __restrict__ argmax,
                                                float* __restrict__ dx, int H, int W, int Ho, int Wo, int kernel,
                                                int stride, int pad, long long total) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const int ix = (int)(i % W);
        const int iy = (int)((i / W) % H);
        const long long plane = i / ((long long)W * H);
        const int self = iy * W + ix;
        // Output oy covers rows [oy*stride - pad, oy*stride - pad + kernel - 1].
        // oy >= (iy + pad - kernel + 1) / stride (rounded up), oy <= (iy + pad) / stride.
        const int ty = iy + pad - kernel + 1, tx = ix + pad - kernel + 1;
        const int oy0 = max(ty > 0 ? (ty + stride - 1) / stride : 0, 0);
        const int ox0 = max(tx > 0 ? (tx + stride - 1) / stride : 0, 0);
        const int oy1 = min((iy + pad) / stride, Ho - 1);
        const int ox1 = min((ix + pad) / stride, Wo - 1);
        const float* dyp = dy + plane * Ho * Wo;
        const int* ap = argmax + plane * Ho * Wo;
        float g = 0.0f;
        for (int oy = oy0; oy <= oy1; ++oy)
            for (int ox = ox0; ox <= ox1; ++ox) {
                const int o = oy * Wo + ox;
                if (ap[o] == self) g += dyp[o];
            }
        dx[i] = g;
    }
}
