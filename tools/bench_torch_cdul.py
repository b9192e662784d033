#!/usr/bin/env python3
"""Images/s of CDUL's initialisation as the public reimplementations run it: per image, the
whole image and each of its g x g tiles through open_clip's preprocessing and encode_image one
at a time (1 + g^2 CLIP passes of batch 1), then the softmax and the max/min aggregation.

    python tools/bench_torch_cdul.py --images DIR_OR_FILES... [--arch RN50] [--size 224]
        [--grid 3] [--classes 80] [--threads 2] [--warmup 1]

Random weights (speed does not depend on them). Prints one JSON line.
"""

import argparse
import glob
import json
import os
import time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--arch", default="RN50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--grid", type=int, default=3)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    a = ap.parse_args()
    import open_clip
    from open_clip.transform import image_transform
    from PIL import Image

    torch.set_num_threads(a.threads)
    paths = []
    for p in a.images:
        paths += sorted(glob.glob(os.path.join(p, "*.jpg"))) if os.path.isdir(p) else [p]
    model = open_clip.create_model(a.arch, pretrained=None).eval()
    transform = image_transform(a.size, is_train=False)
    with torch.no_grad():
        text = F.normalize(model.encode_text(open_clip.tokenize([f"a photo of a class{i}" for i in range(a.classes)])), dim=-1)

    def one(path):
        img = Image.open(path).convert("RGB")
        w, h = img.size
        g = a.grid
        views = [img] + [img.crop((j * w // g, i * h // g, (j + 1) * w // g, (i + 1) * h // g))
                         for i in range(g) for j in range(g)]
        probs = []
        for v in views:
            emb = F.normalize(model.encode_image(transform(v).unsqueeze(0)), dim=-1)
            probs.append(torch.softmax(100 * emb @ text.T, dim=-1)[0])
        local = torch.stack(probs[1:])
        s_ag = torch.where(local.max(0).values >= 0.1, local.max(0).values, local.min(0).values)
        return (probs[0] + s_ag) / 2

    with torch.no_grad():
        for p in paths[:a.warmup]:
            one(p)
        t0 = time.perf_counter()
        for p in paths:
            one(p)
        dt = time.perf_counter() - t0
    print(json.dumps({"tool": "torch per-tile loop", "arch": a.arch, "size": a.size, "grid": a.grid,
                      "images": len(paths), "threads": a.threads, "seconds": dt, "images_per_s": len(paths) / dt,
                      "torch": torch.__version__, "open_clip": open_clip.__version__}))


if __name__ == "__main__":
    main()
