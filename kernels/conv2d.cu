// 2-D convolution (NCHW) as an implicit GEMM, and the ViT patchify (im2col of a stride = kernel
// convolution).
//
// conv2d: out[m, n] = sum_k A[m, k] * w[n, k] with
//   m = (b, oy, ox) over B*Ho*Wo output pixels, n = output channel, k = (ci, ky, kx) over
//   Cin*ks*ks (the weight's own (Cout, Cin, ks, ks) order, so w is a row-major (N, K) matrix),
//   A[m, k] = x[b, ci, oy*stride - pad + ky, ox*stride - pad + kx] (0 outside the image).
// The im2col gather happens while a tile of A is loaded into shared memory; the matrix is never
// written to global memory. Epilogue as conv2d_cpu: y = relu?((residual + conv) + bias).
//   - bf16/f16: tensor cores, mma.sync m16n8k16 (f32 accumulate) on a 64x64x32 block tile,
//     4 warps of 32x32; fragments are 32-bit loads from padded shared memory.
//   - f32: a 64x64x16 SIMT tile, 256 threads of 4x4 outputs.
// Both load the next K tile into registers while the current one is multiplied (one shared
// buffer, two barriers per step), and bound every global access by the sizes passed.
#include "common.cuh"
#include "mma.cuh"  // mma_16816

// Sizes of one convolution, as the kernels see them.
struct ConvGeom {
    int B, Cin, H, W, Cout, ks, stride, pad, Ho, Wo;
    int M, K;  // B*Ho*Wo, Cin*ks*ks
};

__device__ __forceinline__ ConvGeom make_geom(int B, int Cin, int H, int W, int Cout, int ks, int stride, int pad,
                                              int Ho, int Wo) {
    ConvGeom g;
    g.B = B; g.Cin = Cin; g.H = H; g.W = W; g.Cout = Cout; g.ks = ks; g.stride = stride; g.pad = pad;
    g.Ho = Ho; g.Wo = Wo;
    g.M = B * Ho * Wo;
    g.K = Cin * ks * ks;
    return g;
}

// The output pixel a thread gathers A rows for: its image and the top-left input coordinate of
// its receptive field. `ok` is false past the last pixel (the row then gathers zeros).
struct PixelOrigin {
    const void* image;  // x + b * Cin*H*W, as the caller's T
    int iy0, ix0;
    bool ok;
};

template <typename T>
__device__ __forceinline__ PixelOrigin pixel_origin(const T* x, const ConvGeom& g, int m) {
    PixelOrigin o;
    o.ok = m < g.M;
    const int mm = o.ok ? m : 0;
    const int hw = g.Ho * g.Wo;
    const int b = mm / hw, p = mm - b * hw;
    const int oy = p / g.Wo, ox = p - oy * g.Wo;
    o.image = x + (size_t)b * g.Cin * g.H * g.W;
    o.iy0 = oy * g.stride - g.pad;
    o.ix0 = ox * g.stride - g.pad;
    return o;
}

// COUNT consecutive entries A[m, k0 .. k0+COUNT) of one im2col row (zeros outside the image,
// past K, or past M). (ci, ky, kx) is decoded once and then stepped.
template <typename T, int COUNT>
__device__ __forceinline__ void gather_im2col(const PixelOrigin& o, const ConvGeom& g, int k0, T (&v)[COUNT]) {
    const T* xb = static_cast<const T*>(o.image);
    const int kk = g.ks * g.ks;
    int ci = k0 / kk;
    const int r = k0 - ci * kk;
    int ky = r / g.ks;
    int kx = r - ky * g.ks;
#pragma unroll
    for (int j = 0; j < COUNT; ++j) {
        const int iy = o.iy0 + ky, ix = o.ix0 + kx;
        T val = from_float<T>(0.0f);
        if (o.ok && k0 + j < g.K && iy >= 0 && iy < g.H && ix >= 0 && ix < g.W)
            val = xb[((size_t)ci * g.H + iy) * g.W + ix];
        v[j] = val;
        if (++kx == g.ks) {
            kx = 0;
            if (++ky == g.ks) {
                ky = 0;
                ++ci;
            }
        }
    }
}

// One output element: y = relu?((residual + acc) + bias), the order of conv2d_cpu (the GEMM
// accumulates onto the residual, then the bias, then ReLU). NCHW: m = (b, p) -> y[b, n, p].
template <typename T>
__device__ __forceinline__ void conv_store(float acc, int m, int n, const ConvGeom& g, const float* __restrict__ bias,
                                           const T* __restrict__ residual, T* __restrict__ y, int relu) {
    if (m >= g.M || n >= g.Cout) return;
    const int hw = g.Ho * g.Wo;
    const int b = m / hw, p = m - b * hw;
    const size_t off = ((size_t)b * g.Cout + n) * hw + p;
    float v = acc;
    if (residual != nullptr) v = to_float(residual[off]) + v;
    if (bias != nullptr) v += bias[n];
    if (relu) v = fmaxf(v, 0.0f);
    y[off] = from_float<T>(v);
}

// ---------------------------------------------------------------------------------------------
// f32: SIMT tile.

constexpr int F_BM = 64, F_BN = 64, F_BK = 16, F_THREADS = 256;

__device__ void conv2d_simt_f32(const float* __restrict__ x, const float* __restrict__ w,
                                const float* __restrict__ bias, const float* __restrict__ residual,
                                float* __restrict__ y, ConvGeom g, int relu) {
    __shared__ float As[F_BK][F_BM];      // k-major: the multiply reads consecutive m
    __shared__ float Bs[F_BK][F_BN + 1];  // +1: the transposing store hits distinct banks
    const int t = threadIdx.x;
    const int m0 = blockIdx.x * F_BM, n0 = blockIdx.y * F_BN;

    // A loads: row m0 + t % 64, k (t / 64) * 4 .. +4 of the tile.
    const int a_m = t % F_BM, a_k = (t / F_BM) * 4;
    const PixelOrigin origin = pixel_origin(x, g, m0 + a_m);
    // B loads: k t % 16, rows n (t / 16) + 16 j (consecutive threads read consecutive k).
    const int b_k = t % F_BK, b_n = t / F_BK;

    float ra[4], rb[4];
    auto load = [&](int k0) {
        gather_im2col<float, 4>(origin, g, k0 + a_k, ra);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + b_n + 16 * j, k = k0 + b_k;
            rb[j] = (n < g.Cout && k < g.K) ? w[(size_t)n * g.K + k] : 0.0f;
        }
    };

    const int tx = t % 16, ty = t / 16;  // outputs m = tx + 16 i, n = ty + 16 j
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    const int nk = (g.K + F_BK - 1) / F_BK;
    load(0);
    for (int kt = 0; kt < nk; ++kt) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            As[a_k + j][a_m] = ra[j];
            Bs[b_k][b_n + 16 * j] = rb[j];
        }
        __syncthreads();
        if (kt + 1 < nk) load((kt + 1) * F_BK);  // in flight during the multiply
#pragma unroll
        for (int k = 0; k < F_BK; ++k) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = As[k][tx + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Bs[k][ty + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();  // the next step overwrites As/Bs
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) conv_store(acc[i][j], m0 + tx + 16 * i, n0 + ty + 16 * j, g, bias, residual, y, relu);
}

// ---------------------------------------------------------------------------------------------
// bf16/f16: tensor cores.

constexpr int TC_BM = 64, TC_BN = 64, TC_BK = 32, TC_THREADS = 128;
// Row pitch of the A/B tiles in elements: 40 halves = 80 bytes, so the 8 rows a fragment load
// touches fall in distinct banks, and 16-byte row segments stay aligned.
constexpr int TC_PITCH = TC_BK + 8;
// Row pitch of the f32 output staging tile (transposed to n-major for coalesced NCHW stores).
constexpr int TC_CPITCH = TC_BM + 4;

__device__ __forceinline__ uint32_t bits16(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
__device__ __forceinline__ uint32_t bits16(__half v) { return __half_as_ushort(v); }

// Two 16-bit values in one 32-bit word, the lower index in the low half (the fragment order).
template <typename T> __device__ __forceinline__ uint32_t pack2(T lo, T hi) {
    return bits16(lo) | (bits16(hi) << 16);
}

template <typename T>
__device__ void conv2d_mma(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ bias,
                           const T* __restrict__ residual, T* __restrict__ y, ConvGeom g, int relu) {
    __shared__ __align__(16) T As[TC_BM][TC_PITCH];  // (m, k)
    __shared__ __align__(16) T Bs[TC_BN][TC_PITCH];  // (n, k)
    __shared__ float Cs[TC_BN][TC_CPITCH];           // (n, m): output staging
    const int t = threadIdx.x;
    const int lane = t & 31, warp = t >> 5;
    const int group = lane >> 2, quad = lane & 3;  // the fragment's row group and pair index
    const int wm = (warp & 1) * 32, wn = (warp >> 1) * 32;
    const int m0 = blockIdx.x * TC_BM, n0 = blockIdx.y * TC_BN;

    // A loads: row t % 64, k half (t / 64) * 16 .. +16 (consecutive threads: consecutive pixels).
    const int a_m = t % TC_BM, a_k = (t / TC_BM) * 16;
    const PixelOrigin origin = pixel_origin(x, g, m0 + a_m);
    // B loads: row t / 2, k half (t % 2) * 16 .. +16 of w (N, K).
    const int b_n = t / 2, b_k = (t % 2) * 16;
    // Whole 8-element runs of w are 16-byte aligned and either all in or all past K when K % 8 == 0.
    const bool b_vec = (g.K % 8) == 0;

    T ra[16];
    uint32_t rb[8];  // 16 weights, packed in pairs as the shared tile holds them
    auto load = [&](int k0) {
        gather_im2col<T, 16>(origin, g, k0 + a_k, ra);
        const int n = n0 + b_n;
        const T* wr = w + (size_t)n * g.K;
        const T zero = from_float<T>(0.0f);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int k = k0 + b_k + 8 * h;
            if (b_vec) {
                uint4 q = make_uint4(0, 0, 0, 0);
                if (n < g.Cout && k < g.K) q = *reinterpret_cast<const uint4*>(wr + k);
                rb[4 * h + 0] = q.x;
                rb[4 * h + 1] = q.y;
                rb[4 * h + 2] = q.z;
                rb[4 * h + 3] = q.w;
            } else {
#pragma unroll
                for (int j = 0; j < 8; j += 2) {
                    const T lo = (n < g.Cout && k + j < g.K) ? wr[k + j] : zero;
                    const T hi = (n < g.Cout && k + j + 1 < g.K) ? wr[k + j + 1] : zero;
                    rb[4 * h + j / 2] = pack2(lo, hi);
                }
            }
        }
    };

    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    const int nk = (g.K + TC_BK - 1) / TC_BK;
    load(0);
    for (int kt = 0; kt < nk; ++kt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            *reinterpret_cast<uint4*>(&As[a_m][a_k + 8 * h]) =
                make_uint4(pack2(ra[8 * h + 0], ra[8 * h + 1]), pack2(ra[8 * h + 2], ra[8 * h + 3]),
                           pack2(ra[8 * h + 4], ra[8 * h + 5]), pack2(ra[8 * h + 6], ra[8 * h + 7]));
            *reinterpret_cast<uint4*>(&Bs[b_n][b_k + 8 * h]) =
                make_uint4(rb[4 * h + 0], rb[4 * h + 1], rb[4 * h + 2], rb[4 * h + 3]);
        }
        __syncthreads();
        if (kt + 1 < nk) load((kt + 1) * TC_BK);  // in flight during the multiply
#pragma unroll
        for (int kk = 0; kk < TC_BK; kk += 16) {
            uint32_t af[2][4], bf[4][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int r = wm + 16 * i + group;
                const int c = kk + 2 * quad;
                af[i][0] = *reinterpret_cast<const uint32_t*>(&As[r][c]);
                af[i][1] = *reinterpret_cast<const uint32_t*>(&As[r + 8][c]);
                af[i][2] = *reinterpret_cast<const uint32_t*>(&As[r][c + 8]);
                af[i][3] = *reinterpret_cast<const uint32_t*>(&As[r + 8][c + 8]);
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int n = wn + 8 * j + group;
                const int c = kk + 2 * quad;
                bf[j][0] = *reinterpret_cast<const uint32_t*>(&Bs[n][c]);
                bf[j][1] = *reinterpret_cast<const uint32_t*>(&Bs[n][c + 8]);
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_16816(acc[i][j], af[i], bf[j], T());
        }
        __syncthreads();  // the next step overwrites As/Bs
    }

    // Stage the 64x64 tile as (n, m) so each output channel's pixels are stored contiguously.
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int ml = wm + 16 * i + group + (r >= 2 ? 8 : 0);
                const int nl = wn + 8 * j + 2 * quad + (r & 1);
                Cs[nl][ml] = acc[i][j][r];
            }
    __syncthreads();
    for (int idx = t; idx < TC_BM * TC_BN; idx += TC_THREADS) {
        const int nl = idx / TC_BM, ml = idx % TC_BM;
        conv_store(Cs[nl][ml], m0 + ml, n0 + nl, g, bias, residual, y, relu);
    }
}

// Entry points: grid (ceil(M / 64), ceil(Cout / 64)); block 256 (f32) or 128 (bf16/f16).
// bias (Cout,) f32 and residual (B, Cout, Ho, Wo) may be null.
#define LF_CONV2D_ARGS(T)                                                                              \
    const T *x, const T *w, const float *bias, const T *residual, T *y, int B, int Cin, int H, int W, \
        int Cout, int ks, int stride, int pad, int Ho, int Wo, int relu
#define LF_CONV2D_GEOM make_geom(B, Cin, H, W, Cout, ks, stride, pad, Ho, Wo)

extern "C" __global__ void __launch_bounds__(F_THREADS) conv2d_forward_f32(LF_CONV2D_ARGS(float)) {
    conv2d_simt_f32(x, w, bias, residual, y, LF_CONV2D_GEOM, relu);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS) conv2d_forward_bf16(LF_CONV2D_ARGS(__nv_bfloat16)) {
    conv2d_mma<__nv_bfloat16>(x, w, bias, residual, y, LF_CONV2D_GEOM, relu);
}
extern "C" __global__ void __launch_bounds__(TC_THREADS) conv2d_forward_f16(LF_CONV2D_ARGS(__half)) {
    conv2d_mma<__half>(x, w, bias, residual, y, LF_CONV2D_GEOM, relu);
}

// ---------------------------------------------------------------------------------------------
// Patchify: cols (B*gh*gw, Cin*p*p) from x (B, Cin, H, W), column order (ci, ky, kx) as the
// patch-embedding weight (C, Cin, p, p). One thread per column entry; consecutive threads
// write consecutive columns, which read runs of p consecutive pixels.
template <typename T>
__device__ void patchify(const T* __restrict__ x, T* __restrict__ cols, int B, int Cin, int H, int W, int p) {
    const int gh = H / p, gw = W / p;
    const int kk = Cin * p * p;
    const long long total = (long long)B * gh * gw * kk;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const long long row = idx / kk;
    const int col = (int)(idx - row * kk);
    const int b = (int)(row / (gh * gw)), patch = (int)(row - (long long)b * gh * gw);
    const int py = patch / gw, px = patch - py * gw;
    const int ci = col / (p * p), r = col - ci * p * p;
    const int ky = r / p, kx = r - ky * p;
    cols[idx] = x[(((size_t)b * Cin + ci) * H + py * p + ky) * W + px * p + kx];
}

#define LF_PATCHIFY(S, T)                                                                                    \
    extern "C" __global__ void patchify_##S(const T* x, T* cols, int B, int Cin, int H, int W, int p) { \
        patchify<T>(x, cols, B, Cin, H, W, p);                                                           \
    }
LF_FOR_FLOAT_TYPES(LF_PATCHIFY)
