#!/usr/bin/env python3
"""Make the test fixtures of labelfree from the reference libraries.

    python tools/make_fixtures.py [--out tests/fixtures] [--seed 0] [--only tokenizer|models]

Writes
  OUT/tokenizer/openclip_tokenize.json   token ids made by open_clip.tokenize
  OUT/models/<name>.safetensors          tiny random-weight models, library state-dict names
  OUT/models/<name>.io.safetensors       inputs and expected outputs of those models
  OUT/models/vit_hf.config.json          the transformers config of vit_hf

Every expected image output comes from an explicit float64 forward written here from the
library model's own parameters; with no mask it is asserted to reproduce the library's
encode_image / get_image_features (run in float64) to 1e-5 relative, so the fixtures stay tied
to the libraries. Text embeddings come straight from the libraries' encode_text /
get_text_features in float64. Everything is stored as f32 (token ids as i32).
See tests/fixtures/models/README.md for the list of tensors.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# tokenizer fixtures

def tokenizer_cases():
    """(text, context_length) pairs: every TagCLIP template filled with class names, and edge cases."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    templates = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES] + [
        "there is a {} in the scene.",
        "there is the {} in the scene.",
        "this is a {} in the scene.",
        "this is the {} in the scene.",
        "this is one {} in the scene.",
    ]
    assert len(templates) == 85
    names = ["aeroplane", "tvmonitor", "traffic light", "pottedplant", "hair drier",
             "diningtable", "teddy bear", "railroad", "baseball glove", "sign", "cell phone"]
    cases = []
    for i, t in enumerate(templates):
        # three names per template, rotating, so every name meets many templates
        for j in range(3):
            cases.append((t.format(names[(i + 4 * j) % len(names)]), 77))
    extra = [
        "", " ", "a", "A Photo Of A DOG.", "   lots   of\twhite\nspace  ",
        "Hello, world!!! What's up? I'm fine; you'd've known.",
        "it's, they're, we've, I'll, he'd, she's",
        "3.14159 + 2 = 5.14159; 1,000,000 dollars; 24/7; 1st 2nd 3rd",
        "C++ & C# <tag> [brackets] {braces} (parens) @user #hashtag $5 %50 ^_^ ~tilde` |pipe|",
        "e-mail: someone@example.com, url: https://example.com/path?q=1&r=2",
        "naïve café résumé jalapeño crème brûlée Zürich São Paulo",
        "cafe\u0301 (decomposed accent)",
        "Ελληνικά κείμενο, русский текст, 中文字符, 日本語のテキスト, 한국어",
        "emoji 🐶🐱🚗 and ✓ ★ ♥",
        "\u201ccurly quotes\u201d and \u2018single\u2019 quotes",
        "\ufb01sh and \ufb02owers (ligatures)",
        "\uff26\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48 ＡＢＣ１２３",
        "Fish &amp; Chips &lt;3 &quot;quoted&quot; &#39;apos&#39; &eacute;t&eacute; &nbsp;x",
        "&amp;amp;amp; double escaped",
        "tab\tseparated\tvalues\r\nwindows line",
        "donaudampfschifffahrtsgesellschaftskapitänsmütze",
        "supercalifragilisticexpialidocious antidisestablishmentarianism",
        "a photo of a <start_of_text> and <end_of_text> inside",
        "UPPER lower MiXeD",
        "'quoted' \"double\" `back`",
        "....!!!???---___===+++",
        "0123456789",
    ]
    cases += [(t, 77) for t in extra]
    long_text = " ".join(["a photo of a dog on the grass next to a red car"] * 12)
    cases += [(long_text, 77), ("x " * 200, 77), ("word" * 100, 77),
              (" ".join(str(i) for i in range(100)), 77)]
    # other context lengths: truncation at a short length, and exact fits
    cases += [("a photo of a traffic light.", 8), ("a photo of a traffic light.", 7),
              ("a photo of a traffic light.", 6), ("a", 3), ("a b", 3), ("", 2),
              (long_text, 16), ("a photo of a dog.", 16)]
    return cases


def make_tokenizer_fixtures(out_dir):
    import open_clip

    cases = tokenizer_cases()
    rows = []
    for text, n in cases:
        ids = open_clip.tokenize([text], context_length=n)[0].tolist()
        rows.append({"text": text, "context_length": n, "ids": ids})
    doc = {
        "source": f"open_clip {open_clip.__version__} open_clip.tokenize",
        "cases": rows,
    }
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "openclip_tokenize.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path}: {len(rows)} cases")


# ----------------------------------------------------------------------------------------------
# main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["tokenizer", "models"], default=None)
    args = ap.parse_args()
    if args.only in (None, "tokenizer"):
        make_tokenizer_fixtures(os.path.join(args.out, "tokenizer"))
    if args.only in (None, "models"):
        make_model_fixtures(os.path.join(args.out, "models"), args.seed)


if __name__ == "__main__":
    main()
