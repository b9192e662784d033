"""PyTorch ResNet-50 training throughput on a GPU, to set beside `labelfree --device cuda train`
in the same run (issue 6): torchvision ResNet-50 with CCD's CAM head (1x1 conv 2048 -> C with
bias, positive part times alpha, global average pool), BCE-with-logits against soft targets,
Adam with the backbone / 10x head groups, channels-last, bf16 autocast (and f32 for the
like-for-like figure), random weights and random batches already on the device (no data
loading: an upper bound for the framework), CUDA events, 3 warm-up steps, median of --runs.
Prints one JSON object per line.
usage: python tools/bench_torch_train_gpu.py [--batches 16,32] [--size 448] [--classes 80] [--runs 10]
"""
import argparse
import json
import statistics

import torch
import torchvision

ap = argparse.ArgumentParser()
ap.add_argument("--batches", default="16,32")
ap.add_argument("--size", type=int, default=448)
ap.add_argument("--classes", type=int, default=80)
ap.add_argument("--runs", type=int, default=10)
ap.add_argument("--dtypes", default="bf16,f32")
args = ap.parse_args()
dev = torch.device("cuda")
print(f"# torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.cuda.get_device_name()}")


class CamNet(torch.nn.Module):
    def __init__(self, classes, alpha=3.0):
        super().__init__()
        r = torchvision.models.resnet50()
        self.backbone = torch.nn.Sequential(*list(r.children())[:-2])
        self.head = torch.nn.Conv2d(2048, classes, 1, bias=True)
        self.alpha = alpha

    def forward(self, x):
        cam = self.head(self.backbone(x))
        cam = torch.where(cam > 0, cam * self.alpha, cam)
        return cam.mean(dim=(2, 3))


for name in args.dtypes.split(","):
    dt = {"bf16": torch.bfloat16, "f32": torch.float32}[name]
    for batch in [int(b) for b in args.batches.split(",")]:
        model = CamNet(args.classes).to(dev).to(memory_format=torch.channels_last).train()
        opt = torch.optim.Adam([{"params": model.backbone.parameters(), "lr": 1e-5},
                                {"params": model.head.parameters(), "lr": 1e-4}])
        x = torch.randn(batch, 3, args.size, args.size, device=dev).to(memory_format=torch.channels_last)
        y = torch.rand(batch, args.classes, device=dev)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=dt, enabled=name != "f32"):
                logits = model(x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
            loss.backward()
            opt.step()

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        times = []
        for _ in range(args.runs):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        ms = statistics.median(times)
        print(json.dumps({"model": "resnet50-cam", "dtype": name, "batch": batch, "size": args.size,
                          "ms_per_step": round(ms, 2), "images_per_s": round(batch * 1000.0 / ms, 1)}), flush=True)
        del model, opt, x, y
        torch.cuda.empty_cache()
