// Resizing of positional tables: (1 + g*g, C) -> (1 + gh*gw, C), the first row as is and the
// g x g grid resized bilinearly (torch F.interpolate, align_corners=False, no antialias), as
// ops::interpolate::resize_positional_grid.
#include "common.cuh"

// Source taps of output index o along an axis n_in -> n_out: the CPU reference's formula,
// src = max((o + 0.5) * n_in / n_out - 0.5, 0), with unfused rounding so floor() agrees.
__device__ __forceinline__ void bilinear_taps(int o, int n_in, int n_out, int& i0, int& i1, float& frac) {
    const float scale = __fdiv_rn((float)n_in, (float)n_out);
    const float src = fmaxf(__fsub_rn(__fmul_rn((float)o + 0.5f, scale), 0.5f), 0.0f);
    i0 = min((int)floorf(src), n_in - 1);
    i1 = min(i0 + 1, n_in - 1);
    frac = src - (float)i0;
}

// table f32, out in T. One thread per output element, consecutive threads along C.
template <typename T>
__device__ void resize_positional_grid(const float* __restrict__ table, T* __restrict__ out, int C, int g, int gh,
                                       int gw) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long total = (long long)(1 + gh * gw) * C;
    if (idx >= total) return;
    const int row = (int)(idx / C), c = (int)(idx - (long long)row * C);
    if (row == 0) {
        out[idx] = from_float<T>(table[c]);
        return;
    }
    const int p = row - 1, oy = p / gw, ox = p - oy * gw;
    int y0, y1, x0, x1;
    float fy, fx;
    bilinear_taps(oy, g, gh, y0, y1, fy);
    bilinear_taps(ox, g, gw, x0, x1, fx);
    const float* grid = table + C;  // (g*g, C)
    const float v00 = grid[(size_t)(y0 * g + x0) * C + c], v01 = grid[(size_t)(y0 * g + x1) * C + c];
    const float v10 = grid[(size_t)(y1 * g + x0) * C + c], v11 = grid[(size_t)(y1 * g + x1) * C + c];
    const float top = v00 * (1.0f - fx) + v01 * fx;
    const float bot = v10 * (1.0f - fx) + v11 * fx;
    out[idx] = from_float<T>(top * (1.0f - fy) + bot * fy);
}

#define LF_RESIZE_POS(S, T)                                                                                \
    extern "C" __global__ void resize_positional_grid_##S(const float* table, T* out, int C, int g, int gh, \
                                                          int gw) {                                       \
        resize_positional_grid<T>(table, out, C, g, gh, gw);                                              \
    }
LF_FOR_FLOAT_TYPES(LF_RESIZE_POS)
