//! `cargo bench --bench ops`: every CPU op on the shapes of the CLIP encoders (ViT-B/16 at 224,
//! batch 8; RN50's convolutions), median of several runs, with the work per call.
//! LABELFREE_THREADS sets the thread count.

use std::time::Instant;

use labelfree::ops::activation::{bias_act_cpu, Activation};
use labelfree::ops::attention::{attention_forward_cpu, AttnMask, ProbsRecord};
use labelfree::ops::conv2d::{conv2d_cpu, patch_embed_cpu, Conv2dShape};
use labelfree::ops::conv2d_nhwc::conv2d_nhwc_cpu;
use labelfree::ops::dmar::{dmar_propagate_cpu, dmar_weights_cpu};
use labelfree::ops::gemm_packed::{linear_packed_cpu, packed_gemm_available, Bias, Epilogue, PackedB};
use labelfree::ops::layernorm::layer_norm_cpu;
use labelfree::ops::matmul::linear_cpu;
use labelfree::ops::pool::avg_pool2d_cpu;
use labelfree::ops::softmax::softmax_cpu;
use rand::{Rng, SeedableRng};

fn rand_vec(n: usize, rng: &mut impl Rng) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

/// Median seconds of `runs` calls after one warm-up.
fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[t.len() / 2]
}

fn row(op: &str, shape: &str, secs: f64, flops: f64, bytes: f64) {
    println!(
        "{:<16} {:<34} {:>9.3} ms {:>8.1} GFLOP/s {:>7.1} GB/s",
        op,
        shape,
        secs * 1e3,
        flops / secs / 1e9,
        bytes / secs / 1e9
    );
}

fn main() {
    if let Some(n) = std::env::var("LABELFREE_THREADS").ok().and_then(|v| v.parse().ok()) {
        labelfree::device::set_cpu_threads(n);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let runs = 5;
    let (b, t, c) = (8usize, 197usize, 768usize);
    let rows = b * t;
    println!("threads {}", rayon::current_num_threads());

    let x = rand_vec(rows * c, &mut rng);
    let w = rand_vec(3 * c * c, &mut rng);
    let bias = rand_vec(3 * c, &mut rng);
    let mut y = vec![0.0f32; rows * 3 * c];
    let s = time(runs, || linear_cpu(&x, &w, Some(&bias), &mut y, c, false));
    row(
        "linear",
        "(1576,768) x (2304,768)^T",
        s,
        2.0 * (rows * c * 3 * c) as f64,
        4.0 * (rows * c + 3 * c * c + rows * 3 * c) as f64,
    );

    // The linear layers of ViT-B/32 (M = 8 x 50 rows) and ViT-B/16 (8 x 197): the `gemm`
    // crate (weights re-packed per call) beside the packed GEMM (weights packed at load).
    for &(m, n, k) in &[
        (400usize, 2304usize, 768usize),
        (400, 768, 768),
        (400, 3072, 768),
        (400, 768, 3072),
        (1576, 2304, 768),
        (1576, 3072, 768),
        (1576, 768, 3072),
    ] {
        let xm = rand_vec(m * k, &mut rng);
        let wm = rand_vec(n * k, &mut rng);
        let bm = rand_vec(n, &mut rng);
        let mut ym = vec![0.0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let bytes = 4.0 * (m * k + n * k + m * n) as f64;
        let shape = format!("({m},{k}) x ({n},{k})^T");
        let s = time(runs, || linear_cpu(&xm, &wm, Some(&bm), &mut ym, k, false));
        row("linear (gemm)", &shape, s, flops, bytes);
        if packed_gemm_available() {
            let packed = PackedB::from_linear_weight(&wm, n, k);
            let ep = Epilogue { bias: Bias::PerColumn(&bm), ..Default::default() };
            let s = time(runs, || linear_packed_cpu(&xm, &packed, &ep, &mut ym));
            row("linear (packed)", &shape, s, flops, bytes);
        }
    }

    let qkv = rand_vec(rows * 3 * c, &mut rng);
    let mut out = vec![0.0f32; rows * c];
    let mut probs = vec![0.0f32; b * t * t];
    let attn_flops = 4.0 * (b * t * t * c) as f64;
    let s = time(runs, || {
        attention_forward_cpu(&qkv, b, t, c, 12, &AttnMask::default(), ProbsRecord::None, &mut out, None)
    });
    row("attention", "B8 T197 C768 H12", s, attn_flops, 4.0 * (rows * 4 * c) as f64);
    let s = time(runs, || {
        attention_forward_cpu(&qkv, b, t, c, 12, &AttnMask::default(), ProbsRecord::Masked, &mut out, Some(&mut probs))
    });
    row("attention+probs", "B8 T197 C768 H12", s, attn_flops, 4.0 * (rows * 4 * c + b * t * t) as f64);

    let lw = rand_vec(c, &mut rng);
    let lb = rand_vec(c, &mut rng);
    let mut ln = vec![0.0f32; rows * c];
    let s = time(runs, || layer_norm_cpu(&x, &lw, &lb, 1e-5, &mut ln));
    row("layer_norm", "(1576,768)", s, 8.0 * (rows * c) as f64, 8.0 * (rows * c) as f64);

    let fb = rand_vec(4 * c, &mut rng);
    let mut h = rand_vec(rows * 4 * c, &mut rng);
    for (name, act) in [("bias_quick_gelu", Activation::QuickGelu), ("bias_gelu", Activation::Gelu)] {
        let s = time(runs, || bias_act_cpu(&mut h, &fb, act));
        row(name, "(1576,3072)", s, 0.0, 8.0 * (rows * 4 * c) as f64);
    }

    let mut logits = rand_vec(b * 12 * t * t, &mut rng);
    let s = time(runs, || softmax_cpu(&mut logits, t));
    row("softmax", "(18912,197)", s, 0.0, 8.0 * (b * 12 * t * t) as f64);

    let pixels = rand_vec(b * 3 * 224 * 224, &mut rng);
    let pw = rand_vec(c * 3 * 16 * 16, &mut rng);
    let mut tokens = vec![0.0f32; b * 196 * c];
    let s = time(runs, || patch_embed_cpu(&pixels, b, 3, 224, 224, &pw, 16, &mut tokens));
    row(
        "patch_embed",
        "B8 224 p16 -> 768",
        s,
        2.0 * (b * 196 * c * 768) as f64,
        4.0 * (pixels.len() + pw.len() + tokens.len()) as f64,
    );

    for &(cin, hw, cout, k) in
        &[(64usize, 56usize, 64usize, 3usize), (256, 56, 64, 1), (256, 14, 256, 3), (1024, 14, 2048, 1)]
    {
        let shape = Conv2dShape { batch: b, c_in: cin, h: hw, w: hw, c_out: cout, kernel: k, stride: 1, pad: k / 2 };
        let xin = rand_vec(b * cin * hw * hw, &mut rng);
        let wt = rand_vec(cout * cin * k * k, &mut rng);
        let bs = rand_vec(cout, &mut rng);
        let mut yo = vec![0.0f32; b * cout * hw * hw];
        let s = time(runs, || conv2d_cpu(&xin, &wt, Some(&bs), &shape, true, false, &mut yo));
        let flops = 2.0 * (b * cout * cin * k * k * hw * hw) as f64;
        row(
            "conv2d+bn+relu",
            &format!("B8 {cin}->{cout} k{k} {hw}x{hw}"),
            s,
            flops,
            4.0 * (xin.len() + wt.len() + yo.len()) as f64,
        );
    }

    // The channels-last op's CPU path (a permutation either side of conv2d_cpu): what the
    // layout costs on the CPU. Its kernel is timed by `labelfree gpu-check --bench --filter conv2d_nhwc`.
    for &(cin, hw, cout, k) in &[(64usize, 56usize, 64usize, 3usize), (1024, 14, 2048, 1)] {
        let shape = Conv2dShape { batch: b, c_in: cin, h: hw, w: hw, c_out: cout, kernel: k, stride: 1, pad: k / 2 };
        let xin = rand_vec(b * hw * hw * cin, &mut rng);
        let wt = rand_vec(cout * k * k * cin, &mut rng);
        let bs = rand_vec(cout, &mut rng);
        let mut yo = vec![0.0f32; b * hw * hw * cout];
        let s = time(runs, || conv2d_nhwc_cpu(&xin, &wt, Some(&bs), &shape, true, false, &mut yo));
        row(
            "conv2d_nhwc+relu",
            &format!("B8 {cin}->{cout} k{k} {hw}x{hw}"),
            s,
            2.0 * (b * cout * cin * k * k * hw * hw) as f64,
            4.0 * (xin.len() + wt.len() + yo.len()) as f64,
        );
    }

    let xp = rand_vec(b * 64 * 56 * 56, &mut rng);
    let mut yp = vec![0.0f32; b * 64 * 28 * 28];
    let s = time(runs, || avg_pool2d_cpu(&xp, b * 64, 56, 56, 2, &mut yp));
    row("avg_pool2d", "B8 C64 56x56 k2", s, 0.0, 4.0 * (xp.len() + yp.len()) as f64);

    // TagCLIP's DMAR on a COCO photo (480 x 640 -> 30 x 40 patches, T = 1201), 12 layers.
    let (tt, layers, nc) = (1201usize, 12usize, 103usize);
    let n = tt - 1;
    let maps: Vec<Vec<f32>> =
        (0..layers).map(|_| rand_vec(tt * tt, &mut rng).iter().map(|v| v.abs()).collect()).collect();
    let refs: Vec<&[f32]> = maps.iter().map(|m| m.as_slice()).collect();
    let s = time(runs, || {
        std::hint::black_box(dmar_weights_cpu(&refs, tt, 4, 0..layers));
    });
    row("dmar_weights", "L12 T1201", s, 0.0, 4.0 * (layers * n * n * 2 + n * n) as f64);
    let wd = dmar_weights_cpu(&refs, tt, 4, 0..layers);
    let pp = rand_vec(n * nc, &mut rng);
    let s = time(runs, || {
        std::hint::black_box(dmar_propagate_cpu(&wd, &pp, None, n, nc));
    });
    row("dmar_propagate", "N1200 C103", s, 2.0 * (n * n * nc) as f64, 4.0 * (n * n + 2 * n * nc) as f64);
}
