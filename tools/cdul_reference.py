#!/usr/bin/env python3
"""CDUL reference (torch + open_clip) for labelfree's `cdul update` and `cdul init`.

    python tools/cdul_reference.py update --out tests/fixtures/cdul [--seed 0]
    python tools/cdul_reference.py init --out tests/fixtures/cdul [--seed 0] [--arch tiny|RN50]
        --images IMG [IMG ...] [--classes a,b,c] [--size S] [--grid 3] [--overlap 0]
        [--zeta 0.1] [--scale 100] [--template "a photo of a {}"] [--name init]

update: random labels and scores (plus edge values), one gradient-alignment step done with
torch autograd in float64: z = logit(clamp(y, 1e-6, 1 - 1e-6)) as a leaf, loss =
BCE-with-logits(z, p) summed, g = dz loss, z <- z - eta * psi(sigmoid(z)) * g with
psi(v) = exp(-(v - 0.5)^2 / (2 sigma^2)), y = sigmoid(z). Writes OUT/update.safetensors.

init: a random-weight open_clip CLIP with a ModifiedResNet image tower, written as
OUT/<arch>_clip.safetensors (tiny: a small configuration with the full 49408-token vocabulary
so that real prompts tokenise, weights rounded to f16 and stored as F16; RN50: open_clip's RN50
config, f32), then for every image, per the issue's definitions:
  - decoded with PIL (`Image.open(p).convert("RGB")`), full resolution W x H; skipped (named)
    if unreadable or W < g or H < g;
  - global view: open_clip's eval transform (`image_transform(size, is_train=False)`: Resize
    shorter side, bicubic; CenterCrop; ToTensor; Normalize with CLIP's mean/std);
  - tile (i, j) = `img.crop((x0, y0, x1, y1))` with y0 = i*H//g, y1 = (i+1)*H//g,
    x0 = j*W//g, x1 = (j+1)*W//g, each side moved out by floor(overlap * extent) and clipped;
    the same transform;
  - S = softmax(scale * cos(encode_image(view), encode_text(template.format(class)))) in
    float64; alpha/beta = max/min over the tiles; S_ag = alpha if alpha >= zeta else beta;
    labels = (S_global + S_ag) / 2.
Writes OUT/<name>.safetensors: `global`, `alpha`, `beta`, `s_ag`, `labels` (N, C) f32, and
metadata: the image file names kept, the skipped ones with the reason, classes, the settings.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import perturb_, sharpen_, state_dict_f32  # noqa: E402

LABEL_CLAMP = 1e-6

COCO_SUBSET = ["person", "bicycle", "car", "dog", "cat", "bowl", "pizza", "traffic light", "dining table",
               "teddy bear"]


def write_safetensors(path, tensors, metadata, f16=False):
    """Tensors sorted by name, header keys sorted, F32 (or F16 with f16=True), 8-byte aligned."""
    header = {"__metadata__": {k: str(v) for k, v in sorted(metadata.items())}}
    blobs, offset = [], 0
    for k in sorted(tensors):
        v = tensors[k].detach().cpu()
        a = np.ascontiguousarray(v.numpy().astype("<f2" if f16 else "<f4"))
        b = a.tobytes()
        header[k] = {"dtype": "F16" if f16 else "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


# ----------------------------------------------------------------------------------------------
# update

def update_autograd(y, p, eta, sigma):
    """One gradient-alignment step, float64, the gradient from autograd."""
    y = y.double().clamp(LABEL_CLAMP, 1 - LABEL_CLAMP)
    z = torch.logit(y).detach().requires_grad_(True)
    loss = F.binary_cross_entropy_with_logits(z, p.double(), reduction="sum")
    (g,) = torch.autograd.grad(loss, z)
    with torch.no_grad():
        s = torch.sigmoid(z)
        psi = torch.exp(-(s - 0.5) ** 2 / (2 * sigma ** 2))
        return torch.sigmoid(z - eta * psi * g)


def make_update(out, seed):
    gen = torch.Generator().manual_seed(seed)
    n, c = 12, 7
    y = torch.rand(n, c, generator=gen)
    p = torch.rand(n, c, generator=gen)
    # edge values: exact 0 and 1 (clamped), 0.5, values near the clamp, equal label and score
    y[0] = torch.tensor([0.0, 1.0, 0.5, 1e-7, 1 - 1e-7, 0.25, 0.75])
    p[0] = torch.tensor([1.0, 0.0, 0.5, 0.9, 0.1, 0.25, 0.0])
    y[1] = torch.sigmoid(torch.randn(c, generator=gen) * 6)
    tensors = {"labels": y, "scores": p}
    cases = [(0.25, 0.2), (1.0, 0.1), (3.0, 0.5)]
    for k, (eta, sigma) in enumerate(cases):
        tensors[f"expected{k}"] = update_autograd(y, p, eta, sigma).float()
    write_safetensors(os.path.join(out, "update.safetensors"), tensors, {
        "cases": json.dumps([{"eta": e, "sigma": s} for e, s in cases]),
        "torch": torch.__version__, "seed": seed,
        "definition": "torch.autograd.grad of BCEWithLogits(z, p, sum) at z = logit(clamp(y)), float64"})


# ----------------------------------------------------------------------------------------------
# init

def clip_model(arch, seed):
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if arch == "tiny":
        vision = CLIPVisionCfg(layers=(1, 1, 1, 1), width=4, head_width=32, image_size=64)
        text = CLIPTextCfg(context_length=77, vocab_size=49408, width=8, heads=1, layers=1)
        model = CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text, quick_gelu=True)
        text_heads = 1
    elif arch == "RN50":
        model = open_clip.create_model("RN50", pretrained=None)
        text_heads = model.transformer.resblocks[0].attn.num_heads
    else:
        raise SystemExit(f"--arch {arch}: tiny or RN50")
    model.eval()
    # The attention pool's positional table keeps its init (std embed_dim^-0.5): redrawn larger it
    # would swamp the image features and give every image the same embedding.
    perturb_(model, gen, emb_names=("token_embedding.weight",))
    sharpen_(model, gen)
    sd = state_dict_f32(model)
    if arch == "tiny":
        # The stored weights are f16: the model runs with exactly those values.
        sd = {k: v.half().float() for k, v in sd.items()}
        model.load_state_dict(sd, strict=False)
    from open_clip.transformer import QuickGELU
    act = "quick_gelu" if isinstance(model.transformer.resblocks[0].mlp.gelu, QuickGELU) else "gelu"
    meta = {"format": "open_clip", "act": act, "arch": f"random {arch} CLIP (cdul_reference.py, seed {seed})",
            "vision_heads": model.visual.attnpool.num_heads, "text_heads": text_heads}
    return model, sd, meta


def tile_boxes(w, h, g, overlap):
    boxes = []
    for i in range(g):
        y0, y1 = i * h // g, (i + 1) * h // g
        dy = int(math.floor(overlap * (y1 - y0)))
        y0, y1 = max(y0 - dy, 0), min(y1 + dy, h)
        for j in range(g):
            x0, x1 = j * w // g, (j + 1) * w // g
            dx = int(math.floor(overlap * (x1 - x0)))
            boxes.append((max(x0 - dx, 0), y0, min(x1 + dx, w), y1))
    return boxes


def make_init(a):
    import open_clip
    from open_clip.transform import image_transform
    from PIL import Image

    model, sd, meta = clip_model(a.arch, a.seed)
    weights = os.path.join(a.out, f"{a.arch.lower()}_clip.safetensors")
    if not a.no_weights:
        write_safetensors(weights, sd, meta, f16=(a.arch == "tiny"))
    model = model.double()
    size = a.size or model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    transform = image_transform(size, is_train=False)
    classes = [c.strip() for c in a.classes.split(",")] if a.classes else COCO_SUBSET
    tokens = open_clip.tokenize([a.template.replace("{}", c, 1) for c in classes])
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokens), dim=-1)
    kept, skipped, rows = [], [], {"global": [], "alpha": [], "beta": []}
    for path in a.images:
        name = os.path.basename(path)
        try:
            img = Image.open(path).convert("RGB")
        except Exception as e:  # unreadable: skipped, named
            skipped.append({"path": name, "reason": f"unreadable: {e}"})
            continue
        w, h = img.size
        if w < a.grid or h < a.grid:
            skipped.append({"path": name, "reason": f"{w} x {h} is smaller than the grid"})
            continue
        views = [img] + [img.crop(b) for b in tile_boxes(w, h, a.grid, a.overlap)]
        x = torch.stack([transform(v) for v in views]).double()
        with torch.no_grad():
            emb = F.normalize(model.encode_image(x), dim=-1)
            probs = torch.softmax(a.scale * emb @ text.T, dim=-1)
        rows["global"].append(probs[0])
        rows["alpha"].append(probs[1:].max(0).values)
        rows["beta"].append(probs[1:].min(0).values)
        kept.append(name)
    g, al, be = (torch.stack(rows[k]) for k in ("global", "alpha", "beta"))
    s_ag = torch.where(al >= a.zeta, al, be)
    labels = (g + s_ag) / 2
    write_safetensors(os.path.join(a.out, f"{a.name}.safetensors"),
                      {"global": g.float(), "alpha": al.float(), "beta": be.float(), "s_ag": s_ag.float(),
                       "labels": labels.float()},
                      {"images": json.dumps(kept), "skipped": json.dumps(skipped), "classes": json.dumps(classes),
                       "grid": a.grid, "overlap": a.overlap, "zeta": a.zeta, "scale": a.scale, "size": size,
                       "template": a.template, "arch": a.arch, "seed": a.seed, "act": meta["act"],
                       "weights": os.path.basename(weights), "torch": torch.__version__,
                       "open_clip": open_clip.__version__, "pillow": Image.__version__})
    print(f"{len(kept)} images scored, {len(skipped)} skipped: {skipped}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("update")
    u.add_argument("--out", required=True)
    u.add_argument("--seed", type=int, default=0)
    i = sub.add_parser("init")
    i.add_argument("--out", required=True)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--arch", default="tiny")
    i.add_argument("--images", nargs="+", required=True)
    i.add_argument("--classes")
    i.add_argument("--size", type=int)
    i.add_argument("--grid", type=int, default=3)
    i.add_argument("--overlap", type=float, default=0.0)
    i.add_argument("--zeta", type=float, default=0.1)
    i.add_argument("--scale", type=float, default=100.0)
    i.add_argument("--template", default="a photo of a {}")
    i.add_argument("--name", default="init")
    i.add_argument("--no-weights", action="store_true", help="do not (re)write the weights file")
    a = ap.parse_args()
    if a.cmd == "update":
        make_update(a.out, a.seed)
    else:
        make_init(a)


if __name__ == "__main__":
    main()
