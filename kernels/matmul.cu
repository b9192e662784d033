// GEMM family for the linear layers: y (M, N) = act(x (M, K) · w (N, K)^T + bias (N,)) + residual (M, N)
// (PyTorch nn.Linear layout: both operands are K-contiguous rows). Accumulation in f32; bias f32;
// x, w, residual, y in the storage type T. The activation comes before the residual add (ViT: fc
// -> GELU; out-proj / proj -> + residual).
//
// Kernels (launcher: src/ops/matmul.rs, linear_cuda):
//   gemm_mma_128x128_{bf16,f16}  tensor cores (mma.sync m16n8k16, ldmatrix, 4-stage cp.async
//                                pipeline), 8 warps of 64x32; needs K % 8 == 0 (16-byte rows)
//   gemm_mma_64x64_{bf16,f16}    the same with 4 warps of 32x32, for small M (more blocks)
//   sgemm_128x128_f32            f32 SIMT, 8x8 outputs per thread, smem double buffering
//   gemm_fallback_{bf16,f16}     16x16 smem tiles, one output per thread: any K (f32 needs none:
//                                the SGEMM guards its K edge itself)
//   bias_act_residual_{...}      the epilogue alone, in place, after cuBLAS (the reference backend)
#include "common.cuh"
#include "mma.cuh"
#include "matmul_epilogue.cuh"

// ---------------------------------------------------------------------------------------------
// Tensor-core GEMM (bf16 / f16)
// ---------------------------------------------------------------------------------------------

// smem rows hold BK = 32 elements (64 bytes) padded to 40 (80 bytes): the 8 row addresses of an
// ldmatrix 8x8 land on 8 different 16-byte bank groups, and rows stay 16-byte aligned for cp.async.
#define MMA_BK 32
#define MMA_LDS 40

// Copies rows [row0, row0 + ROWS) x cols [k0, k0 + 32) of a row-major (rows, K) matrix into
// smem (ROWS, MMA_LDS), 16 bytes per cp.async; rows >= rows and columns >= K are zero-filled.
template <typename T, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile_async(T* __restrict__ s, const T* __restrict__ g, int rows, int K,
                                                int row0, int k0) {
    constexpr int CHUNKS_PER_ROW = MMA_BK / 8;  // 8 elements of 2 bytes = 16 bytes
    constexpr int CHUNKS = ROWS * CHUNKS_PER_ROW;
    static_assert(CHUNKS % THREADS == 0, "tile chunks must divide among the threads");
#pragma unroll
    for (int i = 0; i < CHUNKS / THREADS; ++i) {
        const int c = threadIdx.x + i * THREADS;
        const int r = c / CHUNKS_PER_ROW, kc = (c % CHUNKS_PER_ROW) * 8;
        const int gr = row0 + r, gk = k0 + kc;
        // K % 8 == 0, so a chunk is either wholly inside the row or wholly past its end.
        const bool in = gr < rows && gk < K;
        const T* src = in ? g + (size_t)gr * K + gk : g;
        cp_async_16(smem_u32(s + r * MMA_LDS + kc), src, in ? 16 : 0);
    }
}

// Block tile BM x BN, warps WARPS_M x WARPS_N each computing (BM / WARPS_M) x (BN / WARPS_N).
template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, int STAGES>
__device__ void gemm_mma(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ bias,
                         const T* __restrict__ residual, T* __restrict__ y, int M, int N, int K, int act) {
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // warp tile
    constexpr int MI = WM / 16, NI = WN / 8;             // mma tiles per warp
    static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile: 16-row A blocks, pairs of 8-col B blocks");
    constexpr int A_STAGE = BM * MMA_LDS, B_STAGE = BN * MMA_LDS;  // elements per stage

    extern __shared__ __align__(16) unsigned char gemm_smem[];
    T* As = reinterpret_cast<T*>(gemm_smem);  // [STAGES][BM][MMA_LDS]
    T* Bs = As + STAGES * A_STAGE;            // [STAGES][BN][MMA_LDS]

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int warp_m = warp / WARPS_N, warp_n = warp % WARPS_N;
    const int bm = blockIdx.y * BM, bn = blockIdx.x * BN;
    const int ktiles = (K + MMA_BK - 1) / MMA_BK;

    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    // Prologue: tiles 0 .. STAGES-2 in flight. One commit group per tile slot, empty or not, so
    // that wait_group counts stay in step with tile indices.
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) {
            load_tile_async<T, BM, THREADS>(As + s * A_STAGE, x, M, K, bm, s * MMA_BK);
            load_tile_async<T, BN, THREADS>(Bs + s * B_STAGE, w, N, K, bn, s * MMA_BK);
        }
        cp_async_commit();
    }

    for (int kt = 0; kt < ktiles; ++kt) {
        // Groups committed so far: STAGES - 1 + kt; at most STAGES - 2 pending means tile kt has
        // landed (for this thread); the barrier makes every thread's copies visible, and also
        // guarantees every warp is done reading the stage that the prefetch below overwrites
        // (it was read in iteration kt - 1).
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int next = kt + STAGES - 1;
        if (next < ktiles) {
            const int s = next % STAGES;
            load_tile_async<T, BM, THREADS>(As + s * A_STAGE, x, M, K, bm, next * MMA_BK);
            load_tile_async<T, BN, THREADS>(Bs + s * B_STAGE, w, N, K, bn, next * MMA_BK);
        }
        cp_async_commit();

        const T* a_s = As + (kt % STAGES) * A_STAGE + (warp_m * WM) * MMA_LDS;
        const T* b_s = Bs + (kt % STAGES) * B_STAGE + (warp_n * WN) * MMA_LDS;
#pragma unroll
        for (int kk = 0; kk < MMA_BK; kk += 16) {
            uint32_t af[MI][4], bf[NI][2];
            // A 16x16 block: lanes 0-15 address rows 0-15 at k = kk, lanes 16-31 rows 0-15 at
            // kk + 8, giving a0..a3 = (rows 0-7, k 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15).
#pragma unroll
            for (int i = 0; i < MI; ++i)
                ldmatrix_x4(af[i], smem_u32(a_s + (i * 16 + (lane & 15)) * MMA_LDS + kk + (lane >> 4) * 8));
            // B is stored (n, k), which is the col-major 16x8 operand: a non-transposed x4 load
            // gives (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15), i.e.
            // b0, b1 of two adjacent 8-column tiles.
#pragma unroll
            for (int j = 0; j < NI; j += 2) {
                uint32_t r[4];
                ldmatrix_x4(r, smem_u32(b_s + (j * 8 + (lane & 7) + ((lane >> 4) << 3)) * MMA_LDS + kk +
                                        ((lane >> 3) & 1) * 8));
                bf[j][0] = r[0];
                bf[j][1] = r[1];
                bf[j + 1][0] = r[2];
                bf[j + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < NI; ++j) mma_16816(acc[i][j], af[i], bf[j], T());
        }
    }
    cp_async_wait<0>();  // only empty groups remain; leave nothing in flight at exit

    // Accumulator layout: acc[..][0..1] at (row lane/4, cols 2*(lane%4) + 0..1), acc[..][2..3]
    // at row lane/4 + 8. Pairs are stored as one 4-byte word when N is even (then col is even
    // and the pair is aligned) and both are in range.
    const bool pair_ok = (N & 1) == 0;
#pragma unroll
    for (int i = 0; i < MI; ++i) {
#pragma unroll
        for (int j = 0; j < NI; ++j) {
            const int col = bn + warp_n * WN + j * 8 + (lane & 3) * 2;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = bm + warp_m * WM + i * 16 + (lane >> 2) + h * 8;
                if (row >= M) continue;
                if (pair_ok && col + 1 < N) {
                    const float v0 = epilogue_value(acc[i][j][2 * h], bias, residual, act, row, col, N);
                    const float v1 = epilogue_value(acc[i][j][2 * h + 1], bias, residual, act, row, col + 1, N);
                    store_pair(y + (size_t)row * N + col, v0, v1);
                } else {
#pragma unroll
                    for (int e = 0; e < 2; ++e)
                        if (col + e < N)
                            y[(size_t)row * N + col + e] =
                                from_float<T>(epilogue_value(acc[i][j][2 * h + e], bias, residual, act, row, col + e, N));
                }
            }
        }
    }
}

// Shared memory of a configuration, in bytes (the launcher computes the same number).
#define LF_MMA_SMEM(BM, BN, STAGES) ((STAGES) * ((BM) + (BN)) * MMA_LDS * 2)

#define LF_GEMM_MMA(S, T)                                                                                    \
    extern "C" __global__ void __launch_bounds__(256) gemm_mma_128x128_##S(                                  \
        const T* x, const T* w, const float* bias, const T* residual, T* y, int M, int N, int K, int act) { \
        gemm_mma<T, 128, 128, 2, 4, 4>(x, w, bias, residual, y, M, N, K, act);                               \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(128) gemm_mma_64x64_##S(                                    \
        const T* x, const T* w, const float* bias, const T* residual, T* y, int M, int N, int K, int act) { \
        gemm_mma<T, 64, 64, 2, 2, 4>(x, w, bias, residual, y, M, N, K, act);                                 \
    }
LF_GEMM_MMA(bf16, __nv_bfloat16)
LF_GEMM_MMA(f16, __half)

// ---------------------------------------------------------------------------------------------
// f32 SIMT GEMM: block 128x128, K steps of 8, 256 threads each owning 8x8 outputs
// ---------------------------------------------------------------------------------------------

#define SG_BM 128
#define SG_BK 8
// Rows of the transposed smem tiles padded from 128 to 132 floats: the transposing store
// (k = 0..3 and 4..7 from the two halves of a warp) then hits 32 different banks, and
// 132 * 4 bytes keeps float4 reads aligned.
#define SG_LDS 132

// Loads rows [row0, row0 + 128) x cols [k0, k0 + 8) of a row-major (rows, K) f32 matrix into
// registers: thread t takes row t / 2, columns 4 * (t % 2) .. + 3. Out-of-range entries are 0.
__device__ __forceinline__ float4 sgemm_load(const float* __restrict__ g, int rows, int K, int row0, int k0,
                                             bool vec4) {
    const int r = row0 + (threadIdx.x >> 1), k = k0 + (threadIdx.x & 1) * 4;
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (r >= rows) return v;
    const float* p = g + (size_t)r * K + k;
    if (vec4) {
        // K % 4 == 0 and k % 4 == 0: the 4 columns are all in range or all out, and aligned.
        if (k < K) v = *reinterpret_cast<const float4*>(p);
    } else {
        if (k + 0 < K) v.x = p[0];
        if (k + 1 < K) v.y = p[1];
        if (k + 2 < K) v.z = p[2];
        if (k + 3 < K) v.w = p[3];
    }
    return v;
}

// Stores the registers of sgemm_load transposed: s[k][row].
__device__ __forceinline__ void sgemm_store(float* __restrict__ s, float4 v) {
    const int r = threadIdx.x >> 1, k = (threadIdx.x & 1) * 4;
    s[(k + 0) * SG_LDS + r] = v.x;
    s[(k + 1) * SG_LDS + r] = v.y;
    s[(k + 2) * SG_LDS + r] = v.z;
    s[(k + 3) * SG_LDS + r] = v.w;
}

// Thread (tx, ty) = (t % 16, t / 16) owns rows ty*4 + {0..3} and 64 + ty*4 + {0..3}, and the
// same pattern of columns with tx: float4 smem reads, and a warp's reads are conflict-free.
extern "C" __global__ void __launch_bounds__(256) sgemm_128x128_f32(const float* __restrict__ x,
                                                                    const float* __restrict__ w,
                                                                    const float* __restrict__ bias,
                                                                    const float* __restrict__ residual,
                                                                    float* __restrict__ y, int M, int N, int K,
                                                                    int act, int vec4_flag) {
    __shared__ __align__(16) float As[2][SG_BK * SG_LDS];  // [buf][k][m]
    __shared__ __align__(16) float Bs[2][SG_BK * SG_LDS];  // [buf][k][n]
    const bool vec4 = vec4_flag != 0;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int bm = blockIdx.y * SG_BM, bn = blockIdx.x * SG_BM;
    const int ktiles = (K + SG_BK - 1) / SG_BK;

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

    sgemm_store(As[0], sgemm_load(x, M, K, bm, 0, vec4));
    sgemm_store(Bs[0], sgemm_load(w, N, K, bn, 0, vec4));
    __syncthreads();

    for (int kt = 0; kt < ktiles; ++kt) {
        const int cur = kt & 1;
        // Next tile into registers now, so the global latency hides behind this tile's math.
        const bool has_next = kt + 1 < ktiles;
        float4 a_next = make_float4(0.0f, 0.0f, 0.0f, 0.0f), b_next = a_next;
        if (has_next) {
            a_next = sgemm_load(x, M, K, bm, (kt + 1) * SG_BK, vec4);
            b_next = sgemm_load(w, N, K, bn, (kt + 1) * SG_BK, vec4);
        }
#pragma unroll
        for (int k = 0; k < SG_BK; ++k) {
            const float* a_row = As[cur] + k * SG_LDS;
            const float* b_row = Bs[cur] + k * SG_LDS;
            const float4 a0 = *reinterpret_cast<const float4*>(a_row + ty * 4);
            const float4 a1 = *reinterpret_cast<const float4*>(a_row + 64 + ty * 4);
            const float4 b0 = *reinterpret_cast<const float4*>(b_row + tx * 4);
            const float4 b1 = *reinterpret_cast<const float4*>(b_row + 64 + tx * 4);
            const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        if (has_next) {
            // The other buffer was last read in iteration kt - 1, before the barrier that ended it.
            sgemm_store(As[cur ^ 1], a_next);
            sgemm_store(Bs[cur ^ 1], b_next);
        }
        __syncthreads();
    }

    // Four columns at a time as one float4 when N % 4 == 0 (aligned, all in range or all out).
    const bool n_vec4 = (N & 3) == 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int row = bm + (i < 4 ? ty * 4 + i : 64 + ty * 4 + (i - 4));
        if (row >= M) continue;
#pragma unroll
        for (int jh = 0; jh < 2; ++jh) {
            const int col = bn + jh * 64 + tx * 4;
            if (n_vec4) {
                if (col >= N) continue;
                float4 v;
                v.x = epilogue_value(acc[i][jh * 4 + 0], bias, residual, act, row, col + 0, N);
                v.y = epilogue_value(acc[i][jh * 4 + 1], bias, residual, act, row, col + 1, N);
                v.z = epilogue_value(acc[i][jh * 4 + 2], bias, residual, act, row, col + 2, N);
                v.w = epilogue_value(acc[i][jh * 4 + 3], bias, residual, act, row, col + 3, N);
                *reinterpret_cast<float4*>(y + (size_t)row * N + col) = v;
            } else {
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (col + e < N)
                        y[(size_t)row * N + col + e] = epilogue_value(acc[i][jh * 4 + e], bias, residual, act, row, col + e, N);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fallback for bf16 / f16 when K % 8 != 0 (16x16 block tiles, one output per thread)
// ---------------------------------------------------------------------------------------------

#define FB_TILE 16

template <typename T>
__device__ void gemm_fallback(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ bias,
                              const T* __restrict__ residual, T* __restrict__ y, int M, int N, int K, int act) {
    __shared__ float xs[FB_TILE][FB_TILE + 1];  // [m][k]
    __shared__ float ws[FB_TILE][FB_TILE + 1];  // [n][k]
    const int tx = threadIdx.x, ty = threadIdx.y;  // blockDim (16, 16)
    const int row = blockIdx.y * FB_TILE + ty, col = blockIdx.x * FB_TILE + tx;
    const int wrow = blockIdx.x * FB_TILE + ty;  // the w row this thread loads
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += FB_TILE) {
        const int k = k0 + tx;
        xs[ty][tx] = (row < M && k < K) ? to_float(x[(size_t)row * K + k]) : 0.0f;
        ws[ty][tx] = (wrow < N && k < K) ? to_float(w[(size_t)wrow * K + k]) : 0.0f;
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < FB_TILE; ++kk) acc = fmaf(xs[ty][kk], ws[tx][kk], acc);
        __syncthreads();
    }
    if (row < M && col < N) y[(size_t)row * N + col] = from_float<T>(epilogue_value(acc, bias, residual, act, row, col, N));
}

#define LF_GEMM_FALLBACK(S, T)                                                                               \
    extern "C" __global__ void gemm_fallback_##S(const T* x, const T* w, const float* bias, const T* residual, \
                                                 T* y, int M, int N, int K, int act) {                        \
        gemm_fallback<T>(x, w, bias, residual, y, M, N, K, act);                                             \
    }
LF_GEMM_FALLBACK(bf16, __nv_bfloat16)
LF_GEMM_FALLBACK(f16, __half)

// ---------------------------------------------------------------------------------------------
// Epilogue alone, in place: y = act(y + bias) + residual (after a cuBLAS GEMM)
// ---------------------------------------------------------------------------------------------

template <typename T>
__device__ void bias_act_residual(T* __restrict__ y, const float* __restrict__ bias, const T* __restrict__ residual,
                                  int M, int N, int act) {
    const size_t total = (size_t)M * N;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int row = (int)(i / N), col = (int)(i % N);
        y[i] = from_float<T>(epilogue_value(to_float(y[i]), bias, residual, act, row, col, N));
    }
}

#define LF_BIAS_ACT_RESIDUAL(S, T)                                                                      \
    extern "C" __global__ void bias_act_residual_##S(T* y, const float* bias, const T* residual, int M, \
                                                     int N, int act) {                                  \
        bias_act_residual<T>(y, bias, residual, M, N, act);                                             \
    }
LF_FOR_FLOAT_TYPES(LF_BIAS_ACT_RESIDUAL)
