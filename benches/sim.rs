//! `cargo bench --bench sim`: the PTX simulator's own speed — thread instructions per second
//! with and without the sanitizer (and with the profile), on a ViT-B/16 encoder forward
//! (random weights; LABELFREE_SIM_BENCH_SIZE, default 64: 17 tokens, every kernel of the tower)
//! in f32 and bf16. The instruction count comes from a profiled run of the same forward.
//! Rayon runs CTAs in parallel: LABELFREE_THREADS (or RAYON_NUM_THREADS) sets the threads.

use labelfree::bench::sim_encoder_forward;
use labelfree::device::cuda::{has_kernels, DType, Gpu};
use labelfree::device::sim::SimOptions;

fn main() {
    if !has_kernels() {
        eprintln!("sim bench: this build has no kernels (build with nvcc: scripts/install-nvcc.sh, then NVCC=...)");
        return;
    }
    let size: usize = std::env::var("LABELFREE_SIM_BENCH_SIZE").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let threads = rayon::current_num_threads();
    println!("PTX simulator speed: ViT-B/16 forward, batch 1 at {size}x{size}, {threads} threads");
    println!("| dtype | mode | thread instructions | seconds | thread-instr/s | per thread |");
    println!("|---|---|---|---|---|---|");
    for dtype in [DType::F32, DType::BF16] {
        let run = |sanitize, profile| {
            let gpu = Gpu::simulator(SimOptions { sanitize, profile, ..SimOptions::default() }).expect("simulator");
            sim_encoder_forward(&gpu, "ViT-B-16", 1, size, dtype).expect("forward")
        };
        let (_, count) = run(false, true);
        for (mode, sanitize, profile) in [("plain", false, false), ("sanitizer", true, false), ("profile", false, true)]
        {
            let (seconds, _) = run(sanitize, profile);
            let rate = count as f64 / seconds;
            println!(
                "| {} | {mode} | {count:.3e} | {seconds:.2} | {rate:.3e} | {:.3e} |",
                dtype.suffix(),
                rate / threads as f64
            );
        }
    }
}
