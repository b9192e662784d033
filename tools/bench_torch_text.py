"""open_clip's encode_text on TagCLIP's class prompts, to set beside `labelfree bench --text`.

Reads the prompts and the batch size from the JSON that `labelfree bench --text ARCH --json F`
writes (TagCLIP's 80 COCO names and 23 background words x its 85 templates, class-major), builds
the same architecture with random weights, tokenises with open_clip's tokenizer (77 ids per
prompt, as open_clip always encodes) and times encode_text over every prompt in batches of that
size: one untimed warm-up batch, then one timed pass over all of them, fp32, --threads intra-op
threads.
usage: python tools/bench_torch_text.py --prompts bench_text.json [--threads 2] [--json out.json]
"""
import argparse
import json
import time

import open_clip
import torch

ap = argparse.ArgumentParser()
ap.add_argument("--prompts", required=True, help="the --json of `labelfree bench --text ARCH`")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--json", help="write the timings here")
args = ap.parse_args()
torch.set_num_threads(args.threads)
bench = json.load(open(args.prompts))
prompts, batch, arch = bench["prompt_list"], bench["batch"], bench["arch"]
model = open_clip.create_model(arch).eval()
tokenizer = open_clip.get_tokenizer(arch)
t0 = time.perf_counter()
tokens = tokenizer(prompts)
tokenize_s = time.perf_counter() - t0
with torch.inference_mode():
    model.encode_text(tokens[:batch])
    t0 = time.perf_counter()
    for i in range(0, len(prompts), batch):
        model.encode_text(tokens[i : i + batch])
    encode_s = time.perf_counter() - t0
out = {
    "torch": torch.__version__,
    "open_clip": open_clip.__version__,
    "arch": arch,
    "threads": torch.get_num_threads(),
    "prompts": len(prompts),
    "batch": batch,
    "context": tokens.shape[1],
    "tokenize_s": tokenize_s,
    "encode_s": encode_s,
}
print(
    f"open_clip {arch} encode_text, {len(prompts)} prompts, batches of {batch}, {out['threads']} threads: "
    f"tokenise {tokenize_s:.2f} s, encode {encode_s:.2f} s ({1e3 * encode_s / len(prompts):.2f} ms/prompt)"
)
if args.json:
    json.dump(out, open(args.json, "w"), indent=1)
