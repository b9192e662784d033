//! Launch graphs (`Gpu::capture`, `GpuGraph::replay`) on the PTX simulator: the ViT forward
//! captured once gives, for two different inputs written into its buffer, exactly the eager
//! forward's embeddings and issues exactly the eager forward's launches; work that cannot be
//! part of a graph (allocating, downloading, synchronising, dropping a buffer) fails the
//! capture with an error that names it.

mod common;

use common::kernels_or_skip;
use labelfree::device::cuda::{CudaTensor, DType, Gpu};
use labelfree::device::sim::SimOptions;
use labelfree::models::clip::config::VitConfig;
use labelfree::models::clip::vit::{random_vit_params, VisionTransformer};
use labelfree::models::clip::vit_cuda::CudaVit;
use labelfree::ops::activation::Activation;
use rand::{Rng, SeedableRng};

/// Work handed to `Gpu::capture` by the refusal test.
type Work<'a> = Box<dyn FnOnce() -> labelfree::error::Result<()> + 'a>;

/// (module, kernel, grid, block, dynamic shared bytes) of each launch the simulator profiled.
type LaunchKey = (String, String, [u32; 3], [u32; 3], u32);

#[test]
fn vit_graph_replays_the_eager_forward_bit_for_bit() {
    if !kernels_or_skip() {
        return;
    }
    let gpu = Gpu::simulator(SimOptions { sanitize: true, profile: true, ..SimOptions::default() }).unwrap();
    let sim = gpu.sim().unwrap().clone();
    let cfg = VitConfig { width: 64, layers: 2, heads: 2, patch: 16, grid: 2, output_dim: 32 };
    let (batch, h, w) = (2usize, 32usize, 48usize);
    let cpu = VisionTransformer::load(&mut random_vit_params(&cfg, 3).unwrap(), &cfg, Activation::QuickGelu).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for dtype in [DType::F32, DType::BF16] {
        let vit = CudaVit::from_cpu(&gpu, &cpu, dtype).unwrap();
        let mut graph = vit.capture_forward(batch, h, w).unwrap();
        // Capturing ran nothing.
        assert!(sim.take_profiles().is_empty(), "the capture ran kernels");
        let captured: Vec<LaunchKey> = graph
            .launches()
            .iter()
            .map(|l| (l.module.clone(), l.function.clone(), l.grid, l.block, l.shared_mem_bytes))
            .collect();
        let keys = |p: Vec<labelfree::device::sim::LaunchProfile>| -> Vec<LaunchKey> {
            p.into_iter().map(|p| (p.module, p.kernel, p.grid, p.block, p.dynamic_shared_bytes)).collect()
        };
        let mut outputs = Vec::new();
        for input in 0..2 {
            let pixels: Vec<f32> = (0..batch * 3 * h * w).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
            let x = CudaTensor::from_f32(&gpu, &[batch, 3, h, w], &pixels, dtype).unwrap();
            let eager = vit.forward(&x).unwrap().to_f32_vec(&gpu).unwrap();
            let eager_launches = keys(sim.take_profiles());
            graph.set_pixels(&pixels).unwrap();
            let replayed = graph.replay().unwrap().to_f32_vec(&gpu).unwrap();
            let replay_launches = keys(sim.take_profiles());
            assert_eq!(eager.len(), batch * cfg.output_dim);
            assert!(eager.iter().all(|v| v.is_finite()), "{dtype:?} input {input}: non-finite embeddings");
            let same = eager.iter().zip(&replayed).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{dtype:?} input {input}: replay differs from the eager forward");
            assert_eq!(eager_launches, replay_launches, "{dtype:?}: the replay's launches are not the eager ones");
            assert_eq!(captured, replay_launches, "{dtype:?}: the graph holds other launches than it ran");
            outputs.push(replayed);
        }
        // Two inputs through one graph: the second replay computed new embeddings.
        assert_ne!(outputs[0], outputs[1], "{dtype:?}: the replay did not read the new pixels");
        // embed (patchify, GEMM, tokens, ln_pre) + 7 per block + head (gather, ln_post, GEMM).
        assert_eq!(captured.len(), 4 + 7 * cfg.layers + 3);
        assert!(sim.take_findings().is_empty(), "sanitizer findings");
    }
}

#[test]
fn work_a_graph_cannot_hold_fails_the_capture() {
    if !kernels_or_skip() {
        return;
    }
    let gpu = Gpu::simulator(SimOptions::default()).unwrap();
    let kept = CudaTensor::zeros(&gpu, &[4], DType::F32).unwrap();
    let cases: Vec<(&str, Work)> = vec![
        ("allocating", Box::new(|| CudaTensor::empty(&gpu, &[4], DType::F32).map(|_| ()))),
        ("device to host copy", Box::new(|| kept.to_f32_vec(&gpu).map(|_| ()))),
        ("synchronising", Box::new(|| gpu.synchronize())),
    ];
    for (what, work) in cases {
        let err = gpu.capture(work).err().unwrap_or_else(|| panic!("{what}: captured")).to_string();
        assert!(err.contains(what) && err.contains("graph capture"), "{what}: {err}");
    }
    // A buffer dropped inside the capture (allocated before it): the graph would read freed memory.
    let doomed = CudaTensor::zeros(&gpu, &[4], DType::F32).unwrap();
    let err = gpu
        .capture(move || {
            drop(doomed);
            Ok(())
        })
        .err()
        .expect("a drop in a capture was accepted")
        .to_string();
    assert!(err.contains("dropped"), "{err}");
    // A refused operation whose error the closure swallowed still fails the capture.
    let err = gpu
        .capture(|| {
            let _ = gpu.synchronize();
            Ok(())
        })
        .err()
        .expect("a swallowed refusal was accepted")
        .to_string();
    assert!(err.contains("synchronising"), "{err}");
    // Nested captures are refused; after every failure the device captures again.
    let err = gpu.capture(|| gpu.capture(|| Ok(())).map(|_| ())).err().expect("nested capture").to_string();
    assert!(err.contains("inside another capture"), "{err}");
    let empty = gpu.capture(|| Ok(())).unwrap();
    assert!(empty.launches().is_empty());
    empty.replay().unwrap();
}
