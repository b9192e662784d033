//! The PTX simulator catches planted kernel bugs. tests/planted/*.cu holds small kernels in the
//! style of kernels/, each in a correct and a buggy variant: a shared-memory reduction missing
//! its barrier, an off-by-one loop bound, a cp.async pipeline whose wait is too shallow, an mma
//! with a wrong fragment index; the host side plants wrong launch parameters. The files are
//! compiled with nvcc at test time (found as build.rs finds it, with build.rs's flags); every
//! correct variant must give the CPU reference's result with no finding, every buggy one must be
//! reported: by the specific finding, a fault, or a result the CPU reference contradicts.
//!
//! Without nvcc the tests say so and pass, unless LABELFREE_REQUIRE_KERNELS=1.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use half::bf16;
use labelfree::device::sim::{FindingKind, SimArg, SimError, SimOptions, Simulator};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PLANTED_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/planted");

/// nvcc as build.rs looks for it: $NVCC, then $CUDA_HOME/bin/nvcc and $CUDA_PATH/bin/nvcc, then PATH.
fn find_nvcc() -> Option<PathBuf> {
    let works = |p: &Path| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success());
    let candidates = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .into_iter()
        .chain(["CUDA_HOME", "CUDA_PATH"].iter().filter_map(std::env::var_os).map(|h| Path::new(&h).join("bin/nvcc")))
        .chain(std::iter::once(PathBuf::from("nvcc")));
    candidates.into_iter().find(|p| works(p))
}

/// The planted modules' PTX, by module name (the file stem).
struct Planted {
    ptx: HashMap<&'static str, &'static str>,
}

impl Planted {
    fn simulator(&self) -> Simulator {
        let modules: Vec<(&'static str, &'static str)> = self.ptx.iter().map(|(&n, &p)| (n, p)).collect();
        Simulator::new(&modules, SimOptions::default())
    }
}

/// Compiles tests/planted/*.cu once per test binary; None (after saying why) when there is no nvcc.
fn planted() -> Option<&'static Planted> {
    static PLANTED: OnceLock<Option<Planted>> = OnceLock::new();
    PLANTED.get_or_init(compile_planted).as_ref()
}

fn compile_planted() -> Option<Planted> {
    let Some(nvcc) = find_nvcc() else {
        if std::env::var("LABELFREE_REQUIRE_KERNELS").is_ok_and(|v| v == "1") {
            panic!("LABELFREE_REQUIRE_KERNELS=1 but no nvcc was found (set NVCC or CUDA_HOME)");
        }
        eprintln!("sim_planted: no nvcc found (set NVCC or CUDA_HOME); the planted-bug tests are skipped");
        return None;
    };
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("planted");
    std::fs::create_dir_all(&out_dir).expect("create the PTX directory");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(PLANTED_DIR)
        .expect("tests/planted")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    assert!(!sources.is_empty(), "no tests/planted/*.cu");
    // One nvcc per file, in parallel: each is single-threaded.
    let jobs: Vec<_> = sources
        .into_iter()
        .map(|src| {
            let (nvcc, out_dir) = (nvcc.clone(), out_dir.clone());
            std::thread::spawn(move || {
                let stem = src.file_stem().and_then(|s| s.to_str()).expect("utf-8 file name").to_string();
                let ptx = out_dir.join(format!("{stem}.ptx"));
                let output = Command::new(&nvcc)
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .args(["--ptx", "-O3", "-std=c++17", "-lineinfo", "-Ikernels", "-arch=compute_80"])
                    .arg(&src)
                    .arg("-o")
                    .arg(&ptx)
                    .output()
                    .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
                assert!(output.status.success(), "{}:\n{}", src.display(), String::from_utf8_lossy(&output.stderr));
                (stem, std::fs::read_to_string(&ptx).expect("read PTX"))
            })
        })
        .collect();
    let ptx = jobs
        .into_iter()
        .map(|j| {
            let (stem, text) = j.join().expect("nvcc thread");
            (&*Box::leak(stem.into_boxed_str()), &*Box::leak(text.into_boxed_str()))
        })
        .collect();
    Some(Planted { ptx })
}

/// The source line of a planted file holding `marker` (1-based).
fn marked_line(file: &str, marker: &str) -> u32 {
    let text = std::fs::read_to_string(Path::new(PLANTED_DIR).join(file)).expect("read planted source");
    let i = text.lines().position(|l| l.contains(marker)).unwrap_or_else(|| panic!("no `{marker}` in {file}"));
    i as u32 + 1
}

/// `(file name, line)` of the innermost `.loc` in force at PTX line `ptx_line`.
fn cu_location(ptx: &str, ptx_line: u32) -> (String, u32) {
    let lines: Vec<&str> = ptx.lines().collect();
    let files: HashMap<u32, String> = lines
        .iter()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix(".file")?;
            let id = rest.split_whitespace().next()?.parse().ok()?;
            let path = rest.split('"').nth(1)?;
            Some((id, path.rsplit('/').next().unwrap_or(path).to_string()))
        })
        .collect();
    let loc = lines[..ptx_line as usize - 1]
        .iter()
        .rev()
        .find_map(|l| l.trim().strip_prefix(".loc"))
        .unwrap_or_else(|| panic!("no .loc before PTX line {ptx_line}"));
    let mut fields = loc.split(|c: char| c.is_whitespace() || c == ',').filter(|s| !s.is_empty());
    let file: u32 = fields.next().and_then(|s| s.parse().ok()).expect(".loc file");
    let line: u32 = fields.next().and_then(|s| s.parse().ok()).expect(".loc line");
    (files.get(&file).cloned().unwrap_or_default(), line)
}

/// A device buffer of `len` f32 filled with NaN (0xFF bytes): an output nobody wrote shows.
fn poisoned_f32(sim: &Simulator, len: usize) -> u64 {
    let addr = sim.alloc(len * 4).expect("alloc");
    sim.fill(addr, len * 4, 0xFF).expect("poison");
    addr
}

fn upload_f32(sim: &Simulator, values: &[f32]) -> u64 {
    let addr = sim.alloc(values.len() * 4).expect("alloc");
    sim.write(addr, bytemuck::cast_slice(values)).expect("write");
    addr
}

fn download_f32(sim: &Simulator, addr: u64, len: usize) -> Vec<f32> {
    let mut out = vec![0f32; len];
    sim.read(addr, bytemuck::cast_slice_mut(&mut out)).expect("read");
    out
}

fn random_f32(rng: &mut StdRng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| rng.gen_range(lo..hi)).collect()
}

/// Largest |got - want| / (1 + |want|); NaN (an unwritten output) counts as infinite.
fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| if g.is_nan() { f32::INFINITY } else { (g - w).abs() / (1.0 + w.abs()) })
        .fold(0.0, f32::max)
}

// ---------------------------------------------------------------------------------------------
// (a) a block reduction missing its __syncthreads()
// ---------------------------------------------------------------------------------------------

const ROWS: usize = 8;
const ROW_LEN: usize = 1000;
const REDUCE_BLOCK: u32 = 256;

fn run_row_sum(p: &Planted, kernel: &str) -> (Simulator, Vec<f32>, Vec<f32>) {
    let sim = p.simulator();
    let mut rng = StdRng::seed_from_u64(11);
    let x = random_f32(&mut rng, ROWS * ROW_LEN, 0.5, 1.5);
    let want: Vec<f32> = x.chunks(ROW_LEN).map(|r| r.iter().map(|&v| v as f64).sum::<f64>() as f32).collect();
    let (dx, dy) = (upload_f32(&sim, &x), poisoned_f32(&sim, ROWS));
    let args = [SimArg::B64(dx), SimArg::B64(dy), SimArg::B32(ROW_LEN as u32)];
    sim.launch("row_sum", kernel, [ROWS as u32, 1, 1], [REDUCE_BLOCK, 1, 1], REDUCE_BLOCK * 4, &args)
        .unwrap_or_else(|e| panic!("{kernel}: {e}"));
    let got = download_f32(&sim, dy, ROWS);
    (sim, got, want)
}

#[test]
fn reduction_with_its_barriers_sums_each_row() {
    let Some(p) = planted() else { return };
    let (sim, got, want) = run_row_sum(p, "row_sum_correct");
    assert!(max_rel_err(&got, &want) < 1e-5, "{got:?} vs {want:?}");
    let findings = sim.take_findings();
    assert!(findings.is_empty(), "{findings:?}");
}

#[test]
fn reduction_missing_a_barrier_is_a_race_at_the_reduce_step_and_a_wrong_sum() {
    let Some(p) = planted() else { return };
    let (sim, got, want) = run_row_sum(p, "row_sum_no_sync");
    let findings = sim.take_findings();
    let step = marked_line("row_sum.cu", "REDUCE STEP");
    assert!(!findings.is_empty(), "the missing barrier went unreported");
    for f in &findings {
        assert_eq!((f.kind, f.kernel.as_str()), (FindingKind::SharedRace, "row_sum_no_sync"), "{f:?}");
        assert_eq!(cu_location(p.ptx["row_sum"], f.ptx_line), ("row_sum.cu".to_string(), step), "{f:?}");
        assert!(f.message.contains("without a barrier"), "{}", f.message);
    }
    // Warp 0 finishes the tree before the other warps added their halves: thread 0 stores a
    // partial sum.
    assert!(max_rel_err(&got, &want) > 1e-2, "the racy reduction happened to be right: {got:?} vs {want:?}");
}

// ---------------------------------------------------------------------------------------------
// (b) an off-by-one loop bound; (e) wrong launch parameters
// ---------------------------------------------------------------------------------------------

const N: usize = 1000;
const SCALE_BLOCK: u32 = 256;
const SCALE_GRID: u32 = 4; // 1024 threads: the thread with i == N exists

struct ScaleBuffers {
    x: Vec<f32>,
    dx: u64,
    dy: u64,
}

fn scale_buffers(sim: &Simulator) -> ScaleBuffers {
    let mut rng = StdRng::seed_from_u64(12);
    let x = random_f32(&mut rng, N, -2.0, 2.0);
    let dx = upload_f32(sim, &x);
    ScaleBuffers { x, dx, dy: poisoned_f32(sim, N) }
}

fn launch_scale(sim: &Simulator, kernel: &str, args: &[SimArg]) -> Result<(), SimError> {
    sim.launch("scale", kernel, [SCALE_GRID, 1, 1], [SCALE_BLOCK, 1, 1], 0, args)
}

#[test]
fn scale_within_its_bound_matches_the_reference() {
    let Some(p) = planted() else { return };
    let sim = p.simulator();
    let b = scale_buffers(&sim);
    let a = 1.5f32;
    launch_scale(
        &sim,
        "scale_correct",
        &[SimArg::B64(b.dx), SimArg::B64(b.dy), SimArg::B32(a.to_bits()), SimArg::B32(N as u32)],
    )
    .expect("scale_correct");
    let want: Vec<f32> = b.x.iter().map(|&v| a * v).collect();
    assert_eq!(download_f32(&sim, b.dy, N), want);
    assert!(sim.take_findings().is_empty());
}

/// The fault of a read of x[N] by the one thread with i == N: CTA 3, thread 1000 - 3 * 256.
fn assert_reads_one_past_x(p: &Planted, result: Result<(), SimError>, kernel: &str, dx: u64) {
    match result {
        Err(SimError::Fault { kernel: k, cta, thread, ptx_line, message, .. }) => {
            assert_eq!(k, kernel);
            assert_eq!((cta, thread), ([3, 0, 0], [N as u32 - 3 * SCALE_BLOCK, 0, 0]), "{message}");
            let past_end = dx + (N * 4) as u64;
            assert_eq!(message, format!("global access of 4 bytes at {past_end:#x} is outside every allocation"));
            assert_eq!(
                cu_location(p.ptx["scale"], ptx_line),
                ("scale.cu".to_string(), marked_line("scale.cu", "SCALE STORE"))
            );
        }
        other => panic!("{kernel}: expected a fault reading x[{N}], got {other:?}"),
    }
}

#[test]
fn an_inclusive_loop_bound_faults_on_the_element_past_the_buffer() {
    let Some(p) = planted() else { return };
    let sim = p.simulator();
    let b = scale_buffers(&sim);
    let args = [SimArg::B64(b.dx), SimArg::B64(b.dy), SimArg::B32(1.5f32.to_bits()), SimArg::B32(N as u32)];
    let result = launch_scale(&sim, "scale_off_by_one", &args);
    assert_reads_one_past_x(p, result, "scale_off_by_one", b.dx);
}

#[test]
fn wrong_launch_parameters_are_refused_or_caught() {
    let Some(p) = planted() else { return };
    let sim = p.simulator();
    let b = scale_buffers(&sim);
    let (dx, dy, n) = (SimArg::B64(b.dx), SimArg::B64(b.dy), SimArg::B32(N as u32));
    let a = 1.5f32;
    let refused = |args: &[SimArg]| match launch_scale(&sim, "scale_correct", args) {
        Err(SimError::Launch { kernel, message }) => {
            assert_eq!(kernel, "scale_correct");
            message
        }
        other => panic!("expected the launch to be refused for {args:?}, got {other:?}"),
    };
    // The host forgot `a`.
    assert_eq!(refused(&[dx, dy, n]), "3 arguments for 4 parameters");
    // n passed as a 64-bit integer; x passed as a 32-bit one.
    assert_eq!(
        refused(&[dx, dy, SimArg::B32(a.to_bits()), SimArg::B64(N as u64)]),
        "argument 3 is 8 bytes, the parameter 4"
    );
    assert_eq!(
        refused(&[SimArg::B32(b.dx as u32), dy, SimArg::B32(a.to_bits()), n]),
        "argument 0 is 4 bytes, the parameter 8"
    );
    assert!(sim.launch_counts().is_empty(), "no refused launch ran");
    assert!(download_f32(&sim, b.dy, N).iter().all(|v| v.is_nan()), "y untouched");

    let want: Vec<f32> = b.x.iter().map(|&v| a * v).collect();
    // `a` passed as the integer 1 instead of the float's bits: the right width, so only the
    // reference sees it (y = 1.4e-45 * x).
    launch_scale(&sim, "scale_correct", &[dx, dy, SimArg::B32(1), n]).expect("launch");
    let got = download_f32(&sim, b.dy, N);
    assert!(max_rel_err(&got, &want) > 0.5, "an integer passed as the float went unnoticed");

    // n too small: the tail of y is never written (still NaN).
    sim.fill(b.dy, N * 4, 0xFF).expect("poison");
    launch_scale(&sim, "scale_correct", &[dx, dy, SimArg::B32(a.to_bits()), SimArg::B32(N as u32 / 2)])
        .expect("launch");
    let got = download_f32(&sim, b.dy, N);
    assert_eq!(&got[..N / 2], &want[..N / 2]);
    assert!(got[N / 2..].iter().all(|v| v.is_nan()), "a short n leaves the tail unwritten");

    // n one too large: the correct kernel reads past x like the off-by-one does.
    let result = launch_scale(&sim, "scale_correct", &[dx, dy, SimArg::B32(a.to_bits()), SimArg::B32(N as u32 + 1)]);
    assert_reads_one_past_x(p, result, "scale_correct", b.dx);
    assert!(sim.take_findings().is_empty());
}

// ---------------------------------------------------------------------------------------------
// (c) a cp.async pipeline whose wait is too shallow
// ---------------------------------------------------------------------------------------------

const TILES: usize = 4;
const TILE: usize = 32 * 32;

fn run_tile_copy(p: &Planted, kernel: &str) -> (Simulator, Vec<f32>, Vec<f32>) {
    let sim = p.simulator();
    let mut rng = StdRng::seed_from_u64(13);
    let input = random_f32(&mut rng, TILES * TILE, -1.0, 1.0);
    let (din, dout) = (upload_f32(&sim, &input), poisoned_f32(&sim, TILES * TILE));
    let args = [SimArg::B64(din), SimArg::B64(dout), SimArg::B32(TILES as u32)];
    sim.launch("tile_copy", kernel, [1, 1, 1], [256, 1, 1], 0, &args).unwrap_or_else(|e| panic!("{kernel}: {e}"));
    let got = download_f32(&sim, dout, TILES * TILE);
    (sim, got, input)
}

#[test]
fn cp_async_pipeline_with_the_right_wait_copies_every_tile() {
    let Some(p) = planted() else { return };
    let (sim, got, input) = run_tile_copy(p, "tile_copy_correct");
    assert_eq!(got, input);
    let findings = sim.take_findings();
    assert!(findings.is_empty(), "{findings:?}");
}

#[test]
fn cp_async_wait_too_shallow_reads_shared_memory_before_it_lands() {
    let Some(p) = planted() else { return };
    let (sim, got, input) = run_tile_copy(p, "tile_copy_shallow_wait");
    let read_line = marked_line("tile_copy.cu", "TILE READ");
    let findings = sim.take_findings();
    // Tile 0 is read while no group has landed: shared memory nobody wrote.
    let uninit = findings
        .iter()
        .find(|f| f.kind == FindingKind::SharedUninitializedRead)
        .unwrap_or_else(|| panic!("no uninitialised read reported: {findings:?}"));
    assert_eq!(uninit.kernel, "tile_copy_shallow_wait");
    assert_eq!(cu_location(p.ptx["tile_copy"], uninit.ptx_line), ("tile_copy.cu".to_string(), read_line));
    assert!(uninit.message.contains("never written"), "{}", uninit.message);
    // Later tiles read the stage's previous contents: wrong values without an uninitialised byte.
    let wrong_tiles: Vec<usize> =
        (0..TILES).filter(|&t| got[t * TILE..(t + 1) * TILE] != input[t * TILE..(t + 1) * TILE]).collect();
    assert_eq!(wrong_tiles, (0..TILES).collect::<Vec<_>>(), "every tile is read before its copy lands");
}

// ---------------------------------------------------------------------------------------------
// (d) an mma.sync m16n8k16 with a wrong fragment index
// ---------------------------------------------------------------------------------------------

/// d (16, 8) = a (16, 16) · w (8, 16)^T in f64 from the bf16 inputs.
fn matmul_abt(a: &[bf16], w: &[bf16]) -> Vec<f32> {
    let mut d = vec![0f32; 16 * 8];
    for i in 0..16 {
        for j in 0..8 {
            d[i * 8 + j] = (0..16).map(|k| a[i * 16 + k].to_f64() * w[j * 16 + k].to_f64()).sum::<f64>() as f32;
        }
    }
    d
}

fn run_mma(p: &Planted, kernel: &str) -> (Simulator, Vec<f32>, Vec<bf16>, Vec<bf16>) {
    let sim = p.simulator();
    let mut rng = StdRng::seed_from_u64(14);
    let a: Vec<bf16> = (0..16 * 16).map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0))).collect();
    let w: Vec<bf16> = (0..8 * 16).map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0))).collect();
    let upload = |v: &[bf16]| {
        let addr = sim.alloc(v.len() * 2).expect("alloc");
        sim.write(addr, bytemuck::cast_slice(v)).expect("write");
        addr
    };
    let (da, dw, dd) = (upload(&a), upload(&w), poisoned_f32(&sim, 16 * 8));
    sim.launch("mma_tile", kernel, [1, 1, 1], [32, 1, 1], 0, &[SimArg::B64(da), SimArg::B64(dw), SimArg::B64(dd)])
        .unwrap_or_else(|e| panic!("{kernel}: {e}"));
    let got = download_f32(&sim, dd, 16 * 8);
    (sim, got, a, w)
}

#[test]
fn mma_with_the_isa_fragment_layout_matches_the_reference() {
    let Some(p) = planted() else { return };
    let (sim, got, a, w) = run_mma(p, "mma_tile_correct");
    let want = matmul_abt(&a, &w);
    assert!(max_rel_err(&got, &want) < 1e-5, "{got:?} vs {want:?}");
    assert!(sim.take_findings().is_empty());
}

#[test]
fn mma_with_a_wrong_fragment_row_gets_the_lower_half_wrong() {
    let Some(p) = planted() else { return };
    let (sim, got, a, w) = run_mma(p, "mma_tile_wrong_fragment");
    let want = matmul_abt(&a, &w);
    // Rows 0..7 use the registers that are right.
    assert!(max_rel_err(&got[..64], &want[..64]) < 1e-5, "rows 0..7: {:?} vs {:?}", &got[..64], &want[..64]);
    // Rows 8..15 are wrong, every one of them ...
    for i in 8..16 {
        let row = i * 8..(i + 1) * 8;
        assert!(max_rel_err(&got[row.clone()], &want[row.clone()]) > 1e-3, "row {i} happens to be right");
    }
    // ... and exactly what the planted bug computes: row i + 8 takes its k 0..7 from row i.
    let mut planted_a = a.clone();
    for i in 0..8 {
        let (top, bottom) = planted_a.split_at_mut(128);
        bottom[i * 16..i * 16 + 8].copy_from_slice(&top[i * 16..i * 16 + 8]);
    }
    assert!(
        max_rel_err(&got, &matmul_abt(&planted_a, &w)) < 1e-5,
        "the simulator's mma disagrees with the fragment layout"
    );
    // A wrong index into global memory is still in bounds: nothing for the sanitizer.
    assert!(sim.take_findings().is_empty());
}
