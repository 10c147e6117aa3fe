"""``morph prepare``: photos with 68 landmarks -> a training dataset (:mod:`cli.training.shards`).

For every photo, the landmarks come from an iBUG ``.pts`` file beside it (read 1-based, as
``morph fit --landmarks`` reads it) or from the detector; the crop is the one ``morph fit``
makes (:mod:`cli.fitting.crop`). A detector's 17 jaw points follow the visible outline, not the
model's 3D jaw, so they get ``DETECTOR_JAW_WEIGHT`` in the sample's landmark weights. A photo that fails is logged (``DATASET/prepare.log`` and the
index's ``failed``) and skipped; a re-run skips the photos already done or failed (unless
told to retry the failed ones).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..detect import detect_landmarks
from ..errors import USER_ERRORS
from ..files import load_image, read_landmarks
from ..fitting.crop import crop_image, make_crop
from .shards import Sample, ShardWriter

DETECTOR_JAW_WEIGHT = 0.2


@dataclass
class PrepareSummary:
    added: int = 0
    skipped: int = 0
    failed: list = field(default_factory=list)  # (source, reason)


def prepare_dataset(photos: list[Path], out: Path, resolution: int = 224, retry_failed: bool = False,
                    on_photo=None, detector: str = "mediapipe") -> PrepareSummary:
    """Add ``photos`` to the dataset folder ``out``; ``on_photo(path, error or None)`` after each."""
    writer = ShardWriter(out, resolution, generator={"command": "prepare", "resolution": resolution})
    summary = PrepareSummary()
    log_path = Path(out) / "prepare.log"
    for photo in photos:
        source = str(photo.resolve())
        if source in writer.done or (source in writer.index["failed"] and not retry_failed):
            summary.skipped += 1
            continue
        try:
            sample = _sample(photo, source, resolution, detector)
        except USER_ERRORS as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            writer.fail(source, reason)
            summary.failed.append((source, reason))
            with open(log_path, "a") as log:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {source}: {reason}\n")
            if on_photo:
                on_photo(photo, reason)
            continue
        writer.add(sample)
        summary.added += 1
        if on_photo:
            on_photo(photo, None)
    writer.flush()
    return summary


def _sample(photo: Path, source: str, resolution: int, detector: str) -> Sample:
    image = load_image(photo)
    pts = photo.with_suffix(".pts")
    weights = torch.ones(68)
    if pts.is_file():
        landmarks = read_landmarks(pts)
    else:
        landmarks, _ = detect_landmarks(image, detector)
        weights[:17] = DETECTOR_JAW_WEIGHT
    crop = make_crop(landmarks, resolution)
    crop8 = (crop_image(image, crop)[0].clamp(0, 1) * 255).round().to(torch.uint8)
    return Sample(crop8, crop.to_crop(landmarks), source, landmark_weights=weights)
