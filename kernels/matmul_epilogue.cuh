// The linear layers' epilogue, shared by kernels/matmul.cu (sm_80) and kernels/matmul.sm90a.cu
// (Hopper): act(acc + bias[col]) + residual[row, col]. Included after common.cuh.
#pragma once

// Epilogue activations; the numbers are the launcher's (ops::matmul::Epilogue).
#define LF_ACT_NONE 0
#define LF_ACT_QUICK_GELU 1
#define LF_ACT_GELU 2
#define LF_ACT_RELU 3

// Uniform across the grid, so the switch costs no divergence.
__device__ __forceinline__ float apply_act(float v, int act) {
    switch (act) {
    case LF_ACT_QUICK_GELU: return v / (1.0f + expf(-1.702f * v));
    case LF_ACT_GELU: return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case LF_ACT_RELU: return fmaxf(v, 0.0f);
    default: return v;
    }
}

// act(acc + bias[col]) + residual[row, col], for one in-range element.
template <typename T>
__device__ __forceinline__ float epilogue_value(float acc, const float* __restrict__ bias,
                                                const T* __restrict__ residual, int act, int row, int col, int N) {
    float v = acc + (bias != nullptr ? bias[col] : 0.0f);
    v = apply_act(v, act);
    if (residual != nullptr) v += to_float(residual[(size_t)row * N + col]);
    return v;
}
