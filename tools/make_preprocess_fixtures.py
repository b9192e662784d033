#!/usr/bin/env python3
"""Make the fixtures of tests/preprocess.rs: what PIL / torchvision / open_clip produce.

Run in the reference environment (pillow, numpy, torch, torchvision, open_clip_torch,
opencv-python, safetensors), from the crate root:

    python tools/make_preprocess_fixtures.py \
        --images ../shared/data/coco128/train2017 --out tests/fixtures/preprocess

It writes into --out:
  generated/*.{jpg,png}   small test images made here (JPEG variants, PNG modes, broken files)
  decoded.safetensors     PIL's `Image.open(p).convert("RGB")` of every decodable generated image
                          (u8, [H, W, 3]), and the small full-tensor references (f32)
  manifest.json           everything else: per-photo CRC-32 of PIL's decode, of PIL resizes, of
                          the reference preprocessing pipelines (u8 before normalisation and the
                          f32 CHW tensor), torchvision CenterCrop cases, PIL's error messages.

Photos are referenced by file name only; the test reads them from the same directory.
Hashes are zlib.crc32 of the raw little-endian bytes (u8 HWC images, f32 CHW tensors).
"""

import argparse
import io
import json
import math
import os
import re
import struct
import zlib

import cv2
import numpy as np
import open_clip
import PIL
import torch
import torch.nn.functional as F
from PIL import Image, features
from safetensors.numpy import save_file
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Photos that get full f32 tensors stored (one landscape, one portrait).
FULL_TENSOR_PHOTOS = ["000000000009.jpg", "000000000036.jpg"]
# The photo the small generated images are cut from.
SOURCE_PHOTO = "000000000009.jpg"


def crc(a) -> str:
    if isinstance(a, Image.Image):
        a = np.asarray(a)
    return f"{zlib.crc32(np.ascontiguousarray(a).tobytes()) & 0xFFFFFFFF:08x}"


# --------------------------------------------------------------------------------------------
# A minimal PNG writer, for the bit depths and colour types PIL cannot write.
# --------------------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _pack_rows(samples: np.ndarray, bit_depth: int) -> list:
    """samples: [H, W*channels] integer array -> list of packed row bytes (no filter byte)."""
    rows = []
    for r in samples:
        if bit_depth == 16:
            rows.append(r.astype(">u2").tobytes())
        elif bit_depth == 8:
            rows.append(r.astype(np.uint8).tobytes())
        else:
            per = 8 // bit_depth
            vals = list(r.astype(int)) + [0] * ((-len(r)) % per)
            out = bytearray()
            for i in range(0, len(vals), per):
                b = 0
                for v in vals[i:i + per]:
                    b = (b << bit_depth) | v
                out.append(b)
            rows.append(bytes(out))
    return rows


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def write_png(width, height, bit_depth, color_type, samples, plte=None, trns=None, interlace=False) -> bytes:
    """samples: [H, W, channels] array of sample values."""
    channels = samples.shape[2]
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 1 if interlace else 0)
    raw = bytearray()
    if not interlace:
        for row in _pack_rows(samples.reshape(height, width * channels), bit_depth):
            raw += b"\x00" + row
    else:
        for (x0, y0, dx, dy) in ADAM7:
            sub = samples[y0::dy, x0::dx]
            if sub.shape[0] == 0 or sub.shape[1] == 0:
                continue
            for row in _pack_rows(sub.reshape(sub.shape[0], -1), bit_depth):
                raw += b"\x00" + row
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
    if plte is not None:
        out += _chunk(b"PLTE", bytes(plte))
    if trns is not None:
        out += _chunk(b"tRNS", bytes(trns))
    out += _chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + _chunk(b"IEND", b"")
    return out


# --------------------------------------------------------------------------------------------
# Generated images
# --------------------------------------------------------------------------------------------

def jpeg_bytes(im: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, format="JPEG", **kw)
    return b.getvalue()


def png_bytes(im: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, format="PNG", **kw)
    return b.getvalue()


def cv2_jpeg(rgb: np.ndarray, sampling, extra=()) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling, *extra]
    ok, enc = cv2.imencode(".jpg", rgb[:, :, ::-1].copy(), params)
    assert ok
    return enc.tobytes()


def make_generated(images_dir: str) -> dict:
    """Returns {file name: bytes}."""
    photo = Image.open(os.path.join(images_dir, SOURCE_PHOTO)).convert("RGB")
    src = photo.crop((200, 150, 261, 195))  # 61 x 45: odd, several MCUs, partial edge blocks
    a = np.asarray(src)
    rng = np.random.default_rng(1234)
    g = {}

    # JPEG: subsampling, progressive, restart markers, gray, CMYK, YCCK, EXIF, damaged data.
    g["jpeg_444.jpg"] = jpeg_bytes(src, quality=90, subsampling=0)
    g["jpeg_422.jpg"] = jpeg_bytes(src, quality=90, subsampling=1)
    g["jpeg_420.jpg"] = jpeg_bytes(src, quality=90, subsampling=2)
    g["jpeg_420_prog.jpg"] = jpeg_bytes(src, quality=90, subsampling=2, progressive=True)
    g["jpeg_444_prog.jpg"] = jpeg_bytes(src, quality=75, subsampling=0, progressive=True)
    g["jpeg_440.jpg"] = cv2_jpeg(a, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440)
    g["jpeg_411.jpg"] = cv2_jpeg(a, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411)
    g["jpeg_420_rst.jpg"] = cv2_jpeg(a, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
                                     (cv2.IMWRITE_JPEG_RST_INTERVAL, 2))
    g["jpeg_gray.jpg"] = jpeg_bytes(src.convert("L"), quality=90)
    g["jpeg_gray_prog.jpg"] = jpeg_bytes(src.convert("L"), quality=90, progressive=True)
    f = a.astype(np.int32)
    k = 255 - f.max(axis=2)
    cmy = 255 - f - k[..., None]
    cmyk = np.concatenate([cmy, k[..., None]], axis=2).astype(np.uint8)
    cmyk_jpeg = jpeg_bytes(Image.fromarray(cmyk, mode="CMYK"), quality=90)
    g["jpeg_cmyk.jpg"] = cmyk_jpeg
    # YCCK: the same file with the Adobe marker's transform flag set to 2, so libjpeg runs its
    # YCC -> RGB conversion on the first three components (PIL cannot write YCCK).
    i = cmyk_jpeg.index(b"\xff\xee\x00\x0eAdobe")
    ycck = bytearray(cmyk_jpeg)
    assert ycck[i + 4:i + 9] == b"Adobe"
    ycck[i + 15] = 2
    g["jpeg_ycck.jpg"] = bytes(ycck)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display; PIL's open/convert ignores it
    g["jpeg_exif_orient6.jpg"] = jpeg_bytes(src, quality=90, exif=exif.tobytes())
    base = g["jpeg_420.jpg"]
    sos = base.index(b"\xff\xda")
    mid = (sos + len(base)) // 2
    corrupt = bytearray(base)
    corrupt[mid] ^= 0x5A
    g["jpeg_corrupt_data.jpg"] = bytes(corrupt)  # PIL decodes it (libjpeg only warns)
    g["jpeg_trailing_garbage.jpg"] = base + b"garbage after EOI \x00\x01\x02"
    g["jpeg_1x1.jpg"] = jpeg_bytes(Image.new("RGB", (1, 1), (200, 30, 90)), quality=95)
    g["jpeg_large_q100.jpg"] = jpeg_bytes(photo.crop((0, 0, 160, 120)), quality=100, subsampling=2)

    # PNG: every colour type and bit depth PIL reads.
    g["png_rgb8.png"] = png_bytes(src)
    g["png_rgb8_trns.png"] = png_bytes(src, transparency=tuple(int(v) for v in a[0, 0]))
    alpha = (np.arange(61)[None, :] * 4 + np.arange(45)[:, None] * 2) % 256
    rgba = np.concatenate([a, alpha[..., None].astype(np.uint8)], axis=2)
    g["png_rgba8.png"] = png_bytes(Image.fromarray(rgba, mode="RGBA"))
    g["png_l8.png"] = png_bytes(src.convert("L"))
    la = np.stack([np.asarray(src.convert("L")), alpha.astype(np.uint8)], axis=2)
    g["png_la8.png"] = png_bytes(Image.fromarray(la, mode="LA"))
    g["png_1bit.png"] = png_bytes(src.convert("1"))
    gray = np.asarray(src.convert("L")).astype(int)
    g["png_l2.png"] = write_png(61, 45, 2, 0, (gray >> 6)[..., None])
    g["png_l4.png"] = write_png(61, 45, 4, 0, (gray >> 4)[..., None])
    # 16-bit gray: PIL opens it as I;16 and convert("RGB") saturates at 255. Values span 0..1000.
    g16 = (gray * 1000 // 255 + rng.integers(0, 3, gray.shape)).astype(np.uint16)
    g["png_l16.png"] = write_png(61, 45, 16, 0, g16[..., None])
    w16 = (a.astype(np.uint32) * 257 + rng.integers(0, 257, a.shape)).astype(np.uint16)
    a16 = (alpha * 257 + 100).astype(np.uint16)
    g["png_la16.png"] = write_png(61, 45, 16, 4, np.stack([w16[..., 0], a16], axis=2))
    g["png_rgb16.png"] = write_png(61, 45, 16, 2, w16)
    g["png_rgba16.png"] = write_png(61, 45, 16, 6, np.concatenate([w16, a16[..., None]], axis=2))
    q = src.quantize(colors=64)
    g["png_p8_trns.png"] = png_bytes(q, transparency=bytes(range(0, 256, 4)))
    g["png_p4.png"] = png_bytes(src.quantize(colors=16), bits=4)
    g["png_p1.png"] = png_bytes(src.quantize(colors=2), bits=1)
    idx = (gray[:8, :8] % 4).astype(np.uint8)  # indices 2 and 3 lie past the 2-entry palette
    g["png_pal_short.png"] = write_png(8, 8, 8, 3, idx[..., None], plte=[10, 20, 30, 40, 50, 60])
    g["png_rgb8_interlaced.png"] = write_png(61, 45, 8, 2, a, interlace=True)
    g["png_l4_interlaced.png"] = write_png(61, 45, 4, 0, (gray >> 4)[..., None], interlace=True)
    g["png_1x1.png"] = png_bytes(Image.new("RGB", (1, 1), (1, 2, 3)))

    # Broken files: every one must fail to decode (PIL raises on all of them).
    g["bad_empty.jpg"] = b""
    g["bad_garbage.jpg"] = rng.integers(0, 256, 1000).astype(np.uint8).tobytes()
    g["bad_text.png"] = b"this is not an image\n"
    g["bad_truncated_half.jpg"] = base[: len(base) // 2]
    g["bad_truncated_prog.jpg"] = g["jpeg_420_prog.jpg"][: int(len(g["jpeg_420_prog.jpg"]) * 0.7)]
    g["bad_missing_eoi.jpg"] = base[:-2]
    g["bad_header_only.jpg"] = base[:sos]
    g["bad_truncated.png"] = g["png_rgb8.png"][: len(g["png_rgb8.png"]) * 6 // 10]
    g["bad_header_only.png"] = g["png_rgb8.png"][:33]
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    g["bad_bomb.png"] = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
                         + _chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + _chunk(b"IEND", b""))
    one = bytearray(g["jpeg_1x1.jpg"])
    sof = one.index(b"\xff\xc0")
    one[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    g["bad_bomb.jpg"] = bytes(one)
    return g


# --------------------------------------------------------------------------------------------
# Reference pipelines
# --------------------------------------------------------------------------------------------

def numpy_normalize_chw(im: Image.Image, mean, std) -> np.ndarray:
    """CCD's TorchvisionNormalize (numpy f64, stored in f32), then HWC -> CHW."""
    arr = np.asarray(im)
    out = np.empty_like(arr, np.float32)
    for c in range(3):
        out[..., c] = (arr[..., c] / 255.0 - mean[c]) / std[c]
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def torch_normalize_chw(im: Image.Image, mean, std) -> np.ndarray:
    t = T.Normalize(mean, std)(T.ToTensor()(im))
    return t.numpy()


def pipelines():
    """name -> (transform spec for the Rust side, function PIL RGB -> (u8 image, f32 CHW))."""
    def clip(size):
        tf = open_clip.image_transform(size, is_train=False)
        geo = T.Compose(tf.transforms[:2])  # Resize(size, bicubic), CenterCrop(size)
        return lambda im: (geo(im), tf(im).numpy())

    def square(size, interp, numpy_norm):
        mode = InterpolationMode.BILINEAR if interp == "bilinear" else InterpolationMode.BICUBIC
        rs = T.Resize((size, size), interpolation=mode)
        if numpy_norm:
            return lambda im: (rs(im), numpy_normalize_chw(rs(im), IMAGENET_MEAN, IMAGENET_STD))
        return lambda im: (rs(im), torch_normalize_chw(rs(im), IMAGENET_MEAN, IMAGENET_STD))

    def tagclip(patch):
        # TagCLIP classify.py: _transform_resize(ceil(H/16)*16, ceil(W/16)*16) on the PIL image.
        def run(im):
            h = int(np.ceil(int(im.height) / patch) * patch)
            w = int(np.ceil(int(im.width) / patch) * patch)
            rs = T.Resize((h, w), interpolation=InterpolationMode.BICUBIC)
            return rs(im), torch_normalize_chw(rs(im), CLIP_MEAN, CLIP_STD)
        return run

    return {
        "clip_224": ({"kind": "clip_center_crop", "size": 224}, clip(224)),
        "ccd_640": ({"kind": "square_resize", "size": 640, "interp": "bilinear", "norm": "imagenet_numpy"},
                    square(640, "bilinear", True)),
        "ccd_448": ({"kind": "square_resize", "size": 448, "interp": "bilinear", "norm": "imagenet_numpy"},
                    square(448, "bilinear", True)),
        "square_224_bicubic_torch": ({"kind": "square_resize", "size": 224, "interp": "bicubic", "norm": "imagenet"},
                                     square(224, "bicubic", False)),
        "tagclip_16": ({"kind": "patch_multiple", "patch": 16, "interp": "bicubic", "norm": "clip"}, tagclip(16)),
    }


SMALL_PIPELINES = {
    # name -> (spec, function) evaluated on FULL_TENSOR_PHOTOS, full f32 tensors stored
    "clip_64": ({"kind": "clip_center_crop", "size": 64}, None),
    "ccd_48": ({"kind": "square_resize", "size": 48, "interp": "bilinear", "norm": "imagenet_numpy"}, None),
    "square_40_nearest_clip": ({"kind": "square_resize", "size": 40, "interp": "nearest", "norm": "clip"}, None),
}


def small_pipeline_fn(name):
    if name == "clip_64":
        tf = open_clip.image_transform(64, is_train=False)
        return lambda im: tf(im).numpy()
    if name == "ccd_48":
        rs = T.Resize((48, 48))  # torchvision default: bilinear
        return lambda im: numpy_normalize_chw(rs(im), IMAGENET_MEAN, IMAGENET_STD)
    if name == "square_40_nearest_clip":
        rs = T.Resize((40, 40), interpolation=InterpolationMode.NEAREST)
        return lambda im: torch_normalize_chw(rs(im), CLIP_MEAN, CLIP_STD)
    raise KeyError(name)


RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC}


def resize_targets(w, h):
    c16 = lambda v: int(math.ceil(v / 16) * 16)
    return [(224, 224), (97, 131), (w + 1, h - 3), (c16(w), c16(h)), (w, 333), (250, h), (1000, 751)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, help="coco128 train2017 directory")
    ap.add_argument("--out", required=True, help="fixture directory to (re)write")
    args = ap.parse_args()
    os.makedirs(os.path.join(args.out, "generated"), exist_ok=True)

    manifest = {
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }
    tensors = {}

    # Generated images and PIL's decode of them.
    gen = make_generated(args.images)
    entries = []
    for name in sorted(gen):
        data = gen[name]
        with open(os.path.join(args.out, "generated", name), "wb") as fh:
            fh.write(data)
        e = {"file": name}
        try:
            im = Image.open(io.BytesIO(data))
            e["pil_mode"] = im.mode
            rgb = im.convert("RGB")
            e["expect"] = "ok"
            e["width"], e["height"] = rgb.size
            tensors[f"decoded/{name}"] = np.ascontiguousarray(np.asarray(rgb))
        except Exception as ex:  # noqa: BLE001 - every failure is recorded
            e["expect"] = "error"
            e["pil_error"] = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "<bytes>", f"{type(ex).__name__}: {ex}")
            assert name.startswith("bad_"), (name, ex)
        if name.startswith("bad_"):
            assert e["expect"] == "error", name
        entries.append(e)
    manifest["generated"] = entries

    # Resizes and center crops of a generated image.
    small = Image.open(io.BytesIO(gen["jpeg_444.jpg"])).convert("RGB")
    one = Image.open(io.BytesIO(gen["png_1x1.png"])).convert("RGB")
    small_resizes = []
    for fname, im in (("jpeg_444.jpg", small), ("png_1x1.png", one)):
        for interp, r in RESAMPLE.items():
            for (w, h) in [(224, 224), (7, 5), (1, 1), (62, 44), (3, 200)]:
                small_resizes.append({"file": fname, "interp": interp, "w": w, "h": h, "crc": crc(im.resize((w, h), r))})
    manifest["small_resizes"] = small_resizes
    crops = []
    for (cw, ch) in [(40, 40), (44, 44), (60, 44), (59, 43), (80, 30), (100, 100), (61, 50), (30, 46)]:
        out = T.CenterCrop((ch, cw))(small)
        assert out.size == (cw, ch)
        crops.append({"file": "jpeg_444.jpg", "w": cw, "h": ch, "crc": crc(out)})
    manifest["center_crops"] = crops
    manifest["shorter_side"] = [
        {"w": w, "h": h, "size": s, "out": list(T.Resize(s)(Image.new("RGB", (w, h))).size)}
        for (w, h, s) in [(640, 480, 224), (480, 640, 224), (500, 375, 224), (333, 500, 224),
                          (641, 427, 224), (100, 30, 224), (224, 224, 224), (7, 1000, 336), (1000, 7, 336)]
    ]

    # Photos: decode, resizes, pipelines.
    photos = sorted(f for f in os.listdir(args.images) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    pipes = pipelines()
    manifest["pipelines"] = {name: spec for name, (spec, _) in pipes.items()}
    manifest["small_pipelines"] = {name: spec for name, (spec, _) in SMALL_PIPELINES.items()}
    photo_entries = []
    for fname in photos:
        rgb = Image.open(os.path.join(args.images, fname)).convert("RGB")
        w, h = rgb.size
        e = {"file": fname, "width": w, "height": h, "crc": crc(rgb), "resize": [], "pipelines": {}}
        for interp, r in RESAMPLE.items():
            for (tw, th) in resize_targets(w, h):
                e["resize"].append([interp, tw, th, crc(rgb.resize((tw, th), r))])
        for name, (_, fn) in pipes.items():
            u8, f32 = fn(rgb)
            assert f32.dtype == np.float32 and f32.shape[0] == 3
            e["pipelines"][name] = {"h": int(f32.shape[1]), "w": int(f32.shape[2]),
                                    "u8_crc": crc(u8), "f32_crc": crc(f32)}
        if fname in FULL_TENSOR_PHOTOS:
            for name in SMALL_PIPELINES:
                tensors[f"pipeline/{name}/{fname}"] = small_pipeline_fn(name)(rgb)
        photo_entries.append(e)
        print(fname, flush=True)
    manifest["photos"] = photo_entries
    manifest["full_tensor_photos"] = FULL_TENSOR_PHOTOS
    # TagCLIP's full tensor on a small generated image (61x45 -> 64x48).
    tensors["pipeline/tagclip_16/jpeg_444.jpg"] = pipes["tagclip_16"][1](small)[1]

    # torch.nn.functional.interpolate on f32 CHW tensors (TagCLIP / CCD crops of normalised images).
    g = torch.Generator().manual_seed(7)
    cases = []
    for i, (c, h, w, oh, ow, mode) in enumerate([
        (3, 20, 20, 37, 23, "bilinear"), (3, 30, 40, 7, 11, "bilinear"), (3, 13, 9, 64, 48, "bilinear"),
        (2, 8, 12, 8, 12, "bilinear"), (1, 5, 7, 14, 14, "nearest"), (1, 12, 9, 14, 14, "nearest"),
        (2, 4, 4, 8, 8, "nearest"), (1, 20, 16, 14, 14, "nearest"),
    ]):
        x = torch.randn(1, c, h, w, generator=g)
        if mode == "bilinear":
            y = F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False)
        else:
            y = F.interpolate(x, size=(oh, ow), mode="nearest")
        tensors[f"interp/{i}/in"] = x[0].numpy().copy()
        tensors[f"interp/{i}/out"] = y[0].numpy().copy()
        cases.append({"id": i, "mode": mode, "c": c, "h": h, "w": w, "out_h": oh, "out_w": ow})
    manifest["interpolate"] = cases

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(args.out, "decoded.safetensors"))
    with open(os.path.join(args.out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=0, sort_keys=True)
        fh.write("\n")


if __name__ == "__main__":
    main()
