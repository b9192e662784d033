#!/usr/bin/env python3
"""Per-image time of CCD's stage 0 and stage 2 as the OFFICIAL code runs them (github
k0u-id/CCD, fetched outside this repo), on the CPU, beside labelfree on the same models.

Like tools/ccd_reference.py, nothing of the official code is copied: its `train.py`
statements (the `epoch < 2 + P['inf_num']` inference loop and the `epoch == 0` block after it)
are picked out with `ast` and executed unmodified, over the official `ImageDataset` at batch 1.

    git --git-dir=<mirror of k0u-id/CCD> archive HEAD | tar -x -C /tmp/ccd_src
    python tools/bench_torch_ccd.py --ccd /tmp/ccd_src --coco ../shared/data/coco128/train2017 \\
        --work /tmp/ccd_bench [--images 8] [--size 640] [--threads 2]

Models: a random open_clip RN50 (OpenAI names, written by tools/convert_weights.py --random,
loaded into the official CLIP with its own `build_model`, run in float32: the official fp16
is a GPU setting) and a seeded random torchvision ResNet-50 in the official `ImageClassifier`
(alpha 3), its head bias a ramp so that a few of the 20 VOC classes pass the fixed
threshold 0.5 (the crop count then does not hang on a calibration). Speed does not depend on
the weights.

Writes into --work: `clip.safetensors`, `classifier.safetensors` (official names),
`data/` (a labelfree csv dataset of the photos, VOC class names), and prints one JSON line
with the official seconds per image of each stage and its crop count. The labelfree commands
to run beside it are printed too.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ccd_reference import Logger, base_namespace, import_official, loader, official_blocks  # noqa: E402

VOC = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
       "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ccd", required=True)
    ap.add_argument("--coco", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.makedirs(os.path.join(a.work, "data"), exist_ok=True)
    clip_pkg, datasets, models = import_official(a.ccd)
    blocks = official_blocks(a.ccd)
    from safetensors.torch import load_file, save_file

    clip_path = os.path.join(a.work, "clip.safetensors")
    if not os.path.exists(clip_path):
        subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "convert_weights.py"), "--random",
                        "--arch", "RN50", "--seed", "0", "--out", clip_path], check=True)
    clip_model = clip_pkg.model.build_model(load_file(clip_path)).float().eval()
    with torch.no_grad():
        tok = clip_pkg.tokenize([f"a photo of the {c}" for c in VOC])
        text_w = clip_model.encode_text(tok)
        text_w = text_w / text_w.norm(dim=-1, keepdim=True)

    torch.manual_seed(0)
    P = {"arch": "resnet50", "use_pretrained": False, "freeze_feature_extractor": False, "feat_dim": 2048,
         "num_classes": len(VOC), "inf_num": 1, "update_label": True, "LS": True, "LS_coeff": 20,
         "local_temp": True, "global_temp": True, "coeff": 3.0, "ratio": 0.2, "offset_size": 80,
         "loss_coeff": 1.0, "bound": 4}
    model = models.ImageClassifier(P).eval()
    with torch.no_grad():
        model.onebyone_conv.bias.copy_(torch.linspace(1.0, -6.0, len(VOC)))
    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()
          if not k.endswith("num_batches_tracked")}

    photos = sorted(f for f in os.listdir(a.coco) if f.endswith(".jpg"))[:a.images + 1]
    data = os.path.join(a.work, "data")
    with open(os.path.join(data, "classes.txt"), "w") as f:
        f.write("\n".join(VOC))
    with open(os.path.join(data, "split.csv"), "w") as f:
        f.write("path,labels\n")
        for k, p in enumerate(photos[1:]):
            src = os.path.join(data, p)
            if not os.path.exists(src):
                os.symlink(os.path.abspath(os.path.join(a.coco, p)), src)
            f.write(f"{p},{VOC[k % len(VOC)]}\n")
    ds = datasets.ImageDataset("coco", photos, np.zeros((len(photos), len(VOC)), np.float32),
                               resize=(a.size, a.size), ex_resize=(a.size, a.size), ex_normal=False)
    ds.path_to_images = a.coco

    # stage 0: the official loop, the first photo a warm-up
    ns = base_namespace(P, clip_model, text_w, model, len(photos))
    ns["dataloader"] = {"infer": loader(ds)}
    ns["epoch"] = 0
    with torch.no_grad():
        t0 = None
        it = iter(loader(ds))
        ns["dataloader"] = {"infer": [next(it)]}
        exec(blocks["infer"], ns)
        t0 = time.perf_counter()
        ns["dataloader"] = {"infer": list(it)}
        exec(blocks["infer"], ns)
        stage0_s = (time.perf_counter() - t0) / a.images
        exec(blocks["after_stage0"], ns)  # bias, floor, divide, clamp; alpha = 3
    sd["alpha"] = model.alpha.detach().float().clone()
    save_file(sd, os.path.join(a.work, "classifier.safetensors"), metadata={"format": "ccd"})

    # stage 2: the official loop at epoch 2, fixed threshold, crops counted
    crops = [0]
    official_crop = {"F": torch.nn.functional, "torch": torch}
    exec(blocks["cropping_box"], official_crop)

    def cropping_box(image, pos1, pos2, offset):
        crops[0] += 1
        return official_crop["cropping_box"](image, pos1, pos2, offset)

    with torch.no_grad():
        it = iter(loader(ds))
        ns.update({"epoch": 2, "cropping_box": cropping_box, "multiplier": a.threshold, "logger": Logger(),
                   "dataloader": {"infer": [next(it)]}, "avg_count": 0, "max_count": 0,
                   "temp_logits": torch.zeros(len(VOC))})
        exec(blocks["infer"], ns)
        crops[0] = 0
        # the loop indexes its label table from 0: the warm-up photo's row is taken again
        t0 = time.perf_counter()
        ns["dataloader"] = {"infer": list(it)}
        exec(blocks["infer"], ns)
        stage2_s = (time.perf_counter() - t0) / a.images
    print(json.dumps({"official_stage0_s_per_image": stage0_s, "official_stage2_s_per_image": stage2_s,
                      "official_stage2_crops": crops[0], "images": a.images, "size": a.size,
                      "threads": a.threads, "torch": torch.__version__}))
    print(f"labelfree beside it:\n  labelfree --threads {a.threads} ccd init --dataset csv --root {data} --split split "
          f"--clip {clip_path} --clip-size {a.size} --no-cache --out {a.work}/l0.safetensors\n"
          f"  labelfree --threads {a.threads} ccd relabel --dataset csv --root {data} --split split --clip {clip_path} "
          f"--clip-size {a.size} --classifier {a.work}/classifier.safetensors --labels {a.work}/l0.safetensors "
          f"--threshold {a.threshold} --out {a.work}/l2.safetensors")


if __name__ == "__main__":
    main()
