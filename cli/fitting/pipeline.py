"""The pipeline behind ``morph fit``: read a photo, find its faces (or read their landmarks), fit
each, write the outputs.

One face: ``OUT/<stem>/``. Several faces (``faces="all"``, the default of ``morph fit``): one
folder per face, ``OUT/<stem>/face_<k>/``, k = 0 for the largest, by decreasing size. A face
whose fit fails is reported and left out; the others are still written. The image's folder is
replaced as a whole (atomically) once all its faces are done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from losses import landmark_nme
from morphable import MorphableModel

from ..detect import DEFAULT_DETECTOR, DEFAULT_THRESHOLD, DETECTORS, Face, NoFaceFound, detect_faces
from ..errors import USER_ERRORS, InputError, one_line
from ..files import atomic_directory, load_image, read_landmarks
from ..report.outputs import write_fit_outputs
from ..report.texture import prefetch_texel_table
from .crop import make_crop
from .optimise import FitConfig, FitDiverged, FitResult, fit

MIN_IMAGE_SIDE = 16
FACE_CHOICES = ("all", "largest")
# Where the jaw of a detector's 68 points lies (see :mod:`.landmarks`): dlib follows the visible
# outline (300-W's convention); MediaPipe's 68 are fixed vertices of its mesh.
DETECTOR_JAW = {"mediapipe": "3d", "dlib": "outline"}


@dataclass
class Prepared:
    image: torch.Tensor  # [3,H,W]
    landmarks: torch.Tensor  # [68,2]
    source: str  # "annotation" (a landmark file) or "detector"
    faces_found: int
    detect_seconds: float
    detector: str | None = None  # the detector's name (None for a landmark file)
    dense: torch.Tensor | None = None  # [P,3] the detector's dense points (MediaPipe's mesh)
    face_index: int = 0  # 0 = the largest face
    score: float | None = None  # detection confidence
    box: list | None = None  # x0, y0, x1, y1 (pixels)
    jaw: str = "outline"  # where the 68 points' jaw lies: "outline" or "3d"
    threshold: float | None = None  # the detection threshold used
    extra: dict = field(default_factory=dict)

    def fit_arguments(self) -> dict:
        """The keyword arguments of :func:`~.optimise.fit` that describe these landmarks."""
        return {"landmark_source": self.source, "dense": self.dense, "jaw": self.jaw,
                "dense_name": "mediapipe-face-mesh-468" if self.detector == "mediapipe" else None}


def _read_image(image_path: Path) -> torch.Tensor:
    image = load_image(image_path)
    h, w = image.shape[1:]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise InputError(f"{image_path}: image too small ({w}x{h}); need at least {MIN_IMAGE_SIDE} px a side")
    return image


def prepare_faces(image_path: Path, landmarks_path: Path | None = None, detector: str = DEFAULT_DETECTOR,
                  threshold: float = DEFAULT_THRESHOLD, faces: str = "all", jaw: str = "outline") -> list[Prepared]:
    """Read an image and find its faces (largest first; ``faces="largest"``: only that one), or read the
    one face's landmarks from ``landmarks_path`` (their jaw convention: ``jaw``).

    Raises :class:`~cli.errors.InputError` (naming the image) when it is unreadable or has no face.
    """
    if faces not in FACE_CHOICES:
        raise ValueError(f"faces must be one of {FACE_CHOICES}, got {faces!r}")
    if detector not in DETECTORS:
        raise InputError(f"--detector {detector!r}: use one of {', '.join(DETECTORS)}")
    image = _read_image(image_path)
    start = time.perf_counter()
    if landmarks_path is not None:
        points = read_landmarks(landmarks_path)
        _check_on_image(points, image, landmarks_path)
        return [Prepared(image, points, "annotation", 1, time.perf_counter() - start, jaw=jaw)]
    try:
        found = detect_faces(image, detector, threshold)
    except InputError as exc:
        raise InputError(f"{image_path}: {exc}") from None
    seconds = time.perf_counter() - start
    applied = None if detector == "dlib" else threshold  # dlib's detector keeps its own threshold
    if not found:
        raise NoFaceFound(f"{image_path}: no face found (detector {detector}"
                          + (f", threshold {applied:g})" if applied is not None else ")"))
    chosen = found if faces == "all" else found[:1]
    return [_prepared(image, face, k, len(found), seconds, detector, applied) for k, face in enumerate(chosen)]


def _check_on_image(points: torch.Tensor, image: torch.Tensor, path: Path) -> None:
    """Landmarks ``[68,2]`` from a file must be a face's on this image: some point on it, spread out.
    (A face cut by the border is fine; points all off the image are another image's, or another convention's.)"""
    h, w = image.shape[1:]
    inside = (points[:, 0] >= 0) & (points[:, 0] <= w) & (points[:, 1] >= 0) & (points[:, 1] <= h)
    low, high = points.amin(0).tolist(), points.amax(0).tolist()
    if not inside.any():
        raise InputError(f"{path}: no landmark lies on the {w}x{h} image (x {low[0]:.0f} to {high[0]:.0f}, "
                         f"y {low[1]:.0f} to {high[1]:.0f}): are they this image's?")
    try:
        make_crop(points, 1)  # the fit's own test of a usable spread (more than a pixel)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def _prepared(image, face: Face, index: int, count: int, seconds: float, detector: str,
              threshold: float | None) -> Prepared:
    return Prepared(image, face.landmarks68, "detector", count, seconds, detector, face.dense, index, face.score,
                    [round(float(v), 2) for v in face.box], DETECTOR_JAW.get(detector, "outline"), threshold)


def prepare(image_path: Path, landmarks_path: Path | None = None, detector: str = DEFAULT_DETECTOR,
            threshold: float = DEFAULT_THRESHOLD, jaw: str = "outline") -> Prepared:
    """Read an image and the landmarks of its largest face (from a file, or detected)."""
    return prepare_faces(image_path, landmarks_path, detector, threshold, "largest", jaw)[0]


def _fit_prepared(prepared: Prepared, model: MorphableModel, config: FitConfig, device, progress, network):
    start = None
    if network is not None:
        from ..training.predict import predict

        start = predict(network, prepared.image, prepared.landmarks)
    return fit(prepared.image, prepared.landmarks, model, config, device=device, progress=progress, start=start,
               **prepared.fit_arguments())


def fit_and_write(image_path: Path, out_root: Path, model: MorphableModel, config: FitConfig,
                  device: str = "cpu", landmarks_path: Path | None = None, progress=None,
                  network=None, detector: str = DEFAULT_DETECTOR,
                  threshold: float = DEFAULT_THRESHOLD) -> tuple[FitResult, Prepared]:
    """Fit the largest face of one image and write ``out_root/<stem>/`` (see :mod:`cli.report.outputs`).

    ``network``: a :class:`cli.training.ParameterRegressor` whose prediction starts the fit
    (None: the closed-form start).
    """
    prepared = prepare(image_path, landmarks_path, detector, threshold)
    result = _fit_prepared(prepared, model, config, device, progress, network)
    write_outputs(image_path, out_root, model, prepared, result)
    return result, prepared


@dataclass
class FaceOutcome:
    """One face of an image: its fit (or the error that stopped it) and where it was written."""

    prepared: Prepared
    result: FitResult | None
    error: str | None
    out_dir: Path


def fit_faces(image_path: Path, out_root: Path, model: MorphableModel, config: FitConfig, device: str = "cpu",
              landmarks_path: Path | None = None, progress=None, network=None, detector: str = DEFAULT_DETECTOR,
              threshold: float = DEFAULT_THRESHOLD, faces: str = "all", jaw: str = "outline",
              on_found=None, name: str | None = None) -> list[FaceOutcome]:
    """Fit every face of one image (``faces="all"``) or the largest; write ``OUT/<stem>/`` or, for
    several faces, ``OUT/<stem>/face_<k>/`` (``name`` instead of the stem: see :func:`cli.files.output_names`).

    ``on_found(n)`` is called once the faces are found. A face that fails (bad landmarks, a
    diverged fit) gets its error line and no folder; the others are written. Raises
    :class:`~cli.errors.InputError` when the image has no face or every face failed (nothing is
    written then).
    """
    prefetch_texel_table(model)  # the first image's texture table builds while it is detected and fitted
    prepared = prepare_faces(image_path, landmarks_path, detector, threshold, faces, jaw)
    if on_found:
        on_found(len(prepared))
    folder = out_root / (name or image_path.stem)
    if len(prepared) == 1:  # OUT/<stem>/, written atomically by write_outputs; a failure is the image's
        result = _fit_prepared(prepared[0], model, config, device, progress, network)
        write_outputs(image_path, out_root, model, prepared[0], result, out_dir=folder)
        return [FaceOutcome(prepared[0], result, None, folder)]
    outcomes = []
    with atomic_directory(folder) as tmp:
        for p in prepared:
            name = f"face_{p.face_index}"
            try:
                result = _fit_prepared(p, model, config, device, progress, network)
                write_outputs(image_path, tmp, model, p, result, out_dir=tmp / name)
            except (*USER_ERRORS, FitDiverged) as exc:
                outcomes.append(FaceOutcome(p, None, f"{image_path} (face {p.face_index}): {one_line(exc)}",
                                            folder / name))
                continue
            outcomes.append(FaceOutcome(p, result, None, folder / name))
        if all(o.error for o in outcomes):
            raise InputError(f"{image_path}: every face failed ({outcomes[0].error})")
    return outcomes


def write_outputs(image_path: Path, out_root: Path, model: MorphableModel, prepared: Prepared,
                  result: FitResult, out_dir: Path | None = None) -> None:
    """Write ``out_root/<stem>/`` (or ``out_dir``) for a fit (or a prediction) of ``image_path``."""
    extra = {"landmarks_source": prepared.source, "faces_found": prepared.faces_found,
             "detect_seconds": round(prepared.detect_seconds, 3),
             "landmark_nme_vs_input": {
                 "bbox": float(landmark_nme(result.fitted_landmarks, result.target_landmarks, "bbox")),
                 "outer_eye": float(landmark_nme(result.fitted_landmarks, result.target_landmarks, "outer_eye"))}}
    if prepared.source == "detector":
        extra["detector"] = {"name": prepared.detector, "threshold": prepared.threshold, "faces_found":
                             prepared.faces_found, "face_index": prepared.face_index, "score": prepared.score,
                             "box": prepared.box, "dense_points": 0 if prepared.dense is None else len(prepared.dense)}
    extra["landmark_term"] = {"mode": getattr(result, "landmark_mode", "3d"), "input_jaw": prepared.jaw}
    extra["init"] = result.init
    if out_dir is None:
        out_dir = out_root / image_path.stem
    write_fit_outputs(out_dir, result, model, prepared.image, str(image_path), extra)
