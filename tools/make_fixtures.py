#!/usr/bin/env python3
"""Make the test fixtures of labelfree from the reference libraries.

    python tools/make_fixtures.py [--out tests/fixtures] [--seed 0] [--only tokenizer|models]

Writes
  OUT/tokenizer/openclip_tokenize.json   token ids made by open_clip.tokenize
  OUT/tokenizer/openclip_unicode.json    the same for Unicode and HTML-entity cases (Hangul,
                                         capitals with accents, full- and half-width forms,
                                         decomposed letters in and outside Latin, entities)
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


def unicode_cases():
    """Texts whose cleaning (ftfy.fix_text, html.unescape) does more than collapse whitespace.

    None of them needs ftfy's mojibake repair (fix_encoding), which labelfree does not
    reproduce: make_tokenizer_fixtures checks that."""
    hangul = [
        "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",                   # precomposed syllables
        "\uc11c\uc6b8\uc758 \ubc24\uac70\ub9ac \uc0ac\uc9c4",
        "\u1112\u1161\u11ab\u1100\u116e\u11a8 (conjoining jamo)",     # NFC composes 한국
        "\u1100\u1161 \u1109\u1173\u11af \u110b\u1175 ",              # 가 슬 이
        "\u3131\u314f\u3134 compatibility jamo",                  # stays as it is
        "\uffbe\uffc2\uffa4 half-width hangul",                    # NFKC: ㅎㅏㄴ
        "\uffa0filler \uffa1\uffa4\uffa7",
    ]
    capitals = [
        "\u00c9COLE NATIONALE \u00c0 PARIS",
        "\u00c5ngstr\u00f6m \u00c6SIR \u00d8RESUND \u00de\u00d0",
        "\u00c0\u00c9\u00ce\u00d5\u00dc \u00c7\u00d1 \u0150\u0170 \u0106\u010c\u0160\u017d",
        "E\u0301COLE and A\u030angstro\u0308m (decomposed)",
        "Tie\u0302\u0301ng Vie\u0323\u0302t, TI\u00ca\u0301NG VI\u1eb8\u0302T",
        "\u01c4 \u01c5 \u01c6 \u01c7 \u01ca DIGRAPHS",
        "STRA\u1e9eE \u0130STANBUL I\u0307",
        "\u0386\u0388\u0389 \u039f\u0394\u039f\u03a3 \u039f\u0394\u039f\u03a3 \u0391\u0301",
        "\u0419\u041e\u0428\u041a\u0410 \u0418\u0306 \u0401\u041b\u041a\u0410 \u0415\u0308",
    ]
    width = [
        "\uff26\uff55\uff4c\uff4c\uff0d\uff57\uff49\uff44\uff54\uff48\u3000\uff54\uff45\uff58\uff54\uff01",
        "\uff21\uff22\uff23\u3000\uff11\uff12\uff13 \uff08\uff50\uff41\uff52\uff45\uff4e\uff53\uff09",
        "\uffe5\uff11\uff10\uff10 \uffe1\uff15 \uffe0 \uffe2 \uffe3 \uffe4 \uffe6 \uffe8\uffe9\uffea\uffeb\uffec\uffed\uffee",
        "\uff76\uff80\uff76\uff85 \uff76\uff9e\uff6f\uff7a\uff73 \uff8a\uff9f\uff9d",  # half-width katakana
        "\uff61\uff62\uff63\uff64\uff65 \uff5f\uff60",
        "\uff3b\uff3c\uff3d\uff3e\uff3f\uff40\uff5b\uff5c\uff5d\uff5e",
    ]
    decomposed = [
        "\u03b1\u0301\u03b8\u03b7\u0301\u03bd\u03b1 \u03c9\u0342\u0345 \u03b9\u0308\u0301",  # Greek
        "\u0438\u0306\u043e\u0433\u0430 \u0435\u0308\u043b\u043a\u0430",              # Cyrillic
        "\u304b\u3099\u3063\u3053\u3046 \u30cf\u309a\u30f3 \u30bf\u3099",                # kana
        "\u0915\u093c \u0928\u093c \u0921\u093c",                                  # Devanagari (nukta)
        "\u05d1\u05bc \u05e9\u05c1 \u0627\u0653 \u0648\u0654 \u064a\u0654",              # Hebrew, Arabic
        "\u0b92\u0bd7 \u0bc6\u0bbe \u0d46\u0d3e \u0cbf\u0cd5",                      # Tamil, Malayalam, Kannada
        "a\u0323\u0302 a\u0302\u0323 q\u0307\u0323 \u212b \u2126 \u212a",              # order, singletons
        "\u1e0b\u0323 \u0073\u0323\u0307 \u1e69",
    ]
    entities = [
        "P&EACUTE;REZ BUNDESSTRA&SZLIG;E &NTILDE; &nTILDE; &Ntilde;",
        "&AMP; &LTRI; &FRAC12; &COPY; &NOTIN; &THETA; &Theta;",
        "&check; &checkmark; &HilbertSpace; &Jscr;ohn &fjlig; &NotEqualTilde; &nvlt;",
        "&hellip; &mdash; &ndash; &bull; &euro; &trade; &larr;&rarr; &hearts;",
        "&copy 2024 &amp co &notit; &ltx &gtgt &ampx; &eacute &Eacute &nbsp&nbsp",
        "&#1;a&#x81;b&#xFDD0;c&#65534;d&#128;e&#55296;f&#1114112;g&#0;h&#13;i",
        "&#x1F436; dog &#128049; cat &#X41;&#66 &#x3c;tag&#x3E; &#769;&#x301;",
        "&#59; &#38;#59; &#12ab; &#x; &#; &#99999999999999999999; &#0000065",
        "&amp;eacute; &amp;amp;amp;amp; &amp;#233; &amp;EACUTE;",
        "x < y\n&amp;amp;amp; after a line with a tag",
        "&lt;b&gt;bold&lt;/b&gt; &lt;3 &gt;.&lt;",
        "caf&eacute; na&iuml;ve &Aring;ngstr&ouml;m &#x1100;&#x1161; &#x304b;&#x3099;",
    ]
    cases = [(t, 77) for t in hangul + capitals + width + decomposed + entities]
    return cases


def make_tokenizer_fixtures(out_dir):
    import html

    import ftfy
    import open_clip
    from open_clip.tokenizer import _clean_lower, whitespace_clean

    os.makedirs(out_dir, exist_ok=True)
    for name, cases in [("openclip_tokenize.json", tokenizer_cases()), ("openclip_unicode.json", unicode_cases())]:
        rows = []
        for text, n in cases:
            ids = open_clip.tokenize([text], context_length=n)[0].tolist()
            rows.append({"text": text, "context_length": n, "ids": ids})
            # the cleaning labelfree reproduces: everything of open_clip's but mojibake repair
            without_mojibake_repair = whitespace_clean(
                html.unescape(html.unescape(ftfy.fix_text(text, fix_encoding=False))).strip()).lower()
            assert _clean_lower(text) == without_mojibake_repair, f"{text!r} needs ftfy's fix_encoding"
        doc = {
            "source": f"open_clip {open_clip.__version__} open_clip.tokenize",
            "cases": rows,
        }
        path = os.path.join(out_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
        print(f"wrote {path}: {len(rows)} cases")


# ----------------------------------------------------------------------------------------------
# small helpers

def rel_err(a, b):
    """||a - b|| / ||b|| over the whole tensor."""
    a = a.double().flatten()
    b = b.double().flatten()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def check(what, ours, lib, tol=1e-5):
    e = rel_err(ours, lib)
    print(f"  check {what}: rel err {e:.2e}")
    assert e <= tol, f"{what}: explicit forward differs from the library (rel err {e:.3e} > {tol})"


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def gelu(x):
    return F.gelu(x)  # exact (erf) GELU, as nn.GELU()


ACTS = {"quick_gelu": quick_gelu, "gelu": gelu}

# TagCLIP (clip/clip_model.py, upsample_pos_emb) and CCD (clip/model.py, upsample_pos_emb, used by
# AttentionPool2d.forward) both resize the positional grid with F.upsample(mode='bilinear'),
# i.e. F.interpolate(mode='bilinear', align_corners=False, antialias=False); the class
# position is kept. (Both also cast the result to fp16 with `.half()`; not reproduced here.)
POS_INTERP = "bilinear, align_corners=False, antialias=False"


def interp_pos(pos, gh, gw):
    """pos (1 + g0*g0, C): keep row 0, resize the g0 x g0 grid (row-major) to gh x gw."""
    n = pos.shape[0] - 1
    g0 = int(round(math.sqrt(n)))
    assert g0 * g0 == n
    if (gh, gw) == (g0, g0):
        return pos
    grid = pos[1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(gh, gw), mode="bilinear", align_corners=False, antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)
    return torch.cat([pos[:1], grid], 0)


def layer_norm(x, wb, eps):
    return F.layer_norm(x, (x.shape[-1],), wb[0], wb[1], eps)


def mha(x, wq, bq, wk, bk, wv, bv, wo, bo, heads, masks=()):
    """Multi-head self-attention on (B, T, C). Returns the output and the head-averaged
    UNMASKED probabilities (B, T, T). `masks` are additive (T, T) or (B, T, T) tensors."""
    B, T, C = x.shape
    dh = C // heads

    def split(t):
        return t.reshape(B, T, heads, dh).transpose(1, 2)

    q = split(x @ wq.T + bq)
    k = split(x @ wk.T + bk)
    v = split(x @ wv.T + bv)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
    p_unmasked = torch.softmax(s, -1)
    p = p_unmasked
    if masks:
        sm = s
        for m in masks:
            sm = sm + (m[:, None] if m.dim() == 3 else m)
        p = torch.softmax(sm, -1)
    o = (p @ v).transpose(1, 2).reshape(B, T, C)
    return o @ wo.T + bo, p_unmasked.mean(1)


def vit_forward(m, pixels, last_mask=None, clsrow=None):
    """Explicit ViT forward. m: dict of f64 parameters (see vit_params_*). Returns
    (embedding (B, D), tokens (B, T, D), attn (L, B, T, T)).
    last_mask (T, T) is added in the LAST layer only; clsrow (B, T) is added to the query-0 row
    in every layer. The recorded attention is always the unmasked softmax."""
    act = ACTS[m["act"]]
    eps = m["eps"]
    x = F.conv2d(pixels, m["conv"], stride=m["patch"])
    B, C, gh, gw = x.shape
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([m["cls"].expand(B, 1, C), x], 1)
    x = x + interp_pos(m["pos"], gh, gw)
    x = layer_norm(x, m["ln_pre"], eps)
    T = x.shape[1]
    attns = []
    nl = len(m["layers"])
    for i, L in enumerate(m["layers"]):
        masks = []
        if last_mask is not None and i == nl - 1:
            masks.append(last_mask)
        if clsrow is not None:
            row = torch.zeros(B, T, T, dtype=x.dtype)
            row[:, 0, :] = clsrow
            masks.append(row)
        o, a = mha(layer_norm(x, L["ln1"], eps), *L["qkvo"], m["heads"], masks)
        attns.append(a)
        x = x + o
        h = layer_norm(x, L["ln2"], eps)
        x = x + act(h @ L["fc1"][0].T + L["fc1"][1]) @ L["fc2"][0].T + L["fc2"][1]
    x = layer_norm(x, m["ln_post"], eps)
    tokens = x @ m["proj"]
    return tokens[:, 0], tokens, torch.stack(attns)


def vit_params_openclip(sd, heads, act):
    g = lambda k: sd[k].double()
    C = sd["visual.conv1.weight"].shape[0]
    layers = []
    i = 0
    while f"visual.transformer.resblocks.{i}.ln_1.weight" in sd:
        p = f"visual.transformer.resblocks.{i}."
        w = g(p + "attn.in_proj_weight")
        b = g(p + "attn.in_proj_bias")
        layers.append({
            "ln1": (g(p + "ln_1.weight"), g(p + "ln_1.bias")),
            "qkvo": (w[:C], b[:C], w[C:2 * C], b[C:2 * C], w[2 * C:], b[2 * C:],
                     g(p + "attn.out_proj.weight"), g(p + "attn.out_proj.bias")),
            "ln2": (g(p + "ln_2.weight"), g(p + "ln_2.bias")),
            "fc1": (g(p + "mlp.c_fc.weight"), g(p + "mlp.c_fc.bias")),
            "fc2": (g(p + "mlp.c_proj.weight"), g(p + "mlp.c_proj.bias")),
        })
        i += 1
    return {
        "act": act, "eps": 1e-5, "heads": heads,
        "patch": sd["visual.conv1.weight"].shape[-1],
        "conv": g("visual.conv1.weight"), "cls": g("visual.class_embedding"),
        "pos": g("visual.positional_embedding"),
        "ln_pre": (g("visual.ln_pre.weight"), g("visual.ln_pre.bias")),
        "layers": layers,
        "ln_post": (g("visual.ln_post.weight"), g("visual.ln_post.bias")),
        "proj": g("visual.proj"),
    }


def vit_params_hf(sd, cfg):
    g = lambda k: sd[k].double()
    vc = cfg.vision_config
    layers = []
    for i in range(vc.num_hidden_layers):
        p = f"vision_model.encoder.layers.{i}."
        a = p + "self_attn."
        layers.append({
            "ln1": (g(p + "layer_norm1.weight"), g(p + "layer_norm1.bias")),
            "qkvo": (g(a + "q_proj.weight"), g(a + "q_proj.bias"), g(a + "k_proj.weight"),
                     g(a + "k_proj.bias"), g(a + "v_proj.weight"), g(a + "v_proj.bias"),
                     g(a + "out_proj.weight"), g(a + "out_proj.bias")),
            "ln2": (g(p + "layer_norm2.weight"), g(p + "layer_norm2.bias")),
            "fc1": (g(p + "mlp.fc1.weight"), g(p + "mlp.fc1.bias")),
            "fc2": (g(p + "mlp.fc2.weight"), g(p + "mlp.fc2.bias")),
        })
    e = "vision_model.embeddings."
    return {
        "act": vc.hidden_act, "eps": vc.layer_norm_eps, "heads": vc.num_attention_heads,
        "patch": vc.patch_size,
        "conv": g(e + "patch_embedding.weight"), "cls": g(e + "class_embedding"),
        "pos": g(e + "position_embedding.weight"),
        "ln_pre": (g("vision_model.pre_layrnorm.weight"), g("vision_model.pre_layrnorm.bias")),
        "layers": layers,
        "ln_post": (g("vision_model.post_layernorm.weight"), g("vision_model.post_layernorm.bias")),
        "proj": g("visual_projection.weight").T,
    }


def batch_norm(x, sd, p):
    g = lambda k: sd[p + k].double()
    return F.batch_norm(x, g("running_mean"), g("running_var"), g("weight"), g("bias"),
                        training=False, eps=1e-5)


def resnet_forward(sd, pixels, heads):
    """Explicit ModifiedResNet forward (open_clip names, BN in eval mode). Returns
    (embedding (B, D), tokens (B, 1 + h*w, D), features (B, C, h, w)). The attention-pool
    positional grid is resized to the feature grid (CCD's convention) when they differ."""
    g = lambda k: sd[k].double()
    v = "visual."
    x = pixels
    x = F.relu(batch_norm(F.conv2d(x, g(v + "conv1.weight"), stride=2, padding=1), sd, v + "bn1."))
    x = F.relu(batch_norm(F.conv2d(x, g(v + "conv2.weight"), padding=1), sd, v + "bn2."))
    x = F.relu(batch_norm(F.conv2d(x, g(v + "conv3.weight"), padding=1), sd, v + "bn3."))
    x = F.avg_pool2d(x, 2)
    for li in range(1, 5):
        bi = 0
        while f"{v}layer{li}.{bi}.conv1.weight" in sd:
            p = f"{v}layer{li}.{bi}."
            stride = 2 if (li > 1 and bi == 0) else 1
            out = F.relu(batch_norm(F.conv2d(x, g(p + "conv1.weight")), sd, p + "bn1."))
            out = F.relu(batch_norm(F.conv2d(out, g(p + "conv2.weight"), padding=1), sd, p + "bn2."))
            if stride > 1:
                out = F.avg_pool2d(out, stride)
            out = batch_norm(F.conv2d(out, g(p + "conv3.weight")), sd, p + "bn3.")
            if p + "downsample.0.weight" in sd:
                idn = F.avg_pool2d(x, stride) if stride > 1 else x
                idn = batch_norm(F.conv2d(idn, g(p + "downsample.0.weight")), sd, p + "downsample.1.")
            else:
                idn = x
            x = F.relu(out + idn)
            bi += 1
    features = x
    B, C, h, w = x.shape
    t = x.flatten(2).transpose(1, 2)  # (B, hw, C)
    t = torch.cat([t.mean(1, keepdim=True), t], 1)
    t = t + interp_pos(g(v + "attnpool.positional_embedding"), h, w)
    a = v + "attnpool."
    tokens, _ = mha(t, g(a + "q_proj.weight"), g(a + "q_proj.bias"), g(a + "k_proj.weight"),
                    g(a + "k_proj.bias"), g(a + "v_proj.weight"), g(a + "v_proj.bias"),
                    g(a + "c_proj.weight"), g(a + "c_proj.bias"), heads)
    return tokens[:, 0], tokens, features


# ----------------------------------------------------------------------------------------------
# model fixtures

VOCAB = 1000
EOS_ID = VOCAB - 1  # end token: the largest id, present exactly once per row
BOS_ID = VOCAB - 2


def text_tokens(gen, lengths=(5, 20, 77), ctx=77):
    """(B, ctx) ids: BOS, random ids in [1, BOS), EOS, zero padding. EOS is the row maximum and
    appears once, so argmax pooling (open_clip, OpenAI, HF with eos_token_id == 2) and
    first-EOS pooling (HF with eos_token_id != 2) pick the same position."""
    rows = torch.zeros(len(lengths), ctx, dtype=torch.long)
    for b, n in enumerate(lengths):
        rows[b, 0] = BOS_ID
        rows[b, 1:n - 1] = torch.randint(1, BOS_ID, (n - 2,), generator=gen)
        rows[b, n - 1] = EOS_ID
    return rows


def perturb_(model, gen, emb_names=()):
    """Move every parameter away from its initial value so that a wrong use of any of them is
    caught: 1-D parameters (norm weights/biases, linear biases, class embedding, logit scale)
    get N(0, 0.1) noise; embeddings named in `emb_names` are redrawn as N(0, 0.5); batch-norm
    weights become 1 + N(0, 0.2) (open_clip zero-initialises bn3) and get random running stats."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(name.endswith(e) for e in emb_names):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            elif p.dim() <= 1:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
                mod.bias.copy_(0.1 * torch.randn(n, generator=gen))
                mod.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                mod.running_var.copy_(0.5 + torch.rand(n, generator=gen))


def sharpen_(model, gen, gain=1.7, all_linear=False):
    """Redraw the query and key projections as N(0, gain^2 / fan_in) so that attention logits
    have a std of about gain^2 (~3): peaked maps, not the near-uniform ones of the default
    init, make a mistake in the attention visible. With `all_linear`, every other nn.Linear
    weight is redrawn as N(0, 1 / fan_in) too (HF's default init of 0.02 leaves the attention
    and MLP branches too small to test)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("in_proj_weight"):
                c = p.shape[1]
                p[:2 * c] = torch.randn(2 * c, c, generator=gen) * (gain / math.sqrt(c))
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                p.copy_(torch.randn(p.shape, generator=gen) * (gain / math.sqrt(p.shape[1])))
        if all_linear:
            for name, mod in model.named_modules():
                if isinstance(mod, torch.nn.Linear) and not name.endswith(("q_proj", "k_proj")):
                    mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) / math.sqrt(mod.in_features))


def state_dict_f32(model):
    """Parameters and the buffers an engine needs (BN running stats), as f32. Non-parameter
    buffers such as attn_mask / position_ids / num_batches_tracked are dropped."""
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith(("num_batches_tracked", "position_ids", "attn_mask")):
            continue
        out[k] = v.detach().to(torch.float32).contiguous().clone()
    return out


def save(path, tensors, metadata):
    """Write a safetensors file byte-for-byte reproducibly (the library's writer orders the
    metadata at random): tensors sorted by name, header JSON with sorted keys, f32 / i32."""
    header = {"__metadata__": {k: str(v) for k, v in sorted(metadata.items())}}
    blobs = []
    offset = 0
    for k in sorted(tensors):
        v = tensors[k].detach()
        v = v.to(torch.float32) if v.is_floating_point() else v.to(torch.int32)
        a = np.array(v.cpu().numpy(), order="C").astype("<f4" if v.dtype == torch.float32 else "<i4")
        b = a.tobytes()
        header[k] = {"dtype": "F32" if v.dtype == torch.float32 else "I32",
                     "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # align the data to 8 bytes
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)
    # read back with the reference reader
    from safetensors.torch import load_file
    back = load_file(path)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert torch.equal(back[k], v.detach().to(back[k].dtype)), k
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def openclip_model(kind, quick_gelu, seed):
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    text_cfg = CLIPTextCfg(context_length=77, vocab_size=VOCAB, width=64, heads=2, layers=2)
    if kind == "vit":
        vision_cfg = CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=32)
    else:
        vision_cfg = CLIPVisionCfg(layers=(2, 1, 1, 1), width=RN_WIDTH, head_width=32, image_size=64)
    model = CLIP(embed_dim=32, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=quick_gelu)
    return model.eval()


RN_WIDTH = 4


def vit_io(m, gen, pixels, pixels_big, lib_embedding, lib_attn=None, lib_tokens=None):
    """Inputs/outputs shared by the three ViT fixtures. m: explicit-forward parameters."""
    emb, toks, attn = vit_forward(m, pixels)
    check("embedding vs library", emb, lib_embedding)
    if lib_tokens is not None:
        check("tokens vs library", toks, lib_tokens)
    if lib_attn is not None:
        check("attention vs library", attn, lib_attn)
    B, T = toks.shape[0], toks.shape[1]
    diag = torch.full((T, T), -100.0, dtype=torch.float64)
    diag.fill_diagonal_(0.0)
    emb_d, toks_d, attn_d = vit_forward(m, pixels, last_mask=diag)
    clsrow = torch.where(torch.rand(B, T, generator=gen) < 0.5, -1000.0, 0.0).double()
    clsrow[:, 0] = 0.0
    emb_c, toks_c, _ = vit_forward(m, pixels, clsrow=clsrow)
    emb_b, toks_b, _ = vit_forward(m, pixels_big)
    # sanity: each variant changes the output
    assert rel_err(emb_d, emb) > 1e-3 and rel_err(emb_c, emb) > 1e-3
    return {
        "pixels": pixels, "embedding": emb, "tokens": toks, "attn": attn,
        "mask_diag_last": diag, "embedding_diag": emb_d, "tokens_diag": toks_d, "attn_diag": attn_d,
        "mask_cls_row": clsrow, "embedding_clsrow": emb_c, "tokens_clsrow": toks_c,
        "pixels_big": pixels_big, "embedding_big": emb_b, "tokens_big": toks_b,
    }


def openclip_library_attn(model, pixels):
    """Head-averaged attention per layer from the library's own blocks (need_weights=True)."""
    vis = model.visual
    x = vis._embeds(pixels)
    maps = []
    for blk in vis.transformer.resblocks:
        h = blk.ln_1(x)
        _, a = blk.attn(h, h, h, need_weights=True, average_attn_weights=True)
        maps.append(a)
        x = blk(x)
    return torch.stack(maps)


def openclip_library_masked(model, pixels, mask_of_layer):
    """encode_image through the library's own blocks, with an additive mask per layer."""
    vis = model.visual
    x = vis._embeds(pixels)
    for i, blk in enumerate(vis.transformer.resblocks):
        x = blk(x, attn_mask=mask_of_layer(i))
    pooled, _ = vis._pool(x)
    return pooled @ vis.proj


def make_openclip_vit(out_dir, name, quick_gelu, seed):
    import open_clip
    print(f"{name}:")
    act = "quick_gelu" if quick_gelu else "gelu"
    gen = torch.Generator().manual_seed(seed)
    model = openclip_model("vit", quick_gelu, seed)
    perturb_(model, gen, emb_names=("positional_embedding", "class_embedding", "token_embedding.weight"))
    sharpen_(model, gen)
    sd = state_dict_f32(model)
    save(os.path.join(out_dir, f"{name}.safetensors"), sd,
         {"format": "open_clip", "act": act, "arch": f"tiny-vit ({name})",
          "vision_heads": 2, "text_heads": 2})

    model = model.double()
    pixels = torch.randn(2, 3, 32, 32, generator=gen).float().double()
    pixels_big = torch.randn(2, 3, 40, 56, generator=gen).float().double()
    tokens = text_tokens(gen)
    with torch.no_grad():
        lib_emb = model.encode_image(pixels)
        model.visual.output_tokens = True
        _, lib_patch = model.visual(pixels)
        model.visual.output_tokens = False
        lib_attn = openclip_library_attn(model, pixels)
        text_emb = model.encode_text(tokens)
        m = vit_params_openclip(sd, heads=64 // 32, act=act)
        io = vit_io(m, gen, pixels, pixels_big, lib_emb, lib_attn)
        check("patch tokens vs library", io["tokens"][:, 1:], lib_patch @ model.visual.proj)
        heads = model.visual.transformer.resblocks[0].attn.num_heads
        T = io["tokens"].shape[1]
        nl = len(model.visual.transformer.resblocks)
        check("diag-masked embedding vs library", io["embedding_diag"],
              openclip_library_masked(model, pixels, lambda i: io["mask_diag_last"] if i == nl - 1 else None))
        row = torch.zeros(2, T, T, dtype=torch.float64)
        row[:, 0, :] = io["mask_cls_row"]
        row = row.repeat_interleave(heads, 0)  # (B * heads, T, T), nn.MultiheadAttention's 3-D mask
        check("cls-row-masked embedding vs library", io["embedding_clsrow"],
              openclip_library_masked(model, pixels, lambda i: row))
        pos = model.visual.positional_embedding.data.clone()
        model.visual.positional_embedding.data = interp_pos(pos, 40 // 8, 56 // 8)
        check("big-input embedding vs library (resized grid)", io["embedding_big"],
              model.encode_image(pixels_big))
        model.visual.positional_embedding.data = pos
    io.update({"text_tokens": tokens, "text_embedding": text_emb,
               "logit_scale": model.logit_scale.detach().reshape(())})
    save(os.path.join(out_dir, f"{name}.io.safetensors"), io, {
        "library": f"open_clip {open_clip.__version__}", "torch": torch.__version__,
        "pos_interp": POS_INTERP,
        "pos_interp_source": "TagCLIP clip/clip_model.py upsample_pos_emb (F.upsample mode='bilinear')",
        "diag_mask": "-100 off the diagonal, last layer only; attn_diag records the unmasked softmax",
        "text_pool": "argmax of the ids (EOS is the largest id, once per row)",
        "eos_id": EOS_ID, "act": act,
    })


def make_openclip_rn(out_dir, name, seed):
    import open_clip
    print(f"{name}:")
    gen = torch.Generator().manual_seed(seed)
    model = openclip_model("rn", True, seed)
    perturb_(model, gen, emb_names=("positional_embedding", "token_embedding.weight"))
    sharpen_(model, gen)
    sd = state_dict_f32(model)
    heads = model.visual.attnpool.num_heads
    save(os.path.join(out_dir, f"{name}.safetensors"), sd,
         {"format": "open_clip", "act": "quick_gelu", "arch": f"tiny-modified-resnet ({name})",
          "vision_heads": heads, "text_heads": 2})

    model = model.double()
    pixels = torch.randn(2, 3, 64, 64, generator=gen).float().double()
    pixels_big = torch.randn(2, 3, 96, 64, generator=gen).float().double()
    tokens = text_tokens(gen)
    with torch.no_grad():
        lib_emb = model.encode_image(pixels)
        v = model.visual
        lib_feat = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(pixels)))))
        text_emb = model.encode_text(tokens)
        emb, toks, feat = resnet_forward(sd, pixels, heads)
        check("features vs library", feat, lib_feat)
        check("embedding vs library", emb, lib_emb)
        emb_b, toks_b, feat_b = resnet_forward(sd, pixels_big, heads)
        pool = model.visual.attnpool
        pos = pool.positional_embedding.data.clone()
        pool.positional_embedding.data = interp_pos(pos, 96 // 32, 64 // 32)
        check("big-input embedding vs library (resized grid)", emb_b, model.encode_image(pixels_big))
        pool.positional_embedding.data = pos
    io = {"pixels": pixels, "embedding": emb, "tokens": toks, "features": feat,
          "pixels_big": pixels_big, "embedding_big": emb_b, "tokens_big": toks_b,
          "features_big": feat_b,
          "text_tokens": tokens, "text_embedding": text_emb,
          "logit_scale": model.logit_scale.detach().reshape(())}
    save(os.path.join(out_dir, f"{name}.io.safetensors"), io, {
        "library": f"open_clip {open_clip.__version__}", "torch": torch.__version__,
        "pos_interp": POS_INTERP,
        "pos_interp_source": "CCD clip/model.py upsample_pos_emb, called by AttentionPool2d.forward "
                             "(new grid = H//32, W//32, +1 where H%32 == 31)",
        "attnpool_heads": heads,
        "tokens": "all 1 + h*w attention-pool outputs after c_proj; row 0 (the mean token) is the embedding",
        "text_pool": "argmax of the ids (EOS is the largest id, once per row)",
        "eos_id": EOS_ID, "act": "quick_gelu",
    })


def make_hf_vit(out_dir, name, seed):
    import transformers
    from transformers import CLIPConfig, CLIPModel
    print(f"{name}:")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         hidden_act="quick_gelu", bos_token_id=BOS_ID, eos_token_id=EOS_ID,
                         pad_token_id=0, projection_dim=32),
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8,
                           hidden_act="quick_gelu", projection_dim=32),
        projection_dim=32,
    )
    cfg._attn_implementation = "eager"
    model = CLIPModel(cfg).eval()
    perturb_(model, gen, emb_names=("position_embedding.weight", "class_embedding",
                                    "token_embedding.weight"))
    sharpen_(model, gen, all_linear=True)
    sd = state_dict_f32(model)
    save(os.path.join(out_dir, f"{name}.safetensors"), sd,
         {"format": "hf", "act": cfg.vision_config.hidden_act, "arch": f"tiny-vit ({name})",
          "vision_heads": 2, "text_heads": 2, "hf_config": cfg.to_json_string(use_diff=False)})
    with open(os.path.join(out_dir, f"{name}.config.json"), "w") as f:
        f.write(cfg.to_json_string())

    model = model.double()
    pixels = torch.randn(2, 3, 32, 32, generator=gen).float().double()
    pixels_big = torch.randn(2, 3, 40, 56, generator=gen).float().double()
    tokens = text_tokens(gen)
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
        lib_emb = out if torch.is_tensor(out) else out.pooler_output
        vo = model.vision_model(pixel_values=pixels, output_attentions=True)
        lib_attn = torch.stack([a.mean(1) for a in vo.attentions])
        lib_tokens = model.visual_projection(model.vision_model.post_layernorm(vo.last_hidden_state))
        out = model.get_text_features(input_ids=tokens)
        text_emb = out if torch.is_tensor(out) else out.pooler_output
        # the two HF pooling rules agree on these ids
        hs = model.text_model(input_ids=tokens).last_hidden_state
        am = hs[torch.arange(3), tokens.argmax(-1)]
        check("text argmax pooling vs library", model.text_projection(am), text_emb, tol=1e-12)
        m = vit_params_hf(sd, cfg)
        io = vit_io(m, gen, pixels, pixels_big, lib_emb, lib_attn, lib_tokens)
    io.update({"text_tokens": tokens, "text_embedding": text_emb,
               "logit_scale": model.logit_scale.detach().reshape(())})
    save(os.path.join(out_dir, f"{name}.io.safetensors"), io, {
        "library": f"transformers {transformers.__version__}", "torch": torch.__version__,
        "pos_interp": POS_INTERP,
        "pos_interp_source": "TagCLIP clip/clip_model.py upsample_pos_emb (NOT transformers' own "
                             "interpolate_pos_encoding, which is bicubic)",
        "diag_mask": "-100 off the diagonal, last layer only; attn_diag records the unmasked softmax",
        "text_pool": f"first position of eos_token_id={EOS_ID} (== argmax here: EOS is the largest id, once per row)",
        "eos_id": EOS_ID, "act": cfg.vision_config.hidden_act,
    })


def make_model_fixtures(out_dir, seed):
    os.makedirs(out_dir, exist_ok=True)
    torch.set_grad_enabled(False)
    make_openclip_vit(out_dir, "vit_openclip_quickgelu", True, seed)
    make_openclip_vit(out_dir, "vit_openclip_gelu", False, seed + 1)
    make_openclip_rn(out_dir, "rn_openclip", seed + 2)
    make_hf_vit(out_dir, "vit_hf", seed + 3)


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
