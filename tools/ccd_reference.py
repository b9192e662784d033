#!/usr/bin/env python3
"""CCD fixtures from the OFFICIAL code (github k0u-id/CCD, fetched outside this repo).

Nothing of the official code is copied here: the script reads the official `train.py` at run
time, picks statements out of `run_train` by their source (with `ast`) and executes them
unmodified, in a namespace that holds what `run_train` would have set before them (the models,
the loaders, the label tables). The official `clip` package (with `encode_image(image, H, W)`),
`models.ImageClassifier` and `datasets.ImageDataset` are imported from the checkout.
`pkg_resources` (a version check in clip.py) and `cv2` (imported by imutils, unused on these
paths) are stubbed when missing.

    git --git-dir=<mirror of k0u-id/CCD> archive HEAD | tar -x -C /tmp/ccd_src
    python tools/ccd_reference.py --ccd /tmp/ccd_src --coco ../shared/data/coco128/train2017 \
        --out tests/fixtures/ccd [--seed 0]

What runs:
  * CLIP: a random-weight open_clip ModifiedResNet (width 4, blocks (2, 1, 1, 1), 2 heads,
    output 32, native grid 2: OpenAI names), perturbed (tools/make_fixtures.py), saved as
    `clip_rn.safetensors` (visual tower only) and loaded into the official CLIP class with its
    own `build_model` (which rounds conv / linear weights to fp16: the saved weights are the
    rounded ones), then made float64 (the official runs fp16; its resized positional
    embedding is still rounded to fp16 by `upsample_pos_emb`, which the engine reproduces).
    Text: random class embeddings near a shared direction (so that entropies fall on both sides
    of 2) stand in for `encode_text` (the text tower is tested elsewhere), in place of the
    official `text_weights`.
  * stage 0 (`stage0.*`): the official per-image `epoch == 0` lines of the inference loop over
    `ImageDataset` at --clip-size (640) on coco128 photos, then the `epoch == 0` block after the
    loop (bias, floor, divide, clamp), P as the shipped VOC script (LS True, LS_coeff 20).
  * stage 2 (`stage2.*`): a seeded tiny torchvision-Bottleneck ResNet (width 4, blocks
    (1, 1, 1, 1)) in the official `ImageClassifier` (its `feature_extractor` swapped for it),
    head bias set so the class probabilities straddle the threshold; alpha 3, eval mode.
    - stage-0 labels and bias at --relabel-size (the official lines again), then the official
      `epoch == 2` inference lines (CAM -> box -> crop -> CLIP -> update) at a fixed
      threshold, `cropping_box` wrapped to record every box;
    - the official threshold calibration (`epoch == 2` loop over `dataloader['thres']`) over a
      seeded order of the photos (3 copies, so 3 windows of 100) at --calib-size.
Writes `clip_rn.safetensors`, `classifier.safetensors` (the official state-dict names),
`io.safetensors` (tensors) and `ccd.json` (image names, boxes, settings, versions).
"""
import argparse
import ast
import json
import os
import sys
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import perturb_, save  # noqa: E402

NUM_CLASSES = 10
CLASS_NAMES = ["person", "bicycle", "car", "dog", "cat", "bus", "train", "boat", "bird", "horse"]


def import_official(ccd):
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            import packaging.version
            stub = types.ModuleType("pkg_resources")
            stub.packaging = types.SimpleNamespace(version=packaging.version)
            sys.modules["pkg_resources"] = stub
    try:
        import cv2  # noqa: F401
    except ImportError:  # imutils imports it; the functions the fixtures reach do not use it
        sys.modules["cv2"] = types.SimpleNamespace(COLORMAP_JET=2)
    sys.path.insert(0, ccd)
    import clip  # noqa: F401
    import datasets
    import models
    return sys.modules["clip"], datasets, models


def official_blocks(ccd):
    """The statements of run_train's epoch loop that the fixtures execute, compiled."""
    with open(os.path.join(ccd, "train.py")) as f:
        tree = ast.parse(f.read())
    fns = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    epoch_loop = next(n for n in fns["run_train"].body
                      if isinstance(n, ast.For) and isinstance(n.target, ast.Name) and n.target.id == "epoch")

    def first_if(test):
        return next(n for n in epoch_loop.body if isinstance(n, ast.If) and ast.unparse(n.test) == test)

    def comp(node, name):
        return compile(ast.Module(body=[node], type_ignores=[]), f"<official train.py: {name}>", "exec")

    return {
        "cropping_box": comp(fns["cropping_box"], "cropping_box"),
        "calibrate": comp(first_if("epoch == 2"), "threshold calibration"),
        "infer": comp(first_if("epoch < 2 + P['inf_num']"), "inference loop"),
        "after_stage0": comp(first_if("epoch == 0"), "after stage 0"),
    }


class Logger:
    def __init__(self):
        self.lines = []

    def info(self, s):
        self.lines.append(str(s))


def tiny_clip(gen, seed, clip_pkg):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    torch.manual_seed(seed)
    text_cfg = CLIPTextCfg(context_length=77, vocab_size=1000, width=64, heads=1, layers=1)
    vision_cfg = CLIPVisionCfg(layers=(2, 1, 1, 1), width=4, head_width=64, image_size=64)
    oc = CLIP(embed_dim=32, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=True).eval()
    perturb_(oc, gen)
    with torch.no_grad():  # He-normal convs: torch's default init fades the image out by layer4
        for m in oc.visual.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / m.weight[0].numel()) ** 0.5)
    sd = {k: v.detach().float().clone() for k, v in oc.state_dict().items()
          if not k.endswith(("num_batches_tracked", "attn_mask"))}
    # float64 (the truth the engine's f32 is measured against; the official runs fp16)
    official = clip_pkg.model.build_model({k: v.clone() for k, v in sd.items()}).double().eval()
    # build_model rounds the conv / linear / attention weights to fp16 (convert_weights) before
    # loading them: the saved weights are those rounded values, as OpenAI's own checkpoints
    visual = {k: v.detach().float().clone() for k, v in official.state_dict().items()
              if k.startswith("visual.") and not k.endswith("num_batches_tracked")}
    return official, visual


def text_weights(gen, clip_model, ds):
    """Unit class embeddings standing in for the text tower, made where this random CLIP's
    image embeddings vary: at one angle to their mean direction, towards a random mix of their
    principal directions; the angle (from a grid) is the one that puts the entropy of the most
    images near 2 and makes the most classes top-1 somewhere."""
    with torch.no_grad():
        feats = torch.cat([clip_model.encode_image(b["image"], *b["image"].shape[-2:]).float() for b in loader(ds)])
    feats = feats / feats.norm(dim=-1, keepdim=True)
    mean = feats.mean(0)
    m_hat = mean / mean.norm()
    _, sv, vt = torch.linalg.svd(feats - mean, full_matrices=False)
    r = min(6, vt.shape[0])
    u = (torch.randn(NUM_CLASSES, r, generator=gen) * sv[:r]) @ vt[:r]
    u = u - (u @ m_hat)[:, None] * m_hat[None, :]
    u = u / u.norm(dim=-1, keepdim=True)
    best = None
    # every class at the same angle to the mean image direction: class scores differ by
    # what differs between images
    for sin in [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]:
        t = (1 - sin ** 2) ** 0.5 * m_hat[None, :] + sin * u
        p = torch.softmax(100 * feats @ t.T, dim=1)
        h = -(p * torch.log(p + 1e-10)).sum(1)
        print(f"  sin {sin}: {(h > 2).float().mean():.2f} uncertain, top-1 classes {sorted(set(p.argmax(1).tolist()))}")
        score = min((h > 2).float().mean(), (h <= 2).float().mean()) + 0.05 * len(set(p.argmax(1).tolist()))
        if best is None or score > best[0]:
            best = (score, sin, t)
    print(f"text stand-in: sin {best[1]}")
    return best[2].double()


def image_dataset(datasets, names, coco, size):
    ds = datasets.ImageDataset("coco", names, np.zeros((len(names), NUM_CLASSES), np.float32),
                               resize=(size, size), ex_resize=(size, size), ex_normal=False)
    ds.path_to_images = coco
    return ds


def loader(ds, indices=None):
    sub = ds if indices is None else torch.utils.data.Subset(ds, list(indices))
    return torch.utils.data.DataLoader(sub, batch_size=1, shuffle=False, num_workers=0)


def base_namespace(P, clip_model, text_w, model, n):
    """What run_train holds when its epoch loop reaches the executed statements."""
    import torch.nn.functional as F
    c = P["num_classes"]
    return {
        "torch": torch, "F": F, "np": np, "tqdm": lambda x: x, "P": P, "logger": Logger(),
        "device": "cpu", "clip_model": clip_model, "text_weights": text_w, "model": model,
        "dataset": {"infer": [None] * n, "train": [None] * n},
        "coeff": P["coeff"], "ratio": P["ratio"], "crop_offset": P["offset_size"],
        "loss_coeff": P["loss_coeff"], "LS_coeff": 1 / P["LS_coeff"],
        "multiplier": 0.05 if P["LS"] else 0.001, "avg_count_bound": P["bound"],
        "table_fixedclip": [], "table_pseudolabel": [], "table_name": [],
        "table_flag": torch.ones(n), "classwise_logit": torch.zeros(c),
        "class_ones": torch.ones(c), "class_zeros": torch.zeros(c),
        "count_true": 0, "max_count": 0, "max_img_id": "none", "avg_count": 0,
        "temp_logits": torch.zeros(c), "temp_counts": torch.zeros(c), "pred_probs": torch.zeros(c),
    }


def run_stage0(blocks, P, clip_model, text_w, ds, model):
    ns = base_namespace(P, clip_model, text_w, model, len(ds))
    ns["dataloader"] = {"infer": loader(ds)}
    ns["epoch"] = 0
    with torch.no_grad():
        exec(blocks["infer"], ns)
        exec(blocks["after_stage0"], ns)
    return ns


class TinyBackbone(torch.nn.Sequential):
    """torchvision's ResNet children (conv1, bn1, relu, maxpool, layer1-4) at width 4."""

    def __init__(self, width=4, layers=(1, 1, 1, 1)):
        from torchvision.models.resnet import Bottleneck
        nn = torch.nn
        mods = [nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1)]
        inplanes = width
        for i, n in enumerate(layers):
            planes, stride = width << i, 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                s = stride if j == 0 else 1
                down = None
                if j == 0 and (s != 1 or inplanes != planes * 4):
                    down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, s, bias=False), nn.BatchNorm2d(planes * 4))
                blocks.append(Bottleneck(inplanes, planes, s, down))
                inplanes = planes * 4
            mods.append(nn.Sequential(*blocks))
        super().__init__(*mods)
        self.out_dim = inplanes


def tiny_classifier(models, gen, head_bias):
    bb = TinyBackbone()
    P = {"arch": "resnet50", "use_pretrained": False, "freeze_feature_extractor": False,
         "feat_dim": bb.out_dim, "num_classes": NUM_CLASSES}
    model = models.ImageClassifier(P)
    model.feature_extractor = bb
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / (m.weight[0].numel())) ** 0.5)
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
        model.onebyone_conv.weight.mul_(0.5)
        model.onebyone_conv.bias.copy_(torch.tensor(head_bias))
    return model.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ccd", required=True, help="a checkout of github k0u-id/CCD")
    ap.add_argument("--coco", required=True, help="coco128 train2017 folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stage0-images", type=int, default=24)
    ap.add_argument("--clip-size", type=int, default=640)
    ap.add_argument("--relabel-images", type=int, default=8)
    ap.add_argument("--relabel-size", type=int, default=96)
    ap.add_argument("--relabel-threshold", type=float, default=0.3)
    ap.add_argument("--relabel-offset", type=int, default=12, help="box padding (80 at 640 in the official)")
    ap.add_argument("--calib-size", type=int, default=64)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    clip_pkg, datasets, models = import_official(args.ccd)
    blocks = official_blocks(args.ccd)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)

    clip_model, visual = tiny_clip(gen, args.seed, clip_pkg)
    save(os.path.join(args.out, "clip_rn.safetensors"), visual,
         {"format": "open_clip", "arch": "tiny-modified-resnet (ccd)", "vision_heads": 2, "act": "quick_gelu"})
    photos = sorted(f for f in os.listdir(args.coco) if f.endswith(".jpg"))
    names0 = photos[:args.stage0_images]
    ds0 = image_dataset(datasets, names0, args.coco, args.clip_size)
    text_w = text_weights(gen, clip_model, ds0)
    # P of the shipped VOC script (train_gpu#0.sh) where the executed lines read it
    P = {"num_classes": NUM_CLASSES, "inf_num": 1, "update_label": True, "LS": True, "LS_coeff": 20,
         "local_temp": True, "global_temp": True, "coeff": 3.0, "ratio": 0.2, "offset_size": 80,
         "loss_coeff": 1.0, "bound": 4}

    io = {"text_weights": text_w.float()}
    meta = {"classes": CLASS_NAMES, "P": P, "seed": args.seed, "torch": torch.__version__}

    # ---- stage 0 at 640
    no_model = types.SimpleNamespace(alpha=torch.ones(1, NUM_CLASSES))
    ns0 = run_stage0(blocks, P, clip_model, text_w, ds0, no_model)
    io["stage0.scores"] = torch.cat(ns0["table_fixedclip"]).float()
    # a class never top-1 of a confident image has bias 0/0 = NaN in the official code, and so
    # has its label column: stored as -1 (the engine gives it bias 1, with a warning)
    io["stage0.labels"] = torch.nan_to_num(torch.cat(ns0["table_pseudolabel"]).float(), nan=-1.0)
    io["stage0.flags"] = ns0["table_flag"].float()
    io["stage0.bias"] = torch.nan_to_num(ns0["clip_bias"].float(), nan=-1.0)
    meta["stage0"] = {"images": names0, "size": args.clip_size}
    flags = ns0["table_flag"]
    print(f"stage 0: {len(names0)} images, {int(flags.sum())} confident, bias {ns0['clip_bias'].tolist()}")

    # ---- stage 2: classifier, stage-0 labels at the relabel size, fixed-threshold update
    head_bias = [1.2, 0.9, -0.4, -0.8, -1.0, -1.77, -2.6, -2.95, -3.6, -4.5]
    model = tiny_classifier(models, gen, head_bias)
    names2 = photos[args.stage0_images:args.stage0_images + args.relabel_images]
    ds2 = image_dataset(datasets, names2, args.coco, args.relabel_size)
    ns = run_stage0(blocks, P, clip_model, text_w, ds2, model)  # its last block sets alpha = 3
    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()
          if not k.endswith("num_batches_tracked")}
    save(os.path.join(args.out, "classifier.safetensors"), sd,
         {"format": "ccd-official", "arch": "resnet-w4-1-1-1-1 in ImageClassifier"})
    io["stage2.labels_in"] = torch.nan_to_num(torch.cat(ns["table_pseudolabel"]).float(), nan=-1.0)
    io["stage2.bias"] = torch.nan_to_num(ns["clip_bias"].float(), nan=-1.0)
    boxes = []
    official_crop = {"F": torch.nn.functional, "torch": torch}
    exec(blocks["cropping_box"], official_crop)

    def cropping_box(image, pos1, pos2, offset):
        crop, box = official_crop["cropping_box"](image, pos1, pos2, offset)
        boxes.append({"image": int(ns["idx"]), "class": int(ns["cls_idx"].item()),
                      "box": [int(v) for v in box], "crop_hw": list(crop.shape[-2:])})
        return crop, box

    # the stage-0 namespace goes on to epoch 2, as in run_train
    ns.update({"epoch": 2, "cropping_box": cropping_box, "multiplier": args.relabel_threshold,
               "crop_offset": args.relabel_offset,
               "dataloader": {"infer": loader(ds2)}, "avg_count": 0, "max_count": 0,
               "temp_logits": torch.zeros(NUM_CLASSES)})
    with torch.no_grad():
        exec(blocks["infer"], ns)
        probs = [torch.sigmoid(model(b["image"])).squeeze(0) for b in loader(ds2)]
    io["stage2.labels_out"] = torch.nan_to_num(torch.cat(ns["table_pseudolabel"]).float(), nan=-1.0)
    io["stage2.probs"] = torch.stack(probs).float()
    meta["stage2"] = {"images": names2, "size": args.relabel_size, "threshold": args.relabel_threshold,
                      "offset": args.relabel_offset, "boxes": boxes, "crops": len(boxes)}
    print(f"stage 2: {len(names2)} images, {len(boxes)} crops at threshold {args.relabel_threshold}")

    # ---- threshold calibration over a seeded order (3 copies of the photos: 3 windows of 100)
    dsc = image_dataset(datasets, photos, args.coco, args.calib_size)
    order = np.random.default_rng(args.seed).permutation(np.tile(np.arange(len(photos)), 3))
    ns.update({"epoch": 2, "multiplier": 0.05, "avg_count": 0, "max_count": 0, "logger": Logger(),
               "dataloader": {"thres": loader(dsc, order)}})
    with torch.no_grad():
        exec(blocks["calibrate"], ns)
        cprobs = torch.stack([torch.sigmoid(model(b["image"])).squeeze(0) for b in loader(dsc)])
    io["calib.probs"] = cprobs.float()
    io["calib.order"] = torch.tensor(order, dtype=torch.int32)
    meta["calib"] = {"images": photos, "size": args.calib_size, "threshold": float(ns["multiplier"]),
                     "log": ns["logger"].lines}
    print("calibration: mean probs", cprobs.mean(0).tolist())
    print(f"calibration: threshold {ns['multiplier']}; " + " | ".join(ns["logger"].lines).replace("\n", " "))

    save(os.path.join(args.out, "io.safetensors"), io, {"format": "ccd fixture io"})
    with open(os.path.join(args.out, "ccd.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
