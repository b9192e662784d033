//! Compiles every kernels/*.cu to PTX with nvcc and embeds it in the binary.
//!
//! - nvcc is looked up in $NVCC, then $CUDA_HOME/bin/nvcc (also $CUDA_PATH), then PATH.
//!   `scripts/install-nvcc.sh` installs one from PyPI (no CUDA toolkit, no GPU needed).
//! - `kernels/NAME.cu` becomes PTX for compute_80 (runs on sm_80 and every newer GPU through
//!   the driver's JIT); `kernels/NAME.sm90a.cu` holds Hopper-only code and becomes PTX for
//!   compute_90a, loaded only on a compute capability 9.0 device.
//! - Without nvcc the build succeeds with no kernels; `--device cuda` then says so and how to
//!   get them. With LABELFREE_REQUIRE_KERNELS=1 (CI) a missing nvcc is a build error, and a
//!   kernel that does not compile always is one.
//!
//! The generated `$OUT_DIR/kernels.rs` holds `KERNEL_MODULES: &[KernelModule]`, every module's
//! entry points with the byte width of each parameter (`KERNEL_ENTRIES`, read from the PTX:
//! a launcher's kernel name and argument count can be checked without a GPU), and the nvcc
//! version string.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "LABELFREE_REQUIRE_KERNELS", "LABELFREE_NVCC_FLAGS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo::rustc-check-cfg=cfg(labelfree_kernels)");

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernel_dir = Path::new("kernels");
    let mut sources: Vec<PathBuf> = fs::read_dir(kernel_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "cu")).collect()
        })
        .unwrap_or_default();
    sources.sort();

    let require = env::var("LABELFREE_REQUIRE_KERNELS").is_ok_and(|v| v == "1");
    let nvcc = find_nvcc();
    let Some(nvcc) = nvcc else {
        if require {
            panic!(
                "LABELFREE_REQUIRE_KERNELS=1 but no nvcc was found (set NVCC or CUDA_HOME, or run scripts/install-nvcc.sh)"
            );
        }
        println!(
            "cargo:warning=labelfree: nvcc not found, building without CUDA kernels (scripts/install-nvcc.sh installs one; then set NVCC)"
        );
        write_registry(&out_dir, &[], "");
        return;
    };

    let version = Command::new(&nvcc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().rev().find(|l| l.contains("release")).map(|l| l.trim().to_string()))
        .unwrap_or_default();

    let extra: Vec<String> =
        env::var("LABELFREE_NVCC_FLAGS").map(|s| s.split_whitespace().map(String::from).collect()).unwrap_or_default();

    // One thread per file: nvcc is single-threaded and the files are independent.
    let jobs: Vec<_> = sources
        .iter()
        .map(|src| {
            let src = src.clone();
            let nvcc = nvcc.clone();
            let out_dir = out_dir.clone();
            let extra = extra.clone();
            std::thread::spawn(move || compile(&nvcc, &src, &out_dir, &extra))
        })
        .collect();
    let mut modules = Vec::new();
    let mut failures = Vec::new();
    for job in jobs {
        match job.join().expect("nvcc thread") {
            Ok(m) => modules.push(m),
            Err(e) => failures.push(e),
        }
    }
    if !failures.is_empty() {
        panic!("CUDA kernels failed to compile:\n{}", failures.join("\n"));
    }
    println!("cargo:rustc-cfg=labelfree_kernels");
    write_registry(&out_dir, &modules, &version);
}

struct Compiled {
    name: String,
    arch: &'static str,
    ptx: PathBuf,
}

fn compile(nvcc: &Path, src: &Path, out_dir: &Path, extra: &[String]) -> Result<Compiled, String> {
    let file = src.file_name().and_then(|s| s.to_str()).unwrap_or_default();
    let stem = file.trim_end_matches(".cu");
    let (name, arch) = match stem.strip_suffix(".sm90a") {
        Some(base) => (base.to_string(), "compute_90a"),
        None => (stem.to_string(), "compute_80"),
    };
    let ptx = out_dir.join(format!("{stem}.ptx"));
    let output = Command::new(nvcc)
        .args(["--ptx", "-O3", "-std=c++17", "-lineinfo", "-Ikernels"])
        .arg(format!("-arch={arch}"))
        .args(extra)
        .arg(src)
        .arg("-o")
        .arg(&ptx)
        .output()
        .map_err(|e| format!("{}: cannot run nvcc ({e})", src.display()))?;
    if !output.status.success() {
        return Err(format!("{}:\n{}", src.display(), String::from_utf8_lossy(&output.stderr)));
    }
    Ok(Compiled { name, arch, ptx })
}

/// `(entry name, byte width of each .param)` of every `.entry` in a PTX text. nvcc writes each
/// entry as `.visible .entry NAME(` followed by one `.param .TYPE NAME` line per parameter and a
/// closing `)`.
fn ptx_entries(ptx: &str) -> Vec<(String, Vec<u32>)> {
    let mut entries = Vec::new();
    let mut current: Option<(String, Vec<u32>)> = None;
    for line in ptx.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix(".visible .entry ").or_else(|| t.strip_prefix(".entry ")) {
            let name = rest.trim_end_matches(['(', ')']).trim().to_string();
            current = Some((name, Vec::new()));
            if rest.ends_with("()") {
                entries.extend(current.take());
            }
            continue;
        }
        let Some((_, params)) = current.as_mut() else { continue };
        if let Some(p) = t.strip_prefix(".param ") {
            // `.param .u64 NAME`, or `.param .align A .b8 NAME[N]` for a by-value struct.
            let words: Vec<&str> = p.split_whitespace().collect();
            let width = match words.first().copied() {
                Some(".u64" | ".s64" | ".b64" | ".f64") => 8,
                Some(".u32" | ".s32" | ".b32" | ".f32") => 4,
                Some(".u16" | ".s16" | ".b16" | ".f16") => 2,
                Some(".u8" | ".s8" | ".b8") => 1,
                _ => words
                    .last()
                    .and_then(|w| w.split('[').nth(1))
                    .and_then(|n| n.trim_end_matches([']', ',']).parse().ok())
                    .unwrap_or(0),
            };
            params.push(width);
        } else if t.starts_with(')') {
            entries.extend(current.take());
        }
    }
    entries
}

fn write_registry(out_dir: &Path, modules: &[Compiled], version: &str) {
    let mut code = String::from("/// Kernels compiled by build.rs (empty when the build had no nvcc).\n");
    code.push_str("pub const KERNEL_MODULES: &[KernelModule] = &[\n");
    for m in modules {
        code.push_str(&format!(
            "    KernelModule {{ name: {:?}, arch: {:?}, ptx: include_str!({:?}) }},\n",
            m.name,
            m.arch,
            m.ptx.display().to_string()
        ));
    }
    code.push_str("];\n");
    code.push_str("/// Every entry point of every module above, with its parameters' byte widths.\n");
    code.push_str("pub const KERNEL_ENTRIES: &[KernelEntry] = &[\n");
    for m in modules {
        let ptx = fs::read_to_string(&m.ptx).expect("read the PTX just written");
        for (name, params) in ptx_entries(&ptx) {
            code.push_str(&format!(
                "    KernelEntry {{ module: {:?}, arch: {:?}, name: {:?}, param_bytes: &{:?} }},\n",
                m.name, m.arch, name, params
            ));
        }
    }
    code.push_str("];\n");
    code.push_str(&format!("/// `nvcc --version` of the build.\npub const NVCC_VERSION: &str = {version:?};\n"));
    fs::write(out_dir.join("kernels.rs"), code).expect("write kernels.rs");
}

fn find_nvcc() -> Option<PathBuf> {
    let works = |p: &Path| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success());
    if let Ok(p) = env::var("NVCC") {
        let p = PathBuf::from(p);
        if works(&p) {
            return Some(p);
        }
        println!("cargo:warning=labelfree: NVCC={} does not run; looking elsewhere", p.display());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(home) = env::var(var) {
            let p = Path::new(&home).join("bin").join("nvcc");
            if works(&p) {
                return Some(p);
            }
        }
    }
    let p = PathBuf::from("nvcc");
    works(&p).then_some(p)
}
