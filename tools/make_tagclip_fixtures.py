#!/usr/bin/env python3
"""TagCLIP fixtures from the OFFICIAL code (github linyq2117/TagCLIP, fetched outside this repo).

The official `classify.py` is imported and its `classify()` runs unmodified; the script only
sets the module globals its `__main__` block would set, wraps `mask_attn`, `cwr` and the
model's `encode_image_tagclip` to record what passes through them, and reads the tags from
the file `--save_file` makes. `lxml` (unused by the pipeline) and `pkg_resources` (a version
check) are stubbed when missing. Two modes:

  tiny  (committed, CI):  python tools/make_tagclip_fixtures.py tiny --tagclip /path/TagCLIP \
            --coco ../shared/data/coco128/train2017 --out tests/fixtures/tagclip
      * a tiny ViT in the official VisionTransformer class (patch 16 and 224 as the official
        code hard-codes; width 32, 12 layers, 1 head, output 32), weights from an open_clip
        ViT of the same shape, perturbed and with sharpened q/k (tools/make_fixtures.py);
        written as `tiny.safetensors` (visual tower + logit_scale, which is set to ln 50 so
        that a pipeline using 100 instead of exp(logit_scale) fails);
      * random unit text features for the 80 COCO classes + 23 background words (the text
        tower is tested elsewhere), used in place of `clip.encode_text_with_prompt_ensemble`;
      * six coco128 photos made small (JPEG, one grayscale, one exactly 224 x 224) in
        `images/`, run through `classify()` with dataset coco2014;
      * stage cases: the official `mask_attn` (DMAR class boxes + refinement) on synthetic
        attention / scores, the official `scoremap2bbox`, and the official `cwr` with a stub
        encoder (a fixed function of the crop and its CLS-row mask) on synthetic score maps,
        some built to end in the early stop;
      * `tiny.io.safetensors` (text features, per-image scores, stage inputs/outputs) and
        `tiny.json` (image names, tags, candidate counts, versions).

  full  (not committed; the test reads LABELFREE_TAGCLIP_DIR):
        python tools/make_tagclip_fixtures.py full --tagclip /path/TagCLIP \
            --coco ../shared/data/coco128/train2017 --out /some/dir [--limit N] [--reuse]
      * a random-weight open_clip ViT-B-16-quickgelu (perturbed, sharpened q/k), saved as
        `vit_b16_tagclip.safetensors` (open_clip/OpenAI names, f32) and loaded into the
        official model with its own `build_model`;
      * the official text ensemble (85 templates, COCO classes + background) and the whole
        of `classify()` over the coco128 photos; per-image results are appended to
        `official.jsonl` as they come (scores, tags, pre-CWR local scores, number of crops,
        seconds), the text features go to `text_features.safetensors`; `official.json` at
        the end adds the image names and the official tags.

  compare:  python tools/make_tagclip_fixtures.py compare --out /some/dir --scores s.csv --tags t.csv
      * the engine's CSVs (labelfree tagclip) against official.json: the share of score entries
        within a relative error of 1e-3, the share of images with the same tags.
"""
import argparse
import glob
import json
import math
import os
import sys
import tempfile
import time
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import perturb_, save, sharpen_  # noqa: E402

TINY_WIDTH, TINY_LAYERS, TINY_HEADS, TINY_DIM = 32, 12, 1, 32


def import_official(tagclip_dir):
    """Imports the official classify.py (and its clip package) from the fetched copy."""
    if "lxml" not in sys.modules:
        try:
            import lxml  # noqa: F401
        except ImportError:
            lxml = types.ModuleType("lxml")
            lxml.etree = types.ModuleType("lxml.etree")
            sys.modules["lxml"] = lxml
            sys.modules["lxml.etree"] = lxml.etree
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        import packaging.version
        pr = types.ModuleType("pkg_resources")
        pr.packaging = packaging
        sys.modules["pkg_resources"] = pr
    sys.path.insert(0, os.path.abspath(tagclip_dir))
    import classify  # noqa: E402
    return classify


class Recorder:
    """Wraps the official mask_attn / cwr / encode_image_tagclip and records each image."""

    def __init__(self, cl, model, jsonl=None):
        self.cl, self.model, self.jsonl = cl, model, jsonl
        self.images = []
        self.cur = {}
        self.t0 = None
        orig_mask, orig_cwr = cl.mask_attn, cl.cwr
        orig_enc = model.encode_image_tagclip

        def enc(image, H, W, attn_mask=None, use_clstoken=False):
            if isinstance(attn_mask, int):
                self.cur = {"h": int(H), "w": int(W), "crops": 0}
                if self.t0 is None:
                    self.t0 = time.time()
            else:
                self.cur["crops"] += 1
            return orig_enc(image, H, W, attn_mask=attn_mask, use_clstoken=use_clstoken)

        def mask_attn(logits_coarse, logits, h, w, attn_weight):
            out = orig_mask(logits_coarse, logits, h, w, attn_weight)
            self.cur["p_ref_max"] = out.max(dim=0)[0].tolist()
            return out

        def cwr(logits, logits_max, h, w, image, text_features):
            self.cur["name"] = os.path.splitext(cl.image_list[len(self.images)])[0]
            self.cur["local"] = logits_max.clone().tolist()
            out = orig_cwr(logits, logits_max, h, w, image, text_features)
            self.cur["scores"] = out.clone().tolist()
            now = time.time()
            self.cur["seconds"] = now - self.t0
            self.t0 = now
            self.images.append(self.cur)
            if self.jsonl:
                with open(self.jsonl, "a") as f:
                    f.write(json.dumps(self.cur) + "\n")
            return out

        cl.mask_attn, cl.cwr = mask_attn, cwr
        model.encode_image_tagclip = enc


def run_classify(cl, model, img_dir, names, text_features=None, jsonl=None):
    """Runs the official classify() on img_dir/<name>.jpg for every name, dataset coco2014.
    Returns per-image records (with the image name and the official tags) and the seconds."""
    cl.args = argparse.Namespace(dataset="coco2014", img_root=os.path.abspath(img_dir), split_file=None, save_file=True,
                                 model_path="")
    cl.class_names = cl.class_names_coco + cl.BACKGROUND_CATEGORY_COCO
    cl.NUM_CLASSES = len(cl.class_names_coco)
    cl.image_list = [n + ".jpg" for n in names]
    cl.all_label_list = [["0"] for _ in names]
    cl.model_type = "clip"
    cl.device = "cpu"
    cl.model = model
    if text_features is not None:
        cl.clip.encode_text_with_prompt_ensemble = lambda m, texts, device, prompt_templates=None: text_features.clone()
    originals = (cl.mask_attn, cl.cwr, cl.clip.encode_text_with_prompt_ensemble)
    rec = Recorder(cl, model, jsonl)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "output"))
        os.chdir(tmp)
        t0 = time.time()
        try:
            cl.classify()
        finally:
            os.chdir(cwd)
            cl.mask_attn, cl.cwr, cl.clip.encode_text_with_prompt_ensemble = originals
            del model.encode_image_tagclip
        seconds = time.time() - t0
        tags = {}
        with open(os.path.join(tmp, "output", "coco2014_val_tagclip.txt")) as f:
            for line in f:
                parts = line.split()
                tags[parts[0]] = [int(x) for x in parts[1:]]
    assert len(rec.images) == len(names)
    for name, r in zip(names, rec.images):
        r["name"] = name
        r["tags"] = tags[name]
    return rec.images, seconds


# ---------------------------------------------------------------------------------------------
# tiny
# ---------------------------------------------------------------------------------------------

def tiny_openclip_visual(seed):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    torch.manual_seed(seed)
    vision_cfg = CLIPVisionCfg(layers=TINY_LAYERS, width=TINY_WIDTH, head_width=TINY_WIDTH // TINY_HEADS,
                               patch_size=16, image_size=224)
    text_cfg = CLIPTextCfg(context_length=77, vocab_size=1000, width=32, heads=1, layers=1)
    m = CLIP(embed_dim=TINY_DIM, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=True).eval()
    gen = torch.Generator().manual_seed(seed)
    perturb_(m.visual, gen, emb_names=("positional_embedding", "class_embedding"))
    sharpen_(m.visual, gen, gain=2.0)
    sd = {"visual." + k: v.detach().float().clone() for k, v in m.visual.state_dict().items()
          if not k.endswith("attn_mask")}
    sd["logit_scale"] = torch.tensor(math.log(50.0))
    return sd


def tiny_official_model(cl, sd):
    """The official CLIP with its VisionTransformer made tiny (heads are width // 64 in the
    official constructor, so the visual tower is built directly)."""
    from clip.clip_model import CLIP, VisionTransformer
    model = CLIP(TINY_DIM, 224, 12, 64, 16, 77, 100, 64, 1, 1)
    model.visual = VisionTransformer(input_resolution=224, patch_size=16, width=TINY_WIDTH, layers=TINY_LAYERS,
                                     heads=TINY_HEADS, output_dim=TINY_DIM)
    vis = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    missing, unexpected = model.visual.load_state_dict(vis, strict=True), None
    with torch.no_grad():
        model.logit_scale.copy_(sd["logit_scale"])
    return model.float().eval()


TINY_IMAGES = [
    # (coco128 file, width, height, mode)
    ("000000000009", 160, 120, "RGB"),
    ("000000000025", 120, 170, "RGB"),
    ("000000000030", 224, 224, "RGB"),
    ("000000000034", 200, 88, "RGB"),
    ("000000000036", 97, 130, "RGB"),
    ("000000000042", 150, 113, "L"),
]


def make_tiny_images(coco, out_dir):
    from PIL import Image
    os.makedirs(out_dir, exist_ok=True)
    names = []
    for stem, w, h, mode in TINY_IMAGES:
        img = Image.open(os.path.join(coco, stem + ".jpg")).convert("RGB")
        img = img.resize((w, h), Image.BICUBIC).convert(mode)
        img.save(os.path.join(out_dir, stem + ".jpg"), quality=92)
        names.append(stem)
    return names


def smooth_maps(gen, gh, gw, c, sharp):
    """c smooth random maps over a gh x gw grid, (N, c)."""
    base = torch.randn(c, 1, gh + 4, gw + 4, generator=gen)
    k = torch.ones(1, 1, 5, 5) / 25
    sm = torch.nn.functional.conv2d(base, k)[:, 0]  # (c, gh, gw)
    return (sm.reshape(c, -1).t() * sharp).contiguous()


def dmar_cases(cl, gen):
    """The official mask_attn on synthetic inputs: attention W (N, N) >= 0 and P_coarse."""
    out = {}
    grids = [(5, 7), (10, 10), (3, 20), (9, 4), (1, 6), (8, 13)]
    for i, (gh, gw) in enumerate(grids):
        n, c = gh * gw, 12
        coarse = torch.softmax(smooth_maps(gen, gh, gw, c, 6.0), dim=-1)
        w = torch.rand(n, n, generator=gen) ** 4
        w = w * (torch.rand(n, n, generator=gen) > 0.3).float()
        w = w / w.sum(-1, keepdim=True) * 0.8
        logits = torch.matmul(w, coarse)
        cl.device = "cpu"
        ref = cl.mask_attn(coarse.clone(), logits.clone(), gh * 16, gw * 16, w.clone())
        out[f"dmar{i}.grid"] = torch.tensor([gh, gw], dtype=torch.int32)
        out[f"dmar{i}.attn"] = w
        out[f"dmar{i}.coarse"] = coarse
        out[f"dmar{i}.refined"] = ref
    return out, len(grids)


def bbox_cases(gen):
    """The official scoremap2bbox on normalised maps with their mean as threshold."""
    import utils
    out = {}
    k = 0
    for (gh, gw) in [(6, 9), (14, 14), (20, 13), (2, 30)]:
        for rep in range(4):
            v = smooth_maps(gen, gh, gw, 1, 1.0)[:, 0]
            if rep == 3:  # a coarse map with ties: quantisation matters
                v = torch.round(v * 4) / 4
            v = v - v.min()
            v = v / v.max()
            boxes, cnt = utils.scoremap2bbox(v.reshape(gh, gw).numpy(), threshold=v.mean(), multi_contour_eval=True)
            out[f"bbox{k}.grid"] = torch.tensor([gh, gw], dtype=torch.int32)
            out[f"bbox{k}.map"] = v
            out[f"bbox{k}.boxes"] = torch.tensor(np.asarray(boxes)[:cnt], dtype=torch.int32).reshape(-1, 4)
            k += 1
    return out, k


class StubEncoder:
    """Stands in for the CLIP model inside the official cwr: features (D = 5) are the crop's
    per-channel means over the 16 x 16 cells the CLS-row mask keeps, the kept fraction, and 1.
    tests/tagclip.rs computes the same function."""

    def __init__(self, logit_scale):
        self.logit_scale = torch.tensor(math.log(logit_scale))

    def encode_image_tagclip(self, image, H, W, attn_mask=None, use_clstoken=False):
        keep = (attn_mask[0, 1:] == 0).float()
        cells = image[0].reshape(3, 14, 16, 14, 16).mean(dim=(2, 4)).reshape(3, 196)
        f = (cells * keep).sum(1) / keep.sum().clamp(min=1)
        feat = torch.cat([f, keep.mean().reshape(1), torch.ones(1)])
        return feat.reshape(1, 1, 5).repeat(1, 197, 1), None


def cwr_cases(cl, gen):
    """The official cwr with StubEncoder on synthetic refined maps and images."""
    out = {}
    cases = [(8, 10, None), (4, 6, None), (6, 9, "last_col"), (7, 5, "last_row"), (5, 5, None), (3, 8, None)]
    c_all, c_cls = 9, 6
    for i, (gh, gw, force) in enumerate(cases):
        n = gh * gw
        p_ref = torch.softmax(smooth_maps(gen, gh, gw, c_all, 5.0), dim=-1) * 0.6
        if force is not None:
            # Class 1 lives in the last column (or row) only: its box is empty after the
            # clip and the official loop stops there.
            col = torch.full((gh, gw), 0.01)
            if force == "last_col":
                col[:, -1] = 0.9
            else:
                col[-1, :] = 0.9
            p_ref[:, 1] = col.reshape(-1)
        image = torch.randn(1, 3, gh * 16, gw * 16, generator=gen)
        text = torch.nn.functional.normalize(torch.randn(c_all, 5, generator=gen), dim=-1)
        local = p_ref.max(dim=0)[0][:c_cls].clone()
        cl.model = StubEncoder(20.0)
        cl.args = argparse.Namespace(dataset="coco2014")
        final = cl.cwr(p_ref.clone(), local.clone(), gh * 16, gw * 16, image.clone(), text.clone())
        out[f"cwr{i}.grid"] = torch.tensor([gh, gw], dtype=torch.int32)
        out[f"cwr{i}.refined"] = p_ref
        out[f"cwr{i}.image"] = image[0]
        out[f"cwr{i}.text"] = text
        out[f"cwr{i}.local"] = local
        out[f"cwr{i}.final"] = final
    return out, len(cases)


def make_tiny(args):
    cl = import_official(args.tagclip)
    os.makedirs(args.out, exist_ok=True)
    sd = tiny_openclip_visual(args.seed)
    meta = {"format": "open_clip", "act": "quick_gelu", "arch": "tiny ViT-16 for TagCLIP fixtures",
            "vision_heads": TINY_HEADS}
    save(os.path.join(args.out, "tiny.safetensors"), sd, meta)
    model = tiny_official_model(cl, sd)
    img_dir = os.path.join(args.out, "images")
    names = make_tiny_images(args.coco, img_dir)
    gen = torch.Generator().manual_seed(args.seed + 1)
    n_all = len(cl.class_names_coco) + len(cl.BACKGROUND_CATEGORY_COCO)
    text = torch.nn.functional.normalize(torch.randn(n_all, TINY_DIM, generator=gen), dim=-1)
    recs, _ = run_classify(cl, model, img_dir, names, text_features=text)
    io = {"text_features": text}
    for k, r in enumerate(recs):
        io[f"image{k}.scores"] = torch.tensor(r["scores"])
        io[f"image{k}.local"] = torch.tensor(r["local"])
        io[f"image{k}.p_ref_max"] = torch.tensor(r["p_ref_max"])
    d, nd = dmar_cases(cl, gen)
    b, nb = bbox_cases(gen)
    c, nc = cwr_cases(cl, gen)
    io.update(d)
    io.update(b)
    io.update(c)
    save(os.path.join(args.out, "tiny.io.safetensors"), io, {"torch": torch.__version__})
    import cv2
    doc = {
        "tagclip_commit": args.commit,
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "classes": cl.class_names_coco,
        "background": cl.BACKGROUND_CATEGORY_COCO,
        "images": [{"name": r["name"], "file": f"images/{r['name']}.jpg", "h": r["h"], "w": r["w"],
                    "crops": r["crops"], "tags": r["tags"]} for r in recs],
        "dmar_cases": nd, "bbox_cases": nb, "cwr_cases": nc,
    }
    with open(os.path.join(args.out, "tiny.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    for r in recs:
        print(r["name"], r["h"], r["w"], "crops", r["crops"], "tags", r["tags"])


# ---------------------------------------------------------------------------------------------
# full
# ---------------------------------------------------------------------------------------------

def make_full(args):
    cl = import_official(args.tagclip)
    os.makedirs(args.out, exist_ok=True)
    wpath = os.path.join(args.out, "vit_b16_tagclip.safetensors")
    if args.reuse and os.path.exists(wpath):
        from safetensors.torch import load_file
        sd = load_file(wpath)
    else:
        import open_clip
        torch.manual_seed(args.seed)
        oc = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()
        gen = torch.Generator().manual_seed(args.seed)
        perturb_(oc, gen, emb_names=("positional_embedding", "class_embedding", "token_embedding.weight"))
        sharpen_(oc, gen)
        sd = {k: v.detach().float().contiguous().clone() for k, v in oc.state_dict().items()
              if not k.endswith("attn_mask")}
        save(wpath, sd, {"format": "open_clip", "act": "quick_gelu", "arch": "ViT-B-16",
                         "note": f"random weights (seed {args.seed}), perturbed, sharpened q/k: TagCLIP check"})
    from clip.build_model import build_model
    model = build_model("ViT-B/16", {k: v.clone() for k, v in sd.items()}).float().eval()
    names = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(args.coco, "*.jpg")))
    if args.limit:
        names = names[:args.limit]
    tag = f"_{args.limit}" if args.limit else ""
    jsonl = os.path.join(args.out, f"official{tag}.jsonl")
    if args.skip:
        # Continue a stopped run: its jsonl holds the first --skip photos; append the rest.
        done = sum(1 for _ in open(jsonl)) if os.path.exists(jsonl) else 0
        if done != args.skip:
            sys.exit(f"--skip {args.skip}, but {jsonl} holds {done} images")
        names = names[args.skip:]
    elif os.path.exists(jsonl):
        os.remove(jsonl)
    tpath = os.path.join(args.out, "text_features.safetensors")
    if args.reuse and os.path.exists(tpath):
        from safetensors.torch import load_file
        text, text_s = load_file(tpath)["text_features"], None
    else:
        t0 = time.time()
        with torch.no_grad():
            text = cl.clip.encode_text_with_prompt_ensemble(model, cl.class_names_coco + cl.BACKGROUND_CATEGORY_COCO, "cpu")
        text_s = time.time() - t0
        save(tpath, {"text_features": text}, {"seconds": f"{text_s:.1f}"})
        print(f"text features {tuple(text.shape)} in {text_s:.1f} s", flush=True)
    recs, seconds = run_classify(cl, model, os.path.abspath(args.coco), names, text_features=text, jsonl=jsonl)
    if args.skip:
        # official.json would hold only the continued part; compare reads the whole jsonl.
        print(f"{len(recs)} more images in {seconds:.1f} s ({seconds / max(len(recs), 1):.2f} s/image), "
              f"appended to {jsonl}")
        return
    doc = {"tagclip_commit": args.commit, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "text_seconds": text_s, "classify_seconds": seconds, "images": recs,
           "classes": cl.class_names_coco, "background": cl.BACKGROUND_CATEGORY_COCO}
    with open(os.path.join(args.out, f"official{tag}.json"), "w") as f:
        json.dump(doc, f)
    print(f"{len(recs)} images in {seconds:.1f} s ({seconds / max(len(recs), 1):.2f} s/image)")


def compare(args):
    """Engine CSVs (labelfree tagclip --out/--tags) against official.json[l]: the share of
    score entries within a relative error of 1e-3 and of images with the same tag set."""
    import csv
    path = os.path.join(args.out, "official.json")
    if os.path.exists(path):
        official = {r["name"]: r for r in json.load(open(path))["images"]}
    else:
        # A run still going (or stopped): official.jsonl, in the sorted order of the photos.
        names = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(args.coco or ".", "*.jpg")))
        official = {}
        for line in open(os.path.join(args.out, "official.jsonl")):
            r = json.loads(line)
            r.setdefault("name", names[len(official)])
            if "tags" not in r:  # the official rule (classify.py, --save_file)
                sc = np.array(r["scores"], np.float32)
                thr = sc.min() + np.float32(0.5) * (sc.max() - sc.min())
                r["tags"] = [int(i) for i in np.nonzero(sc > thr)[0]] or [int(np.argmax(sc))]
            official[r["name"]] = r
    rows = list(csv.reader(open(args.scores)))
    classes = rows[0][1:]
    ours = {os.path.splitext(os.path.basename(r[0]))[0]: np.array([float(v) for v in r[1:]], np.float32) for r in rows[1:]}
    tags = {}
    if args.tags:
        for r in list(csv.reader(open(args.tags)))[1:]:
            tags[os.path.splitext(os.path.basename(r[0]))[0]] = sorted(classes.index(t) for t in r[1].split(";") if t)
    n_entries = n_close = n_img = n_same = 0
    worst = []
    for name, r in official.items():
        if name not in ours:
            continue
        want = np.array(r["scores"], np.float32)
        rel = np.abs(ours[name] - want) / np.abs(want)
        n_entries += rel.size
        n_close += int((rel <= 1e-3).sum())
        n_img += 1
        same = tags.get(name) == sorted(r["tags"]) if "tags" in r else None
        n_same += bool(same)
        worst.append((float(rel.max()), name, same))
    worst.sort(reverse=True)
    print(f"{n_img} images, {n_entries} score entries")
    print(f"entries with relative error <= 1e-3: {n_close} ({100.0 * n_close / max(n_entries, 1):.3f}%)")
    print(f"images with the same tags: {n_same} ({100.0 * n_same / max(n_img, 1):.2f}%)")
    print("largest per-image errors:", [(f"{e:.2e}", n, s) for e, n, s in worst[:8]])
    med = sorted(e for e, _, _ in worst)[len(worst) // 2] if worst else 0
    print(f"median per-image max relative error: {med:.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["tiny", "full", "compare"])
    ap.add_argument("--tagclip", help="a checkout of github linyq2117/TagCLIP")
    ap.add_argument("--coco", help="coco128 train2017 folder")
    ap.add_argument("--out", required=True, help="output folder (compare: the folder of official.json)")
    ap.add_argument("--scores", help="compare: the engine's scores CSV")
    ap.add_argument("--tags", help="compare: the engine's tags CSV")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="full: the first N photos only (files get a _N suffix)")
    ap.add_argument("--skip", type=int, default=0,
                    help="full: continue a stopped run whose official.jsonl holds the first N photos (needs --reuse)")
    ap.add_argument("--reuse", action="store_true",
                    help="full: reuse the weights and text features already in --out (timing runs)")
    args = ap.parse_args()
    if args.mode != "compare" and not (args.tagclip and args.coco):
        ap.error("tiny and full need --tagclip and --coco")
    try:
        import subprocess
        args.commit = subprocess.run(["git", "-C", args.tagclip, "rev-parse", "HEAD"], capture_output=True,
                                     text=True).stdout.strip()
    except Exception:
        args.commit = "unknown"
    torch.set_grad_enabled(False)
    if args.mode == "compare":
        compare(args)
    elif args.mode == "tiny":
        make_tiny(args)
    else:
        make_full(args)


if __name__ == "__main__":
    main()
