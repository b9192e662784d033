//! Full-size random-weight models made by the reference libraries, when a directory of them is
//! given (they are too large to commit): LABELFREE_FULL_DIR holds `<name>.safetensors` and
//! `<name>.io.safetensors` made by tools/make_full_checks.py. Skipped (with a message) otherwise.

mod common;

use std::path::PathBuf;

use labelfree::models::clip::ClipModel;
use labelfree::Tensor;

fn full_dir() -> Option<PathBuf> {
    std::env::var_os("LABELFREE_FULL_DIR").map(PathBuf::from)
}

#[test]
fn full_size_models_match_reference() {
    let Some(dir) = full_dir() else {
        eprintln!("skipped: set LABELFREE_FULL_DIR to a folder made by tools/make_full_checks.py");
        return;
    };
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let Some(stem) = name.strip_suffix(".io.safetensors") else { continue };
        let io = common::load_io(&p);
        let model = ClipModel::load(&dir.join(format!("{stem}.safetensors")), None, None).unwrap();
        let t0 = std::time::Instant::now();
        let emb = model.encode_image(&io["pixels"]).unwrap();
        eprintln!("{stem}: {} image pass {:?}", model.arch, t0.elapsed());
        common::assert_close(&format!("{stem} embedding"), &emb, &io["embedding"], 1e-4);
        if let Some(tt) = io.get("text_tokens") {
            let tok = Tensor::new(
                tt.shape(),
                labelfree::tensor::Storage::I32(tt.f32s().unwrap().iter().map(|&v| v as i32).collect()),
            )
            .unwrap();
            let te = model.encode_text(&tok).unwrap();
            common::assert_close(&format!("{stem} text"), &te, &io["text_embedding"], 1e-4);
        }
        n += 1;
    }
    assert!(n > 0, "no *.io.safetensors in {}", dir.display());
}
