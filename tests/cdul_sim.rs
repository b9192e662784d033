//! `cdul init --device sim` (the CUDA image tower run on the PTX simulator) equals `--device
//! cpu` on the tiny CLIP fixture and two coco128 photos, within 1e-4 relative (CUDA f32 vs
//! CPU). Needs the kernels compiled in (NVCC set at build time); without them it says so and
//! checks nothing.

mod common;

use std::path::Path;
use std::process::Command;

use common::{fixtures, TempDir};
use labelfree::methods::cdul::LabelFile;

#[test]
fn init_on_the_simulator_equals_the_cpu() {
    if labelfree::device::cuda::KERNEL_MODULES.is_empty() {
        eprintln!("built without CUDA kernels (set NVCC): cdul init --device sim not checked");
        return;
    }
    let tmp = TempDir::new("cdul_sim");
    let dir = tmp.path();
    let photos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/coco128/train2017");
    for p in ["000000000009.jpg", "000000000025.jpg"] {
        std::fs::copy(photos.join(p), dir.join(p)).unwrap();
    }
    std::fs::write(dir.join("classes.txt"), "person\ndog\ncar\nbowl\n").unwrap();
    std::fs::write(dir.join("s.csv"), "path,labels\n000000000009.jpg,bowl\n000000000025.jpg,dog\n").unwrap();
    let clip = fixtures().join("cdul/tiny_clip.safetensors");
    let mut got = Vec::new();
    for device in ["cpu", "sim"] {
        let out = dir.join(format!("{device}.safetensors"));
        let o = Command::new(env!("CARGO_BIN_EXE_labelfree"))
            .args([
                "--device",
                device,
                "cdul",
                "init",
                "--dataset",
                "csv",
                "--root",
                dir.to_str().unwrap(),
                "--split",
                "s",
            ])
            .args(["--clip", clip.to_str().unwrap(), "--out", out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{device}: {}", String::from_utf8_lossy(&o.stderr));
        got.push(LabelFile::read(&out).unwrap());
    }
    let (cpu, sim) = (&got[0], &got[1]);
    assert_eq!(cpu.paths, sim.paths);
    let (a, b) = (cpu.scores.as_ref().unwrap(), sim.scores.as_ref().unwrap());
    for (name, x, y) in [
        ("labels", &cpu.labels, &sim.labels),
        ("global", &a.global, &b.global),
        ("alpha", &a.alpha, &b.alpha),
        ("beta", &a.beta, &b.beta),
    ] {
        let worst = x.iter().zip(y.iter()).map(|(p, q)| (p - q).abs() / p.abs().max(1e-30)).fold(0.0f32, f32::max);
        eprintln!("{name}: sim vs cpu worst rel err {worst:.2e}");
        assert!(worst < 1e-4, "{name}: sim vs cpu {worst:e}");
    }
}
