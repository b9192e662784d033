// Adam (f32) as torch.optim.Adam, single-tensor form, non-amsgrad: one launch per parameter group
// (a range of the flat parameter buffer with its own lr). The step-dependent scalars (step size
// lr / (1 - beta1^t), sqrt(1 - beta2^t)) are computed on the host as the CPU does and read from
// device memory (`scalars`: the group's pair), not passed as arguments, so that a training step
// captured as a graph (frozen arguments) takes each step's own values; the per-element
// arithmetic is the CPU's, operation for operation.
#include "common.cuh"

extern "C" __global__ void adam_step_f32(float* __restrict__ params, const float* __restrict__ grads,
                                         float* __restrict__ m, float* __restrict__ v, long long n,
                                         const float* __restrict__ scalars, float beta1, float beta2, float eps,
                                         float weight_decay) {
    const float step_size = scalars[0], bc2_sqrt = scalars[1];
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
