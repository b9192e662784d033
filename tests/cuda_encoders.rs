//! The random-weight builders (`random_vit_params`, `random_resnet_params`) name and shape every
//! tensor exactly as the CPU loaders take them: gpu-check's encoder rows load a CPU tower from
//! them and upload it (`CudaVit::from_cpu`, ...), so both sides are the same model. The device
//! comparison itself is in those rows (`vit_encoder_forward`, `resnet_encoder_forward`), run by
//! tests/cuda_kernels.rs.

use labelfree::models::clip::config::{ResNetConfig, VitConfig};
use labelfree::models::clip::resnet::{random_resnet_params, ModifiedResNet};
use labelfree::models::clip::vit::{random_vit_params, VisionTransformer};
use labelfree::ops::activation::Activation;

#[test]
fn random_vit_params_fill_the_cpu_vit_exactly() {
    let cfg = VitConfig { width: 64, layers: 2, heads: 2, patch: 16, grid: 4, output_dim: 32 };
    let mut p = random_vit_params(&cfg, 7).unwrap();
    VisionTransformer::load(&mut p, &cfg, Activation::QuickGelu).unwrap();
    p.finish().unwrap();
}

#[test]
fn random_resnet_params_fill_the_cpu_resnet_exactly() {
    let cfg = ResNetConfig { layers: [1, 2, 1, 1], width: 16, heads: 2, grid: 2, output_dim: 32 };
    let mut p = random_resnet_params(&cfg, 7).unwrap();
    let enc = ModifiedResNet::load(&mut p, &cfg).unwrap();
    p.finish().unwrap();
    // Activations stay finite and O(1) through the stages with these statistics.
    let x = labelfree::tensor::Tensor::randn(
        &[1, 3, 64, 64],
        1.0,
        &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1),
    );
    let out = enc.forward(&x, false).unwrap().pooled;
    assert!(out.f32s().unwrap().iter().all(|v| v.is_finite()));
}
