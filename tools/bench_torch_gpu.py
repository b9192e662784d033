"""PyTorch / open_clip image-encoder throughput on a GPU, to set beside
`labelfree bench --device cuda` in the same run: eager mode, bf16 autocast, SDPA attention
(open_clip's default), random weights, CUDA events, 3 warm-up passes, median of --runs.
Prints one JSON object per line (arch, batch, images/s) and a table.
usage: python tools/bench_torch_gpu.py [--archs ViT-B-16] [--batches 1,8,64,256,512] [--runs 10]
"""
import argparse
import json
import statistics

import open_clip
import torch

ap = argparse.ArgumentParser()
ap.add_argument("--archs", default="ViT-B-16,ViT-B-32")
ap.add_argument("--batches", default="1,8,64,256,512")
ap.add_argument("--runs", type=int, default=10)
ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
args = ap.parse_args()
dt = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[args.dtype]
dev = torch.device("cuda")
print(f"# torch {torch.__version__}, open_clip {open_clip.__version__}, {torch.cuda.get_device_name()}, autocast {args.dtype}")
for arch in args.archs.split(","):
    model = open_clip.create_model(arch).eval().to(dev)
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    for batch in [int(b) for b in args.batches.split(",")]:
        x = torch.randn(batch, 3, size, size, device=dev)
        with torch.inference_mode(), torch.autocast("cuda", dtype=dt, enabled=args.dtype != "f32"):
            for _ in range(3):
                model.encode_image(x)
            torch.cuda.synchronize()
            times = []
            for _ in range(args.runs):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                model.encode_image(x)
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
        ms = statistics.median(times)
        print(json.dumps({"arch": arch, "batch": batch, "size": size, "dtype": args.dtype, "median_ms": ms,
                          "images_per_s": batch / (ms / 1e3), "impl": "torch eager autocast sdpa"}))
