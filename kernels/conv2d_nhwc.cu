// 2-D convolution, channels-last (NHWC), as a multistage implicit GEMM on the tensor cores.
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
// Backward-data, stride 1: dx[b, iy, ix, ci] = sum over (ky, kx, co) of
// dy[b, iy + pad - ky, ix + pad - kx, co] * w[co, ky, kx, ci], which is the forward kernel run on dy
// (B, Ho, Wo, Cout) with padding ks - 1 - pad and the filters flipped and transposed:
// wt (Cin, ks, ks, Cout)[ci, ky, kx, co] = w (Cout, ks, ks, Cin)[co, ks-1-ky, ks-1-kx, ci].
// This kernel writes wt (one thread per element, consecutive threads consecutive co: the writes
// are coalesced, the reads stride by Cin; the filters are small beside the activations).
template <typename T>
__device__ __forceinline__ void flip_weight(const T* __restrict__ w, T* __restrict__ wt, int Cout, int ks, int Cin) {
    const long long total = (long long)Cin * ks * ks * Cout;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const int co = (int)(idx % Cout);
    const long long rest = idx / Cout;
    const int kx = (int)(rest % ks), ky = (int)((rest / ks) % ks), ci = (int)(rest / ((long long)ks * ks));
    wt[idx] = w[(((size_t)co * ks + (ks - 1 - ky)) * ks + (ks - 1 - kx)) * Cin + ci];
}

extern "C" __global__ void conv2d_nhwc_flip_weight_bf16(const __nv_bfloat16* w, __nv_bfloat16* wt, int Cout, int ks,
                                                        int Cin) {
    flip_weight(w, wt, Cout, ks, Cin);
}
extern "C" __global__ void conv2d_nhwc_flip_weight_f16(const __half* w, __half* wt, int Cout, int ks, int Cin) {
    flip_weight(w, wt, Cout, ks, Cin);
}
