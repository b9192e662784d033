//! `ccd init --device sim` (CLIP's tower with CCD's fp16 positional table) and `ccd relabel
//! --device sim` (stage 2 on the device: the classifier's CAMs, the `cam_box`
//! launch, the one batched `crop_resize_planes` launch and CLIP's image tower, run by the PTX
//! simulator) against `--device cpu` on the tiny CLIP and classifier fixtures and two coco128
//! photos: the same crops (boxes and sizes identical) and labels within 1e-4 relative. Needs
//! the kernels compiled in (NVCC set at build time); without them it says so and checks nothing.

mod common;

use std::path::Path;
use std::process::Command;

use common::{fixtures, TempDir};
use labelfree::methods::ccd::labels::CcdLabels;

const CLASSES: [&str; 10] = ["person", "bicycle", "car", "dog", "cat", "bus", "train", "boat", "bird", "horse"];

fn labelfree(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_labelfree")).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "labelfree {args:?}: {err}");
    err
}

#[test]
fn relabel_on_the_simulator_equals_the_cpu() {
    if labelfree::device::cuda::KERNEL_MODULES.is_empty() {
        eprintln!("built without CUDA kernels (set NVCC): ccd relabel --device sim not checked");
        return;
    }
    let tmp = TempDir::new("ccd_sim");
    let dir = tmp.path();
    let photos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/coco128/train2017");
    let mut csv = String::from("path,labels\n");
    for (k, p) in ["000000000009.jpg", "000000000025.jpg"].iter().enumerate() {
        std::fs::copy(photos.join(p), dir.join(p)).unwrap();
        csv.push_str(&format!("{p},{}\n", CLASSES[k]));
    }
    std::fs::write(dir.join("classes.txt"), CLASSES.join("\n")).unwrap();
    std::fs::write(dir.join("s.csv"), csv).unwrap();
    let clip = fixtures().join("cdul/tiny_clip.safetensors");
    let classifier = fixtures().join("ccd/classifier.safetensors");
    let (root, clip, classifier) = (dir.to_str().unwrap(), clip.to_str().unwrap(), classifier.to_str().unwrap());
    let data = ["--dataset", "csv", "--root", root, "--split", "s", "--clip", clip, "--clip-size", "96"];
    let l0 = dir.join("l0.safetensors");
    let mut init = vec!["ccd", "init", "--no-cache", "--out", l0.to_str().unwrap()];
    init.extend(data);
    labelfree(&init);
    // stage 0 on the simulator: CLIP's tower with the positional table rounded to fp16 as the CPU
    let l0_sim = dir.join("l0_sim.safetensors");
    let mut init_sim = vec!["--device", "sim", "ccd", "init", "--no-cache", "--out", l0_sim.to_str().unwrap()];
    init_sim.extend(data);
    labelfree(&init_sim);
    let (cpu0, sim0) = (CcdLabels::read(&l0).unwrap(), CcdLabels::read(&l0_sim).unwrap());
    assert_eq!((&cpu0.paths, &cpu0.flags), (&sim0.paths, &sim0.flags), "stage 0: paths and flags");
    for (name, x, y) in [
        ("labels", &cpu0.labels, &sim0.labels),
        ("clip_scores", cpu0.clip_scores.as_ref().unwrap(), sim0.clip_scores.as_ref().unwrap()),
        ("bias", cpu0.bias.as_ref().unwrap(), sim0.bias.as_ref().unwrap()),
    ] {
        let worst = x.iter().zip(y).map(|(p, q)| (p - q).abs() / p.abs().max(1e-6)).fold(0.0f32, f32::max);
        eprintln!("stage 0 {name}: sim vs cpu worst relative error {worst:.2e}");
        assert!(worst < 1e-4, "stage 0 {name}: sim vs cpu {worst:.3e}");
    }

    for rule in ["first-last", "minmax"] {
        let mut got = Vec::new();
        for device in ["cpu", "sim"] {
            let out = dir.join(format!("{device}-{rule}.safetensors"));
            let boxes = dir.join(format!("{device}-{rule}.boxes.json"));
            let mut args = vec!["--device", device, "ccd", "relabel", "--classifier", classifier];
            args.extend(data);
            args.extend(["--labels", l0.to_str().unwrap(), "--threshold", "0.3", "--offset", "12", "--box", rule]);
            // crops of long side 96, not 640: the simulated CLIP passes stay small
            args.extend(["--crop-long", "96"]);
            args.extend(["--out", out.to_str().unwrap(), "--boxes", boxes.to_str().unwrap()]);
            labelfree(&args);
            let b: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&boxes).unwrap()).unwrap();
            got.push((CcdLabels::read(&out).unwrap(), b));
        }
        let ((cpu, cpu_boxes), (sim, sim_boxes)) = (&got[0], &got[1]);
        let crops = cpu_boxes.as_array().unwrap();
        assert!(!crops.is_empty(), "{rule}: no crop at threshold 0.3: the check would be empty");
        // the same crops in the same order: image, class, box and size identical
        let key = |v: &serde_json::Value| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|r| (r["image"].clone(), r["class"].clone(), r["box_xyxy"].clone(), r["crop_hw"].clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(cpu_boxes), key(sim_boxes), "{rule}: boxes differ");
        for (a, b) in crops.iter().zip(sim_boxes.as_array().unwrap()) {
            let (x, y) = (a["crop_score"].as_f64().unwrap(), b["crop_score"].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-4 * x.abs().max(1e-3), "{rule}: crop score {x} vs {y}");
        }
        assert_eq!(cpu.paths, sim.paths);
        let worst =
            cpu.labels.iter().zip(&sim.labels).map(|(p, q)| (p - q).abs() / p.abs().max(1e-6)).fold(0.0f32, f32::max);
        eprintln!("{rule}: {} crops; labels sim vs cpu worst relative error {worst:.2e}", crops.len());
        assert!(worst < 1e-4, "{rule}: labels sim vs cpu {worst:.3e}");
    }
}
