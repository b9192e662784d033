//! `--device sim` end to end: the CUDA paths of embed, zeroshot and tagclip, run by the PTX
//! simulator, agree with `--device cpu` within the gpu-check tolerances (f32: 1e-4), and the
//! sanitizer stays silent. Tiny models from tests/fixtures keep the simulated work small.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::kernels_or_skip;
use labelfree::device::cuda::{DType, Gpu};
use labelfree::device::sim::SimOptions;
use labelfree::methods::tagclip::{prepare, run_batch, ClassText, TagclipOptions};
use labelfree::models::clip::weights::load_safetensors;
use labelfree::models::clip::ClipModel;

fn coco() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/coco128/train2017")
}

fn labelfree(args: &[&str], cache: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_labelfree")).args(args).env("LABELFREE_CACHE", cache).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "labelfree {args:?} failed:\n{text}");
    text
}

fn photos(dir: &Path, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let mut names: Vec<PathBuf> =
        std::fs::read_dir(coco()).expect("../shared/data/coco128").map(|e| e.unwrap().path()).collect();
    names.sort();
    names
        .into_iter()
        .take(n)
        .map(|p| {
            let d = dir.join(p.file_name().unwrap());
            std::fs::copy(&p, &d).unwrap();
            d
        })
        .collect()
}

#[test]
fn embed_on_the_simulator_matches_the_cpu() {
    if !kernels_or_skip() {
        return;
    }
    let tmp = common::TempDir::new("sim-embed");
    photos(&tmp.path().join("img"), 3);
    let w = common::fixtures().join("models/vit_openclip_gelu.safetensors");
    let (img, w) = (tmp.path().join("img"), w.to_str().unwrap().to_string());
    let mut outs = Vec::new();
    for dev in ["cpu", "sim"] {
        let out = tmp.path().join(format!("{dev}.safetensors"));
        let log = labelfree(
            &[
                "--device",
                dev,
                "embed",
                "--weights",
                &w,
                "--images",
                img.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &tmp.path().join("cache"),
        );
        eprintln!("{dev}: {}", log.lines().last().unwrap_or_default());
        outs.push(load_safetensors(&out).unwrap().0.remove("embeddings").unwrap());
    }
    let (cpu, sim) = (outs[0].f32s().unwrap(), outs[1].f32s().unwrap());
    assert_eq!(cpu.len(), sim.len());
    let err = common::row_rel_err(sim, cpu, outs[0].dim(1));
    eprintln!("embed: sim vs cpu worst row relative error {err:.2e}");
    assert!(err < 1e-4, "embed: sim vs cpu {err:.3e}");
}

#[test]
fn zeroshot_on_the_simulator_matches_the_cpu() {
    if !kernels_or_skip() {
        return;
    }
    let tmp = common::TempDir::new("sim-zeroshot");
    photos(&tmp.path().join("img"), 4);
    // A tiny ModifiedResNet with the full vocabulary (so prompts tokenise): its convolutions,
    // pools and attention pool run on the simulator.
    let w = common::fixtures().join("cdul/tiny_clip.safetensors");
    let mut csvs = Vec::new();
    for dev in ["cpu", "sim"] {
        let out = tmp.path().join(format!("{dev}.csv"));
        let img = tmp.path().join("img");
        labelfree(
            &[
                "--device",
                dev,
                "zeroshot",
                "--weights",
                w.to_str().unwrap(),
                "--images",
                img.to_str().unwrap(),
                "--classes",
                "cat,dog,person,car",
                "--out",
                out.to_str().unwrap(),
            ],
            &tmp.path().join("cache"),
        );
        csvs.push(std::fs::read_to_string(&out).unwrap());
    }
    let parse = |s: &str| -> Vec<f32> {
        s.lines()
            .skip(1)
            .flat_map(|l| l.split(',').skip(1).map(|v| v.parse::<f32>().unwrap()).collect::<Vec<_>>())
            .collect()
    };
    let (cpu, sim) = (parse(&csvs[0]), parse(&csvs[1]));
    assert_eq!(cpu.len(), 16);
    let err = common::rel_err(&sim, &cpu);
    eprintln!("zeroshot: sim vs cpu max relative error {err:.2e}");
    assert!(err < 1e-4, "zeroshot: sim vs cpu {err:.3e}");
}

#[test]
fn tagclip_on_the_simulator_matches_the_cpu() {
    if !kernels_or_skip() {
        return;
    }
    let dir = common::fixtures().join("tagclip");
    let io = common::load_io(&dir.join("tiny.io.safetensors"));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tiny.json")).unwrap()).unwrap();
    let classes: Vec<String> =
        doc["classes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let mut names = classes.clone();
    names.extend(doc["background"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()));
    let text_t = &io["text_features"];
    let text =
        ClassText::from_embeddings(names, classes.len(), text_t.f32s().unwrap().to_vec(), text_t.dim(1)).unwrap();
    let weights = dir.join("tiny.safetensors");
    let cpu_model = ClipModel::load(&weights, None, None).unwrap();
    let mut sim_model = ClipModel::load(&weights, None, None).unwrap();
    let gpu = Gpu::simulator(SimOptions::default()).unwrap();
    sim_model.attach_cuda(&gpu, DType::F32).unwrap();
    let transform = labelfree::methods::tagclip::transform_for(&cpu_model).unwrap();
    let im = &doc["images"][0];
    let prep = prepare(&dir.join(im["file"].as_str().unwrap()), &transform).unwrap();
    let opts = TagclipOptions::default();
    let cpu = run_batch(&cpu_model, &[&prep], &text, &opts).unwrap().remove(0);
    let sim = run_batch(&sim_model, &[&prep], &text, &opts).unwrap().remove(0);
    let findings = gpu.sim().unwrap().take_findings();
    assert!(findings.is_empty(), "sanitizer: {findings:?}");
    let launches: u64 = gpu.sim().unwrap().launch_counts().values().sum();
    assert!(launches > 0, "the simulated run launched no kernel");
    let err = common::rel_err(&sim.scores, &cpu.scores);
    eprintln!("tagclip: {launches} launches, tags cpu {:?} sim {:?}, scores max rel err {err:.2e}", cpu.tags, sim.tags);
    assert!(err < 1e-4, "tagclip scores: sim vs cpu {err:.3e}");
    assert_eq!(sim.tags, cpu.tags, "tags");
}

/// A random model's CUDA image tower is uploaded from its CPU tower (one loader), so it is the
/// same draw: the simulated embeddings of a random ViT and a random ModifiedResNet match the
/// CPU's.
#[test]
fn random_model_cuda_tower_is_the_cpu_draw() {
    use rand::SeedableRng;
    if !kernels_or_skip() {
        return;
    }
    let gpu = Gpu::simulator(SimOptions::default()).unwrap();
    for (name, mut model) in [("ViT", common::tiny_clip(3)), ("ModifiedResNet", common::tiny_clip_resnet(4))] {
        let pixels = labelfree::tensor::Tensor::randn(&[2, 3, 32, 32], 1.0, &mut rand::rngs::StdRng::seed_from_u64(9));
        let want = model.encode_image(&pixels).unwrap();
        model.attach_cuda(&gpu, DType::F32).unwrap();
        let got = model.encode_image(&pixels).unwrap();
        let err = common::rel_err(got.f32s().unwrap(), want.f32s().unwrap());
        eprintln!("random {name}: sim vs cpu max rel err {err:.2e}");
        assert!(err < 1e-4, "random {name}: the CUDA tower is not the CPU tower's draw ({err:.3e})");
    }
    let findings = gpu.sim().unwrap().take_findings();
    assert!(findings.is_empty(), "sanitizer: {findings:?}");
}
