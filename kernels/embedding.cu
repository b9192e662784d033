// Token + positional embedding of the text encoder: out[b, t, :] = table[ids[b, t], :] + pos[t, :].
// One block per token, threads stride over the channels. Ids are validated on the host.
#include "common.cuh"

template <typename T>
__device__ void token_embedding_forward(const int* __restrict__ ids, const T* __restrict__ table,
                                        const T* __restrict__ pos, T* __restrict__ out, int T_len, int C) {
    const int token = blockIdx.x;  // b * T_len + t
    const int t = token % T_len;
    const T* row = table + (size_t)ids[token] * C;
    const T* p = pos + (size_t)t * C;
    T* o = out + (size_t)token * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) o[i] = from_float<T>(to_float(row[i]) + to_float(p[i]));
}

#define LF_EMBEDDING(S, T)                                                                            \
    extern "C" __global__ void token_embedding_forward_##S(const int* ids, const T* table, const T* pos, \
                                                           T* out, int T_len, int C) {                \
        token_embedding_forward<T>(ids, table, pos, out, T_len, C);                                   \
    }
LF_FOR_FLOAT_TYPES(LF_EMBEDDING)
