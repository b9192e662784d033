#!/usr/bin/env python3
"""Fixtures for the colour jitter (src/data/color_jitter.rs, tests/color_jitter.rs).

torchvision's tensor definitions (torchvision.transforms.functional on float32 CHW images in
[0, 1]): adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue with fixed factors,
and fixed sequences of the four as ColorJitter.forward applies them in the order of its
torch.randperm(4). The inputs are small random images plus hand-made pixels that hit the edge
cases of the HSV conversion (grey pixels, ties of the maximum channel, black, white, pure hues).

Stored (safetensors): `x.<i>` the inputs (3, H, W); `out.<k>` the outputs; metadata `cases`, a
JSON list of {"input": "x.<i>", "output": "out.<k>", "ops": [["brightness", f], ...]} and the
library versions.

    make_jitter_fixtures.py --out tests/fixtures/trainer/jitter.safetensors
"""
import argparse
import json

import torch
import torchvision
import torchvision.transforms.functional as F
from safetensors.torch import save_file

OPS = {
    "brightness": F.adjust_brightness,
    "contrast": F.adjust_contrast,
    "saturation": F.adjust_saturation,
    "hue": F.adjust_hue,
}

# One factor list per op: below 1, above 1, the extremes of ColorJitter(0.5, 0.5, 0.5, 0.5).
FACTORS = {
    "brightness": [0.5, 0.83, 1.37, 1.5],
    "contrast": [0.5, 0.71, 1.29, 1.5],
    "saturation": [0.5, 0.64, 1.42, 1.5],
    "hue": [-0.5, -0.23, 0.07, 0.31, 0.5],
}

# Fixed orders and factors of the whole jitter (what one ColorJitter call does once its
# random draw is known).
SEQUENCES = [
    [["brightness", 1.2], ["contrast", 0.7], ["saturation", 1.4], ["hue", 0.1]],
    [["hue", -0.35], ["saturation", 0.6], ["brightness", 0.55], ["contrast", 1.45]],
    [["contrast", 1.3], ["hue", 0.45], ["brightness", 1.1], ["saturation", 0.9]],
]


def edge_image():
    """(3, 4, 6): grey levels, ties of the maximum channel, black, white, pure hues."""
    px = [
        (0, 0, 0), (1, 1, 1), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), (1, 0, 0), (0, 1, 0),
        (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (0.7, 0.7, 0.1), (0.7, 0.1, 0.7),
        (0.1, 0.7, 0.7), (0.3, 0.9, 0.9), (0.9, 0.3, 0.9), (0.9, 0.9, 0.3), (0.25, 0.5, 0.75),
        (0.75, 0.5, 0.25), (0.5, 0.25, 0.75), (0.999, 0.001, 0.5), (0.001, 0.002, 0.003),
        (0.6, 0.6, 0.59), (1 / 3, 2 / 3, 1.0), (0.2, 0.8, 0.2),
    ]
    t = torch.tensor(px, dtype=torch.float32)  # (24, 3)
    return t.t().reshape(3, 4, 6).contiguous()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(args.seed)
    inputs = [
        torch.rand(3, 7, 9, generator=g),
        torch.rand(3, 10, 6, generator=g),
        # Pixel values as a decoded 8-bit image gives them (ToTensor: x / 255).
        torch.randint(0, 256, (3, 8, 8), generator=g).to(torch.float32) / 255,
        edge_image(),
    ]
    tensors = {f"x.{i}": x for i, x in enumerate(inputs)}
    cases = []

    def add(i, ops):
        y = inputs[i]
        for name, f in ops:
            y = OPS[name](y, f)
        key = f"out.{len(cases)}"
        tensors[key] = y.contiguous()
        cases.append({"input": f"x.{i}", "output": key, "ops": ops})

    for i in range(len(inputs)):
        for name, fs in FACTORS.items():
            for f in fs:
                add(i, [[name, f]])
        for seq in SEQUENCES:
            add(i, seq)
    meta = {
        "cases": json.dumps(cases),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "seed": str(args.seed),
    }
    save_file(tensors, args.out, metadata=meta)
    print(f"wrote {args.out}: {len(inputs)} inputs, {len(cases)} cases")


if __name__ == "__main__":
    main()
