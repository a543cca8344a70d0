"""Training cost per input size: images/s of a full fine-tuning step on this machine's CPU.

    python bench/train_speed.py [--sizes 48 64 96 128 160 224] [--alpha 0.35] [--steps 8]

Random pixels, batch 64, every layer trainable (phase 2 of ``convert train``); the first two
steps (graph tracing) are not timed. Pair it with the accuracy of runs at each size (README).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from convert.model import build_model


def images_per_second(size: int, alpha: float, backbone: str, steps: int, batch: int) -> float:
    model, _ = build_model(backbone, "none", size, alpha)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, 48, 48, 1)).astype(np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 7, batch), 7)
    for _ in range(2):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 64, 96, 128, 160, 224])
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    print(f"{args.backbone} alpha {args.alpha}, batch {args.batch}, {os.cpu_count()} CPUs")
    print(f"{'size':>6}{'img/s':>10}{'min/epoch (28,709)':>22}")
    for size in args.sizes:
        rate = images_per_second(size, args.alpha, args.backbone, args.steps, args.batch)
        print(f"{size:>6}{rate:>10.1f}{28709 / rate / 60:>22.1f}", flush=True)


if __name__ == "__main__":
    main()
