"""A teacher for distillation, trained where a GPU and PyTorch are (not part of the product).

The edge network (MobileNetV2 alpha 0.35) sits on one FER2013/FER+ trade-off curve whatever
its schedule (model card, "Choosing the operating point"); a stronger network's predictions
can teach it what one label cannot. Training one from scratch takes a GPU: this script is
what a lent GPU machine runs, on faces packed by ``python -m convert pack``, and what it
brings back is only predictions, which ``convert train --teacher FILE.npz`` learns from on
the CPU. Nothing in the product or the tests needs PyTorch.

What it trains, and why:

- **Cross-fitting.** ``--folds K`` networks, each on K-1 folds of the training faces,
  each predicting its held-out fold: every training face gets a prediction from a network
  that never saw it. A network's predictions on its own training faces are nearly its
  targets (it fits them), which would teach the student nothing beyond the labels. The val
  prediction is the mean of the K networks (an ensemble); val is never trained on.
- **Two heads**, one per labelling: FER2013's label (cross-entropy, label smoothing 0.1) and
  the FER+ vote distribution over the seven emotions (soft cross-entropy; faces without
  votes are masked). The student's mix of the two is chosen on the CPU, not here.
- **A ResNet-18 for 48x48 faces** (3x3 stem, no max-pool; widths 64-512): the residual
  networks that reach 72-73% on FER2013 from scratch are of this size. Augmented on the GPU:
  flip, rotation +-15 deg, scale 0.85-1.15, shift +-10%, brightness/contrast, random erasing.
- **A time budget** (``--budget-s``): the cosine schedule is planned for ``--epochs``, and
  shortened once, after two epochs, to what the budget allows at the measured speed, so a
  lease of minutes ends with predictions, not with a killed run.

Usage on the GPU machine (the K folds run at once, one process each, sharing the GPU)::

    python3 scripts/teacher.py --data runs/teacher/fer2013.npz --out "$OUT" --budget-s 330

writes ``teacher.npz`` (``train_keys``, ``train_fer2013``, ``train_ferplus``: out-of-fold
probabilities, mirror-averaged; the same for ``val_``) and ``teacher.json`` (val accuracy of
the ensemble under both labellings, per head and per mix, and each fold's log).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from convert.labels import (
    accuracies,
    ferplus_distribution,
    labellings,
    one_hot,
)
from convert.pack import unpack, write_predictions

HEADS = ("fer2013", "ferplus")


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Sequential()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


class Teacher(nn.Module):
    """ResNet-18 for 48x48 gray faces, with one 7-way head per labelling."""

    def __init__(self, width: int = 64, dropout: float = 0.3) -> None:
        super().__init__()
        widths = [width, width * 2, width * 4, width * 8]
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        layers, cin = [], width
        for i, cout in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({head: nn.Linear(cin, 7) for head in HEADS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.layers(self.stem(x)).mean(dim=(2, 3))
        features = self.dropout(features)
        return {head: layer(features) for head, layer in self.heads.items()}


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 48, 48) -> float (N, 1, 48, 48), centred."""
    return (images.float().unsqueeze(1) / 255.0 - 0.5) / 0.25


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Batched on the device: flip, rotation, scale, shift (one affine warp), brightness and
    contrast, random erasing."""
    n, device = x.shape[0], x.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, device=device, generator=generator) * (high - low) + low

    angle = uniform(-15, 15) * math.pi / 180
    scale = uniform(0.85, 1.15)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, uniform(-0.1, 0.1) * 2], dim=1),
            torch.stack([sin * flip, cos, uniform(-0.1, 0.1) * 2], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    x = x * uniform(0.7, 1.3)[:, None, None, None] + uniform(-0.4, 0.4)[:, None, None, None]
    # Random erasing: a rectangle of 2-20% of the face, on half of the faces.
    side = (uniform(0.02, 0.2).sqrt() * 48).long().clamp(min=1)
    top = (uniform(0, 1) * (48 - side)).long()
    left = (uniform(0, 1) * (48 - side)).long()
    rows = torch.arange(48, device=device)
    inside = (
        (rows[None, :, None] >= top[:, None, None])
        & (rows[None, :, None] < (top + side)[:, None, None])
        & (rows[None, None, :] >= left[:, None, None])
        & (rows[None, None, :] < (left + side)[:, None, None])
        & (uniform(0, 1) < 0.5)[:, None, None]
    )
    return x.masked_fill(inside[:, None], 0.0)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1)


@torch.no_grad()
def predict(model: Teacher, images: torch.Tensor, batch: int) -> dict[str, np.ndarray]:
    """Mirror-averaged probabilities of both heads."""
    model.eval()
    out: dict[str, list[torch.Tensor]] = {head: [] for head in HEADS}
    for start in range(0, len(images), batch):
        x = normalise(images[start : start + batch])
        with autocast(x.device):
            a, b = model(x), model(x.flip(3))
        for head in HEADS:
            p = (F.softmax(a[head].float(), 1) + F.softmax(b[head].float(), 1)) / 2
            out[head].append(p.cpu())
    return {head: torch.cat(parts).numpy() for head, parts in out.items()}


def autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def limited(split: dict[str, np.ndarray], limit: int) -> dict[str, np.ndarray]:
    """``limit`` faces spread over the split (its faces are sorted by class), for a smoke test."""
    if not limit or limit >= len(split["keys"]):
        return split
    keep = np.linspace(0, len(split["keys"]) - 1, limit).astype(np.int64)
    return {name: values[keep] for name, values in split.items()}


def fold_of(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each training face's fold, stratified by FER2013 label."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), np.int64)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        fold[members] = np.arange(len(members)) % folds
    return fold


def train_fold(args: argparse.Namespace) -> None:
    """One network: trained on every fold but ``args.fold``, predicting that fold and val."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True  # fixed shapes: the fastest kernels, found once
    torch.manual_seed(args.seed + args.fold)
    generator = torch.Generator(device=device).manual_seed(args.seed + args.fold)
    train, val = unpack(args.data, "train"), unpack(args.data, "val")
    train, val = limited(train, args.limit), limited(val, args.limit)
    fold = fold_of(train["labels"], args.folds, args.seed)
    fit = fold != args.fold
    ferplus, has_votes = ferplus_distribution(train["votes"])
    images = torch.from_numpy(train["images"][fit]).to(device)
    targets = {
        "fer2013": torch.from_numpy(one_hot(train["labels"][fit]) * 0.9 + 0.1 / 7).to(device),
        "ferplus": torch.from_numpy(ferplus[fit]).to(device),
    }
    voted = torch.from_numpy(has_votes[fit].astype(np.float32)).to(device)
    val_images = torch.from_numpy(val["images"].copy()).to(device)  # writable
    truth = labellings(val["labels"], val["votes"])

    model = Teacher(args.width).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps = len(images) // args.batch
    epochs, started, log = args.epochs, time.monotonic(), []
    for epoch in range(epochs):
        if epoch == 2 and args.budget_s:  # the speed is known: fit the schedule to the budget
            per_epoch = (time.monotonic() - started) / 2
            epochs = max(3, min(epochs, int((args.budget_s - 60) / per_epoch)))
        if epoch >= epochs:
            break
        model.train()
        order = torch.randperm(len(images), device=device, generator=generator)
        total = torch.zeros((), device=device)
        for step in range(steps):
            progress = (epoch + step / steps) / epochs
            warm = min(1.0, (epoch * steps + step + 1) / (2 * steps))
            lr = args.lr * warm * 0.5 * (1 + math.cos(math.pi * progress))
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = order[step * args.batch : (step + 1) * args.batch]
            x = augment(normalise(images[batch]), generator).contiguous(
                memory_format=torch.channels_last
            )
            with autocast(device):
                logits = model(x)
            loss = soft_cross_entropy(logits["fer2013"], targets["fer2013"][batch]).mean()
            votes = voted[batch]
            loss = loss + (
                soft_cross_entropy(logits["ferplus"], targets["ferplus"][batch]) * votes
            ).sum() / votes.sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()  # no host sync per step
        entry = {"epoch": epoch + 1, "loss": round(float(total) / max(steps, 1), 4), "lr": lr}
        if (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            probs = predict(model, val_images, 1024)
            entry.update(
                {f"val_{head}_head": accuracies(truth, probs[head].argmax(1)) for head in HEADS}
            )
        entry["elapsed_s"] = round(time.monotonic() - started, 1)
        log.append(entry)
        print(f"fold {args.fold}: {json.dumps(entry)}", flush=True)

    held_out = torch.from_numpy(train["images"][~fit]).to(device)
    train_probs, val_probs = predict(model, held_out, 1024), predict(model, val_images, 1024)
    np.savez(
        args.out / f"fold{args.fold}.npz",
        train_index=np.flatnonzero(~fit),
        **{f"train_{head}": train_probs[head] for head in HEADS},
        **{f"val_{head}": val_probs[head] for head in HEADS},
        log=np.array(json.dumps(log)),
    )


def merge(args: argparse.Namespace) -> None:
    """The folds' predictions into ``teacher.npz`` and the ensemble's val accuracy."""
    train, val = unpack(args.data, "train"), unpack(args.data, "val")
    train, val = limited(train, args.limit), limited(val, args.limit)
    out = {f"train_{head}": np.zeros((len(train["keys"]), 7), np.float32) for head in HEADS}
    out.update({f"val_{head}": np.zeros((len(val["keys"]), 7), np.float32) for head in HEADS})
    logs = {}
    for k in range(args.folds):
        with np.load(args.out / f"fold{k}.npz") as fold:
            for head in HEADS:
                out[f"train_{head}"][fold["train_index"]] = fold[f"train_{head}"]
                out[f"val_{head}"] += fold[f"val_{head}"] / args.folds
            logs[f"fold{k}"] = json.loads(str(fold["log"]))
    summary: dict[str, object] = {"folds": args.folds, "logs": logs}
    for split, data in (("train (out of fold)", train), ("val", val)):
        truth = labellings(data["labels"], data["votes"])
        prefix = "train" if split.startswith("train") else "val"
        for weight in (0.0, 0.25, 0.5, 0.75, 1.0):
            probs = (1 - weight) * out[f"{prefix}_fer2013"] + weight * out[f"{prefix}_ferplus"]
            summary[f"{split}, ferplus weight {weight}"] = accuracies(truth, probs.argmax(1))
    write_predictions(
        args.out / "teacher.npz",
        {"train": train["keys"], "val": val["keys"]},
        {split: {head: out[f"{split}_{head}"] for head in HEADS} for split in ("train", "val")},
    )
    (args.out / "teacher.json").write_text(json.dumps(summary, indent=1))
    for key, value in summary.items():
        if key not in ("logs",):
            print(f"{key}: {value}", flush=True)
    for k in range(args.folds):
        (args.out / f"fold{k}.npz").unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="from python -m convert pack")
    parser.add_argument("--out", type=Path, required=True, help="a folder")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--fold", type=int, help="train this fold only (the others run apart)")
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--budget-s", type=float, default=0, help="wall time for training")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--limit", type=int, default=0, help="first N faces only (a smoke test)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.fold is not None:
        train_fold(args)
        return
    children = [
        subprocess.Popen(
            [sys.executable, __file__, *sys.argv[1:], "--fold", str(k)],
            env={**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.folds))},
        )
        for k in range(args.folds)
    ]
    if any([child.wait() != 0 for child in children]):  # every child waited for
        sys.exit("teacher: a fold failed (its output is above)")
    merge(args)


if __name__ == "__main__":
    main()
