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
// Both: 64 x 64 output tile per block of 256 threads, K steps of 16 staged in shared memory (one
// buffer; the next K step is prefetched into registers while the current one is multiplied).
// x / dy / w in T, accumulation and dw in f32, dx in T. Two ways to multiply a staged step:
//   SIMT (every dtype; the f32 kernels): fp32 FMAs, a 4 x 4 register block per thread.
//   tensor cores (`_tc_` bf16 / f16 kernels): mma.sync m16n8k16 with f32 accumulation, each of
//   the 8 warps owning a 32 x 16 sub-tile (2 x 2 mma tiles).
#include "common.cuh"
#include "mma.cuh"  // mma_16816 (fragment layout: PTX ISA "Matrix fragments for mma.m16n8k16")

constexpr int CBW_BM = 64, CBW_BN = 64, CBW_BK = 16, CBW_THREADS = 256;
// Rows of the shared tiles are padded by 4 floats: the loaders write columns (one K index per
// thread), and an unpadded 64-float row would put a warp's 16 K indices on one bank. 68 floats
// keep every row 16-byte aligned for the float4 reads.
constexpr int CBW_LD = CBW_BM + 4;
static_assert(CBW_BM == CBW_BN, "the tiles share one padded row length");

// The SIMT tile: shared A[k][row], B[k][col] in f32; this thread owns rows row0 + i and
// columns col0 + j, i, j < 4 (the kernels choose which of rows / columns runs along the warp).
template <typename T> struct ConvBwdSimtTile {
    struct Smem {
        float a[CBW_BK][CBW_LD];
        float b[CBW_BK][CBW_LD];
    };
    int row0, col0;
    float acc[4][4];
    __device__ ConvBwdSimtTile(int row0_, int col0_) : row0(row0_), col0(col0_) {
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    }
    __device__ __forceinline__ static void store_a(Smem& s, int k, int row, float v) { s.a[k][row] = v; }
    __device__ __forceinline__ static void store_b(Smem& s, int k, int col, float v) { s.b[k][col] = v; }
    // acc[i][j] += sum over k of a[k][row0 + i] * b[k][col0 + j]: one K step.
    __device__ __forceinline__ void fma(const Smem& s) {
#pragma unroll
        for (int k = 0; k < CBW_BK; ++k) {
            const float4 av = *reinterpret_cast<const float4*>(&s.a[k][row0]);
            const float4 bv = *reinterpret_cast<const float4*>(&s.b[k][col0]);
            const float ax[4] = {av.x, av.y, av.z, av.w};
            const float bx[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(ax[i], bx[j], acc[i][j]);
        }
    }
    // f(row, col, value) for every element this thread owns (tile-local coordinates).
    template <typename F> __device__ __forceinline__ void for_each(F f) const {
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) f(row0 + i, col0 + j, acc[i][j]);
    }
};

// Rows of the tensor-core tiles: 16 K values + 8 of padding = 48 bytes, which keeps the 32-bit
// fragment reads of a warp (8 rows x 4 words) on 32 different banks.
constexpr int CBW_TC_LD = CBW_BK + 8;

// The tensor-core tile (T = bf16 or f16): shared A[row][k], B[col][k] in T, K contiguous as the
// fragments want it. Warp w owns rows (w % 2) * 32 + [0, 32) and columns (w / 2) * 16 + [0, 16).
template <typename T> struct ConvBwdMmaTile {
    struct Smem {
        T a[CBW_BM][CBW_TC_LD];
        T b[CBW_BN][CBW_TC_LD];
    };
    int wr, wc, g, t4;
    float acc[2][2][4];  // [m16 tile][n8 tile][fragment]
    __device__ ConvBwdMmaTile(int, int) {
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        wr = (warp & 1) * 32;
        wc = (warp >> 1) * 16;
        g = lane >> 2;
        t4 = lane & 3;
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j)
#pragma unroll
                for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;
    }
    __device__ __forceinline__ static void store_a(Smem& s, int k, int row, float v) { s.a[row][k] = from_float<T>(v); }
    __device__ __forceinline__ static void store_b(Smem& s, int k, int col, float v) { s.b[col][k] = from_float<T>(v); }
    // Two adjacent T (K index k, k+1) as one 32-bit fragment register; k is even, so aligned.
    __device__ __forceinline__ static uint32_t pair(const T* p) { return *reinterpret_cast<const uint32_t*>(p); }
    __device__ __forceinline__ void fma(const Smem& s) {
        uint32_t a[2][4], b[2][2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int r = wr + i * 16 + g;
            a[i][0] = pair(&s.a[r][2 * t4]);
            a[i][1] = pair(&s.a[r + 8][2 * t4]);
            a[i][2] = pair(&s.a[r][2 * t4 + 8]);
            a[i][3] = pair(&s.a[r + 8][2 * t4 + 8]);
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int c = wc + j * 8 + g;
            b[j][0] = pair(&s.b[c][2 * t4]);
            b[j][1] = pair(&s.b[c][2 * t4 + 8]);
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) mma_16816(acc[i][j], a[i], b[j], T());
    }
    template <typename F> __device__ __forceinline__ void for_each(F f) const {
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int r = wr + i * 16 + g, c = wc + j * 8 + 2 * t4;
                f(r, c, acc[i][j][0]);
                f(r, c + 1, acc[i][j][1]);
                f(r + 8, c, acc[i][j][2]);
                f(r + 8, c + 1, acc[i][j][3]);
            }
    }
};

// Grid (ceil(N/64), ceil(M/64), splits); split z covers K steps [z*tiles_per_split, ...).
// accumulate = 1 (one split): out is dw (Cout, N) and the block adds its tile to it.
// accumulate = 0: out is the partials (splits, Cout, N) and the block writes its slab.
template <typename T, typename Tile>
__device__ void conv2d_backward_weight(const T* __restrict__ x, const T* __restrict__ dy, float* __restrict__ out,
                                       int B, int Cin, int H, int W, int Cout, int k, int stride, int pad, int Ho,
                                       int Wo, int tiles_per_split, int accumulate) {
    // A = dy: (64 output channels, 16 output pixels); B = im2col(x): (64 (ci, ky, kx), 16 pixels).
    __shared__ __align__(16) typename Tile::Smem sm;
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
            Tile::store_a(sm, lk, lr + 16 * i, a_reg[i]);
            Tile::store_b(sm, lk, lr + 16 * i, b_reg[i]);
        }
    };

    // SIMT: this thread owns rows (output channels) (t >> 4)*4 + i, columns (t & 15)*4 + j of
    // the tile (the tensor-core tile ignores these: it splits the tile by warp).
    Tile tile((t >> 4) * 4, (t & 15) * 4);
    if (kt0 < kt1) {
        load(kt0);
        store();
    }
    __syncthreads();
    for (int kt = kt0; kt < kt1; ++kt) {
        const bool more = kt + 1 < kt1;  // the same for the whole block
        if (more) load(kt + 1);
        tile.fma(sm);
        __syncthreads();  // every thread is done reading the tile before it is overwritten
        if (more) {
            store();
            __syncthreads();
        }
    }

    float* dst = accumulate ? out : out + (size_t)blockIdx.z * Cout * N;
    tile.for_each([&](int r, int c, float v) {
        const int m = m0 + r, n = n0 + c;
        if (m >= Cout || n >= N) return;
        if (accumulate)
            dst[(size_t)m * N + n] += v;
        else
            dst[(size_t)m * N + n] = v;
    });
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
template <typename T, typename Tile>
__device__ void conv2d_backward_data(const T* __restrict__ dy, const T* __restrict__ w, T* __restrict__ dx, int B,
                                     int Cin, int H, int W, int Cout, int k, int stride, int pad, int Ho, int Wo) {
    // A = gathered dy: (64 input pixels, 16 taps (co, ky, kx)); B = w: (64 input channels, 16 taps).
    __shared__ __align__(16) typename Tile::Smem sm;
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
            Tile::store_a(sm, lk + 4 * i, lm, a_reg[i]);
            Tile::store_b(sm, lk + 4 * i, lm, b_reg[i]);
        }
    };

    // SIMT: this thread owns input pixels (t & 15)*4 + i and channels (t >> 4)*4 + j of the tile
    // (pixels fastest across the warp, so the stores to dx run along H*W; the tensor-core tile
    // ignores these: it splits the tile by warp).
    Tile tile((t & 15) * 4, (t >> 4) * 4);
    load(0);  // K = Cout*k*k >= 1, so there is at least one K step
    store();
    __syncthreads();
    for (int kt = 0; kt < ktiles; ++kt) {
        const bool more = kt + 1 < ktiles;
        if (more) load(kt + 1);
        tile.fma(sm);
        __syncthreads();
        if (more) {
            store();
            __syncthreads();
        }
    }

    tile.for_each([&](int r, int c, float v) {
        const int mo = m0 + r, ch = n0 + c;
        if (mo >= M || ch >= N) return;
        const int b = mo / HW, hw = mo - b * HW;
        dx[((size_t)b * Cin + ch) * HW + hw] = from_float<T>(v);
    });
}

// The entry points conv2d_backward_{weight,data}_NAME, multiplying with tile type TILE.
#define LF_CONV2D_BACKWARD(NAME, T, TILE)                                                                        \
    extern "C" __global__ void __launch_bounds__(CBW_THREADS) conv2d_backward_weight_##NAME(                  \
        const T* x, const T* dy, float* out, int B, int Cin, int H, int W, int Cout, int k, int stride, int pad, \
        int Ho, int Wo, int tiles_per_split, int accumulate) {                                                 \
        conv2d_backward_weight<T, TILE>(x, dy, out, B, Cin, H, W, Cout, k, stride, pad, Ho, Wo, tiles_per_split, \
                                        accumulate);                                                           \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(CBW_THREADS) conv2d_backward_data_##NAME(                    \
        const T* dy, const T* w, T* dx, int B, int Cin, int H, int W, int Cout, int k, int stride, int pad,      \
        int Ho, int Wo) {                                                                                      \
        conv2d_backward_data<T, TILE>(dy, w, dx, B, Cin, H, W, Cout, k, stride, pad, Ho, Wo);                  \
    }

// SIMT kernels for every dtype (the f32 ones are the launchers' f32 path; the bf16 / f16 ones
// are a fallback and a reference for the tensor-core kernels).
#define LF_CONV2D_BACKWARD_SIMT(S, T) LF_CONV2D_BACKWARD(S, T, ConvBwdSimtTile<T>)
LF_FOR_FLOAT_TYPES(LF_CONV2D_BACKWARD_SIMT)

// Tensor-core kernels for the 16-bit dtypes (the launchers' bf16 / f16 path).
LF_CONV2D_BACKWARD(tc_bf16, __nv_bfloat16, ConvBwdMmaTile<__nv_bfloat16>)
LF_CONV2D_BACKWARD(tc_f16, __half, ConvBwdMmaTile<__half>)
