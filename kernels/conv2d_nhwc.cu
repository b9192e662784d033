// 2-D convolution, channels-last (NHWC), as a multistage implicit GEMM on the tensor cores; the
// backward kernels (dx for any stride, dw) follow at the end of the file on the same pipeline.
//
// y[m, n] = sum_k A[m, k] * w[n, k] with
//   m = (b, oy, ox) over B*Ho*Wo output pixels, n = output channel, k = (ky, kx, ci) over
//   ks*ks*Cin: the weight is (Cout, ks, ks, Cin), a row-major (N, K) matrix, and
//   A[m, k] = x[b, oy*stride - pad + ky, ox*stride - pad + kx, ci] (0 outside the image).
// Since ci is the fastest index of both x and k, 8 consecutive k are 8 consecutive channels of
// one input pixel: when Cin % 8 == 0 every 16-byte chunk of an A row is one aligned 16-byte
// global load, issued as cp.async straight into shared memory (no register staging). Other Cin
// (the stem's 3) gather the chunk element by element and store it themselves.
// The output y (B, Ho, Wo, Cout) is the row-major (M, N) matrix itself.
//
// Tile: 128 (pixels) x 64 (channels) x 32 (k), 4 warps of 64x32, 4 stages.
//   - Per k step a block moves (128 + 64) * 32 * 2 B = 12 KiB into shared memory for
//     2 * 128 * 64 * 32 = 512 KFLOP: 43 FLOP/B, against 32 for 64x64 (the old NCHW tile). 128x128
//     would reach 64 FLOP/B but wastes half the tile on ResNet-50's 64-channel layers, and
//     N = 64 divides every ResNet-50 width (64 .. 2048).
//   - A warp's 64x32 tile is 4 x 4 mma.sync m16n8k16 per 16 k from 4 + 2 ldmatrix.x4 (0.375
//     loads per mma, 0.5 for 32x32 warps); 64 f32 accumulators per thread.
//   - 4 stages of 12 KiB = 48 KiB of static shared memory: three tiles in flight while one is
//     multiplied, the latency of a global load at H100 rates; 4 blocks fit an SM (228 KiB).
// Shared tiles are rows of 32 halves (64 B, four 16-byte chunks) with chunk c of row r stored
// at chunk c ^ ((r >> 1) & 3): the 8 rows one ldmatrix phase reads (and the 8 chunks one
// cp.async phase writes) then cover all 32 banks, with no padding.
// Epilogue as conv2d: y = relu?((residual + conv) + bias), the f32 tile staged through shared
// memory (reusing the stages) so that each thread stores 8 consecutive channels in 16 bytes.
#include "common.cuh"

#include "mma.cuh"  // cp_async_16/commit/wait, ldmatrix_x4, mma_16816, smem_u32

// Shared-memory stores of 16 and 8 bytes at a 32-bit shared address. Written out because nvcc,
// not always able to prove the alignment of a computed shared pointer, split some of them into
// 4-byte stores, which put 4 lanes of a phase on one bank (the profile showed those conflicts).
static __device__ __forceinline__ void st_shared_16(uint32_t addr, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(a), "r"(b), "r"(c), "r"(d) : "memory");
}
static __device__ __forceinline__ void st_shared_f32x2(uint32_t addr, float a, float b) {
    asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(a), "f"(b) : "memory");
}

constexpr int NH_BM = 128, NH_BN = 64, NH_BK = 32, NH_STAGES = 4, NH_THREADS = 128;
constexpr int NH_WARP_M = 64, NH_WARP_N = 32;
constexpr int NH_MI = NH_WARP_M / 16, NH_NI = NH_WARP_N / 8;  // mma tiles per warp: 4 x 4
constexpr int NH_CHUNKS = NH_BK / 8;                           // 16-byte chunks per tile row
constexpr int NH_A_ROWS_PER_THREAD = NH_BM * NH_CHUNKS / NH_THREADS;  // 4
constexpr int NH_B_ROWS_PER_THREAD = NH_BN * NH_CHUNKS / NH_THREADS;  // 2
constexpr int NH_STAGE_ELEMS = (NH_BM + NH_BN) * NH_BK;               // A tile then B tile
// f32 output staging: row pitch 72 words puts the 4 row groups of an accumulator store 8 banks
// apart (a half-warp's 8-byte stores then cover 32 banks), see the epilogue for the reads.
constexpr int NH_CPITCH = NH_BN + 8;
static_assert((NH_BM * NH_CPITCH + NH_BN) * 4 <= NH_STAGES * NH_STAGE_ELEMS * 2,
              "the output tile and the block's biases reuse the stages");

// Element offset of (row, 8-element chunk) in a swizzled tile.
__device__ __forceinline__ int swz(int row, int chunk) { return row * NH_BK + ((chunk ^ ((row >> 1) & 3)) << 3); }

struct NhwcGeom {
    int B, H, W, Cin, Cout, ks, stride, pad, Ho, Wo;
    int M, K;  // B*Ho*Wo, ks*ks*Cin
};

// The output pixel one A row gathers for: the offset of its image in x and the top-left input
// coordinate of its receptive field. A row past M gets an origin so far outside the image that
// every tap is padding (it gathers zeros) without a separate flag.
struct RowOrigin {
    size_t image;  // b * H*W*Cin
    int iy0, ix0;
};

__device__ __forceinline__ RowOrigin row_origin(const NhwcGeom& g, int m) {
    RowOrigin o;
    if (m >= g.M) {
        o.image = 0;
        o.iy0 = -(1 << 28);
        o.ix0 = -(1 << 28);
        return o;
    }
    const int hw = g.Ho * g.Wo;
    const int b = m / hw, p = m - b * hw;
    const int oy = p / g.Wo, ox = p - oy * g.Wo;
    o.image = (size_t)b * g.H * g.W * g.Cin;
    o.iy0 = oy * g.stride - g.pad;
    o.ix0 = ox * g.stride - g.pad;
    return o;
}

// A reduction index decoded: tap (ky, kx) and channel ci.
struct Tap {
    int ky, kx, ci;
};
__device__ __forceinline__ Tap decode_k(const NhwcGeom& g, int k) {
    Tap t;
    const int tap = k / g.Cin;
    t.ci = k - tap * g.Cin;
    t.ky = tap / g.ks;
    t.kx = tap - t.ky * g.ks;
    return t;
}

__device__ __forceinline__ uint32_t bits16(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
__device__ __forceinline__ uint32_t bits16(__half v) { return __half_as_ushort(v); }
template <typename T> __device__ __forceinline__ uint32_t pack2(T lo, T hi) {
    return bits16(lo) | (bits16(hi) << 16);
}

// Loads k tile `kt` into one stage. Thread t owns chunk t % 4 of rows t / 4 + 32 i (A: i < 4,
// B: i < 2), so one k offset (one tap decode) serves all its rows; a warp's 8-lane phase covers
// two whole rows, 128 contiguous bytes of shared memory after the swizzle.
// VEC (Cin % 8 == 0, hence K % 8 == 0): one cp.async per chunk, zero-filled outside the image and
// past M, N or K. Otherwise: an element-wise gather stored with one 16-byte st.shared.
template <typename T, bool VEC>
__device__ __forceinline__ void load_stage(T* __restrict__ stage, const T* __restrict__ x, const T* __restrict__ w,
                                           const NhwcGeom& g, const RowOrigin (&origin)[NH_A_ROWS_PER_THREAD],
                                           int n0, int kt) {
    T* As = stage;                 // (128, 32) swizzled
    T* Bs = stage + NH_BM * NH_BK;  // (64, 32) swizzled
    const int chunk = threadIdx.x % NH_CHUNKS, row0 = threadIdx.x / NH_CHUNKS;
    const int k = kt * NH_BK + chunk * 8;
    if (VEC) {
        const Tap tp = decode_k(g, k);
        const bool k_in = k < g.K;
#pragma unroll
        for (int i = 0; i < NH_A_ROWS_PER_THREAD; ++i) {
            const int r = row0 + 32 * i;
            const int iy = origin[i].iy0 + tp.ky, ix = origin[i].ix0 + tp.kx;
            const bool in = k_in && iy >= 0 && iy < g.H && ix >= 0 && ix < g.W;
            const T* src = in ? x + origin[i].image + ((size_t)iy * g.W + ix) * g.Cin + tp.ci : x;
            cp_async_16(smem_u32(As + swz(r, chunk)), src, in ? 16 : 0);
        }
#pragma unroll
        for (int i = 0; i < NH_B_ROWS_PER_THREAD; ++i) {
            const int r = row0 + 32 * i, n = n0 + r;
            const bool in = k_in && n < g.Cout;
            const T* src = in ? w + (size_t)n * g.K + k : w;
            cp_async_16(smem_u32(Bs + swz(r, chunk)), src, in ? 16 : 0);
        }
    } else {
        const T zero = from_float<T>(0.0f);
#pragma unroll
        for (int i = 0; i < NH_A_ROWS_PER_THREAD; ++i) {
            const int r = row0 + 32 * i;
            Tap tp = decode_k(g, k);
            uint32_t packed[4];
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                T v[2];
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int iy = origin[i].iy0 + tp.ky, ix = origin[i].ix0 + tp.kx;
                    const bool in = k + j + h < g.K && iy >= 0 && iy < g.H && ix >= 0 && ix < g.W;
                    v[h] = in ? x[origin[i].image + ((size_t)iy * g.W + ix) * g.Cin + tp.ci] : zero;
                    // Step k by one: channel, then column, then row of the filter.
                    if (++tp.ci == g.Cin) {
                        tp.ci = 0;
                        if (++tp.kx == g.ks) {
                            tp.kx = 0;
                            ++tp.ky;
                        }
                    }
                }
                packed[j / 2] = pack2(v[0], v[1]);
            }
            st_shared_16(smem_u32(As + swz(r, chunk)), packed[0], packed[1], packed[2], packed[3]);
        }
#pragma unroll
        for (int i = 0; i < NH_B_ROWS_PER_THREAD; ++i) {
            const int r = row0 + 32 * i, n = n0 + r;
            const T* wr = w + (size_t)n * g.K;
            uint32_t packed[4];
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                const T lo = (n < g.Cout && k + j < g.K) ? wr[k + j] : zero;
                const T hi = (n < g.Cout && k + j + 1 < g.K) ? wr[k + j + 1] : zero;
                packed[j / 2] = pack2(lo, hi);
            }
            st_shared_16(smem_u32(Bs + swz(r, chunk)), packed[0], packed[1], packed[2], packed[3]);
        }
    }
}

// `count` (<= 8) consecutive outputs of one row: y = relu?((residual + acc) + bias), conv2d's
// order (`bias` holds zeros when there is none). `vec` (Cout % 8 == 0, so count == 8 and the
// row offset is 16-byte aligned): 16-byte loads and stores; else element by element.
template <typename T>
__device__ __forceinline__ void store_outputs(const float (&acc)[8], const float (&bias)[8], size_t off, int count,
                                              bool vec, const T* __restrict__ residual, T* __restrict__ y, int relu) {
    if (vec) {
        float v[8];
        if (residual != nullptr) {
            const uint4 q = *reinterpret_cast<const uint4*>(residual + off);
            const T* r = reinterpret_cast<const T*>(&q);
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = (to_float(r[j]) + acc[j]) + bias[j];
        } else {
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = acc[j] + bias[j];
        }
        uint32_t packed[4];
#pragma unroll
        for (int j = 0; j < 8; j += 2) {
            const float lo = relu ? fmaxf(v[j], 0.0f) : v[j];
            const float hi = relu ? fmaxf(v[j + 1], 0.0f) : v[j + 1];
            packed[j / 2] = pack2(from_float<T>(lo), from_float<T>(hi));
        }
        *reinterpret_cast<uint4*>(y + off) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
        return;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        if (j >= count) break;
        float u = acc[j];
        if (residual != nullptr) u = to_float(residual[off + j]) + u;
        u += bias[j];
        if (relu) u = fmaxf(u, 0.0f);
        y[off + j] = from_float<T>(u);
    }
}

// 8 consecutive floats of shared row `src` into v: two 16-byte reads, the upper half first when
// `upper_first` (see the epilogue: it keeps an 8-lane phase on 32 distinct banks).
__device__ __forceinline__ void load8_shared(const float* src, bool upper_first, float (&v)[8]) {
    const float4 p = *reinterpret_cast<const float4*>(src + (upper_first ? 4 : 0));
    const float4 q = *reinterpret_cast<const float4*>(src + (upper_first ? 0 : 4));
    const float4 lo = upper_first ? q : p, hi = upper_first ? p : q;
    v[0] = lo.x; v[1] = lo.y; v[2] = lo.z; v[3] = lo.w;
    v[4] = hi.x; v[5] = hi.y; v[6] = hi.z; v[7] = hi.w;
}

template <typename T, bool VEC>
__device__ void conv2d_nhwc_mma(T* __restrict__ smem, const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ bias,
                                const T* __restrict__ residual, T* __restrict__ y, NhwcGeom g, int relu) {
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const int wm = (warp & 1) * NH_WARP_M, wn = (warp >> 1) * NH_WARP_N;
    const int m0 = blockIdx.x * NH_BM, n0 = blockIdx.y * NH_BN;
    const int ktiles = (g.K + NH_BK - 1) / NH_BK;

    RowOrigin origin[NH_A_ROWS_PER_THREAD];
#pragma unroll
    for (int i = 0; i < NH_A_ROWS_PER_THREAD; ++i) origin[i] = row_origin(g, m0 + t / NH_CHUNKS + 32 * i);

    float acc[NH_MI][NH_NI][4];
#pragma unroll
    for (int i = 0; i < NH_MI; ++i)
#pragma unroll
        for (int j = 0; j < NH_NI; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    // Prologue: tiles 0 .. STAGES-2 in flight, one commit group per tile slot (empty or not) so
    // that wait_group counts stay in step with tile indices.
#pragma unroll
    for (int s = 0; s < NH_STAGES - 1; ++s) {
        if (s < ktiles) load_stage<T, VEC>(smem + s * NH_STAGE_ELEMS, x, w, g, origin, n0, s);
        cp_async_commit();
    }

    for (int kt = 0; kt < ktiles; ++kt) {
        // At most STAGES-2 groups pending: tile kt has landed for this thread. The barrier makes
        // every thread's copies visible and ends every warp's reads of the stage the prefetch
        // below overwrites (read in iteration kt - 1).
        cp_async_wait<NH_STAGES - 2>();
        __syncthreads();
        const int next = kt + NH_STAGES - 1;
        if (next < ktiles) load_stage<T, VEC>(smem + (next % NH_STAGES) * NH_STAGE_ELEMS, x, w, g, origin, n0, next);
        cp_async_commit();

        const T* As = smem + (kt % NH_STAGES) * NH_STAGE_ELEMS;
        const T* Bs = As + NH_BM * NH_BK;
#pragma unroll
        for (int kc = 0; kc < NH_CHUNKS; kc += 2) {  // 16 k = 2 chunks per mma
            uint32_t af[NH_MI][4], bf[NH_NI][2];
            // A 16x16: lanes 0-15 rows 0-15 at chunk kc, lanes 16-31 the same rows at kc + 1:
            // a0..a3 = (rows 0-7, k 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15).
#pragma unroll
            for (int i = 0; i < NH_MI; ++i)
                ldmatrix_x4(af[i], smem_u32(As + swz(wm + 16 * i + (lane & 15), kc + (lane >> 4))));
            // B stored (n, k) is the col-major operand: one x4 gives b0, b1 of two 8-column tiles
            // (lanes 0-7 n 0-7 chunk kc, 8-15 n 0-7 kc + 1, 16-23 n 8-15 kc, 24-31 n 8-15 kc + 1).
#pragma unroll
            for (int j = 0; j < NH_NI; j += 2) {
                uint32_t r[4];
                ldmatrix_x4(r, smem_u32(Bs + swz(wn + 8 * j + (lane & 7) + ((lane >> 4) << 3), kc + ((lane >> 3) & 1))));
                bf[j][0] = r[0];
                bf[j][1] = r[1];
                bf[j + 1][0] = r[2];
                bf[j + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < NH_MI; ++i)
#pragma unroll
                for (int j = 0; j < NH_NI; ++j) mma_16816(acc[i][j], af[i], bf[j], T());
        }
    }
    cp_async_wait<0>();  // only empty groups remain; leave nothing in flight
    __syncthreads();     // every warp is done with the stages the output tile now overwrites

    // Accumulators -> f32 tile (128, 64) at pitch 72: acc[i][j][0..1] is (row lane/4, cols
    // 2 (lane%4) + 0..1), [2..3] the row 8 below; one 8-byte store per pair.
    float* Cs = reinterpret_cast<float*>(smem);
    const int group = lane >> 2, quad = lane & 3;
#pragma unroll
    for (int i = 0; i < NH_MI; ++i)
#pragma unroll
        for (int j = 0; j < NH_NI; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = wm + 16 * i + group + 8 * h, c = wn + 8 * j + 2 * quad;
                st_shared_f32x2(smem_u32(Cs + r * NH_CPITCH + c), acc[i][j][2 * h], acc[i][j][2 * h + 1]);
            }
    // The block's 64 biases (zeros without a bias) beside the tile: read from global once per
    // block instead of once per output row.
    float* bias_s = Cs + NH_BM * NH_CPITCH;
    if (t < NH_BN) bias_s[t] = (bias != nullptr && n0 + t < g.Cout) ? bias[n0 + t] : 0.0f;
    __syncthreads();

    // Thread t stores channels 8 (t % 8) .. +8 of rows t / 8 + 16 i: 8 lanes write one row's
    // 128 contiguous bytes. Of its two 16-byte reads, lanes with chunk >= 4 read the upper half
    // first, so each 8-lane phase covers 32 distinct banks (chunks c and c + 4 are 32 words apart).
    const int chunk = t % 8;
    const bool upper_first = chunk >= 4;
    const bool vec_out = (g.Cout % 8) == 0;  // rows of y (and residual) start 16-byte aligned
    float b8[8];
    load8_shared(bias_s + 8 * chunk, upper_first, b8);
    for (int i = 0; i < NH_BM * 8 / NH_THREADS; ++i) {
        const int r = t / 8 + 16 * i, m = m0 + r, n = n0 + 8 * chunk;
        if (m >= g.M || n >= g.Cout) continue;
        float v[8];
        load8_shared(Cs + r * NH_CPITCH + 8 * chunk, upper_first, v);
        store_outputs<T>(v, b8, (size_t)m * g.Cout + n, min(8, g.Cout - n), vec_out, residual, y, relu);
    }
}

// Entry points: grid (ceil(M / 128), ceil(Cout / 64)), block 128, no dynamic shared memory.
// x (B, H, W, Cin), w (Cout, ks, ks, Cin), bias (Cout,) f32 or null, residual (B, Ho, Wo, Cout)
// or null, y (B, Ho, Wo, Cout).
#define LF_CONV2D_NHWC_ARGS(T)                                                                          \
    const T *x, const T *w, const float *bias, const T *residual, T *y, int B, int H, int W, int Cin, \
        int Cout, int ks, int stride, int pad, int Ho, int Wo, int relu

template <typename T>
__device__ __forceinline__ void conv2d_nhwc_entry(const T* x, const T* w, const float* bias, const T* residual, T* y,
                                                  int B, int H, int W, int Cin, int Cout, int ks, int stride, int pad,
                                                  int Ho, int Wo, int relu) {
    NhwcGeom g;
    g.B = B; g.H = H; g.W = W; g.Cin = Cin; g.Cout = Cout; g.ks = ks; g.stride = stride; g.pad = pad;
    g.Ho = Ho; g.Wo = Wo;
    g.M = B * Ho * Wo;
    g.K = ks * ks * Cin;
    // Declared here, not in the templated body: each instantiation would get its own array.
    __shared__ __align__(128) T smem[NH_STAGES * NH_STAGE_ELEMS];
    if (Cin % 8 == 0)
        conv2d_nhwc_mma<T, true>(smem, x, w, bias, residual, y, g, relu);
    else
        conv2d_nhwc_mma<T, false>(smem, x, w, bias, residual, y, g, relu);
}

extern "C" __global__ void __launch_bounds__(NH_THREADS) conv2d_nhwc_forward_bf16(LF_CONV2D_NHWC_ARGS(__nv_bfloat16)) {
    conv2d_nhwc_entry(x, w, bias, residual, y, B, H, W, Cin, Cout, ks, stride, pad, Ho, Wo, relu);
}
extern "C" __global__ void __launch_bounds__(NH_THREADS) conv2d_nhwc_forward_f16(LF_CONV2D_NHWC_ARGS(__half)) {
    conv2d_nhwc_entry(x, w, bias, residual, y, B, H, W, Cin, Cout, ks, stride, pad, Ho, Wo, relu);
}

// ---------------------------------------------------------------------------------------------
// Backward kernels. Both keep the forward's pipeline (128 x 64 x 32 block tile, 4 warps of 64x32,
// 4 cp.async stages of 12 KiB, mma.sync m16n8k16, f32 accumulate), but one operand (bwd-data) or
// both (bwd-weight) arrive with the GEMM's k as the row: channels are the contiguous index of
// every tensor, and here they are the GEMM's m or n. Such a tile is stored k-major, rows of 64 or
// 128 halves, chunk c of row r at c ^ (r & 7) (8 consecutive rows, one ldmatrix phase, then hit 8
// distinct 16-byte bank groups; an 8-lane cp.async phase writes one row's 128 contiguous bytes),
// and read with ldmatrix.trans, which hands out the column-major fragment mma.sync wants.

// Element offset of (row, chunk) in a k-major tile of 8 chunks (64 halves) per row.
__device__ __forceinline__ int swz_k64(int row, int chunk) { return row * 64 + ((chunk ^ (row & 7)) << 3); }
// The same for 16 chunks (128 halves) per row: the XOR touches the low 3 bits only.
__device__ __forceinline__ int swz_k128(int row, int chunk) { return row * 128 + ((chunk ^ (row & 7)) << 3); }

// B fragments of a warp's 32 columns from a k-major (32 k, 64 n) tile, k step kk (0 or 16):
// ldmatrix.x4.trans, matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15)
// = b0, b1 of column tile j and b0, b1 of j + 1.
template <typename T>
__device__ __forceinline__ void load_b_kmajor(const T* Bs, int wn, int kk, int lane, uint32_t (&bf)[NH_NI][2]) {
    const int q = lane >> 3;
#pragma unroll
    for (int j = 0; j < NH_NI; j += 2) {
        uint32_t r[4];
        ldmatrix_x4_trans(r, smem_u32(Bs + swz_k64(kk + ((q & 1) << 3) + (lane & 7), (wn + 8 * j) / 8 + (q >> 1))));
        bf[j][0] = r[0];
        bf[j][1] = r[1];
        bf[j + 1][0] = r[2];
        bf[j + 1][1] = r[3];
    }
}

// ---------------------------------------------------------------------------------------------
// Backward-data, any stride: dx[b, h, w, ci] = sum over (ky, kx, co) of
// dy[b, (h + pad - ky) / s, (w + pad - kx) / s, co] * w[co, ky, kx, ci], over the taps whose
// division is exact and lands inside dy. An implicit GEMM with m = dx pixel, n = ci, k = (tap, co).
// Phase split: the pixels with h % s == ph and w % s == pw (phase blockIdx.z) all take the taps
// ky = ky0 + s jy with ky0 = (ph + pad) % s (and kx likewise), so each phase is its own GEMM
// over its own taps and no k step multiplies a zero that the stride put there: with
// h = ph + s i, oy = oyb + i - jy where oyb = (ph + pad - ky0) / s. Stride 1 is one phase.
// A (dy rows, m x k) is stored m-major like the forward's; B (w, k x n: row (co, tap) is
// w[co, ky, kx, n0 .. n0 + 64], 128 contiguous bytes) k-major.
struct BwdDataGeom {
    int B, H, W, Cin, Cout, ks, stride, pad, Ho, Wo;
    int ph, pw, Hp, Wp, M;  // this phase's pixels: (ph + s i, pw + s j), i < Hp, j < Wp; M = B*Hp*Wp
    int ky0, kx0, nkx, K;   // its taps (ky0 + s jy, kx0 + s jx), jx < nkx; K = taps * Cout
    int oyb, oxb;
};

// The dy pixel grid one A row reads from: the offset of its image in dy and (oyb + i, oxb + j);
// a row past M gets an origin so far outside dy that every tap reads zeros.
struct DyOrigin {
    int image;  // b * Ho*Wo: the image's first pixel in dy
    int oy0, ox0;
};

__device__ __forceinline__ DyOrigin dy_origin(const BwdDataGeom& g, int m) {
    DyOrigin o;
    if (m >= g.M) {
        o.image = 0;
        o.oy0 = -(1 << 28);
        o.ox0 = -(1 << 28);
        return o;
    }
    const int hw = g.Hp * g.Wp;
    const int b = m / hw, p = m - b * hw;
    const int i = p / g.Wp, j = p - i * g.Wp;
    o.image = b * g.Ho * g.Wo;
    o.oy0 = g.oyb + i;
    o.ox0 = g.oxb + j;
    return o;
}

// A reduction index of this phase decoded: tap steps (jy, jx) and output channel co.
struct PhaseTap {
    int jy, jx, co;
};
__device__ __forceinline__ PhaseTap decode_phase_k(const BwdDataGeom& g, int k) {
    PhaseTap t;
    const int tap = k / g.Cout;
    t.co = k - tap * g.Cout;
    t.jy = tap / g.nkx;
    t.jx = tap - t.jy * g.nkx;
    return t;
}
// Offset of w[co, ky, kx, 0] for a decoded index.
__device__ __forceinline__ size_t w_row(const BwdDataGeom& g, const PhaseTap& t) {
    const int ky = g.ky0 + g.stride * t.jy, kx = g.kx0 + g.stride * t.jx;
    return (((size_t)t.co * g.ks + ky) * g.ks + kx) * g.Cin;
}

// Loads k tile `kt` into one stage. A: thread t owns chunk t % 4 of rows t / 4 + 32 i (one k
// decode serves its 4 rows), as in the forward. B: chunk t % 8 of k rows t / 8 + 16 i, an 8-lane
// phase reading one row's 128 bytes. VEC (Cout % 8 == 0 and Cin % 8 == 0): 16-byte cp.async,
// zero-filled where the tap misses dy and past M, N, K; otherwise element gathers.
template <typename T, bool VEC>
__device__ __forceinline__ void load_stage_bwd_data(T* __restrict__ stage, const T* __restrict__ dy,
                                                    const T* __restrict__ w, const BwdDataGeom& g,
                                                    const DyOrigin (&origin)[NH_A_ROWS_PER_THREAD], int n0, int kt) {
    T* As = stage;                  // (128 pixels, 32 k) swizzled as the forward's
    T* Bs = stage + NH_BM * NH_BK;  // (32 k, 64 ci) k-major
    const int a_chunk = threadIdx.x % NH_CHUNKS, a_row0 = threadIdx.x / NH_CHUNKS;
    const int b_chunk = threadIdx.x % 8, b_row0 = threadIdx.x / 8;
    const int ka = kt * NH_BK + a_chunk * 8;
    const int n = n0 + b_chunk * 8;
    if (VEC) {
        const PhaseTap tp = decode_phase_k(g, ka);
        const bool k_in = ka < g.K;
#pragma unroll
        for (int i = 0; i < NH_A_ROWS_PER_THREAD; ++i) {
            const int r = a_row0 + 32 * i;
            const int oy = origin[i].oy0 - tp.jy, ox = origin[i].ox0 - tp.jx;
            const bool in = k_in && oy >= 0 && oy < g.Ho && ox >= 0 && ox < g.Wo;
            const T* src = in ? dy + (size_t)(origin[i].image + oy * g.Wo + ox) * g.Cout + tp.co : dy;
            cp_async_16(smem_u32(As + swz(r, a_chunk)), src, in ? 16 : 0);
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int r = b_row0 + 16 * i, k = kt * NH_BK + r;
            const bool in = k < g.K && n < g.Cin;
            const T* src = in ? w + w_row(g, decode_phase_k(g, k)) + n : w;
            cp_async_16(smem_u32(Bs + swz_k64(r, b_chunk)), src, in ? 16 : 0);
        }
    } else {
        const T zero = from_float<T>(0.0f);
#pragma unroll
        for (int i = 0; i < NH_A_ROWS_PER_THREAD; ++i) {
            const int r = a_row0 + 32 * i;
            PhaseTap tp = decode_phase_k(g, ka);
            uint32_t packed[4];
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                T v[2];
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int oy = origin[i].oy0 - tp.jy, ox = origin[i].ox0 - tp.jx;
                    const bool in = ka + j + h < g.K && oy >= 0 && oy < g.Ho && ox >= 0 && ox < g.Wo;
                    v[h] = in ? dy[(size_t)(origin[i].image + oy * g.Wo + ox) * g.Cout + tp.co] : zero;
                    // Step k by one: channel, then tap column, then tap row.
                    if (++tp.co == g.Cout) {
                        tp.co = 0;
                        if (++tp.jx == g.nkx) {
                            tp.jx = 0;
                            ++tp.jy;
                        }
                    }
                }
                packed[j / 2] = pack2(v[0], v[1]);
            }
            st_shared_16(smem_u32(As + swz(r, a_chunk)), packed[0], packed[1], packed[2], packed[3]);
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int r = b_row0 + 16 * i, k = kt * NH_BK + r;
            const bool k_in = k < g.K;
            const T* wr = w + (k_in ? w_row(g, decode_phase_k(g, k)) : 0);
            uint32_t packed[4];
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                const T lo = (k_in && n + j < g.Cin) ? wr[n + j] : zero;
                const T hi = (k_in && n + j + 1 < g.Cin) ? wr[n + j + 1] : zero;
                packed[j / 2] = pack2(lo, hi);
            }
            st_shared_16(smem_u32(Bs + swz_k64(r, b_chunk)), packed[0], packed[1], packed[2], packed[3]);
        }
    }
}

template <typename T, bool VEC>
__device__ void conv2d_nhwc_bwd_data_mma(T* __restrict__ smem, const T* __restrict__ dy, const T* __restrict__ w,
                                         T* __restrict__ dx, const BwdDataGeom g) {
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const int wm = (warp & 1) * NH_WARP_M, wn = (warp >> 1) * NH_WARP_N;
    const int m0 = blockIdx.x * NH_BM, n0 = blockIdx.y * NH_BN;
    if (m0 >= g.M) return;  // the grid covers the largest phase; the whole block leaves
    const int ktiles = (g.K + NH_BK - 1) / NH_BK;  // 0 when no tap reaches this phase: dx = 0

    DyOrigin origin[NH_A_ROWS_PER_THREAD];
#pragma unroll
    for (int i = 0; i < NH_A_ROWS_PER_THREAD; ++i) origin[i] = dy_origin(g, m0 + t / NH_CHUNKS + 32 * i);

    float acc[NH_MI][NH_NI][4];
#pragma unroll
    for (int i = 0; i < NH_MI; ++i)
#pragma unroll
        for (int j = 0; j < NH_NI; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

#pragma unroll
    for (int s = 0; s < NH_STAGES - 1; ++s) {
        if (s < ktiles) load_stage_bwd_data<T, VEC>(smem + s * NH_STAGE_ELEMS, dy, w, g, origin, n0, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < ktiles; ++kt) {
        cp_async_wait<NH_STAGES - 2>();
        __syncthreads();
        const int next = kt + NH_STAGES - 1;
        if (next < ktiles)
            load_stage_bwd_data<T, VEC>(smem + (next % NH_STAGES) * NH_STAGE_ELEMS, dy, w, g, origin, n0, next);
        cp_async_commit();

        const T* As = smem + (kt % NH_STAGES) * NH_STAGE_ELEMS;
        const T* Bs = As + NH_BM * NH_BK;
#pragma unroll
        for (int kc = 0; kc < NH_CHUNKS; kc += 2) {
            uint32_t af[NH_MI][4], bf[NH_NI][2];
#pragma unroll
            for (int i = 0; i < NH_MI; ++i)
                ldmatrix_x4(af[i], smem_u32(As + swz(wm + 16 * i + (lane & 15), kc + (lane >> 4))));
            load_b_kmajor(Bs, wn, kc * 8, lane, bf);
#pragma unroll
            for (int i = 0; i < NH_MI; ++i)
#pragma unroll
                for (int j = 0; j < NH_NI; ++j) mma_16816(acc[i][j], af[i], bf[j], T());
        }
    }
    cp_async_wait<0>();
    __syncthreads();

    // Epilogue as the forward's (f32 tile at pitch 72, 8 lanes per 128-byte row of dx), without
    // bias or residual; the row's pixel goes back from the phase grid to dx.
    float* Cs = reinterpret_cast<float*>(smem);
    const int group = lane >> 2, quad = lane & 3;
#pragma unroll
    for (int i = 0; i < NH_MI; ++i)
#pragma unroll
        for (int j = 0; j < NH_NI; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = wm + 16 * i + group + 8 * h, c = wn + 8 * j + 2 * quad;
                st_shared_f32x2(smem_u32(Cs + r * NH_CPITCH + c), acc[i][j][2 * h], acc[i][j][2 * h + 1]);
            }
    __syncthreads();
    const int chunk = t % 8;
    const bool upper_first = chunk >= 4;
    const bool vec_out = (g.Cin % 8) == 0;
    const float zeros[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    const int hw = g.Hp * g.Wp;
    for (int i = 0; i < NH_BM * 8 / NH_THREADS; ++i) {
        const int r = t / 8 + 16 * i, m = m0 + r, n = n0 + 8 * chunk;
        if (m >= g.M || n >= g.Cin) continue;
        const int b = m / hw, p = m - b * hw;
        const int pi = p / g.Wp, pj = p - pi * g.Wp;
        const int h = g.ph + g.stride * pi, x = g.pw + g.stride * pj;
        float v[8];
        load8_shared(Cs + r * NH_CPITCH + 8 * chunk, upper_first, v);
        store_outputs<T>(v, zeros, (((size_t)b * g.H + h) * g.W + x) * g.Cin + n, min(8, g.Cin - n), vec_out,
                         nullptr, dx, 0);
    }
}

// Entry points: grid (ceil(B * ceil(H/s) * ceil(W/s) / 128), ceil(Cin / 64), s*s phases), block
// 128. dy (B, Ho, Wo, Cout), w (Cout, ks, ks, Cin), dx (B, H, W, Cin) overwritten.
#define LF_CONV2D_NHWC_BWD_DATA_ARGS(T)                                                                       \
    const T *dy, const T *w, T *dx, int B, int H, int W, int Cin, int Cout, int ks, int stride, int pad, int Ho, \
        int Wo

template <typename T>
__device__ __forceinline__ void conv2d_nhwc_bwd_data_entry(const T* dy, const T* w, T* dx, int B, int H, int W,
                                                           int Cin, int Cout, int ks, int stride, int pad, int Ho,
                                                           int Wo) {
    BwdDataGeom g;
    g.B = B; g.H = H; g.W = W; g.Cin = Cin; g.Cout = Cout; g.ks = ks; g.stride = stride; g.pad = pad;
    g.Ho = Ho; g.Wo = Wo;
    g.ph = blockIdx.z / stride;
    g.pw = blockIdx.z - g.ph * stride;
    g.Hp = (H - g.ph + stride - 1) / stride;  // H - ph >= 1 - (s - 1): the numerator stays >= 1
    g.Wp = (W - g.pw + stride - 1) / stride;
    g.M = B * g.Hp * g.Wp;
    g.ky0 = (g.ph + pad) % stride;
    g.kx0 = (g.pw + pad) % stride;
    const int nky = g.ky0 < ks ? (ks - g.ky0 + stride - 1) / stride : 0;
    g.nkx = g.kx0 < ks ? (ks - g.kx0 + stride - 1) / stride : 0;
    g.K = nky * g.nkx * Cout;
    g.oyb = (g.ph + pad - g.ky0) / stride;
    g.oxb = (g.pw + pad - g.kx0) / stride;
    __shared__ __align__(128) T smem[NH_STAGES * NH_STAGE_ELEMS];
    if (Cin % 8 == 0 && Cout % 8 == 0)
        conv2d_nhwc_bwd_data_mma<T, true>(smem, dy, w, dx, g);
    else
        conv2d_nhwc_bwd_data_mma<T, false>(smem, dy, w, dx, g);
}

extern "C" __global__ void __launch_bounds__(NH_THREADS)
    conv2d_nhwc_backward_data_bf16(LF_CONV2D_NHWC_BWD_DATA_ARGS(__nv_bfloat16)) {
    conv2d_nhwc_bwd_data_entry(dy, w, dx, B, H, W, Cin, Cout, ks, stride, pad, Ho, Wo);
}
extern "C" __global__ void __launch_bounds__(NH_THREADS)
    conv2d_nhwc_backward_data_f16(LF_CONV2D_NHWC_BWD_DATA_ARGS(__half)) {
    conv2d_nhwc_bwd_data_entry(dy, w, dx, B, H, W, Cin, Cout, ks, stride, pad, Ho, Wo);
}

// ---------------------------------------------------------------------------------------------
// Backward-weight: dw[co, ky, kx, ci] (+)= sum over output pixels p = (b, oy, ox) of
// dy[p, co] * x[b, oy s - pad + ky, ox s - pad + kx, ci]. A GEMM with m = co, n = (ky, kx, ci)
// (dw (Cout, ks, ks, Cin) is the row-major (M, N) matrix), k = p: long (B*Ho*Wo), so blockIdx.z
// takes a contiguous run of k tiles and writes its own f32 partial (M, N), added up afterwards in
// a fixed order (no atomics: the result is the same bits on every run). Both operands have k as
// the row: A = dy (32 pixels, BM = 128 or 64 co: 256 or 128 contiguous bytes per row),
// B = im2col(x) (32 pixels, 64 n: 8 consecutive n are 8 channels of one input pixel when
// Cin % 8 == 0, one 16-byte load); both stored k-major and read with ldmatrix.trans.
struct BwdWeightGeom {
    int B, H, W, Cin, Cout, ks, stride, pad, Ho, Wo;
    int P, N;  // B*Ho*Wo, ks*ks*Cin
};

// BM, the block's output channels (its GEMM's m): 128, or 64 for layers of at most 64 channels,
// whose m tile would otherwise be half empty. The warps are 2 x 2 either way, BM / 2 x 32 each.
// Element offset of (row, chunk) in the k-major A tile of BM / 8 chunks per row (the XOR touches
// the low 3 bits only).
template <int BM> __device__ __forceinline__ int swz_a(int row, int chunk) {
    return row * BM + ((chunk ^ (row & 7)) << 3);
}

// Loads pixel tile `kt` into one stage. A: thread t owns chunk t % 16 of rows t / 16 + 8 i
// (i < 4); B: chunk t % 8 of rows t / 8 + 16 i (i < 2), whose columns n .. n + 8 are fixed for
// the whole kernel (tap `tp` decoded once). VEC (Cout % 8 == 0 and Cin % 8 == 0): cp.async,
// zero-filled past P, M, N and in the padding; otherwise element gathers.
template <typename T, bool VEC, int BM>
__device__ __forceinline__ void load_stage_bwd_weight(T* __restrict__ stage, const T* __restrict__ x,
                                                      const T* __restrict__ dy, const BwdWeightGeom& g, int m0,
                                                      int n, const Tap& tp, int kt) {
    constexpr int A_CHUNKS = BM / 8, A_ROW_STEP = NH_THREADS / A_CHUNKS;
    T* As = stage;               // (32 pixels, BM co) k-major
    T* Bs = stage + BM * NH_BK;  // (32 pixels, 64 n) k-major
    const int a_chunk = threadIdx.x % A_CHUNKS, a_row0 = threadIdx.x / A_CHUNKS;
    const int b_chunk = threadIdx.x % 8, b_row0 = threadIdx.x / 8;
    const int co = m0 + a_chunk * 8;
    const T zero = from_float<T>(0.0f);
#pragma unroll
    for (int i = 0; i < NH_BK / A_ROW_STEP; ++i) {
        const int r = a_row0 + A_ROW_STEP * i, p = kt * NH_BK + r;
        if (VEC) {
            const bool in = p < g.P && co < g.Cout;
            cp_async_16(smem_u32(As + swz_a<BM>(r, a_chunk)), in ? dy + (size_t)p * g.Cout + co : dy, in ? 16 : 0);
        } else {
            const T* row = dy + (size_t)p * g.Cout;
            uint32_t packed[4];
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                const T lo = (p < g.P && co + j < g.Cout) ? row[co + j] : zero;
                const T hi = (p < g.P && co + j + 1 < g.Cout) ? row[co + j + 1] : zero;
                packed[j / 2] = pack2(lo, hi);
            }
            st_shared_16(smem_u32(As + swz_a<BM>(r, a_chunk)), packed[0], packed[1], packed[2], packed[3]);
        }
    }
    const int hw = g.Ho * g.Wo;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int r = b_row0 + 16 * i, p = kt * NH_BK + r;
        // The row's receptive-field origin; a pixel past P gets one far outside the image.
        int iy0 = -(1 << 28), ix0 = -(1 << 28);
        size_t image = 0;
        if (p < g.P) {
            const int b = p / hw, q = p - b * hw;
            const int oy = q / g.Wo, ox = q - oy * g.Wo;
            image = (size_t)b * g.H * g.W * g.Cin;
            iy0 = oy * g.stride - g.pad;
            ix0 = ox * g.stride - g.pad;
        }
        if (VEC) {
            const int iy = iy0 + tp.ky, ix = ix0 + tp.kx;
            const bool in = n < g.N && iy >= 0 && iy < g.H && ix >= 0 && ix < g.W;
            const T* src = in ? x + image + ((size_t)iy * g.W + ix) * g.Cin + tp.ci : x;
            cp_async_16(smem_u32(Bs + swz_k64(r, b_chunk)), src, in ? 16 : 0);
        } else {
            Tap e = tp;
            uint32_t packed[4];
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                T v[2];
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int iy = iy0 + e.ky, ix = ix0 + e.kx;
                    const bool in = n + j + h < g.N && iy >= 0 && iy < g.H && ix >= 0 && ix < g.W;
                    v[h] = in ? x[image + ((size_t)iy * g.W + ix) * g.Cin + e.ci] : zero;
                    if (++e.ci == g.Cin) {
                        e.ci = 0;
                        if (++e.kx == g.ks) {
                            e.kx = 0;
                            ++e.ky;
                        }
                    }
                }
                packed[j / 2] = pack2(v[0], v[1]);
            }
            st_shared_16(smem_u32(Bs + swz_k64(r, b_chunk)), packed[0], packed[1], packed[2], packed[3]);
        }
    }
}

template <typename T, bool VEC, int BM>
__device__ void conv2d_nhwc_bwd_weight_mma(T* __restrict__ smem, const T* __restrict__ x, const T* __restrict__ dy,
                                           float* __restrict__ out, const BwdWeightGeom g, int tiles_per_split,
                                           int accumulate) {
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    constexpr int MI = BM / 32, STAGE_ELEMS = (BM + NH_BN) * NH_BK;  // m16 tiles per warp
    const int wm = (warp & 1) * (BM / 2), wn = (warp >> 1) * NH_WARP_N;
    const int n0 = blockIdx.x * NH_BN, m0 = blockIdx.y * BM;
    const int kt0 = blockIdx.z * tiles_per_split;
    const int ktiles = max(0, min(tiles_per_split, (g.P + NH_BK - 1) / NH_BK - kt0));
    const int n = n0 + (t % 8) * 8;  // this thread's B columns
    Tap tp;
    {
        // Decoded once: a chunk past N (or any tap with Cin % 8 != 0) still decodes safely.
        const int tap = n / g.Cin;
        tp.ci = n - tap * g.Cin;
        tp.ky = tap / g.ks;
        tp.kx = tap - tp.ky * g.ks;
    }

    float acc[MI][NH_NI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NH_NI; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

#pragma unroll
    for (int s = 0; s < NH_STAGES - 1; ++s) {
        if (s < ktiles) load_stage_bwd_weight<T, VEC, BM>(smem + s * STAGE_ELEMS, x, dy, g, m0, n, tp, kt0 + s);
        cp_async_commit();
    }
    for (int kt = 0; kt < ktiles; ++kt) {
        cp_async_wait<NH_STAGES - 2>();
        __syncthreads();
        const int next = kt + NH_STAGES - 1;
        if (next < ktiles)
            load_stage_bwd_weight<T, VEC, BM>(smem + (next % NH_STAGES) * STAGE_ELEMS, x, dy, g, m0, n, tp,
                                          kt0 + next);
        cp_async_commit();

        const T* As = smem + (kt % NH_STAGES) * STAGE_ELEMS;
        const T* Bs = As + BM * NH_BK;
#pragma unroll
        for (int kk = 0; kk < NH_BK; kk += 16) {
            uint32_t af[MI][4], bf[NH_NI][2];
            // A stored (k, m): ldmatrix.x4.trans of (k 0-7, m 0-7), (k 0-7, m 8-15), (k 8-15, m 0-7),
            // (k 8-15, m 8-15) = a0 .. a3 of the row-major 16x16 fragment.
            const int q = lane >> 3;
#pragma unroll
            for (int i = 0; i < MI; ++i)
                ldmatrix_x4_trans(af[i],
                                  smem_u32(As + swz_a<BM>(kk + ((q >> 1) << 3) + (lane & 7), (wm + 16 * i) / 8 + (q & 1))));
            load_b_kmajor(Bs, wn, kk, lane, bf);
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < NH_NI; ++j) mma_16816(acc[i][j], af[i], bf[j], T());
        }
    }
    cp_async_wait<0>();

    // Straight from the accumulators: a pair (row, 2 quad .. + 1) per 8-byte access, 4 lanes
    // covering one 32-byte sector of a row (N % 8 == 0). `out` is dw (accumulate: +=) or this
    // split's partial (M, N) slice (=).
    float* dst = out + (size_t)blockIdx.z * g.Cout * g.N;
    const int group = lane >> 2, quad = lane & 3;
    const bool pairs = (g.N % 2) == 0;  // 8-byte aligned pairs
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NH_NI; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int m = m0 + wm + 16 * i + group + 8 * h, c = n0 + wn + 8 * j + 2 * quad;
                if (m >= g.Cout || c >= g.N) continue;
                float* d = dst + (size_t)m * g.N + c;
                const float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
                if (pairs) {
                    float2 o = make_float2(v0, v1);
                    if (accumulate) {
                        const float2 old = *reinterpret_cast<const float2*>(d);
                        o.x += old.x;
                        o.y += old.y;
                    }
                    *reinterpret_cast<float2*>(d) = o;
                } else {
                    d[0] = accumulate ? d[0] + v0 : v0;
                    if (c + 1 < g.N) d[1] = accumulate ? d[1] + v1 : v1;
                }
            }
}

// Entry points: grid (ceil(ks*ks*Cin / 64), ceil(Cout / BM), splits), block 128. x (B, H, W, Cin),
// dy (B, Ho, Wo, Cout); out f32: dw (Cout, ks, ks, Cin) when accumulate (one split), else the
// (splits, Cout, ks*ks*Cin) partials; split z covers pixel tiles [z, z + 1) * tiles_per_split.
#define LF_CONV2D_NHWC_BWD_WEIGHT_ARGS(T)                                                                     \
    const T *x, const T *dy, float *out, int B, int H, int W, int Cin, int Cout, int ks, int stride, int pad, \
        int Ho, int Wo, int tiles_per_split, int accumulate

template <typename T, int BM>
__device__ __forceinline__ void conv2d_nhwc_bwd_weight_entry(const T* x, const T* dy, float* out, int B, int H, int W,
                                                             int Cin, int Cout, int ks, int stride, int pad, int Ho,
                                                             int Wo, int tiles_per_split, int accumulate) {
    BwdWeightGeom g;
    g.B = B; g.H = H; g.W = W; g.Cin = Cin; g.Cout = Cout; g.ks = ks; g.stride = stride; g.pad = pad;
    g.Ho = Ho; g.Wo = Wo;
    g.P = B * Ho * Wo;
    g.N = ks * ks * Cin;
    __shared__ __align__(128) T smem[NH_STAGES * (BM + NH_BN) * NH_BK];
    if (Cin % 8 == 0 && Cout % 8 == 0)
        conv2d_nhwc_bwd_weight_mma<T, true, BM>(smem, x, dy, out, g, tiles_per_split, accumulate);
    else
        conv2d_nhwc_bwd_weight_mma<T, false, BM>(smem, x, dy, out, g, tiles_per_split, accumulate);
}

#define LF_CONV2D_NHWC_BWD_WEIGHT_CALL                                                                  \
    x, dy, out, B, H, W, Cin, Cout, ks, stride, pad, Ho, Wo, tiles_per_split, accumulate
extern "C" __global__ void __launch_bounds__(NH_THREADS)
    conv2d_nhwc_backward_weight_bf16(LF_CONV2D_NHWC_BWD_WEIGHT_ARGS(__nv_bfloat16)) {
    conv2d_nhwc_bwd_weight_entry<__nv_bfloat16, 128>(LF_CONV2D_NHWC_BWD_WEIGHT_CALL);
}
extern "C" __global__ void __launch_bounds__(NH_THREADS)
    conv2d_nhwc_backward_weight_f16(LF_CONV2D_NHWC_BWD_WEIGHT_ARGS(__half)) {
    conv2d_nhwc_bwd_weight_entry<__half, 128>(LF_CONV2D_NHWC_BWD_WEIGHT_CALL);
}
// Cout <= 64: grid (ceil(ks*ks*Cin / 64), 1, splits), the same arguments.
extern "C" __global__ void __launch_bounds__(NH_THREADS)
    conv2d_nhwc_backward_weight_m64_bf16(LF_CONV2D_NHWC_BWD_WEIGHT_ARGS(__nv_bfloat16)) {
    conv2d_nhwc_bwd_weight_entry<__nv_bfloat16, 64>(LF_CONV2D_NHWC_BWD_WEIGHT_CALL);
}
extern "C" __global__ void __launch_bounds__(NH_THREADS)
    conv2d_nhwc_backward_weight_m64_f16(LF_CONV2D_NHWC_BWD_WEIGHT_ARGS(__half)) {
    conv2d_nhwc_bwd_weight_entry<__half, 64>(LF_CONV2D_NHWC_BWD_WEIGHT_CALL);
}
