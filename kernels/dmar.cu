// TagCLIP's DMAR on the device (src/ops/dmar.rs): the per-layer mean of the patch-to-patch
// attention, the vote count and layer sum that make W, and the propagation of the patch
// class probabilities through W (optionally through a per-class box mask). f32 throughout.
#include "common.cuh"

// One block per image b: theta[b] = mean of probs[b, 1..T, 1..T] (the patch-to-patch part of one
// layer's head-averaged map, (B, T, T)), summed in double as the CPU reference does, then
// rounded to float. The order of the double sum is fixed by the launch shape (deterministic).
extern "C" __global__ void dmar_layer_mean_f32(const float* __restrict__ probs, float* __restrict__ theta, int T) {
    __shared__ double scratch[32];
    const int N = T - 1;
    const float* pb = probs + (size_t)blockIdx.x * T * T;
    double s = 0.0;
    for (long long e = threadIdx.x; e < (long long)N * N; e += blockDim.x) {
        const int i = (int)(e / N), j = (int)(e % N);
        s += (double)pb[(size_t)(i + 1) * T + j + 1];
    }
    // Block sum in double: warp shuffles, then the warps' partials in order.
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (lane == 0) scratch[warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int w = 0; w < nwarps; ++w) total += scratch[w];
        theta[blockIdx.x] = (float)(total / ((double)N * N));
    }
}

// One layer's share of W, launched once per layer l in order (the maps live in one tensor per
// layer): for every patch pair (i, j) of image b, votes += [map_l(i, j) > theta_l[b]], and, for
// the layers of the refine range, sum += map_l(i, j): a sequential float sum over the layers in
// the order torch.mean adds them. `first` initialises votes and sum. votes, sum: (B, N, N).
extern "C" __global__ void dmar_vote_accumulate_f32(const float* __restrict__ map, const float* __restrict__ theta,
                                                    int* __restrict__ votes, float* __restrict__ sum, int T,
                                                    int in_range, int first, long long total) {
    const int N = T - 1;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x) {
        const int j = (int)(e % N);
        const int i = (int)((e / N) % N);
        const int b = (int)(e / ((long long)N * N));
        const float a = map[(size_t)b * T * T + (size_t)(i + 1) * T + j + 1];
        const int v = (first ? 0 : votes[e]) + (a > theta[b]);
        votes[e] = v;
        float s = first ? 0.0f : sum[e];
        if (in_range) s += a;
        sum[e] = s;
    }
}

// W = sum / count where the votes reach vote_min, else 0.
extern "C" __global__ void dmar_weights_finalize_f32(const int* __restrict__ votes, const float* __restrict__ sum,
                                                     float* __restrict__ W, int vote_min, float count, long long total) {
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total; e += (long long)gridDim.x * blockDim.x)
        W[e] = votes[e] >= vote_min ? sum[e] / count : 0.0f;
}

// out (B, N, C) = W (B, N, N) @ P' where P'[b, j, c] = P[b, j + p_row0, c] * mask[b, j, c]
// (mask (B, N, C) of 0/1 bytes, or null for none); P has p_rows rows per image (TagCLIP's
// probabilities of all T tokens, CLS first: p_row0 = 1). 32x32 output tiles, K in steps of 32
// through shared memory; each thread of the 16x16 block computes a 2x2 micro-tile.
#define DM_TILE 32
extern "C" __global__ void dmar_propagate_f32(const float* __restrict__ W, const float* __restrict__ P,
                                              const unsigned char* __restrict__ mask, float* __restrict__ out, int N,
                                              int C, int p_rows, int p_row0) {
    __shared__ float ws[DM_TILE][DM_TILE + 1];
    __shared__ float ps[DM_TILE][DM_TILE + 1];
    const int b = blockIdx.z;
    const int row0 = blockIdx.y * DM_TILE, col0 = blockIdx.x * DM_TILE;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const float* Wb = W + (size_t)b * N * N;
    const float* Pb = P + ((size_t)b * p_rows + p_row0) * C;
    const unsigned char* Mb = mask ? mask + (size_t)b * N * C : nullptr;
    float acc[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
    for (int k0 = 0; k0 < N; k0 += DM_TILE) {
        for (int e = threadIdx.x; e < DM_TILE * DM_TILE; e += blockDim.x) {
            const int r = e / DM_TILE, c = e % DM_TILE;
            const int wi = row0 + r, wk = k0 + c;
            ws[r][c] = (wi < N && wk < N) ? Wb[(size_t)wi * N + wk] : 0.0f;
            const int pk = k0 + r, pc = col0 + c;
            float p = 0.0f;
            if (pk < N && pc < C) {
                p = Pb[(size_t)pk * C + pc];
                if (Mb && !Mb[(size_t)pk * C + pc]) p = 0.0f;
            }
            ps[r][c] = p;
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < DM_TILE; ++k) {
            const float w0 = ws[ty * 2][k], w1 = ws[ty * 2 + 1][k];
            const float p0 = ps[k][tx * 2], p1 = ps[k][tx * 2 + 1];
            acc[0][0] += w0 * p0;
            acc[0][1] += w0 * p1;
            acc[1][0] += w1 * p0;
            acc[1][1] += w1 * p1;
        }
        __syncthreads();
    }
    for (int a = 0; a < 2; ++a)
        for (int c = 0; c < 2; ++c) {
            const int i = row0 + ty * 2 + a, j = col0 + tx * 2 + c;
            if (i < N && j < C) out[((size_t)b * N + i) * C + j] = acc[a][c];
        }
}
