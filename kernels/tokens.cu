// Token-matrix assembly for the encoders: the ViT's input tokens (class token first, plus the
// positional table) and picking one token per sample (CLS = 0, or the text's EOT position).
#include "common.cuh"

// out (B, 1 + N, C): out[b, 0] = class_emb + pos[0]; out[b, 1 + i] = patches[b, i] + pos[1 + i].
// patches (B, N, C) and out in T; class_emb (C,) and pos (1 + N, C) f32. One thread per output
// element, consecutive threads along C.
template <typename T>
__device__ void vit_tokens(const T* __restrict__ patches, const float* __restrict__ class_emb,
                           const float* __restrict__ pos, T* __restrict__ out, long long total, int N, int C) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const int T_ = N + 1;
    const long long row = idx / C;  // (b, token)
    const int c = (int)(idx - row * C);
    const long long b = row / T_;
    const int tok = (int)(row - b * T_);
    const float v = tok == 0 ? class_emb[c] : to_float(patches[((size_t)b * N + tok - 1) * C + c]);
    out[idx] = from_float<T>(v + pos[(size_t)tok * C + c]);
}

#define LF_VIT_TOKENS(S, T)                                                                                  \
    extern "C" __global__ void vit_tokens_##S(const T* patches, const float* class_emb, const float* pos, \
                                              T* out, long long total, int N, int C) {                  \
        vit_tokens<T>(patches, class_emb, pos, out, total, N, C);                                        \
    }
LF_FOR_FLOAT_TYPES(LF_VIT_TOKENS)

// y (B, C) = x[b, index[b], :] of x (B, T, C). Grid (ceil(C / 256), B). An index outside
// [0, T) writes NaN: the launcher cannot see device-side indices, and a silent clamp would hide
// the error.
template <typename T>
__device__ void gather_rows(const T* __restrict__ x, const int* __restrict__ index, T* __restrict__ y, int T_, int C) {
    const int b = blockIdx.y;
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const int i = index[b];
    const float v = (i >= 0 && i < T_) ? to_float(x[((size_t)b * T_ + i) * C + c]) : __int_as_float(0x7fc00000);
    y[(size_t)b * C + c] = from_float<T>(v);
}

#define LF_GATHER_ROWS(S, T)                                                                              \
    extern "C" __global__ void gather_rows_##S(const T* x, const int* index, T* y, int T_, int C) { \
        gather_rows<T>(x, index, y, T_, C);                                                           \
    }
LF_FOR_FLOAT_TYPES(LF_GATHER_ROWS)
