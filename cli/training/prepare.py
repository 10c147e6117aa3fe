"""``morph prepare``: photos with 68 landmarks -> a training dataset (:mod:`cli.training.shards`).

Labels, by what lies beside the photo:

- ``NAME.pts`` (iBUG, read 1-based as ``morph fit --landmarks`` reads it): label ``pts``;
- ``NAME.tem`` (a hand-placed WebMorph template) with a template map (``--template-map``, or a
  ``*_to_ibug68.json`` in the photo's folder or the one above, :mod:`.templates`): label ``template``;
- otherwise the detector's 68 points: label ``detector``.

Hand-placed labels (``pts``, ``template``) follow 300-W's convention, the jaw on the visible
outline, while the model's jaw vertices are fixed surface points (AFLW2000-3D's convention): the
two agree on a frontal face and part as the head turns, so such jaw points get
``OUTLINE_JAW_WEIGHT``. A detector's jaw points are its least certain (dlib's follow the outline;
MediaPipe's come from its face oval, which slides along the outline as the head turns): they get
``DETECTOR_JAW_WEIGHT``. The shard's ``labels`` metadata says which kind each
sample has.

With a model (``fit_model``, ``morph prepare --fit``), every photo is also fitted once (the
``morph fit`` pipeline from the closed-form start, on the detector's points whatever the
labels), and the sample carries the fitted parameters as targets, in its crop's frame. Distilling the fit: where the fitted 68 points agree with the labels (inner 51 points
within ``AGREEMENT_NME`` of the face size, bbox-normalised), a detector-labelled sample takes
the fitted 68 as its labels (all weights 1: the jaw in the model's own convention) and the
parameters with weight 1; where they disagree it keeps the detector's labels and the parameters
get weight 0. Hand-placed labels are kept as they are, the parameters weighted as above.

Each fit is cached in ``DATASET/fits/`` (:func:`fit_record_path`): the parameters posed in the
photo's pixels, the labels, the fitted 68, and the photo's albedo baked into the model's UV
layout with the fitted light divided out (``albedo``, uint8 ``[3,T,T]``, and how much of each
texel the photo saw, ``photo_weight``). Face profiling (:mod:`.profile`) and the texture bank of
``morph synth`` read these records. An interrupted run re-uses them.

A photo that fails (unreadable, no face, a template with the wrong point count, a fit that
diverges) is logged (``DATASET/prepare.log`` and the index's ``failed``), counted and skipped; a
re-run skips the photos already done or failed (unless told to retry the failed ones).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from morphable import GROUPS, MorphableModel, Parameters
from morphable.schema import atomic_save_safetensors

from ..errors import USER_ERRORS, InputError
from ..files import load_image, read_landmarks
from ..fitting.crop import crop_image, make_crop
from ..fitting.optimise import FitConfig, FitDiverged
from .shards import Sample, ShardWriter, read_index
from .templates import TemplateMap, find_template_map, load_template_map, template_landmarks

DETECTOR_JAW_WEIGHT = 0.2
OUTLINE_JAW_WEIGHT = 0.5
AGREEMENT_NME = 0.04  # inner-51 bbox-NME between the fitted 68 and the labels, for the fit to teach
FIT_TEXTURE_SIZE = 256  # texels a side of the baked albedo (a 128-px crop shows the face at < 100 px)
FITS = "fits"
LABELS = {
    "pts": "an iBUG .pts beside the photo (hand-placed; jaw on the visible outline, weight "
           f"{OUTLINE_JAW_WEIGHT})",
    "template": "a hand-placed .tem template through a template map (jaw on the visible outline, weight "
                f"{OUTLINE_JAW_WEIGHT})",
    "detector": f"the detector's 68 (its jaw points approximate, weight {DETECTOR_JAW_WEIGHT})",
    "fit": "the fitted model's 68 (the model's fixed jaw vertices), where they agree with the detector's",
}


@dataclass
class PrepareSummary:
    added: int = 0
    skipped: int = 0
    failed: list = field(default_factory=list)  # (source, reason)
    fitted: int = 0  # photos fitted in this run
    fits_reused: int = 0  # photos whose cached fit was used
    teaching: int = 0  # samples whose fit agreed with their labels (parameters weighted 1)


@dataclass
class _Labels:
    landmarks: torch.Tensor  # [68,2] original pixels
    weights: torch.Tensor  # [68]
    kind: str  # a key of LABELS
    prepared: object  # cli.fitting.pipeline.Prepared: what the fit starts from


def prepare_dataset(photos: list[Path], out: Path, resolution: int = 224, retry_failed: bool = False,
                    on_photo=None, detector: str = "mediapipe", fit_model: MorphableModel | None = None,
                    texture_size: int = FIT_TEXTURE_SIZE, template_map: Path | None = None,
                    fit_config: FitConfig | None = None) -> PrepareSummary:
    """Add ``photos`` to the dataset folder ``out``; ``on_photo(path, error or None)`` after each.

    ``fit_model``: fit every photo with this model (see the module docstring); the dataset's
    samples then carry parameters. ``template_map``: the map for ``.tem`` templates (default:
    found beside the photos). ``fit_config``: the fit's settings (default: ``morph fit``'s).
    """
    generator = {"command": "prepare", "resolution": resolution}
    model_info = None
    if fit_model is not None:
        generator |= {"fit": True, "texture_size": texture_size, "agreement_nme": AGREEMENT_NME}
        model_info = {"name": fit_model.metadata.get("name", ""), "sizes": list(fit_model.parameter_sizes)}
    writer = ShardWriter(out, resolution, generator=generator, model=model_info)
    if writer.index.get("model") != model_info:
        made = f"with fits of {writer.index['model']}" if writer.index.get("model") else "without fits"
        wanted = f"fits of {model_info}" if model_info else "no fits"
        raise InputError(f"{out}: holds a dataset made {made}; adding photos with {wanted} needs another folder")
    writer.index.setdefault("labels", {})
    mapping = load_template_map(template_map) if template_map is not None else None
    maps: dict[Path, TemplateMap] = {}
    summary = PrepareSummary()
    log_path = Path(out) / "prepare.log"
    config = fit_config or FitConfig()
    for photo in photos:
        source = str(photo.resolve())
        if source in writer.done or (source in writer.index["failed"] and not retry_failed):
            summary.skipped += 1
            continue
        try:
            photo_map = mapping or _found_map(photo, maps)
            sample = _sample(photo, source, resolution, detector, photo_map, fit_model, texture_size, config, out,
                             summary)
        except (*USER_ERRORS, FitDiverged) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            reason = reason.removeprefix(f"{photo}: ")  # the log line names the photo already
            writer.fail(source, reason)
            summary.failed.append((source, reason))
            with open(log_path, "a") as log:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {source}: {reason}\n")
            if on_photo:
                on_photo(photo, reason)
            continue
        writer.index["labels"][sample.label] = LABELS[sample.label]
        writer.add(sample)
        summary.added += 1
        if on_photo:
            on_photo(photo, None)
    writer.flush()
    return summary


def _found_map(photo: Path, cache: dict) -> TemplateMap | None:
    if not photo.with_suffix(".tem").is_file():
        return None
    path = find_template_map(photo)
    if path is None:
        raise InputError(f"{photo.with_suffix('.tem')}: a template, but no *_to_ibug68.json map beside it "
                         "(give one with --template-map)")
    if path not in cache:
        cache[path] = load_template_map(path)
    return cache[path]


def _labels(photo: Path, detector: str, mapping: TemplateMap | None, fitting: bool) -> _Labels:
    """The photo's labels, and (when ``fitting``) what its fit starts from: always the detector's
    face (with MediaPipe, its 468 points), so that every fit is made the same way. A fit to 68
    points given as exact annotations follows them with weak priors, and 68 points leave much of
    the shape free: on the London studio photos that gave identities of norm ~21 (N(0, 1) x 80
    coefficients: ~9) and wide-open eyes; the detector's dense points give norms of 6-8."""
    from ..fitting.pipeline import prepare

    weights = torch.ones(68)
    pts, tem = photo.with_suffix(".pts"), photo.with_suffix(".tem")
    if pts.is_file() or (tem.is_file() and mapping is not None):
        if pts.is_file():
            landmarks, kind = read_landmarks(pts), "pts"
        else:
            landmarks, kind = template_landmarks(tem, mapping), "template"
        weights[:17] = OUTLINE_JAW_WEIGHT
        return _Labels(landmarks, weights, kind, prepare(photo, detector=detector) if fitting else None)
    prepared = prepare(photo, detector=detector)
    weights[:17] = DETECTOR_JAW_WEIGHT
    return _Labels(prepared.landmarks, weights, "detector", prepared)


def _sample(photo: Path, source: str, resolution: int, detector: str, mapping: TemplateMap | None,
            model: MorphableModel | None, texture_size: int, config: FitConfig, out: Path,
            summary: PrepareSummary) -> Sample:
    image = load_image(photo)
    labels = _labels(photo, detector, mapping, model is not None)
    params = parameter_weight = None
    landmarks, weights, kind = labels.landmarks, labels.weights, labels.kind
    if model is not None:
        record = _fit_record(out, source, photo, image, labels, model, texture_size, config, summary)
        agrees = inner_agreement(record["fitted"], landmarks) <= AGREEMENT_NME
        parameter_weight = torch.tensor(1.0 if agrees else 0.0)
        summary.teaching += int(agrees)
        if agrees and kind == "detector":
            landmarks, weights, kind = record["fitted"], torch.ones(68), "fit"
        fitted = record["params"]
    crop = make_crop(landmarks, resolution)
    if model is not None:
        params = {g: t[0] for g, t in crop.pose_from_original(fitted).groups().items()}
    crop8 = (crop_image(image, crop)[0].clamp(0, 1) * 255).round().to(torch.uint8)
    return Sample(crop8, crop.to_crop(landmarks), source, landmark_weights=weights, params=params,
                  parameter_weight=parameter_weight, label=kind)


def inner_agreement(points: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean distance of the inner 51 of two sets of 68 points ``[68,2]``, over the labels' face size (the
    square root of their bounding box's area, all 68: bbox-NME as :func:`losses.landmark_nme`, which
    averages over all 68 points)."""
    size = (labels.amax(0) - labels.amin(0)).prod().sqrt()
    return float((points[17:] - labels[17:]).norm(dim=-1).mean() / size)


# -- the fit records -----------------------------------------------------------------------------
def fit_record_path(out: Path, source: str) -> Path:
    """Where the fit of the photo ``source`` is cached: ``OUT/fits/<stem>-<hash of the path>.safetensors``."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:10]
    return Path(out) / FITS / f"{Path(source).stem}-{digest}.safetensors"


def _fit_record(out: Path, source: str, photo: Path, image: torch.Tensor, labels: _Labels, model: MorphableModel,
                texture_size: int, config: FitConfig, summary: PrepareSummary) -> dict:
    path = fit_record_path(out, source)
    if path.is_file():
        try:
            record = read_fit_record(path)
            # The same photo, texture size, model and labels (a changed .pts or .tem fits again).
            if (record["source"] == source and record["albedo"].shape[-1] == texture_size
                    and record["model"] == model.metadata.get("name", "")
                    and torch.equal(record["labels"], labels.landmarks.float())):
                summary.fits_reused += 1
                return record
        except InputError:
            pass  # a damaged cache entry: fit again
    from ..fitting.pipeline import _fit_prepared
    from ..report.overlay import render_view
    from ..report.texture import bake

    started = time.perf_counter()
    result = _fit_prepared(labels.prepared, model, config, "cpu", None, None)
    posed = result.crop.pose_to_original(result.params)
    h, w = image.shape[1:]
    view = render_view(model, result.params, result.crop, h, w)
    baked = bake(model, posed, image, view.depth[0], view.mask[0], texture_size)
    fitted = result.fitted_landmarks
    agreement = inner_agreement(fitted, labels.landmarks)
    tensors = {**{f"params_{g}": t.contiguous() for g, t in posed.groups().items()},
               "labels": labels.landmarks.float(), "label_weights": labels.weights.float(), "fitted": fitted.float(),
               "albedo": (baked.albedo.clamp(0, 1) * 255).round().to(torch.uint8).contiguous(),
               "photo_weight": (baked.photo_weight.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()}
    metadata = {"format": "morph-fit-record", "source": source, "width": str(w), "height": str(h),
                "label": labels.kind, "agreement": repr(agreement), "model": model.metadata.get("name", ""),
                "seconds": f"{time.perf_counter() - started:.2f}",
                "pose": "scaled-orthographic in the photo's pixels: x = s (R v)_x + tx, y = -s (R v)_y + ty"}
    atomic_save_safetensors(tensors, metadata, path)
    summary.fitted += 1
    return read_fit_record(path)


def read_fit_record(path: Path) -> dict:
    """A cached fit: ``params`` (Parameters, batch 1, posed in the photo's pixels), ``labels``,
    ``label_weights``, ``fitted`` ``[68,2]``, ``albedo`` ``[3,T,T]`` / ``photo_weight`` ``[1,T,T]`` uint8,
    and the metadata strings (``source``, ``width``, ``height``, ``label``, ``agreement``, ...)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path}: not a readable fit record ({str(exc).splitlines()[0]})") from None
    if meta.get("format") != "morph-fit-record" or any(f"params_{g}" not in tensors for g in GROUPS):
        raise InputError(f"{path}: not a morph fit record")
    record = dict(meta)
    record.update({k: v for k, v in tensors.items() if not k.startswith("params_")})
    record["params"] = Parameters(**{g: tensors[f"params_{g}"] for g in GROUPS})
    return record


def usable_records(dataset: Path, model: MorphableModel) -> tuple[list[Path], int]:
    """The fit records of ``dataset`` whose fit agrees with its labels (profiling and the texture bank use
    only those: a fit that disagrees baked a misplaced texture), and how many were left out; InputError if
    the dataset's fits are of another morphable model."""
    made_for = read_index(Path(dataset)).get("model") or {}
    mine = {"name": model.metadata.get("name", ""), "sizes": list(model.parameter_sizes)}
    if made_for != mine:
        raise InputError(f"{dataset}: its fits are of model {made_for}, not of {mine} (give that --model)")
    usable, left_out = [], 0
    for path in fit_records(dataset):
        record = read_fit_record(path)
        if inner_agreement(record["fitted"], record["labels"]) <= AGREEMENT_NME:
            usable.append(path)
        else:
            left_out += 1
    return usable, left_out


def fit_records(dataset: Path) -> list[Path]:
    """The fit records of a dataset made with ``morph prepare --fit``, in a stable order."""
    folder = Path(dataset) / FITS
    if not folder.is_dir():
        raise InputError(f"{dataset}: no fits (make the dataset with morph prepare --fit)")
    records = sorted(folder.glob("*.safetensors"))
    if not records:
        raise InputError(f"{dataset}: no fits (make the dataset with morph prepare --fit)")
    return records
