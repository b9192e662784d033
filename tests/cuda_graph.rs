//! Launch graphs (`Gpu::capture`, `GpuGraph::replay`) on the PTX simulator: the ViT forward
//! captured once gives, for two different inputs written into its buffer, exactly the eager
//! forward's embeddings and issues exactly the eager forward's launches; work that cannot be
//! part of a graph (allocating, downloading, synchronising, dropping a buffer) fails the
//! capture with an error that names it. The training step captured with its own memory pool
//! (`Gpu::capture_pooled`, `CudaResNet::capture_train_step`) replays the eager step's launches
//! and bits, step after step, in f32 and bf16.

mod common;

use common::{kernels_or_skip, write_png, TempDir};
use labelfree::device::cuda::{CudaTensor, DType, Gpu};
use labelfree::device::sim::SimOptions;
use labelfree::models::clip::config::VitConfig;
use labelfree::models::clip::vit::{random_vit_params, VisionTransformer};
use labelfree::models::clip::vit_cuda::CudaVit;
use labelfree::models::resnet50::{HeadKind, ResNet, ResNetConfig};
use labelfree::models::resnet50_cuda::CudaResNet;
use labelfree::ops::activation::Activation;
use labelfree::ops::fill::fill_zero_cuda;
use labelfree::train::adam::{Adam, ParamGroup};
use labelfree::train::trainer::{Sample, SecondView, TrainConfig, Trainer};
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
        let vit = std::sync::Arc::new(CudaVit::from_cpu(&gpu, &cpu, dtype).unwrap());
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

#[test]
fn train_step_graph_replays_the_eager_step_bit_for_bit() {
    if !kernels_or_skip() {
        return;
    }
    let gpu = Gpu::simulator(SimOptions { sanitize: true, profile: true, ..SimOptions::default() }).unwrap();
    let sim = gpu.sim().unwrap().clone();
    let keys = |p: Vec<labelfree::device::sim::LaunchProfile>| -> Vec<LaunchKey> {
        p.into_iter().map(|p| (p.module, p.kernel, p.grid, p.block, p.dynamic_shared_bytes)).collect()
    };
    let (b, size, classes) = (2usize, 32usize, 3usize);
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    // (dtype, head, two views)
    for (dtype, head, two) in
        [(DType::F32, HeadKind::Cam, true), (DType::BF16, HeadKind::Linear, false), (DType::BF16, HeadKind::Cam, true)]
    {
        let cfg = ResNetConfig { width: 8, layers: [1, 1, 1, 1], num_classes: classes, head, alpha: 3.0 };
        let cpu = ResNet::new(cfg, 11);
        let n = cpu.params.len();
        let groups =
            vec![ParamGroup { range: 0..cpu.head_start, lr: 1e-3 }, ParamGroup { range: cpu.head_start..n, lr: 1e-2 }];
        let opt = Adam::new(n, groups);
        let (mut eager, mut eager_opt) = (CudaResNet::upload_mixed(&gpu, &cpu, &opt, dtype).unwrap(), opt.clone());
        let (mut graphed, mut graph_opt) = (CudaResNet::upload_mixed(&gpu, &cpu, &opt, dtype).unwrap(), opt.clone());
        let mut graph = graphed.capture_train_step(&graph_opt, (b, size, size), two, 1.0).unwrap();
        assert!(sim.take_profiles().is_empty(), "{dtype:?}: the capture ran kernels");
        assert!(graph.fits(b, size, size, two, 1.0) && !graph.fits(b + 1, size, size, two, 1.0));
        let pool = graph.pool().expect("a pooled graph");
        assert!(pool.blocks > 0 && pool.peak_blocks <= pool.blocks, "{pool:?}");
        for step in 0..3 {
            let mut view = || (0..b * 3 * size * size).map(|_| rng.gen_range(-2.0f32..2.0)).collect::<Vec<_>>();
            let (v1, v2) = (view(), two.then(&mut view));
            let targets: Vec<f32> = (0..b * classes).map(|_| rng.gen_range(0.0f32..1.0)).collect();
            let want = eager.train_step(&mut eager_opt, &v1, v2.as_deref(), b, size, size, &targets, 1.0).unwrap();
            let eager_launches = keys(sim.take_profiles());
            let got = graphed.train_step_graph(&mut graph, &mut graph_opt, &v1, v2.as_deref(), &targets, true).unwrap();
            let replay_launches = keys(sim.take_profiles());
            let what = format!("{dtype:?} {head:?} step {step}");
            assert!(want.bce.is_finite() && want.bce > 0.0, "{what}: bce {}", want.bce);
            assert_eq!(want.bce.to_bits(), got.bce.to_bits(), "{what}: bce");
            assert_eq!(want.consistency.to_bits(), got.consistency.to_bits(), "{what}: consistency");
            assert_eq!(want.logits, got.logits, "{what}: logits");
            assert_eq!(eager_launches, replay_launches, "{what}: the replay's launches are not the eager step's");
            assert_eq!(graph.launches(), replay_launches.len(), "{what}");
        }
        // A graph replays on the model it was captured on only.
        let (v1, t) = (vec![0.0; b * 3 * size * size], vec![0.5; b * classes]);
        let v2 = two.then(|| v1.clone());
        let err = eager.train_step_graph(&mut graph, &mut eager_opt, &v1, v2.as_deref(), &t, false).err().unwrap();
        assert!(err.to_string().contains("captured on"), "{err}");
        // After three steps the parameters, moments and running statistics are the same bits.
        let (mut a, mut b_) = (ResNet::new(cpu.cfg.clone(), 11), ResNet::new(cpu.cfg.clone(), 11));
        let (mut ao, mut bo) = (opt.clone(), opt.clone());
        eager.download_into(&mut a, &mut ao).unwrap();
        graphed.download_into(&mut b_, &mut bo).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(bits(&a.params) == bits(&b_.params), "{dtype:?}: parameters differ");
        assert!(bits(&ao.m) == bits(&bo.m) && bits(&ao.v) == bits(&bo.v), "{dtype:?}: Adam moments differ");
        assert!(bits(&a.buffers) == bits(&b_.buffers), "{dtype:?}: running statistics differ");
        assert_ne!(bits(&a.params), bits(&cpu.params), "{dtype:?}: the steps moved nothing");
        assert_eq!((eager_opt.step, graph_opt.step), (3, 3));
        assert!(sim.take_findings().is_empty(), "{dtype:?}: sanitizer findings");
    }
}

#[test]
fn a_pooled_capture_serves_the_sizing_passs_buffers_and_nothing_else() {
    if !kernels_or_skip() {
        return;
    }
    let gpu = Gpu::simulator(SimOptions::default()).unwrap();
    // Temporaries freed and taken again inside the work reuse one block.
    let graph = gpu
        .capture_pooled(|| {
            for _ in 0..3 {
                let mut t = CudaTensor::empty(&gpu, &[8], DType::F32)?;
                fill_zero_cuda(&gpu, &mut t)?;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(graph.launches().len(), 3);
    let stats = graph.pool_stats().unwrap();
    assert_eq!((stats.blocks, stats.bytes, stats.peak_blocks), (1, 32, 1));
    graph.replay().unwrap();
    // A capture that asks for a size its sizing pass did not: refused, not allocated.
    let mut calls = 0;
    let err = gpu
        .capture_pooled(|| {
            calls += 1;
            let mut t = CudaTensor::empty(&gpu, &[4 * calls], DType::F32)?;
            fill_zero_cuda(&gpu, &mut t)
        })
        .err()
        .expect("a capture that allocated anew was accepted")
        .to_string();
    assert!(err.contains("no free buffer of 32 bytes"), "{err}");
    // Zeroing by memset (CudaTensor::zeros) is still refused inside: it is not a launch.
    let err = gpu.capture_pooled(|| CudaTensor::zeros(&gpu, &[4], DType::F32).map(|_| ())).err().unwrap().to_string();
    assert!(err.contains("allocating") && err.contains("graph capture"), "{err}");
    // The device captures again after the failures.
    assert!(gpu.capture(|| Ok(())).unwrap().launches().is_empty());
}

/// The trainer on the simulator with and without step graphs: 8 images in batches of 3 (two
/// full batches replay the graph, the last batch of 2 runs eagerly), the second view from epoch
/// 2 on (a second capture for the two-view step): the same losses every epoch and the same
/// weights, running statistics and Adam state at the end, bit for bit.
#[test]
fn trainer_with_step_graphs_matches_the_eager_trainer() {
    if !kernels_or_skip() {
        return;
    }
    let gpu = Gpu::simulator(SimOptions { sanitize: false, ..SimOptions::default() }).unwrap();
    let data = TempDir::new("graph-trainer");
    let samples: Vec<Sample> = (0..8u8)
        .map(|i| {
            let path = data.path().join(format!("img{i}.png"));
            write_png(&path, 30 + i as u32, 26, i);
            Sample { path, target: vec![i as f32 / 8.0, 0.5, 1.0 - i as f32 / 8.0] }
        })
        .collect();
    let run = |cuda_graph: bool| {
        let out = TempDir::new(if cuda_graph { "graph-trainer-g" } else { "graph-trainer-e" });
        let cfg = TrainConfig {
            epochs: 2,
            batch: 3,
            lr: 1e-3,
            head_lr_mult: 10.0,
            transform: labelfree::data::transforms::Transform::SquareResize {
                size: 32,
                interp: labelfree::data::transforms::Interpolation::Bilinear,
                norm: labelfree::data::transforms::IMAGENET_NORM_NUMPY,
            },
            hflip: true,
            second_view: Some(SecondView { from_epoch: 1, weight: 1.0, jitter: None }),
            seed: 3,
            out: out.path().to_path_buf(),
            progress: false,
            stop_after_steps: None,
            record_train_outputs: true,
            cuda_graph,
        };
        let model = ResNet::new(
            ResNetConfig { width: 8, layers: [1, 1, 1, 1], num_classes: 3, head: HeadKind::Cam, alpha: 3.0 },
            5,
        );
        let mut t = Trainer::new(model, &cfg);
        t.attach_cuda(&gpu, DType::BF16).unwrap();
        let reports = t.train(&samples, None, &cfg).unwrap();
        (t, reports)
    };
    let (g, gr) = run(true);
    let (e, er) = run(false);
    assert_eq!(gr.len(), 2);
    for (a, b) in gr.iter().zip(&er) {
        assert_eq!(a.images, 8, "{a:?}");
        assert_eq!(a.mean_loss.to_bits(), b.mean_loss.to_bits(), "epoch {}: loss", a.epoch);
        assert_eq!(a.mean_consistency.to_bits(), b.mean_consistency.to_bits(), "epoch {}", a.epoch);
        let (lg, le) = (a.train_outputs.as_ref().unwrap(), b.train_outputs.as_ref().unwrap());
        assert_eq!(lg.logits.len(), 8 * 3, "epoch {}: every batch's logits recorded", a.epoch);
        assert_eq!(lg.logits, le.logits, "epoch {}: training logits", a.epoch);
    }
    assert!(gr[1].mean_consistency > 0.0);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(bits(&g.model.params) == bits(&e.model.params), "weights differ");
    assert!(bits(&g.model.buffers) == bits(&e.model.buffers), "running statistics differ");
    assert!(bits(&g.opt.m) == bits(&e.opt.m) && bits(&g.opt.v) == bits(&e.opt.v), "Adam moments differ");
    assert_eq!((g.opt.step, e.opt.step), (6, 6));
    // The graph run replayed the two-view step of the last epoch's full batches; the other ran eagerly.
    assert!(g.step_graph().is_some_and(|s| s.fits(3, 32, 32, true, 1.0)) && e.step_graph().is_none());
}

/// `ClipModel::encode_image` on a GPU tower (ViT, ModifiedResNet) replays one captured forward
/// per input shape: the same embeddings as the eager CUDA forward, bit for bit, for two batches
/// of one shape (one capture) and a batch of another (a second; for the ModifiedResNet a side
/// that is no multiple of 32), and the same launches as the eager forward.
#[test]
fn encode_image_replays_a_graph_per_shape() {
    use labelfree::models::clip::CudaVisual;
    if !kernels_or_skip() {
        return;
    }
    let gpu = Gpu::simulator(SimOptions { sanitize: true, profile: true, ..SimOptions::default() }).unwrap();
    let sim = gpu.sim().unwrap().clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    for (name, mut model, shapes) in [
        ("ViT", common::tiny_clip(3), [(2usize, 32usize, 32usize), (2, 32, 32), (3, 32, 40)]),
        ("ModifiedResNet", common::tiny_clip_resnet(4), [(2, 32, 32), (2, 32, 32), (3, 64, 72)]),
    ] {
        model.attach_cuda(&gpu, DType::F32).unwrap();
        let eager = |x: &CudaTensor| match &model.cuda_visual {
            Some(CudaVisual::Vit(v)) => v.forward(x),
            Some(CudaVisual::ResNet(r)) => r.forward(x),
            None => panic!("no GPU tower"),
        };
        for (b, h, w) in shapes {
            let pixels: Vec<f32> = (0..b * 3 * h * w).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
            let x = CudaTensor::from_f32(&gpu, &[b, 3, h, w], &pixels, DType::F32).unwrap();
            let want = eager(&x).unwrap().to_f32_vec(&gpu).unwrap();
            let eager_launches = sim.take_profiles().len();
            let t = labelfree::tensor::Tensor::from_f32(&[b, 3, h, w], pixels).unwrap();
            let got = model.encode_image(&t).unwrap();
            let replay_launches = sim.take_profiles().len();
            let what = format!("{name} B={b} {h}x{w}");
            let same = want.iter().zip(got.f32s().unwrap()).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same && want.len() == got.numel(), "{what}: the graph's embeddings differ from the eager forward");
            assert_eq!(eager_launches, replay_launches, "{what}: launches");
            assert_eq!(model.image_graph_shape(), Some(vec![b, 3, h, w]), "{what}: the graph of this shape");
        }
    }
    assert!(sim.take_findings().is_empty(), "sanitizer findings");
}
