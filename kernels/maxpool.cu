// Max pooling (NCHW; f32, or bf16 for mixed-precision training) with padding, as torch.nn.MaxPool2d, for training: the forward saves
// each window's argmax (index inside its input plane; ties go to the first in raster order, a
// NaN wins), the backward routes the gradient through it.
//
// The backward is a gather, not a scatter: overlapping windows (3x3 stride 2) send several
// outputs to one input, so one thread per INPUT pixel loops over the (at most
// ceil(k/stride)^2) windows that cover it and adds the gradients whose argmax is this pixel, in
// output raster order — the CPU's order, deterministic, no atomics.
#include "common.cuh"

// One thread per output (planes, Ho, Wo).
template <typename T>
__device__ void maxpool_forward(const T* __restrict__ x, T* __restrict__ y, int* __restrict__ argmax, int H, int W,
                                int Ho, int Wo, int kernel, int stride, int pad, long long total) {
    for (long long o = blockIdx.x * (long long)blockDim.x + threadIdx.x; o < total; o += (long long)gridDim.x * blockDim.x) {
        const int ox = (int)(o % Wo);
        const int oy = (int)((o / Wo) % Ho);
        const long long plane = o / ((long long)Wo * Ho);
        const T* xp = x + plane * H * W;
        float best = -INFINITY;
        int idx = -1;
        for (int ky = 0; ky < kernel; ++ky) {
            const int iy = oy * stride + ky - pad;
            if (iy < 0 || iy >= H) continue;
            for (int kx = 0; kx < kernel; ++kx) {
                const int ix = ox * stride + kx - pad;
                if (ix < 0 || ix >= W) continue;
                const int i = iy * W + ix;
                const float v = to_float(xp[i]);
                if (v > best || isnan(v) || idx < 0) {
                    best = v;
                    idx = i;
                }
            }
        }
        y[o] = from_float<T>(best);
        argmax[o] = idx;
    }
}

// One thread per input (planes, H, W): dx = sum of dy over the windows covering this pixel whose
// argmax it is (overwrites dx).
template <typename T>
__device__ void maxpool_backward(const T* __restrict__ dy, const int* __restrict__ argmax, T* __restrict__ dx, int H,
                                 int W, int Ho, int Wo, int kernel, int stride, int pad, long long total) {
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
        const T* dyp = dy + plane * Ho * Wo;
        const int* ap = argmax + plane * Ho * Wo;
        float g = 0.0f;
        for (int oy = oy0; oy <= oy1; ++oy)
            for (int ox = ox0; ox <= ox1; ++ox) {
                const int o = oy * Wo + ox;
                if (ap[o] == self) g += to_float(dyp[o]);
            }
        dx[i] = from_float<T>(g);
    }
}

// Entry points maxpool_{forward,backward}_{f32,bf16}.
#define LF_MAXPOOL(S, T)                                                                                        \
    extern "C" __global__ void maxpool_forward_##S(const T* __restrict__ x, T* __restrict__ y,                  \
                                                   int* __restrict__ argmax, int H, int W, int Ho, int Wo,      \
                                                   int kernel, int stride, int pad, long long total) {          \
        maxpool_forward<T>(x, y, argmax, H, W, Ho, Wo, kernel, stride, pad, total);                             \
    }                                                                                                           \
    extern "C" __global__ void maxpool_backward_##S(const T* __restrict__ dy, const int* __restrict__ argmax,   \
                                                    T* __restrict__ dx, int H, int W, int Ho, int Wo,           \
                                                    int kernel, int stride, int pad, long long total) {         \
        maxpool_backward<T>(dy, argmax, dx, H, W, Ho, Wo, kernel, stride, pad, total);                          \
    }
LF_MAXPOOL(f32, float)
LF_MAXPOOL(bf16, __nv_bfloat16)

// ---- Channels-last (NHWC): x (B, H, W, C), y / argmax (B, Ho, Wo, C), dx (B, H, W, C) ----
//
// The same definitions (argmax = index iy * W + ix inside the image's plane, first maximum in
// raster order, a NaN wins; the backward a gather over the covering windows in output raster
// order), with the channel the fastest index of every thread's element: a warp touches 32
// consecutive channels of one pixel (contiguous bytes), the window walk moves by whole pixels.

// One thread per output (B, Ho, Wo, C).
template <typename T>
__device__ void maxpool_forward_nhwc(const T* __restrict__ x, T* __restrict__ y, int* __restrict__ argmax, int C,
                                     int H, int W, int Ho, int Wo, int kernel, int stride, int pad, long long total) {
    for (long long o = blockIdx.x * (long long)blockDim.x + threadIdx.x; o < total; o += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(o % C);
        const long long pix = o / C;
        const int ox = (int)(pix % Wo);
        const int oy = (int)((pix / Wo) % Ho);
        const long long b = pix / ((long long)Wo * Ho);
        const T* xb = x + b * H * W * C + c;
        float best = -INFINITY;
        int idx = -1;
        for (int ky = 0; ky < kernel; ++ky) {
            const int iy = oy * stride + ky - pad;
            if (iy < 0 || iy >= H) continue;
            for (int kx = 0; kx < kernel; ++kx) {
                const int ix = ox * stride + kx - pad;
                if (ix < 0 || ix >= W) continue;
                const int i = iy * W + ix;
                const float v = to_float(xb[(long long)i * C]);
                if (v > best || isnan(v) || idx < 0) {
                    best = v;
                    idx = i;
                }
            }
        }
        y[o] = from_float<T>(best);
        argmax[o] = idx;
    }
}

// One thread per input (B, H, W, C); dx overwritten.
template <typename T>
__device__ void maxpool_backward_nhwc(const T* __restrict__ dy, const int* __restrict__ argmax, T* __restrict__ dx,
                                      int C, int H, int W, int Ho, int Wo, int kernel, int stride, int pad,
                                      long long total) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(i % C);
        const long long pix = i / C;
        const int ix = (int)(pix % W);
        const int iy = (int)((pix / W) % H);
        const long long b = pix / ((long long)W * H);
        const int self = iy * W + ix;
        const int ty = iy + pad - kernel + 1, tx = ix + pad - kernel + 1;
        const int oy0 = max(ty > 0 ? (ty + stride - 1) / stride : 0, 0);
        const int ox0 = max(tx > 0 ? (tx + stride - 1) / stride : 0, 0);
        const int oy1 = min((iy + pad) / stride, Ho - 1);
        const int ox1 = min((ix + pad) / stride, Wo - 1);
        const long long base = b * Ho * Wo * C + c;
        float g = 0.0f;
        for (int oy = oy0; oy <= oy1; ++oy)
            for (int ox = ox0; ox <= ox1; ++ox) {
                const long long o = base + (long long)(oy * Wo + ox) * C;
                if (argmax[o] == self) g += to_float(dy[o]);
            }
        dx[i] = from_float<T>(g);
    }
}

#define LF_MAXPOOL_NHWC(S, T)                                                                                   \
    extern "C" __global__ void maxpool_forward_nhwc_##S(const T* __restrict__ x, T* __restrict__ y,             \
                                                        int* __restrict__ argmax, int C, int H, int W, int Ho,  \
                                                        int Wo, int kernel, int stride, int pad,                \
                                                        long long total) {                                      \
        maxpool_forward_nhwc<T>(x, y, argmax, C, H, W, Ho, Wo, kernel, stride, pad, total);                     \
    }                                                                                                           \
    extern "C" __global__ void maxpool_backward_nhwc_##S(const T* __restrict__ dy, const int* __restrict__ argmax, \
                                                         T* __restrict__ dx, int C, int H, int W, int Ho, int Wo, \
                                                         int kernel, int stride, int pad, long long total) {     \
        maxpool_backward_nhwc<T>(dy, argmax, dx, C, H, W, Ho, Wo, kernel, stride, pad, total);                  \
    }
LF_MAXPOOL_NHWC(f32, float)
LF_MAXPOOL_NHWC(bf16, __nv_bfloat16)
