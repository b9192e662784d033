// Adam (f32) as torch.optim.Adam, single-tensor form, non-amsgrad: one launch per parameter group
// (a range of the flat parameter buffer with its own lr). The step-dependent scalars (step size
// lr / (1 - beta1^t), sqrt(1 - beta2^t)) come from the host, computed as the CPU does, so the
// per-element arithmetic is the CPU's, operation for operation.
#include "common.cuh"

extern "C" __global__ void adam_step_f32(float* __restrict__ params, const float* __restrict__ grads,
                                         float* __restrict__ m, float* __restrict__ v, long long n, float step_size,
                                         float beta1, float beta2, float eps, float weight_decay, float bc2_sqrt) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float p = params[i];
        float g = grads[i];
        if (weight_decay != 0.0f) g = g + weight_decay * p;
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        params[i] = p - step_size * mi / denom;
    }
}
