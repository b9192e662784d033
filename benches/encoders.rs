//! `cargo bench`: image-encoder throughput (ViT-B/16, ViT-B/32, RN50 at 224, batch 8, random
//! weights). Environment: LABELFREE_BENCH_ARCHS (comma list), LABELFREE_BENCH_BATCH,
//! LABELFREE_BENCH_RUNS, LABELFREE_THREADS.

fn main() {
    let env = |k: &str| std::env::var(k).ok();
    if let Some(n) = env("LABELFREE_THREADS").and_then(|v| v.parse().ok()) {
        labelfree::device::set_cpu_threads(n);
    }
    let archs = env("LABELFREE_BENCH_ARCHS").unwrap_or_else(|| "ViT-B-16,ViT-B-32,RN50".into());
    let batch = env("LABELFREE_BENCH_BATCH").and_then(|v| v.parse().ok()).unwrap_or(8);
    let runs = env("LABELFREE_BENCH_RUNS").and_then(|v| v.parse().ok()).unwrap_or(3);
    println!("{:<10} {:>5} {:>5} {:>7} {:>10} {:>10}", "arch", "batch", "size", "threads", "s/batch", "images/s");
    for arch in archs.split(',') {
        match labelfree::bench::encoder_throughput(arch.trim(), batch, None, runs) {
            Ok(r) => println!(
                "{:<10} {:>5} {:>5} {:>7} {:>10.3} {:>10.2}",
                r.arch, r.batch, r.size, r.threads, r.median_s, r.images_per_s
            ),
            Err(e) => println!("{arch}: {e}"),
        }
    }
}
