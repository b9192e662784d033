#!/usr/bin/env python3
"""Reference image embeddings from the libraries themselves, to check `labelfree embed`.

    reference_embed.py --weights F.safetensors --images DIR [--size N] --out ref.safetensors
                       [--compare engine.safetensors] [--preprocess open_clip|hf]

Rebuilds the model from a safetensors file written by convert_weights.py (or a fixture):
format open_clip -> open_clip (`create_model(arch)` when `arch` is an open_clip model name,
otherwise a CLIP built from the shapes as open_clip does for OpenAI state dicts);
format hf -> transformers CLIPModel from the `hf_config` metadata (or --hf-config FILE).
Every image of DIR (sorted by file name; --recursive for subfolders) goes through the library's
preprocessing — open_clip's `image_transform(N, is_train=False)`: resize the shorter side to N
(bicubic, antialiased), centre crop N, OpenAI mean/std — and encode_image /
get_image_features, in f32. HF models use the same open_clip preprocessing unless
--preprocess hf (CLIPImageProcessor with the same size and mean/std).

Writes `embeddings` (N, D) f32, raw (not normalised), and metadata `paths` (JSON list of the
image paths relative to DIR), `preprocess`, `library`. Unreadable images are skipped and listed.
With --compare, prints per-row relative error ||a - b|| / ||b|| (max, mean, worst image) and the
largest elementwise relative error, matching rows by path; exits 1 when the max row error is
above --tol (default 1e-4).
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def list_images(root, recursive):
    out = []
    if recursive:
        for d, _, files in os.walk(root):
            for f in files:
                if f.lower().endswith(IMAGE_EXTS):
                    out.append(os.path.relpath(os.path.join(d, f), root))
    else:
        out = [f for f in os.listdir(root)
               if f.lower().endswith(IMAGE_EXTS) and os.path.isfile(os.path.join(root, f))]
    return sorted(out)


def read_weights(path):
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        sd = {k: f.get_tensor(k).float() for k in f.keys()}
    return sd, meta


def openclip_from_shapes(sd, quick_gelu, vision_heads=None, text_heads=None):
    """A CLIP with the architecture read from the shapes (as open_clip does for OpenAI state
    dicts: text heads = width // 64, vision head width 64, unless the metadata gives
    `vision_heads` / `text_heads`, as the tiny fixtures do), kept in f32."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    if "visual.proj" in sd:
        width = sd["visual.conv1.weight"].shape[0]
        layers = len([k for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        hw = width // vision_heads if vision_heads else 64
        vision = CLIPVisionCfg(layers=layers, width=width, head_width=hw, patch_size=patch,
                               image_size=grid * patch)
    else:
        counts = tuple(len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")})
                       for b in (1, 2, 3, 4))
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        side = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        hw = width * 32 // vision_heads if vision_heads else 64
        vision = CLIPVisionCfg(layers=counts, width=width, head_width=hw, patch_size=None,
                               image_size=side * 32)
    tw = sd["ln_final.weight"].shape[0]
    text = CLIPTextCfg(
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        width=tw, heads=text_heads or max(tw // 64, 1),
        layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}),
    )
    return CLIP(sd["text_projection"].shape[1], vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu)


def build_model(sd, meta, hf_config_path):
    fmt = meta.get("format", "open_clip")
    act = meta.get("act", "quick_gelu")
    if fmt == "open_clip":
        import open_clip
        arch = meta.get("arch", "")
        if arch in open_clip.list_models():
            model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=(act == "quick_gelu"))
            how = f"open_clip.create_model({arch!r})"
        else:
            heads = [int(meta[k]) if k in meta else None for k in ("vision_heads", "text_heads")]
            model = openclip_from_shapes(sd, act == "quick_gelu", *heads)
            how = "open_clip CLIP built from the shapes"
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith(("attn_mask", "num_batches_tracked"))]
        if missing or unexpected:
            raise SystemExit(f"weights do not fit {how}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        image_size = model.visual.image_size
        image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
        return model.float().eval(), "open_clip", image_size, how
    if fmt == "hf":
        from transformers import CLIPConfig, CLIPModel
        if hf_config_path:
            cfg = CLIPConfig.from_json_file(hf_config_path)
        elif "hf_config" in meta:
            cfg = CLIPConfig.from_dict(json.loads(meta["hf_config"]))
        else:
            raise SystemExit("hf weights without `hf_config` metadata: pass --hf-config config.json")
        model = CLIPModel(cfg)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise SystemExit(f"weights do not fit CLIPModel: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model.float().eval(), "hf", cfg.vision_config.image_size, "transformers CLIPModel"
    raise SystemExit(f"format {fmt!r} is not a CLIP model")


def encode(model, kind, pixels):
    with torch.no_grad():
        if kind == "open_clip":
            return model.encode_image(pixels)
        out = model.get_image_features(pixel_values=pixels)
        return out if torch.is_tensor(out) else out.pooler_output


def compare(ref_emb, ref_paths, path):
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        eng = f.get_tensor("embeddings").double()
        meta = f.metadata() or {}
    eng_paths = json.loads(meta["paths"]) if "paths" in meta else None
    ref = ref_emb.double()
    if eng_paths is None:
        if eng.shape != ref.shape:
            raise SystemExit(f"engine file has no paths and shape {tuple(eng.shape)} != {tuple(ref.shape)}")
        pairs = list(range(len(ref_paths)))
    else:
        def keys(p):
            return [os.path.normpath(p), os.path.basename(p)]
        index = {}
        for i, p in enumerate(eng_paths):
            for k in keys(p):
                index.setdefault(k, i)
        pairs = []
        for p in ref_paths:
            j = next((index[k] for k in keys(p) if k in index), None)
            pairs.append(j)
        lost = [p for p, j in zip(ref_paths, pairs) if j is None]
        if lost:
            print(f"{len(lost)} reference images not in the engine file, e.g. {lost[:3]}")
    rows = [(i, j) for i, j in enumerate(pairs) if j is not None]
    if not rows:
        raise SystemExit("no common images")
    a = eng[[j for _, j in rows]]
    b = ref[[i for i, _ in rows]]
    if a.shape != b.shape:
        raise SystemExit(f"embedding sizes differ: engine {tuple(a.shape)}, reference {tuple(b.shape)}")
    row_err = (a - b).norm(dim=1) / b.norm(dim=1).clamp_min(1e-30)
    worst = int(row_err.argmax())
    # elementwise, over entries that are not tiny next to their row
    big = b.abs() > 1e-3 * b.pow(2).mean(1, keepdim=True).sqrt()
    elem = ((a - b).abs() / b.abs().clamp_min(1e-30))[big]
    print(f"compared {len(rows)} images")
    print(f"row relative error ||a-b||/||b||: max {row_err.max():.3e} "
          f"(image {ref_paths[rows[worst][0]]}), mean {row_err.mean():.3e}")
    print(f"elementwise relative error (entries > 1e-3 of their row's rms): max {elem.max():.3e}")
    return float(row_err.max())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, help="input size (default: the model's)")
    ap.add_argument("--preprocess", choices=["open_clip", "hf"], default="open_clip")
    ap.add_argument("--hf-config", help="config.json for hf weights without hf_config metadata")
    ap.add_argument("--recursive", action="store_true")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--compare", help="engine embeddings (safetensors with `embeddings`, metadata `paths`)")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()

    from PIL import Image
    torch.set_num_threads(max(os.cpu_count() or 1, 1))
    sd, meta = read_weights(args.weights)
    model, kind, native, how = build_model(sd, meta, args.hf_config)
    size = args.size or native

    if args.preprocess == "open_clip":
        import open_clip
        tf = open_clip.image_transform(size, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)
        prep = (f"open_clip {open_clip.__version__} image_transform({size}, is_train=False): "
                f"shorter side -> {size} bicubic antialiased, centre crop, OpenAI mean/std")

        def load(img):
            return tf(img)
    else:
        import transformers
        from transformers import CLIPImageProcessor
        proc = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                  image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD))
        prep = f"transformers {transformers.__version__} CLIPImageProcessor(shortest_edge={size}, crop {size})"

        def load(img):
            return proc(images=img, return_tensors="pt")["pixel_values"][0]

    names = list_images(args.images, args.recursive)
    paths, skipped, embs, batch = [], [], [], []

    def flush():
        if batch:
            embs.append(encode(model, kind, torch.stack([t for _, t in batch])).float())
            paths.extend(p for p, _ in batch)
            batch.clear()

    for i, name in enumerate(names):
        try:
            with Image.open(os.path.join(args.images, name)) as im:
                t = load(im.convert("RGB"))
        except Exception as e:  # corrupt or unreadable: skip and report
            skipped.append(f"{name}: {e}")
            continue
        batch.append((name, t))
        if len(batch) == args.batch:
            flush()
            print(f"\r{len(paths)}/{len(names)} images", end="", file=sys.stderr)
    flush()
    print(file=sys.stderr)
    if not embs:
        raise SystemExit("no readable images")
    emb = torch.cat(embs)

    from safetensors.torch import save_file
    save_file({"embeddings": emb.contiguous()}, args.out, metadata={
        "paths": json.dumps(paths), "preprocess": prep, "model": how,
        "library": f"torch {torch.__version__}", "size": str(size),
        "skipped": json.dumps(skipped),
    })
    print(f"wrote {args.out}: {tuple(emb.shape)} from {len(paths)} images ({how}; {prep})")
    if skipped:
        print(f"skipped {len(skipped)} unreadable images:", *skipped[:10], sep="\n  ")
    if args.compare:
        worst = compare(emb, paths, args.compare)
        if worst > args.tol:
            print(f"FAIL: max row error {worst:.3e} > tol {args.tol:g}")
            sys.exit(1)
        print(f"OK: max row error {worst:.3e} <= tol {args.tol:g}")


if __name__ == "__main__":
    main()
