"""PyTorch / open_clip image-encoder throughput, to set beside `cargo bench --bench encoders`.

Same protocol as the engine's bench: random weights, random input, one warm-up pass, median of
--runs timed passes, fp32, --threads intra-op threads.
usage: python tools/bench_torch.py [--archs ViT-B-16,ViT-B-32,RN50] [--batch 8] [--threads 2] [--runs 3]
"""
import argparse
import statistics
import time

import open_clip
import torch

ap = argparse.ArgumentParser()
ap.add_argument("--archs", default="ViT-B-16,ViT-B-32,RN50")
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--runs", type=int, default=3)
args = ap.parse_args()
torch.set_num_threads(args.threads)
print(f"torch {torch.__version__}, open_clip {open_clip.__version__}, threads {torch.get_num_threads()}")
print(f"{'arch':<10} {'batch':>5} {'size':>5} {'s/batch':>10} {'images/s':>10}")
for arch in args.archs.split(","):
    model = open_clip.create_model(arch).eval()
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    x = torch.randn(args.batch, 3, size, size)
    with torch.inference_mode():
        model.encode_image(x)
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            model.encode_image(x)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"{arch:<10} {args.batch:>5} {size:>5} {med:>10.3f} {args.batch / med:>10.2f}")
