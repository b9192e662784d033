//! The training loop: a run killed mid-epoch and resumed from its last checkpoint ends with the
//! same weights, running statistics and Adam state as an uninterrupted run; corrupt images are
//! skipped and counted.

use std::path::{Path, PathBuf};

use labelfree::data::color_jitter::ColorJitter;
use labelfree::data::datasets::args::DatasetArgs;
use labelfree::data::transforms::{Interpolation, Transform, IMAGENET_NORM_NUMPY};
use labelfree::models::resnet50::{HeadKind, ResNet, ResNetConfig};
use labelfree::train::checkpoint;
use labelfree::train::trainer::{Sample, SecondView, TrainConfig, Trainer};

fn write_png(path: &Path, w: u32, h: u32, seed: u32) {
    let data: Vec<u8> =
        (0..w * h * 3).map(|i| ((i.wrapping_mul(2654435761).wrapping_add(seed * 977)) >> 13) as u8).collect();
    let f = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(&data).unwrap();
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("labelfree-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(out: PathBuf, stop: Option<usize>) -> TrainConfig {
    TrainConfig {
        epochs: 3,
        batch: 2,
        lr: 1e-3,
        head_lr_mult: 10.0,
        transform: Transform::SquareResize { size: 32, interp: Interpolation::Bilinear, norm: IMAGENET_NORM_NUMPY },
        hflip: true,
        // From the second epoch on, a jittered second view: the resume covers its draws.
        second_view: Some(SecondView { from_epoch: 1, weight: 1.0, jitter: Some(ColorJitter::CCD) }),
        seed: 7,
        out,
        progress: false,
        stop_after_steps: stop,
        record_train_outputs: false,
        cuda_graph: true,
    }
}

fn model() -> ResNet {
    ResNet::new(ResNetConfig { width: 2, layers: [1, 1, 1, 1], num_classes: 3, head: HeadKind::Cam, alpha: 3.0 }, 3)
}

#[test]
fn killed_and_resumed_run_ends_with_the_same_weights() {
    let data = scratch("train-data");
    let mut samples = Vec::new();
    for i in 0..7u32 {
        let p = data.join(format!("img{i}.png"));
        write_png(&p, 40 + i, 30, i);
        samples.push(Sample { path: p, target: vec![(i % 3) as f32 / 2.0, 0.1 * i as f32, 1.0 - 0.1 * i as f32] });
    }
    // A corrupt image: skipped and counted every epoch.
    let bad = data.join("broken.png");
    std::fs::write(&bad, b"not a png").unwrap();
    samples.push(Sample { path: bad, target: vec![0.5; 3] });

    let dir_a = scratch("train-a");
    let mut a = Trainer::new(model(), &config(dir_a.clone(), None));
    let reports = a.train(&samples, None, &config(dir_a.clone(), None)).unwrap();
    assert_eq!(reports.len(), 3);
    for r in &reports {
        assert_eq!((r.images, r.left_out_lone), (6, 1), "{r:?}");
        assert_eq!(r.skipped.len(), 1);
        assert!(r.mean_loss.is_finite());
        assert_eq!(r.second_view, r.epoch >= 2);
        assert!(!r.second_view || r.mean_consistency > 0.0, "{r:?}");
    }
    let lines = std::fs::read_to_string(dir_a.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3);
    assert!(dir_a.join("metrics_epoch003.json").exists());

    // 8 samples, 7 readable: batches of 2, 2, 2 and a lone last image left out, so 3 steps an
    // epoch. Killed after 5 steps: epoch 1 done, epoch 2 two thirds done.
    let dir_b = scratch("train-b");
    let mut b = Trainer::new(model(), &config(dir_b.clone(), Some(5)));
    let done = b.train(&samples, None, &config(dir_b.clone(), Some(5))).unwrap();
    assert_eq!(done.len(), 1);
    assert_ne!(b.model.params, a.model.params);
    let mut resumed = Trainer::resume(&dir_b, &config(dir_b.clone(), None)).unwrap();
    assert_eq!(resumed.epoch, 1);
    let rest = resumed.train(&samples, None, &config(dir_b.clone(), None)).unwrap();
    assert_eq!(rest.len(), 2);

    assert_eq!(resumed.model.params, a.model.params, "weights differ after resume");
    assert_eq!(resumed.model.buffers, a.model.buffers, "running statistics differ after resume");
    assert_eq!((resumed.opt.m == a.opt.m, resumed.opt.v == a.opt.v, resumed.opt.step), (true, true, a.opt.step));

    // The checkpoint on disk is the final state too, and no temporary file is left behind.
    let (m, opt, meta) = checkpoint::load(&dir_b.join(checkpoint::CHECKPOINT_FILE)).unwrap();
    assert_eq!((meta.epoch, opt.step), (3, a.opt.step));
    assert_eq!(m.params, a.model.params);
    assert!(!dir_b.join("checkpoint.safetensors.tmp").exists());
    for d in [data, dir_a, dir_b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn run_from_csv_labels_and_a_backbone_then_resume() {
    use labelfree::train::run::{run, TrainRun};
    let root = scratch("train-run-data");
    let mut csv = String::from("path,cat,dog,bird\n");
    for i in 0..5u32 {
        write_png(&root.join(format!("im{i}.png")), 36, 28 + i, 40 + i);
        csv.push_str(&format!("im{i}.png,{},0.25,{}\n", i as f32 / 5.0, 1.0 - i as f32 / 5.0));
    }
    let labels = root.join("labels.csv");
    std::fs::write(&labels, csv).unwrap();
    let out = scratch("train-run-out");
    // The tiny linear-head fixture: torchvision names plus head.*, 3 classes.
    let backbone =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trainer/tiny_linear.safetensors");
    let mut r = TrainRun {
        labels: labels.clone(),
        data: DatasetArgs {
            dataset: None,
            root: Some(root.clone()),
            split: None,
            voc_difficult: "positive".into(),
            keep_unlabeled: false,
            classes_file: None,
        },
        eval_split: None,
        backbone: Some(backbone),
        width: None,
        epochs: 2,
        batch: 2,
        lr: 1e-3,
        size: 32,
        seed: 1,
        head: HeadKind::Linear,
        alpha: 1.0,
        second_view: None,
        resume: false,
        dtype: labelfree::device::cuda::DType::F32,
        cuda_graph: true,
        out: out.clone(),
        progress: false,
    };
    let s = run(&r, None).unwrap();
    assert_eq!((s.classes.len(), s.images, s.epochs.len(), s.resumed_from_epoch), (3, 5, 2, 0));
    assert!(out.join("train_report.json").exists() && out.join("checkpoint.json").exists());
    r.resume = true;
    r.epochs = 3;
    let s = run(&r, None).unwrap();
    assert_eq!((s.resumed_from_epoch, s.epochs.len(), s.epochs[0].epoch), (2, 1, 3));
    // A label out of [0, 1] is an error that names the line.
    std::fs::write(&labels, "path,a,b,c\nim0.png,0.5,1.5,0\n").unwrap();
    let e = run(&TrainRun { resume: false, ..r }, None).err().unwrap().to_string();
    assert!(e.contains("line 2") && e.contains("1.5"), "{e}");
    for d in [root, out] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn recorded_training_outputs_are_the_batches_trained_on() {
    let data = scratch("train-outputs");
    let mut samples = Vec::new();
    for i in 0..7u32 {
        let p = data.join(format!("img{i}.png"));
        write_png(&p, 36 + i, 30, i);
        samples.push(Sample { path: p, target: vec![(i % 3) as f32 / 2.0, 0.1 * i as f32, 1.0 - 0.1 * i as f32] });
    }
    let out = scratch("train-outputs-run");
    let cfg = TrainConfig { epochs: 1, record_train_outputs: true, ..config(out.clone(), None) };
    let mut t = Trainer::new(model(), &cfg);
    let reports = t.train(&samples, None, &cfg).unwrap();
    let o = reports[0].train_outputs.as_ref().expect("outputs recorded");
    // 7 images in batches of 2: the lone last one is left out of training, and of the record.
    assert_eq!((reports[0].images, reports[0].left_out_lone), (6, 1));
    assert_eq!((o.logits.len(), o.targets.len()), (6 * 3, 6 * 3));
    assert!(o.logits.iter().all(|v| v.is_finite()));
    // Each recorded target row is a distinct sample's (in the shuffled training order).
    let mut seen = std::collections::BTreeSet::new();
    for row in o.targets.chunks_exact(3) {
        let i = samples.iter().position(|s| s.target == row).expect("a sample's target row");
        assert!(seen.insert(i), "sample {i} recorded twice");
    }
    // Not asked for: nothing kept.
    let cfg = TrainConfig { epochs: 1, ..config(scratch("train-outputs-off"), None) };
    let mut t = Trainer::new(model(), &cfg);
    assert!(t.train(&samples, None, &cfg).unwrap()[0].train_outputs.is_none());
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&out);
}
