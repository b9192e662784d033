#!/usr/bin/env python3
"""Convert CLIP (and torchvision ResNet-50) weights to the f32 safetensors labelfree loads.

Real weights:
    convert_weights.py --in ViT-B-16.pt --out vit_b16.safetensors          # OpenAI TorchScript .pt
    convert_weights.py --in open_clip_model.bin --arch ViT-B-16 --out f.safetensors
    convert_weights.py --in clip-vit-base-patch16/ --out f.safetensors    # Hugging Face folder
    convert_weights.py --in resnet50-0676ba61.pth --out rn50_tv.safetensors  # torchvision
    convert_weights.py --in bestccd.pt --out ccd_classifier.safetensors     # official CCD model

Random weights of full size (for checks where no pretrained weights can be downloaded):
    convert_weights.py --arch ViT-B-16 --random --seed 0 [--quick-gelu] --out f.safetensors
    convert_weights.py --hf-random --seed 0 --out f.safetensors            # CLIPModel, ViT-B/16 size
    convert_weights.py --tv-random --seed 0 --out f.safetensors            # torchvision resnet50

Output: every tensor as f32 under the library's own state-dict names (OpenAI and open_clip share
theirs; Hugging Face keeps its names; torchvision keeps its names; the official CCD classifier,
saved by its train.py as (state_dict, P), keeps `feature_extractor.N.*`, `onebyone_conv.*`,
`alpha`). Non-parameter buffers
(attn_mask, position_ids, num_batches_tracked, OpenAI's input_resolution / context_length /
vocab_size) are dropped; batch-norm running statistics are kept. Metadata:
  format  open_clip | hf | torchvision | ccd
  act     quick_gelu | gelu (text/ViT MLP activation; relu for torchvision)
  arch    open_clip model name when known, else a name read from the shapes
  hf_config  (hf only) the transformers config as JSON
Random models are perturbed like the fixtures (norms, biases, embeddings moved off their init)
unless --no-perturb.
"""

import argparse
import json
import os
import sys

import torch

OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
DROP_SUFFIXES = ("num_batches_tracked", "position_ids", "attn_mask")


def clean_state_dict(sd):
    out = {}
    for k, v in sd.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k in OPENAI_EXTRA_KEYS or k.endswith(DROP_SUFFIXES):
            continue
        if not torch.is_tensor(v):
            continue
        if not v.is_floating_point():
            print(f"note: dropping non-float tensor {k} {tuple(v.shape)} {v.dtype}", file=sys.stderr)
            continue
        out[k] = v.detach().to(torch.float32).contiguous().clone()
    return out


RN_NAMES = {(3, 4, 6, 3): "RN50", (3, 4, 23, 3): "RN101", (4, 6, 10, 6): "RN50x4",
            (6, 8, 18, 8): "RN50x16", (3, 15, 36, 10): "RN50x64"}


def arch_from_shapes(sd):
    """An open_clip-style name for an OpenAI / open_clip state dict, read from its shapes."""
    if "visual.proj" in sd:
        width = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        layers = len([k for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        size = {(768, 12): "B", (1024, 24): "L", (1280, 32): "H"}.get((width, layers))
        if size is None:
            return f"ViT-w{width}-l{layers}-p{patch}-i{grid * patch}"
        name = f"ViT-{size}-{patch}"
        return name if grid * patch == 224 else f"{name}-{grid * patch}"
    if "visual.layer1.0.conv1.weight" in sd:
        counts = tuple(len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")})
                       for b in (1, 2, 3, 4))
        return RN_NAMES.get(counts, "ModifiedResNet" + "-".join(map(str, counts)))
    return "unknown"


def load_any(path):
    """(state_dict, kind) for a TorchScript archive ('openai') or a pickled checkpoint."""
    try:
        model = torch.jit.load(path, map_location="cpu")
        return model.state_dict(), "openai"
    except Exception:
        pass
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path), "checkpoint"
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(ck, dict) and "state_dict" in ck and isinstance(ck["state_dict"], dict):
        ck = ck["state_dict"]
    # the official CCD train.py saves (state_dict, P)
    if isinstance(ck, tuple) and ck and isinstance(ck[0], dict):
        ck = ck[0]
    if not isinstance(ck, dict):
        raise SystemExit(f"{path}: not a state dict (found {type(ck).__name__})")
    return ck, "checkpoint"


def act_of_openclip_arch(name, quick_gelu_flag):
    import open_clip
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise SystemExit(f"unknown open_clip architecture {name!r}; see open_clip.list_models()")
    return "quick_gelu" if (quick_gelu_flag or cfg.get("quick_gelu", False)) else "gelu"


def hf_vit_b16_config():
    from transformers import CLIPConfig
    # the shape of openai/clip-vit-base-patch16; its text config still carries the legacy
    # eos_token_id 2, which makes transformers pool the text at the argmax id (49407)
    return CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                         num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                         hidden_act="quick_gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=224, patch_size=16,
                           hidden_act="quick_gelu"),
        projection_dim=512,
    )


def perturb(model, seed):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_fixtures import perturb_
    gen = torch.Generator().manual_seed(seed + 1)
    perturb_(model, gen, emb_names=("positional_embedding", "class_embedding",
                                    "token_embedding.weight", "position_embedding.weight"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--in", dest="inp", help="OpenAI .pt, open_clip checkpoint, HF folder or torchvision .pth")
    ap.add_argument("--out", required=True)
    ap.add_argument("--arch", help="open_clip model name (e.g. ViT-B-16, RN50-quickgelu)")
    ap.add_argument("--act", choices=["quick_gelu", "gelu"], help="override the activation recorded")
    ap.add_argument("--quick-gelu", action="store_true", help="open_clip: force QuickGELU")
    ap.add_argument("--random", action="store_true", help="random open_clip model of --arch")
    ap.add_argument("--hf-random", action="store_true", help="random transformers CLIPModel, ViT-B/16 size")
    ap.add_argument("--tv-random", action="store_true", help="random torchvision resnet50")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-perturb", action="store_true", help="random models: keep the library init")
    args = ap.parse_args()

    meta = {}
    if args.random:
        import open_clip
        if not args.arch:
            raise SystemExit("--random needs --arch")
        act = act_of_openclip_arch(args.arch, args.quick_gelu)
        torch.manual_seed(args.seed)
        model = open_clip.create_model(args.arch, pretrained=None, force_quick_gelu=args.quick_gelu)
        if not args.no_perturb:
            perturb(model, args.seed)
        sd = model.state_dict()
        meta = {"format": "open_clip", "act": act, "arch": args.arch}
    elif args.hf_random:
        from transformers import CLIPModel
        torch.manual_seed(args.seed)
        cfg = hf_vit_b16_config()
        model = CLIPModel(cfg).eval()
        if not args.no_perturb:
            perturb(model, args.seed)
        sd = model.state_dict()
        meta = {"format": "hf", "act": cfg.vision_config.hidden_act, "arch": "hf-clip-vit-b16",
                "hf_config": cfg.to_json_string(use_diff=False)}
    elif args.tv_random:
        import torchvision
        torch.manual_seed(args.seed)
        model = torchvision.models.resnet50(weights=None).eval()
        if not args.no_perturb:
            perturb(model, args.seed)
        sd = model.state_dict()
        meta = {"format": "torchvision", "act": "relu", "arch": "resnet50"}
    elif args.inp and os.path.isdir(args.inp):
        from transformers import CLIPModel
        model = CLIPModel.from_pretrained(args.inp, torch_dtype=torch.float32)
        cfg = model.config
        sd = model.state_dict()
        meta = {"format": "hf", "act": cfg.vision_config.hidden_act,
                "arch": f"hf-clip-{cfg.vision_config.hidden_size}-p{cfg.vision_config.patch_size}",
                "hf_config": cfg.to_json_string(use_diff=False)}
        if cfg.vision_config.hidden_act != cfg.text_config.hidden_act:
            print("warning: vision and text activations differ; metadata records the vision one",
                  file=sys.stderr)
    elif args.inp:
        sd, kind = load_any(args.inp)
        if "fc.weight" in sd and "layer1.0.conv1.weight" in sd:
            meta = {"format": "torchvision", "act": "relu", "arch": "resnet50"}
        elif "onebyone_conv.weight" in sd:
            # the official CCD classifier: names kept (`ccd relabel/predict --classifier` read them)
            meta = {"format": "ccd", "act": "relu", "arch": "ccd-resnet50"}
        elif kind == "openai":
            meta = {"format": "open_clip", "act": "quick_gelu", "arch": arch_from_shapes(sd)}
        else:
            sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
            if args.arch:
                act = act_of_openclip_arch(args.arch, args.quick_gelu)
                arch = args.arch
            elif args.act:
                act, arch = args.act, arch_from_shapes(sd)
            else:
                raise SystemExit(
                    "an open_clip checkpoint does not say its activation: pass --arch NAME "
                    "(e.g. ViT-B-16 for nn.GELU, ViT-B-16-quickgelu for QuickGELU) or --act")
            meta = {"format": "open_clip", "act": act, "arch": arch}
    else:
        raise SystemExit("give --in PATH, or --random --arch NAME, or --hf-random, or --tv-random")

    if args.act:
        meta["act"] = args.act
    tensors = clean_state_dict(sd)
    from safetensors.torch import save_file
    save_file(tensors, args.out, metadata=meta)
    n = sum(t.numel() for t in tensors.values())
    shown = {k: (v if k != "hf_config" else "...") for k, v in meta.items()}
    print(f"wrote {args.out}: {len(tensors)} tensors, {n / 1e6:.1f} M parameters, {shown}")


if __name__ == "__main__":
    main()
