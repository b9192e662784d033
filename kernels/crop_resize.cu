// Batched crop-and-resize of uint8 HWC images into normalised NCHW model inputs, in one launch:
// any number of boxes over any number of images (one packed u8 buffer + an (offset, H, W)
// table), each box resized to (oh, ow) with PyTorch F.interpolate semantics on the cropped
// region (align_corners=False, half-pixel centres; bilinear clamps the source coordinate at
// the box start; bicubic A = -0.75 with taps clamped to the box; no antialias), then
// (v/255 - mean[c]) / std[c]. The tap rule is ops::crop_resize's `axis_taps`; see there.
#include "common.cuh"

// The taps along one axis for output index o: up to 4 pixel indices and weights (bilinear uses
// the first 2). lo/hi: the box edges in pixels; n_in: the image size along this axis.
__device__ __forceinline__ int axis_taps(int o, int n_out, float lo, float hi, int n_in, int bicubic, int (&idx)[4],
                                         float (&w)[4]) {
    const int first = min(max((int)floorf(lo), 0), n_in - 1);
    const int last = max(min((int)ceilf(hi) - 1, n_in - 1), first);
    const float scale = __fdiv_rn(__fsub_rn(hi, lo), (float)n_out);
    float src = __fsub_rn(__fadd_rn(lo, __fmul_rn((float)o + 0.5f, scale)), 0.5f);
    // Beyond 2 pixels outside the box every tap is the edge pixel: bounding src changes no
    // value and keeps the int conversions below in range (NaN becomes the left edge).
    src = fminf(fmaxf(src, (float)(first - 2)), (float)(last + 2));
    if (!bicubic) {
        src = fmaxf(src, lo);
        const float f0 = floorf(src);
        const float t = src - f0;
        const int i0 = (int)f0;
        idx[0] = min(max(i0, first), last);
        idx[1] = min(max(i0 + 1, first), last);
        w[0] = 1.0f - t;
        w[1] = t;
        return 2;
    }
    const float f0 = floorf(src);
    const float t = src - f0;
    const int i0 = (int)f0;
    const float A = -0.75f;
    const float x0 = t + 1.0f, x1 = t, x2 = 1.0f - t, x3 = 2.0f - t;
    w[0] = ((A * x0 - 5.0f * A) * x0 + 8.0f * A) * x0 - 4.0f * A;
    w[1] = ((A + 2.0f) * x1 - (A + 3.0f)) * x1 * x1 + 1.0f;
    w[2] = ((A + 2.0f) * x2 - (A + 3.0f)) * x2 * x2 + 1.0f;
    w[3] = ((A * x3 - 5.0f * A) * x3 + 8.0f * A) * x3 - 4.0f * A;
#pragma unroll
    for (int j = 0; j < 4; ++j) idx[j] = min(max(i0 - 1 + j, first), last);
    return 4;
}

// out (N, 3, oh, ow) in T. One thread per output pixel (all 3 channels); consecutive threads
// along ox. A box whose image index or table entry is invalid is written as NaN.
template <typename T>
__device__ void crop_resize(const uint8_t* __restrict__ images, long long image_bytes,
                            const int* __restrict__ table, int n_images, const float* __restrict__ boxes, T* __restrict__ out,
                            int n_boxes, int oh, int ow, int bicubic, float m0, float m1, float m2, float s0, float s1,
                            float s2) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long plane = (long long)oh * ow;
    if (idx >= (long long)n_boxes * plane) return;
    const int n = (int)(idx / plane);
    const int p = (int)(idx - (long long)n * plane);
    const int oy = p / ow, ox = p - oy * ow;
    T* o = out + (size_t)n * 3 * plane + p;

    const float* bx = boxes + (size_t)n * 5;
    const float fimg = bx[0];
    const int img = (int)fimg;
    bool ok = fimg >= 0.0f && fimg < (float)n_images && (float)img == fimg;
    long long offset = 0;
    int H = 0, W = 0;
    if (ok) {
        offset = table[3 * img];
        H = table[3 * img + 1];
        W = table[3 * img + 2];
        ok = offset >= 0 && H > 0 && W > 0 && offset + (long long)H * W * 3 <= image_bytes;
    }
    if (!ok) {
        const T nan = from_float<T>(__int_as_float(0x7fc00000));
        o[0] = nan;
        o[plane] = nan;
        o[2 * plane] = nan;
        return;
    }
    int xi[4], yi[4];
    float xw[4], yw[4];
    const int nx = axis_taps(ox, ow, bx[1], bx[3], W, bicubic, xi, xw);
    const int ny = axis_taps(oy, oh, bx[2], bx[4], H, bicubic, yi, yw);
    const uint8_t* im = images + offset;
    float acc[3] = {0.0f, 0.0f, 0.0f};
    for (int j = 0; j < ny; ++j) {
        const uint8_t* row = im + (size_t)yi[j] * W * 3;
        float r[3] = {0.0f, 0.0f, 0.0f};
        for (int i = 0; i < nx; ++i) {
            const uint8_t* px = row + (size_t)xi[i] * 3;
#pragma unroll
            for (int c = 0; c < 3; ++c) r[c] += xw[i] * (float)px[c];
        }
#pragma unroll
        for (int c = 0; c < 3; ++c) acc[c] += yw[j] * r[c];
    }
    o[0] = from_float<T>((acc[0] / 255.0f - m0) / s0);
    o[plane] = from_float<T>((acc[1] / 255.0f - m1) / s1);
    o[2 * plane] = from_float<T>((acc[2] / 255.0f - m2) / s2);
}

#define LF_CROP_RESIZE(S, T)                                                                                   \
    extern "C" __global__ void crop_resize_##S(const uint8_t* images, long long image_bytes, const int* table, \
                                               int n_images, const float* boxes, T* out, int n_boxes, int oh,  \
                                               int ow, int bicubic, float m0, float m1, float m2, float s0,    \
                                               float s1, float s2) {                                           \
        crop_resize<T>(images, image_bytes, table, n_images, boxes, out, n_boxes, oh, ow, bicubic, m0, m1, m2, \
                       s0, s1, s2);                                                                            \
    }
LF_FOR_FLOAT_TYPES(LF_CROP_RESIZE)
