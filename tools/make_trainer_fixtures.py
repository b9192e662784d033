#!/usr/bin/env python3
"""Fixtures for the ResNet trainer (tests/trainer.rs): torch autograd in float64 as the truth.

A torchvision-architecture ResNet (Bottleneck blocks, v1.5) with CCD's CAM head (1x1 conv with
bias, positive part times alpha, global average pool) or a linear head; batch norm parameters
and running statistics perturbed. One training step's loss is CCD's: the weighted BCE of view
1 against soft targets plus the consistency BCE of view 2 against view 1's detached sigmoid.
Stored: the weights (torchvision names + head.*), both inputs, targets, per-sample weights,
logits, losses, every parameter gradient, the running statistics after the two training
forwards, eval-mode logits, and the losses of 10 Adam steps (backbone lr, head lr x10).

    make_trainer_fixtures.py --out tests/fixtures/trainer            # tiny (committed)
    make_trainer_fixtures.py --full --out $LABELFREE_R50_DIR          # ResNet-50 at 64x64
"""
import argparse
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision.models.resnet import Bottleneck


class Net(nn.Module):
    def __init__(self, width, layers, classes, head, alpha):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = width
        for i, n in enumerate(layers):
            planes = width << i
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                s = stride if j == 0 else 1
                down = None
                if j == 0 and (s != 1 or inplanes != planes * 4):
                    down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, s, bias=False),
                                         nn.BatchNorm2d(planes * 4))
                blocks.append(Bottleneck(inplanes, planes, s, down))
                inplanes = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.head_kind, self.alpha = head, alpha
        self.head = nn.Conv2d(inplanes, classes, 1) if head == "cam" else nn.Linear(inplanes, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.head_kind == "cam":
            cam = self.head(x)
            cam = torch.where(cam > 0, cam * self.alpha, cam)
            return cam.mean(dim=(2, 3))
        return self.head(x.mean(dim=(2, 3)))


def perturb_bn(model, g, small_last_gamma):
    """Random batch norm parameters and running statistics. With `small_last_gamma` the last
    batch norm of each bottleneck gets gamma in [0.1, 0.3] (as trained ResNets have; with
    gamma ~ 1 in all 16 blocks the deep random net's f32 gradients lose most of their digits,
    torch's own included)."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                if small_last_gamma and name.endswith("bn3"):
                    m.weight.copy_(torch.rand(c, generator=g) * 0.2 + 0.1)
                else:
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_((torch.rand(c, generator=g) - 0.5) * 0.6)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)


def ccd_loss(model, x1, x2, y, w):
    l1 = model(x1)
    bce = (w[:, None] * F.binary_cross_entropy_with_logits(l1, y, reduction="none")).mean()
    l2 = model(x2)
    cons = F.binary_cross_entropy_with_logits(l2, torch.sigmoid(l1).detach())
    return l1, l2, bce, cons


def adam_losses(model, x1, x2, y, w, lr):
    """The losses of ten Adam steps on one batch (backbone lr, head lr x 10)."""
    model.train()
    head_p = [p for k, p in model.named_parameters() if k.startswith("head.")]
    body = [p for k, p in model.named_parameters() if not k.startswith("head.")]
    opt = torch.optim.Adam([{"params": body, "lr": lr}, {"params": head_p, "lr": lr * 10}])
    losses = []
    for _ in range(10):
        opt.zero_grad()
        _, _, bce, cons = ccd_loss(model, x1, x2, y, w)
        loss = bce + cons
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def make(name, out, width, layers, classes, head, batch, size, seed, lr, full=False):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Net(width, layers, classes, head, 3.0)
    perturb_bn(model, g, full)
    # The truth in float64, from float32-representable starting values.
    sd32 = {k: f32(v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    model = model.double()
    x1 = torch.randn(batch, 3, size, size, generator=g)
    x2 = torch.randn(batch, 3, size, size, generator=g)
    y = torch.rand(batch, classes, generator=g)
    w = torch.tensor([1.0, 0.5, 0.0, 2.0][:batch] + [1.0] * max(0, batch - 4))
    d = lambda t: t.double()

    model.train()
    model.zero_grad()
    l1, l2, bce, cons = ccd_loss(model, d(x1), d(x2), d(y), d(w))
    loss0 = bce.item() + cons.item()
    (bce + cons).backward()
    io = {"x1": x1, "x2": x2, "targets": y, "weights": w, "logits1": f32(l1), "logits2": f32(l2),
          "loss_bce": f32(bce).reshape(1), "loss_cons": f32(cons).reshape(1)}
    for k, p in model.named_parameters():
        io[f"grad.{k}"] = f32(p.grad)
    for k, b in model.named_buffers():
        if not k.endswith("num_batches_tracked"):
            io[f"running.{k}"] = f32(b)
    model.eval()
    with torch.no_grad():
        io["eval_logits"] = f32(model(d(x1)))

    # Ten Adam steps from the same start (weights and running statistics reloaded).
    model.load_state_dict({k: v.double() for k, v in sd32.items()}, strict=False)
    losses = adam_losses(model, d(x1), d(x2), d(y), d(w), lr)
    io["adam_losses"] = torch.tensor(losses, dtype=torch.float32)
    if full:
        # torch's own float32 autograd from the same start: how close f32 can get to the truth.
        m32 = Net(width, layers, classes, head, 3.0)
        m32.load_state_dict(sd32, strict=False)
        m32.train()
        _, _, bce32, cons32 = ccd_loss(m32, x1, x2, y, w)
        (bce32 + cons32).backward()
        for k, p in m32.named_parameters():
            io[f"grad32.{k}"] = f32(p.grad)
        m32.load_state_dict(sd32, strict=False)
        io["adam_losses32"] = torch.tensor(adam_losses(m32, x1, x2, y, w, lr), dtype=torch.float32)
    io["adam_lr"] = torch.tensor([lr], dtype=torch.float32)

    meta = {"format": "torchvision", "arch": f"resnet-w{width}-{'-'.join(map(str, layers))}", "head": head}
    os.makedirs(out, exist_ok=True)
    save_file(sd32, os.path.join(out, f"{name}.safetensors"), metadata=meta)
    save_file({k: f32(v) for k, v in io.items()}, os.path.join(out, f"{name}.io.safetensors"))
    n = sum(v.numel() for v in sd32.values())
    print(f"{name}: {n} weights, loss {loss0:.6f}, adam {losses[0]:.6f} -> {losses[-1]:.6f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--full", action="store_true", help="ResNet-50 (width 64) at 64x64, batch 2, lr 1e-5")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.full:
        make("r50_cam", args.out, 64, [3, 4, 6, 3], 20, "cam", 2, 64, args.seed, 1e-5, full=True)
    else:
        make("tiny_cam", args.out, 4, [1, 2, 2, 1], 5, "cam", 4, 48, args.seed, 3e-4)
        make("tiny_linear", args.out, 2, [1, 1, 1, 1], 3, "linear", 4, 40, args.seed + 1, 1e-3)


if __name__ == "__main__":
    main()
