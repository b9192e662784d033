// Hopper (sm_90a) GEMM for the linear layers: y (M, N) = act(x (M, K) · w (N, K)^T + bias (N,))
// + residual (M, N), the contract of kernels/matmul.cu's gemm_mma_* (same epilogue, same
// arguments except that x and w come as TMA tensor maps). Launcher: src/ops/matmul.rs,
// linear_native, on a compute capability 9.0 device for bf16 / f16 with K % 8 == 0 (TMA needs
// 16-byte row strides); the mma.sync kernels stay the sm_80 path and the fallback.
//
// Design: a 128x128 output tile per CTA of 3 warpgroups (384 threads).
//   - warpgroup 0 is the producer: one thread issues the TMA copies of the x tile (128 rows x 64
//     k) and the w tile (128 rows x 64 k) of each k-tile into a 4-stage ring of 128-byte-swizzled
//     shared tiles (a 64-element bf16 row is exactly one 128-byte swizzle row);
//   - warpgroups 1 and 2 are consumers: each owns 64 rows of the tile and runs
//     wgmma.mma_async m64n128k16 (4 per k-tile) on shared-memory descriptors, accumulating 64
//     f32 registers per thread.
//   Stage s is handed over by two mbarriers: full[s] (the producer's arrive.expect_tx of the
//   stage's bytes, completed by the TMA transactions) and empty[s] (one arrive per consumer
//   warpgroup once its wgmmas that read the stage have retired).
// Edges: TMA reads zeros outside x and w (M, N and K edges); the epilogue stores only in-range
// elements.
#include "common.cuh"
#include "matmul_epilogue.cuh"

#define H_BM 128
#define H_BN 128
#define H_BK 64
#define H_STAGES 4
#define H_TILE_BYTES (H_BM * H_BK * 2) // one operand tile of a stage: 16 KB (H_BN == H_BM)
#define H_STAGE_BYTES (2 * H_TILE_BYTES)
// Dynamic shared memory the launcher asks for: the stages, 128 bytes of mbarriers, and 1 KB to
// round the base up to the 1024-byte swizzle atom.
#define H_SMEM_BYTES (H_STAGES * H_STAGE_BYTES + 128 + 1024)

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// Whether the phase of parity `parity` of the mbarrier has completed.
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
    uint32_t done;
    asm volatile("{\n"
                 ".reg .pred p;\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                 "selp.u32 %0, 1, 0, p;\n"
                 "}\n"
                 : "=r"(done)
                 : "r"(bar), "r"(parity)
                 : "memory");
    return done != 0;
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    while (!mbar_try_wait(bar, parity)) {
    }
}

// TMA: the box at (k0, row0) of the 2-D tensor map `map` (in global memory) into shared `dst`,
// completing its bytes on mbarrier `bar`.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const void* map, int k0, int row0, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
            dst),
        "l"(map), "r"(k0), "r"(row0), "r"(bar)
        : "memory");
}

// Shared-memory matrix descriptor of a K-major, 128-byte-swizzled operand starting at `addr`:
// 8-row atoms 1024 bytes apart (stride byte offset); the leading byte offset is unused with this
// swizzle (1 by convention).
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
           ((uint64_t)1 << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

// d (64 x 128, this warpgroup's accumulators) (+)= A (64 x 16) · B (16 x 128), both from shared
// memory; scale_d = 0 overwrites d.
#define LF_WGMMA_M64N128K16(TYPE)                                                                              \
    __device__ __forceinline__ void wgmma_m64n128k16_##TYPE(float* d, uint64_t desc_a, uint64_t desc_b,       \
                                                           int scale_d) {                                     \
        asm volatile("{\n"                                                                                    \
                     ".reg .pred p;\n"                                                                        \
                     "setp.ne.b32 p, %66, 0;\n"                                                               \
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32." #TYPE "." #TYPE " "                       \
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n"                                                        \
                     "}\n"                                                                                    \
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])                                                                                   \
                     : "l"(desc_a), "l"(desc_b), "r"(scale_d));                                               \
    }
LF_WGMMA_M64N128K16(bf16)
LF_WGMMA_M64N128K16(f16)

template <typename T> __device__ __forceinline__ void wgmma_m64n128k16(float* d, uint64_t a, uint64_t b, int scale_d);
template <> __device__ __forceinline__ void wgmma_m64n128k16<__nv_bfloat16>(float* d, uint64_t a, uint64_t b, int s) {
    wgmma_m64n128k16_bf16(d, a, b, s);
}
template <> __device__ __forceinline__ void wgmma_m64n128k16<__half>(float* d, uint64_t a, uint64_t b, int s) {
    wgmma_m64n128k16_f16(d, a, b, s);
}

template <typename T>
__device__ void gemm_wgmma(const void* map_x, const void* map_w, const float* __restrict__ bias,
                           const T* __restrict__ residual, T* __restrict__ y, int M, int N, int K, int act) {
    extern __shared__ __align__(1024) uint8_t smem[];
    // Round up to the 1024-byte swizzle atom (TMA's and wgmma's swizzle act on address bits).
    const uint32_t base = (smem_u32(smem) + 1023) & ~1023u;
    const uint32_t full = base + H_STAGES * H_STAGE_BYTES; // H_STAGES mbarriers of 8 bytes
    const uint32_t empty = full + 8 * H_STAGES;
    const int warpgroup = threadIdx.x / 128;
    const int m0 = blockIdx.y * H_BM, n0 = blockIdx.x * H_BN;
    const int k_tiles = (K + H_BK - 1) / H_BK;

    if (threadIdx.x == 0) {
        for (int s = 0; s < H_STAGES; ++s) {
            mbar_init(full + 8 * s, 1);
            mbar_init(empty + 8 * s, 2);
        }
        // Make the initialised mbarriers visible to the TMA unit (the async proxy).
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    }
    __syncthreads();

    if (warpgroup == 0) {
        if (threadIdx.x == 0) {
            for (int kt = 0; kt < k_tiles; ++kt) {
                const int s = kt % H_STAGES;
                // Reuse of a stage waits for both consumers to release its previous use.
                if (kt >= H_STAGES) mbar_wait(empty + 8 * s, ((kt / H_STAGES) - 1) & 1);
                const uint32_t a = base + s * H_STAGE_BYTES;
                mbar_arrive_expect_tx(full + 8 * s, H_STAGE_BYTES);
                tma_load_2d(a, map_x, kt * H_BK, m0, full + 8 * s);
                tma_load_2d(a + H_TILE_BYTES, map_w, kt * H_BK, n0, full + 8 * s);
            }
        }
        return;
    }

    const int consumer = warpgroup - 1; // rows 64 * consumer .. + 64 of the tile
    float d[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) d[i] = 0.0f;
    for (int kt = 0; kt < k_tiles; ++kt) {
        const int s = kt % H_STAGES;
        mbar_wait(full + 8 * s, (kt / H_STAGES) & 1);
        const uint32_t a = base + s * H_STAGE_BYTES + consumer * 64 * 128;
        const uint32_t b = base + s * H_STAGE_BYTES + H_TILE_BYTES;
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < H_BK / 16; ++kk) {
            // 16 k of a 128-byte swizzled row are 32 bytes: advance the start address.
            wgmma_m64n128k16<T>(d, sw128_desc(a + 32 * kk), sw128_desc(b + 32 * kk), kt > 0 || kk > 0);
        }
        wgmma_commit();
        wgmma_wait0();
        if (threadIdx.x % 128 == 0) mbar_arrive(empty + 8 * s);
    }

    // Accumulator register 4i + j of lane l of warp w (of this warpgroup) holds row
    // 16w + l/4 + 8(j/2), column 8i + 2(l%4) + j%2.
    const int lane = threadIdx.x % 32, warp = (threadIdx.x % 128) / 32;
    const int row_base = m0 + consumer * 64 + warp * 16 + lane / 4;
    const int col_base = n0 + 2 * (lane % 4);
#pragma unroll
    for (int i = 0; i < 16; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int row = row_base + 8 * (j / 2), col = col_base + 8 * i + (j % 2);
            if (row < M && col < N)
                y[(size_t)row * N + col] =
                    from_float<T>(epilogue_value(d[4 * i + j], bias, residual, act, row, col, N));
        }
    }
}

#define LF_GEMM_WGMMA(S, T)                                                                                    \
    extern "C" __global__ void __launch_bounds__(384) gemm_wgmma_128x128_##S(                                  \
        const void* map_x, const void* map_w, const float* bias, const T* residual, T* y, int M, int N, int K, \
        int act) {                                                                                             \
        gemm_wgmma<T>(map_x, map_w, bias, residual, y, M, N, K, act);                                          \
    }
LF_GEMM_WGMMA(bf16, __nv_bfloat16)
LF_GEMM_WGMMA(f16, __half)
