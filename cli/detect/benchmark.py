"""Detector benchmark: ``python -m cli.detect.benchmark [--faces DIR] [--runs 20] [--threads N]``.

Prints:
- speed of the MediaPipe port on CPU: detection + 468-point mesh for one face
  (``assets/astronaut.png``, 512 px), median and min milliseconds over ``--runs`` runs, as
  MediaPipe runs it (whole image, one mesh pass) and with morph's defaults (pyramid tiles for
  large photos, one more mesh pass from the mesh's own ROI);
- on a folder of photos with 68-point ``.pts`` ground truth (default ``../shared/data/faces``,
  evaluation only): faces found and the bbox-NME of the 68 points (MediaPipe: derived from the
  mesh, see :mod:`cli.detect.mediapipe.ibug68`; "mp-as-is" = MediaPipe's pipeline,
  "mp-default" = morph's) per image, next to dlib's when it is installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import torch

from losses import landmark_nme

from ..defaults import ASSETS
from ..files import load_image, read_landmarks
from . import REFINE
from .mediapipe import MediaPipeDetector

ROOT = Path(__file__).resolve().parents[2]


def timed(fn, runs: int) -> tuple[float, float]:
    """(median, min) milliseconds of ``fn()`` over ``runs`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def speed(runs: int) -> None:
    image = load_image(ASSETS / "astronaut.png")
    for label, detector in (("as MediaPipe (whole image)", MediaPipeDetector(pyramid=False)),
                            ("morph's default", MediaPipeDetector(pyramid=True, refine=REFINE))):
        found = len(detector.detect(image)[0])
        median, best = timed(lambda d=detector: d.detect(image), runs)
        windows = len(detector.windows(*image.shape[1:])[1])
        print(f"speed  astronaut 512x512, {label:27s} {windows:2d} window(s), {found} face: "
              f"median {median:6.1f} ms, min {best:6.1f} ms per face")
    mesh = MediaPipeDetector(pyramid=False).mesh
    crops = torch.rand(8, 3, 192, 192)
    median, best = timed(lambda: mesh.raw(crops), max(3, runs // 4))
    print(f"speed  mesh network alone, batch of 8: median {median / 8:6.1f} ms, min {best / 8:6.1f} ms per face")


def accuracy(folder: Path) -> None:
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png") and p.with_suffix(".pts").exists())
    if not images:
        print(f"accuracy: no images with .pts ground truth in {folder}")
        return
    detectors = {"mp-as-is": MediaPipeDetector().detect, "mp-default": MediaPipeDetector(refine=REFINE).detect}
    if importlib.util.find_spec("dlib") is not None:
        from .dlib import detect_faces as dlib_faces
        detectors["dlib"] = lambda image: [dlib_faces(image)]
    print(f"\naccuracy on {len(images)} images in {folder} (bbox-NME of the largest face's 68 points, %)")
    print(f"{'image':18s}" + "".join(f"{name:>12s} found" for name in detectors))
    totals = {name: [] for name in detectors}
    for path in images:
        image, truth = load_image(path), read_landmarks(path.with_suffix(".pts"))
        row = f"{path.name:18s}"
        for name, detect in detectors.items():
            faces = detect(image)[0]
            if faces:
                nme = 100 * float(landmark_nme(faces[0].landmarks68, truth, "bbox"))
                totals[name].append(nme)
                row += f"{nme:12.2f} {len(faces):5d}"
            else:
                row += f"{'missed':>12s} {0:5d}"
        print(row)
    for name, values in totals.items():
        mean = statistics.mean(values) if values else float("nan")
        print(f"{name:10s} found a face in {len(values)}/{len(images)} images, mean bbox-NME {mean:.2f} % on those")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "data" / "faces")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    speed(args.runs)
    if args.faces.is_dir():
        accuracy(args.faces)
    else:
        print(f"accuracy: {args.faces} not found (skipped)")


if __name__ == "__main__":
    main()
