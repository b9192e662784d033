// Convolution backward (NCHW, square kernel, no bias), as two implicit GEMMs: the im2col matrix
// is never written to global memory, each shared-memory tile is gathered straight from x / dy.
//
//   weight: dw (Cout, Cin*k*k) += dy (Cout, B*Ho*Wo) @ im2col(x)^T (B*Ho*Wo, Cin*k*k)
//           M = Cout, N = Cin*k*k, K = B*Ho*Wo. K is huge next to M*N (the stem: 2*224*224 vs
//           64 x 147), so K is split across blockIdx.z; each split writes its own partial tile
//           and a second kernel sums the splits in a fixed order: no float atomics, so the
//           result is the same bit for bit from run to run.
//   data:   dx (B*H*W, Cin) = gather(dy) (B*H*W, Cout*k*k) @ w (Cout*k*k, Cin)
//           input pixel (h, w) got tap (ky, kx) from output (oy, ox) when
//           oy*stride - pad + ky = h, i.e. (h + pad - ky) divisible by stride; other taps are 0.
//
// f32 SIMT tiles: 64 x 64 per block of 256 threads, 4 x 4 register block per thread, K steps of
// 16 staged in shared memory (one buffer; the next K step is prefetched into registers while
// the current one is multiplied). x / dy / w in T, arithmetic and dw in f32, dx in T.
#include "common.cuh"

constexpr int CBW_BM = 64, CBW_BN = 64, CBW_BK = 16, CBW_THREADS = 256;
// Rows of the shared tiles are padded by 4 floats: the loaders write columns (one K index per
// thread), and an unpadded 64-float row would put a warp's 16 K indices on one bank. 68 floats
// keep every row 16-byte aligned for the float4 reads.
constexpr int CBW_LD = CBW_BM + 4;
static_assert(CBW_BM == CBW_BN, "the tiles share one padded row length");

// acc[i][j] += sum over kk of a[kk][ar + i] * b[kk][bc + j]: one K step of the 4 x 4 block.
__device__ __forceinline__ void conv_bwd_tile_fma(const float (*a)[CBW_LD], const float (*b)[CBW_LD], int ar, int bc,
                                                  float acc[4][4]) {
#pragma unroll
    for (int kk = 0; kk < CBW_BK; ++kk) {
        const float4 av = *reinterpret_cast<const float4*>(&a[kk][ar]);
        const float4 bv = *reinterpret_cast<const float4*>(&b[kk][bc]);
        const float ax[4] = {av.x, av.y, av.z, av.w};
        const float bx[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(ax[i], bx[j], acc[i][j]);
    }
}

// Grid (ceil(N/64), ceil(M/64), splits); split z covers K steps [z*tiles_per_split, ...).
// accumulate = 1 (one split): out is dw (Cout, N) and the block adds its tile to it.
// accumulate = 0: out is the partials (splits, Cout, N) and the block writes its slab.
template <typename T>
__device__ void conv2d_backward_weight(const T* __restrict__ x, const T* __restrict__ dy, float* __restrict__ out,
                                       int B, int Cin, int H, int W, int Cout, int k, int stride, int pad, int Ho,
                                       int Wo, int tiles_per_split, int accumulate) {
    __shared__ __align__(16) float As[CBW_BK][CBW_LD];  // dy: (16 output pixels, 64 output channels)
    __shared__ __align__(16) float Bs[CBW_BK][CBW_LD];  // im2col(x): (16 output pixels, 64 (ci, ky, kx))
    const int KK = k * k, N = Cin * KK, P = Ho * Wo, HW = H * W, K = B * P;
    const int m0 = blockIdx.y * CBW_BM, n0 = blockIdx.x * CBW_BN;
    const int ktiles = (K + CBW_BK - 1) / CBW_BK;
    const int kt0 = blockIdx.z * tiles_per_split, kt1 = min(kt0 + tiles_per_split, ktiles);
    const int t = threadIdx.x;
    // Loader: this thread fetches output pixel kt*16 + lk for rows lr + 16*i of both tiles
    // (consecutive threads read consecutive pixels: coalesced along Wo).
    const int lk = t & 15, lr = t >> 4;
    // Its four im2col rows n = n0 + lr + 16*j, decomposed into (ci, ky, kx) once.
    int n_off[4], n_ky[4], n_kx[4];
    bool n_ok[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int n = n0 + lr + 16 * j;
        n_ok[j] = n < N;
        const int ci = n / KK, r = n - ci * KK;
        n_ky[j] = r / k;
        n_kx[j] = r - n_ky[j] * k;
        n_off[j] = ci * HW;
    }
    float a_reg[4], b_reg[4];
    auto load = [&](int kt) {
        const int kidx = kt * CBW_BK + lk;
        const bool k_ok = kidx < K;
        int b = 0, p = 0, oy = 0, ox = 0;
        if (k_ok) {
            b = kidx / P;
            p = kidx - b * P;
            oy = p / Wo;
            ox = p - oy * Wo;
        }
        const T* dyp = dy + (size_t)b * Cout * P + p;
        const T* xb = x + (size_t)b * Cin * HW;
        const int iy0 = oy * stride - pad, ix0 = ox * stride - pad;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = m0 + lr + 16 * i;
            a_reg[i] = (k_ok && m < Cout) ? to_float(dyp[(size_t)m * P]) : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int iy = iy0 + n_ky[j], ix = ix0 + n_kx[j];
            const bool ok = k_ok && n_ok[j] && iy >= 0 && iy < H && ix >= 0 && ix < W;
            b_reg[j] = ok ? to_float(xb[n_off[j] + iy * W + ix]) : 0.0f;
        }
    };
    auto store = [&]() {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            As[lk][lr + 16 * i] = a_reg[i];
            Bs[lk][lr + 16 * i] = b_reg[i];
        }
    };

    // Compute: this thread owns rows (output channels) m0 + ty*4 + i, columns n0 + tx*4 + j.
    const int tx = t & 15, ty = t >> 4;
    float acc[4][4] = {};
    if (kt0 < kt1) {
        load(kt0);
        store();
    }
    __syncthreads();
    for (int kt = kt0; kt < kt1; ++kt) {
        const bool more = kt + 1 < kt1;  // the same for the whole block
        if (more) load(kt + 1);
        conv_bwd_tile_fma(As, Bs, ty * 4, tx * 4, acc);
        __syncthreads();  // every thread is done reading the tile before it is overwritten
        if (more) {
            store();
            __syncthreads();
        }
    }

    float* dst = accumulate ? out : out + (size_t)blockIdx.z * Cout * N;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty * 4 + i;
        if (m >= Cout) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx * 4 + j;
            if (n >= N) continue;
            if (accumulate)
                dst[(size_t)m * N + n] += acc[i][j];
            else
                dst[(size_t)m * N + n] = acc[i][j];
        }
    }
}

// dw (MN) += sum over z of partial (splits, MN), z in order: the deterministic second pass of
// the split-K weight gradient. One thread per element of dw.
extern "C" __global__ void conv2d_backward_weight_reduce(const float* __restrict__ partial, float* __restrict__ dw,
                                                         int MN, int splits) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= MN) return;
    float s = 0.0f;
    for (int z = 0; z < splits; ++z) s += partial[(size_t)z * MN + e];
    dw[e] += s;
}

// Grid (ceil(B*H*W/64), ceil(Cin/64)). dx is overwritten.
template <typename T>
__device__ void conv2d_backward_data(const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx, int B,
                                     int Cin, int H, int W, int Cout, int k, int stride, int pad, int Ho, int Wo) {
    __shared__ __align__(16) float As[CBW_BK][CBW_LD];  // gathered dy: (16 taps (co, ky, kx), 64 input pixels)
    __shared__ __align__(16) float Bs[CBW_BK][CBW_LD];  // w: (16 taps, 64 input channels)
    const int KK = k * k, HW = H * W, M = B * HW, N = Cin, K = Cout * KK, P = Ho * Wo;
    const int m0 = blockIdx.x * CBW_BM, n0 = blockIdx.y * CBW_BN;
    const int ktiles = (K + CBW_BK - 1) / CBW_BK;
    const int t = threadIdx.x;
    // Loader: this thread fetches taps kt*16 + lk + 4*i for input pixel m0 + lm (A) and input
    // channel n0 + lm (B); consecutive threads take consecutive pixels / channels.
    const int lm = t & 63, lk = t >> 6;
    const int m = m0 + lm;
    const bool m_ok = m < M;
    int pb = 0, ph = 0, pw = 0;
    if (m_ok) {
        pb = m / HW;
        const int r = m - pb * HW;
        ph = r / W;
        pw = r - ph * W;
    }
    const T* dyb = dy + (size_t)pb * Cout * P;
    const int n = n0 + lm;
    const bool n_ok = n < N;
    float a_reg[4], b_reg[4];
    auto load = [&](int kt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int kidx = kt * CBW_BK + lk + 4 * i;
            const bool k_ok = kidx < K;
            const int co = kidx / KK, r = kidx - co * KK;
            const int ky = r / k, kx = r - ky * k;
            // The output that tap (ky, kx) of input pixel (ph, pw) came from, when there is one.
            const int ty = ph + pad - ky, tx = pw + pad - kx;
            const int oy = ty / stride, ox = tx / stride;
            const bool hit = k_ok && m_ok && ty >= 0 && tx >= 0 && oy * stride == ty && ox * stride == tx &&
                             oy < Ho && ox < Wo;
            a_reg[i] = hit ? to_float(dyb[(size_t)co * P + oy * Wo + ox]) : 0.0f;
            b_reg[i] = (k_ok && n_ok) ? to_float(w[((size_t)co * Cin + n) * KK + r]) : 0.0f;
        }
    };
    auto store = [&]() {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            As[lk + 4 * i][lm] = a_reg[i];
            Bs[lk + 4 * i][lm] = b_reg[i];
        }
    };

    // Compute: this thread owns input pixels m0 + tx*4 + i and channels n0 + ty*4 + j (pixels
    // fastest across the warp, so the stores to dx run along H*W).
    const int tx = t & 15, ty = t >> 4;
    float acc[4][4] = {};
    load(0);  // K = Cout*k*k >= 1, so there is at least one K step
    store();
    __syncthreads();
    for (int kt = 0; kt < ktiles; ++kt) {
        const bool more = kt + 1 < ktiles;
        if (more) load(kt + 1);
        conv_bwd_tile_fma(As, Bs, tx * 4, ty * 4, acc);
        __syncthreads();
        if (more) {
            store();
            __syncthreads();
        }
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int mo = m0 + tx * 4 + i;
        if (mo >= M) continue;
        const int b = mo / HW, hw = mo - b * HW;
        T* dxp = dx + (size_t)b * Cin * HW + hw;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int c = n0 + ty * 4 + j;
            if (c < N) dxp[(size_t)c * HW] = from_float<T>(acc[i][j]);
        }
    }
}

#define LF_CONV2D_BACKWARD(S, T)                                                                                 \
    extern "C" __global__ void __launch_bounds__(CBW_THREADS) conv2d_backward_weight_##S(                     \
        const T* x, const T* dy, float* out, int B, int Cin, int H, int W, int Cout, int k, int stride, int pad, \
        int Ho, int Wo, int tiles_per_split, int accumulate) {                                                 \
        conv2d_backward_weight<T>(x, dy, out, B, Cin, H, W, Cout, k, stride, pad, Ho, Wo, tiles_per_split,     \
                                  accumulate);                                                                 \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(CBW_THREADS) conv2d_backward_data_##S(                       \
        const T* dy, const T* w, T* dx, int B, int Cin, int H, int W, int Cout, int k, int stride, int pad,      \
        int Ho, int Wo) {                                                                                      \
        conv2d_backward_data<T>(dy, w, dx, B, Cin, H, W, Cout, k, stride, pad, Ho, Wo);                        \
    }
LF_FOR_FLOAT_TYPES(LF_CONV2D_BACKWARD)
