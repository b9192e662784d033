// CCD's box of a class activation map, as ops::cam_box::cam_box: the CAM plane (h, w)
// upsampled bilinearly to the image (ih, iw), min-max normalised (v - lo) / (hi - lo + 1e-5),
// and the pixels above `level` give the box: the first and the last such pixel in raster order
// (the official rule) or their bounding box. Every value is rounded as the CPU computes it, so
// the boxes are identical for the same CAM.
#include "common.cuh"

// Upsampled CAM value at raster index p of the (ih, iw) image.
__device__ __forceinline__ float cam_up(const float* __restrict__ plane, int h, int w, int ih, int iw, int p) {
    const int oy = p / iw, ox = p - oy * iw;
    int y0, y1, x0, x1;
    float fy, fx;
    bilinear_taps_exact(oy, h, ih, y0, y1, fy);
    bilinear_taps_exact(ox, w, iw, x0, x1, fx);
    const float top = lerp_exact(plane[y0 * w + x0], plane[y0 * w + x1], fx);
    const float bot = lerp_exact(plane[y1 * w + x0], plane[y1 * w + x1], fx);
    return lerp_exact(top, bot, fy);
}

// Min (take_min) or max of an int over the block; every thread gets it. `scratch` holds 32
// ints; blockDim.x is a multiple of 32.
__device__ __forceinline__ int block_extreme_int(int v, bool take_min, int* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const int u = __shfl_xor_sync(0xffffffffu, v, o);
        v = take_min ? min(v, u) : max(v, u);
    }
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : (take_min ? 0x7fffffff : -1);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const int u = __shfl_xor_sync(0xffffffffu, v, o);
        v = take_min ? min(v, u) : max(v, u);
    }
    return v;
}

// One block per (image, class) pair. cams (B, C, h, w); pairs (P, 2): image, class; boxes
// (P, 4): first-last: (y, x) of the first then the last pixel above the level; minmax: y0, x0,
// y1, x1; all -1 when no pixel is above it (a flat CAM) or the pair names no plane.
extern "C" __global__ void cam_box(const float* __restrict__ cams, const int* __restrict__ pairs,
                                   int* __restrict__ boxes, int n_pairs, int B, int C, int h, int w, int ih, int iw,
                                   float level, int minmax) {
    __shared__ float scratch[32];
    __shared__ int iscratch[32];
    const int pair = blockIdx.x;
    if (pair >= n_pairs) return;
    const int img = pairs[2 * pair], cls = pairs[2 * pair + 1];
    int* out = boxes + 4 * (size_t)pair;
    if (img < 0 || img >= B || cls < 0 || cls >= C) {
        if (threadIdx.x < 4) out[threadIdx.x] = -1;
        return;
    }
    const float* plane = cams + ((size_t)img * C + cls) * h * w;
    const int n = ih * iw;
    float lo = INFINITY, hi = -INFINITY;
    for (int p = threadIdx.x; p < n; p += blockDim.x) {
        const float v = cam_up(plane, h, w, ih, iw, p);
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
    }
    hi = block_max(hi, scratch);
    lo = -block_max(-lo, scratch);
    const float den = __fadd_rn(__fsub_rn(hi, lo), 1e-5f);
    int first = 0x7fffffff, last = -1, ymin = 0x7fffffff, xmin = 0x7fffffff, ymax = -1, xmax = -1;
    for (int p = threadIdx.x; p < n; p += blockDim.x) {
        const float v = cam_up(plane, h, w, ih, iw, p);
        if (__fdiv_rn(__fsub_rn(v, lo), den) > level) {
            const int y = p / iw, x = p - y * iw;
            first = min(first, p);
            last = max(last, p);
            ymin = min(ymin, y);
            xmin = min(xmin, x);
            ymax = max(ymax, y);
            xmax = max(xmax, x);
        }
    }
    if (minmax) {
        ymin = block_extreme_int(ymin, true, iscratch);
        xmin = block_extreme_int(xmin, true, iscratch);
        ymax = block_extreme_int(ymax, false, iscratch);
        xmax = block_extreme_int(xmax, false, iscratch);
    } else {
        first = block_extreme_int(first, true, iscratch);
        last = block_extreme_int(last, false, iscratch);
    }
    if (threadIdx.x == 0) {
        if ((minmax ? ymax : last) < 0) {
            out[0] = out[1] = out[2] = out[3] = -1;
        } else if (minmax) {
            out[0] = ymin;
            out[1] = xmin;
            out[2] = ymax;
            out[3] = xmax;
        } else {
            out[0] = first / iw;
            out[1] = first % iw;
            out[2] = last / iw;
            out[3] = last % iw;
        }
    }
}
