// Crops of float (N, 3, IH, IW) images, each resized bilinearly (align_corners=False, no
// antialias: torch's F.interpolate of the cropped region) to its own size and written to its
// own address, so every crop of a batch comes from one launch straight into the tensors that
// take it (CCD's stage 2: crops grouped by size into CLIP batches). As
// ops::crop_resize_planes::crop_resize_planes_cpu, with the CPU's f32 rounding (no FMA).
#include "common.cuh"

// crops (K, 7): image, y0, x0, h, w, oh, ow; out_ptrs (K): the device address of each crop's
// (3, oh, ow) output in T. grid (x, K): blockIdx.y is the crop, the x blocks stride over its
// 3 * oh * ow values (consecutive threads along ox). A crop whose region is not inside its
// image is written as NaN.
template <typename T>
__device__ void crop_resize_planes(const float* __restrict__ images, int n_images, int ih, int iw,
                                   const int* __restrict__ crops, const unsigned long long* __restrict__ out_ptrs,
                                   int n_crops) {
    const int k = blockIdx.y;
    if (k >= n_crops) return;
    const int* cr = crops + 7 * (size_t)k;
    const int img = cr[0], y0 = cr[1], x0 = cr[2], h = cr[3], w = cr[4], oh = cr[5], ow = cr[6];
    if (oh <= 0 || ow <= 0) return;
    // device allocations live in the global space: saying so makes the stores st.global
    T* out = reinterpret_cast<T*>(__cvta_global_to_generic((size_t)out_ptrs[k]));
    const bool ok = img >= 0 && img < n_images && y0 >= 0 && x0 >= 0 && h > 0 && w > 0 && y0 + h <= ih && x0 + w <= iw;
    const long long plane = (long long)oh * ow, total = 3 * plane;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        if (!ok) {
            out[idx] = from_float<T>(__int_as_float(0x7fc00000));
            continue;
        }
        const int c = (int)(idx / plane);
        const int p = (int)(idx - c * plane);
        const int oy = p / ow, ox = p - oy * ow;
        int ya, yb, xa, xb;
        float fy, fx;
        bilinear_taps_exact(oy, h, oh, ya, yb, fy);
        bilinear_taps_exact(ox, w, ow, xa, xb, fx);
        const float* src = images + ((size_t)img * 3 + c) * ih * iw + (size_t)y0 * iw + x0;
        const float top = lerp_exact(src[(size_t)ya * iw + xa], src[(size_t)ya * iw + xb], fx);
        const float bot = lerp_exact(src[(size_t)yb * iw + xa], src[(size_t)yb * iw + xb], fx);
        out[idx] = from_float<T>(lerp_exact(top, bot, fy));
    }
}

#define LF_CROP_PLANES(S, T)                                                                                  \
    extern "C" __global__ void crop_resize_planes_##S(const float* images, int n_images, int ih, int iw,      \
                                                      const int* crops, const unsigned long long* out_ptrs, \
                                                      int n_crops) {                                         \
        crop_resize_planes<T>(images, n_images, ih, iw, crops, out_ptrs, n_crops);                           \
    }
LF_FOR_FLOAT_TYPES(LF_CROP_PLANES)
