//! bf16 mixed-precision training of the classifier on the PTX simulator against f32 training
//! of the same model: 20 steps each from the same initial weights on the same batch (the
//! same targets every step, so the loss must fall), on a tiny ResNet (stem width 4, one
//! bottleneck a stage, 48 x 48 images, so that layer4 still sees 2 x 2 pixels: at 1 x 1 its batch
//! norms would normalise two values to +-1 and pass no gradient) that the simulator runs quickly. Needs the kernels
//! compiled in (NVCC at build time); without them it says so and checks nothing.

use labelfree::device::cuda::{has_kernels, DType, Gpu};
use labelfree::device::sim::SimOptions;
use labelfree::models::resnet50::{HeadKind, ResNet, ResNetConfig};
use labelfree::models::resnet50_cuda::CudaResNet;
use labelfree::train::adam::{Adam, ParamGroup};

const STEPS: usize = 20;
const B: usize = 4;
const SIZE: usize = 32;
const CLASSES: usize = 5;

/// Reproducible values in [-1, 1) (a 64-bit LCG; the test needs no statistical quality).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The BCE loss of each of `STEPS` steps (the loss of the step's forward, before its update).
fn loss_curve(gpu: &std::sync::Arc<Gpu>, dtype: DType, head: HeadKind) -> Vec<f32> {
    let cfg = ResNetConfig { width: 4, layers: [1, 1, 1, 1], num_classes: CLASSES, head, alpha: 3.0 };
    let model = ResNet::new(cfg, 7);
    let n = model.params.len();
    let groups =
        vec![ParamGroup { range: 0..model.head_start, lr: 1e-3 }, ParamGroup { range: model.head_start..n, lr: 1e-2 }];
    let mut opt = Adam::new(n, groups);
    let mut dev = CudaResNet::upload_mixed(gpu, &model, &opt, dtype).unwrap();
    let images: Vec<f32> = values(B * 3 * SIZE * SIZE, 1).iter().map(|v| 2.0 * v).collect();
    let targets: Vec<f32> = values(B * CLASSES, 2).iter().map(|v| 0.5 + 0.5 * v).collect();
    (0..STEPS).map(|_| dev.train_step(&mut opt, &images, None, B, SIZE, SIZE, &targets, 0.0).unwrap().bce).collect()
}

#[test]
fn bf16_loss_curve_follows_f32() {
    if !has_kernels() {
        assert!(
            !std::env::var("LABELFREE_REQUIRE_KERNELS").is_ok_and(|v| v == "1"),
            "LABELFREE_REQUIRE_KERNELS=1 but this build has no kernels"
        );
        eprintln!("skipped: this build has no CUDA kernels (no nvcc at build time)");
        return;
    }
    // Sanitizer off: 40 steps of the same kernels the rows below run sanitized (2-5x faster).
    let gpu = Gpu::simulator(SimOptions { sanitize: false, profile: false, ..SimOptions::default() }).unwrap();
    for head in [HeadKind::Cam] {
        let f32_curve = loss_curve(&gpu, DType::F32, head);
        let bf16_curve = loss_curve(&gpu, DType::BF16, head);
        eprintln!("{head:?} f32  {f32_curve:?}\n{head:?} bf16 {bf16_curve:?}");
        // Tolerance: the first losses differ by bf16's rounding of the forward (0.2% on the
        // gpu-check rows). Over 20 steps the loss falls mostly through the head (lr 1e-2),
        // whose gradients agree with f32's to ~3% a step (the rows); Adam moves every weight
        // by about lr a step whatever the gradient's size, so the two runs stay close as long
        // as the gradients' signs mostly agree. 5% a step bounds that drift.
        for (i, (a, b)) in bf16_curve.iter().zip(&f32_curve).enumerate() {
            let rel = (a - b).abs() / b.abs();
            assert!(rel < 5e-2, "{head:?} step {i}: bf16 loss {a}, f32 {b} ({rel:.2e} apart)");
        }
        // And bf16 learns as f32 does: its loss falls, by the same amount within 25%.
        let (drop32, drop16) = (f32_curve[0] - f32_curve[STEPS - 1], bf16_curve[0] - bf16_curve[STEPS - 1]);
        assert!(drop32 > 0.0 && drop16 > 0.0, "{head:?}: losses do not fall (f32 {drop32}, bf16 {drop16})");
        assert!((drop16 - drop32).abs() < 0.25 * drop32, "{head:?}: bf16 drop {drop16}, f32 drop {drop32}");
    }
}

/// The bf16 `resnet_train_step` rows of gpu-check (src/models/resnet50_cuda.rs): one mixed-
/// precision step against the f32 CPU step, each part at the tolerance the row states.
#[test]
fn bf16_step_rows_pass() {
    use labelfree::device::cuda::check::{format_table, run_checks, CheckOptions};
    if !has_kernels() {
        eprintln!("skipped: this build has no CUDA kernels (no nvcc at build time)");
        return;
    }
    let gpu = Gpu::simulator(SimOptions::default()).unwrap();
    let checks: Vec<_> = labelfree::models::resnet50_cuda::gpu_checks()
        .into_iter()
        .filter(|c| c.op == "resnet_train_step" && c.dtype == DType::BF16)
        .collect();
    assert_eq!(checks.len(), 2, "the bf16 step rows");
    let report = run_checks(&gpu, &checks, &CheckOptions::default()).unwrap();
    eprintln!("{}", format_table(&report.rows));
    assert!(report.failed().is_empty(), "bf16 step rows failed");
}
