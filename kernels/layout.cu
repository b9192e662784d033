// Layout changes between NCHW and NHWC (channels-last) for the channels-last training step
// (src/ops/layout.rs), with a channel pad or crop and a storage-type cast in the same pass:
//   nchw_to_nhwc_{S}_{D}: x (B, Cs, HW) in S -> y (B, HW, Cd) in D; channels c >= Cs of y are
//     zeros (the stem's 3 image channels padded to 8, so a pixel is one 16-byte bf16 vector),
//     channels c >= Cd of x are dropped.
//   nhwc_to_nchw_{S}_{D}: x (B, HW, Cs) in S -> y (B, Cd, HW) in D, the same pad / crop rule.
// S, D in {f32, bf16}: f32 -> bf16 rounds to nearest even (__float2bfloat16), as the CPU.
//
// A transpose reads one layout along its fastest dimension and writes the other along its own,
// so each block stages a 32-channel x 32-pixel tile of one image in shared memory: the NCHW side
// is read / written a channel row of 32 pixels per warp, the NHWC side a pixel row of channels
// per warp. The tile holds f32 (exact for both storage types).
//
// Tile rows are channels, `ld` floats apart. The NCHW side touches one row per warp (conflict
// free for any ld). The NHWC side walks (pixel, channel) with the channel fastest over `wc`
// channels (the tile's width: 32, or fewer at the end of C or for a small C such as the stem's 8),
// so a warp covers 32 / wc pixels of wc channels: bank = (c * ld + p) mod 32 is conflict free for
// ld = 32 + 32 / wc when wc is a power of two (33 for a full tile: the classic pad of 1). A
// small C also keeps the NHWC side coalesced: 4 pixels x 8 bf16 channels are 64 contiguous bytes.
#include "common.cuh"

#define LF_TILE 32
#define LF_TILE_ROWS 8  // blockDim (32, 8): each thread moves 4 values per phase

// The tile's row pitch for a width of wc channels (see above); wc * ld <= 32 * 33.
__device__ __forceinline__ int layout_tile_ld(int wc) {
    return (wc & (wc - 1)) == 0 && wc < LF_TILE ? LF_TILE + LF_TILE / wc : LF_TILE + 1;
}

// Grid (ceil(HW / tp), ceil(Cd / 32), B), tp pixels a tile: 32, or 1024 / Cd when Cd < 32 is a
// power of two (the stem's 8: 128 pixels), so that a block moves a whole 32 x 32 tile's worth of
// values instead of 32 x Cd; the pitch tp + 32 / Cd keeps the NHWC side conflict free (the same
// rule as above: tp is a multiple of 32) and Cd * pitch = 1056 fits the tile.
template <typename S, typename D>
__device__ void nchw_to_nhwc(const S* __restrict__ x, D* __restrict__ y, int Cs, int Cd, int HW, int tp) {
    __shared__ float tile[LF_TILE * (LF_TILE + 1)];
    const int p0 = blockIdx.x * tp, c0 = blockIdx.y * LF_TILE, b = blockIdx.z;
    const int wc = min(LF_TILE, Cd - c0), wp = min(tp, HW - p0);
    const int ld = tp == LF_TILE ? layout_tile_ld(wc) : tp + LF_TILE / wc;
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * LF_TILE + tx;
    // Read: a warp per 32-pixel segment of a channel row (one segment in a 32-pixel tile).
    if (tp == LF_TILE) {
        for (int cl = ty; cl < wc; cl += LF_TILE_ROWS) {
            const int c = c0 + cl;
            if (tx < wp) tile[cl * ld + tx] = c < Cs ? to_float(x[((size_t)b * Cs + c) * HW + p0 + tx]) : 0.0f;
        }
    } else {
        const int segs = tp / LF_TILE;
        for (int r = ty; r < wc * segs; r += LF_TILE_ROWS) {
            const int cl = r / segs, p = (r - cl * segs) * LF_TILE + tx;
            const int c = c0 + cl;
            if (p < wp) tile[cl * ld + p] = c < Cs ? to_float(x[((size_t)b * Cs + c) * HW + p0 + p]) : 0.0f;
        }
    }
    __syncthreads();
    // Write: (pixel, channel) with the channel fastest, wc channels per pixel.
    for (int k = tid; k < wc * wp; k += LF_TILE * LF_TILE_ROWS) {
        const int pl = k / wc, cl = k - pl * wc;
        y[((size_t)b * HW + p0 + pl) * Cd + c0 + cl] = from_float<D>(tile[cl * ld + pl]);
    }
}

// Grid (ceil(HW / 32), ceil(Cd / 32), B).
template <typename S, typename D>
__device__ void nhwc_to_nchw(const S* __restrict__ x, D* __restrict__ y, int Cs, int Cd, int HW) {
    __shared__ float tile[LF_TILE * (LF_TILE + 1)];
    const int p0 = blockIdx.x * LF_TILE, c0 = blockIdx.y * LF_TILE, b = blockIdx.z;
    const int wc = min(LF_TILE, Cd - c0), wp = min(LF_TILE, HW - p0);
    const int ld = layout_tile_ld(wc);
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * LF_TILE + tx;
    // Read: (pixel, channel) with the channel fastest.
    for (int k = tid; k < wc * wp; k += LF_TILE * LF_TILE_ROWS) {
        const int pl = k / wc, cl = k - pl * wc;
        const int c = c0 + cl;
        tile[cl * ld + pl] = c < Cs ? to_float(x[((size_t)b * HW + p0 + pl) * Cs + c]) : 0.0f;
    }
    __syncthreads();
    // Write: a warp per channel row, 32 consecutive pixels.
    for (int cl = ty; cl < wc; cl += LF_TILE_ROWS)
        if (tx < wp) y[((size_t)b * Cd + c0 + cl) * HW + p0 + tx] = from_float<D>(tile[cl * ld + tx]);
}

// nchw_to_nhwc is capped at 32 registers (8 blocks a SM, no spill; 34 without for a bf16
// source); nhwc_to_nchw needs no cap on sm_90 (32) and capped spills 4 bytes on sm_80.
#define LF_LAYOUT(SN, ST, DN, DT)                                                                              \
    extern "C" __global__ void __launch_bounds__(256, 8) nchw_to_nhwc_##SN##_##DN(const ST* __restrict__ x, DT* __restrict__ y, int Cs,  \
                                                         int Cd, int HW, int tp) {                             \
        nchw_to_nhwc<ST, DT>(x, y, Cs, Cd, HW, tp);                                                            \
    }                                                                                                          \
    extern "C" __global__ void nhwc_to_nchw_##SN##_##DN(const ST* __restrict__ x, DT* __restrict__ y, int Cs,  \
                                                         int Cd, int HW) {                                     \
        nhwc_to_nchw<ST, DT>(x, y, Cs, Cd, HW);                                                                \
    }
LF_LAYOUT(f32, float, f32, float)
LF_LAYOUT(f32, float, bf16, __nv_bfloat16)
LF_LAYOUT(bf16, __nv_bfloat16, f32, float)
LF_LAYOUT(bf16, __nv_bfloat16, bf16, __nv_bfloat16)
