"""``morph profile``: face profiling, new training samples from fitted photos (the step that made
300W-LP out of frontal photos, Zhu et al. 2016).

From every fit record of a ``morph prepare --fit`` dataset (:mod:`.prepare`) whose fit agrees
with its labels, ``per_face`` new samples: the person's fitted identity with the head turned to a
new pose (yaw, pitch, roll drawn uniformly within ``ProfileConfig``; the pivot is a point inside
the head, kept where it was in the photo), often a new expression (the ARKit units, drawn as
``morph synth`` draws them) and new light, drawn with the photo's own albedo (the baked texture
of the record, the fitted light divided out) and lit by that light. Behind it: the photo itself,
the original face removed (its render's coverage, grown a little, filled by pull-push from around
it) so that hair, neck and scene stay where the photo has them, or a new background
(:class:`.backgrounds.Backgrounds`). Labels follow exactly from the parameters: the 68 landmark
vertices projected (their fixed 3-D places: AFLW2000-3D's convention, also where they are hidden)
and the parameters in the crop's frame.

Sample ``k`` of record ``r`` depends only on (seed, the record's name, k), so the same seed gives
the same bytes and an interrupted run continues where it stopped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import render
from morphable import MorphableModel, Parameters

from ..errors import InputError
from ..files import load_image
from ..fitting.crop import crop_image, make_crop
from ..fitting.scene import rotation_matrix
from ..report.texture import pull_push
from .backgrounds import Backgrounds
from .prepare import read_fit_record, usable_records
from .shards import Sample, ShardWriter
from .synth import SynthConfig, _occlude, sample_parameters
from .textured import TexturedFace

REMOVE_GROW_PX = 3  # the original face's coverage grows by this (crop pixels) before it is filled


@dataclass
class ProfileConfig:
    yaw: float = 90.0  # +- degrees: the new pose's yaw, pitch and roll, uniform
    pitch: float = 40.0
    roll: float = 30.0
    expression: float = 0.6  # probability of a new expression (else the photo's)
    relight: float = 0.7  # probability of new light (else the photo's fitted light)
    own_background: float = 0.6  # probability of the photo's own background (else a new one)
    occluder: float = 0.1  # probability of an occluding patch (as morph synth)


def head_pivot(model: MorphableModel) -> torch.Tensor:
    """``[3]`` the point a turning head keeps in place: inside the head, behind the mean face's centre by
    half the face's height (about the neck's axis for a human head)."""
    mean = model.shape_mean
    lo, hi = mean.amin(0), mean.amax(0)
    centre = 0.5 * (lo + hi)
    return torch.stack([centre[0], centre[1], hi[2] - 0.5 * (hi[1] - lo[1])])


def turned(model: MorphableModel, params: Parameters, rotation_axis_angle: torch.Tensor,
           pivot: torch.Tensor | None = None) -> Parameters:
    """``params`` (batch 1, posed in image pixels) with the rotation replaced, the pivot kept in place."""
    pivot = head_pivot(model) if pivot is None else pivot
    camera = render.OrthographicCamera((1, 1))  # projection does not depend on the image size
    q = params.clone()
    before = camera.project(pivot[None, None], rotation_matrix(params), params.translation, params.scale)[0, 0]
    q.pose[:, :3] = rotation_axis_angle
    after = camera.project(pivot[None, None], rotation_matrix(q), q.translation, q.scale)[0, 0]
    q.pose[:, 3:5] += before - after
    return q


def remove_face(background: torch.Tensor, coverage: torch.Tensor, grow: int = REMOVE_GROW_PX) -> torch.Tensor:
    """``background [3,S,S]`` with the region ``coverage [1,S,S] > 0`` (grown by ``grow`` px) filled from
    around it by pull-push."""
    covered = (coverage > 0).float()
    if grow > 0:
        covered = F.max_pool2d(covered[None], 2 * grow + 1, stride=1, padding=grow)[0]
    return pull_push(background, 1 - covered).clamp(0, 1)


def profile_dataset(dataset: Path, out: Path, model: MorphableModel, per_face: int = 8, seed: int = 0,
                    resolution: int = 224, backgrounds: Backgrounds | None = None,
                    config: ProfileConfig | None = None, progress=None, on_record=None) -> dict:
    """Write ``per_face`` profiled samples of every agreeing fit record of ``dataset`` into ``out``.

    Returns counts: ``made`` (samples now), ``records`` (used), ``disagreeing`` (records skipped:
    their fit disagrees with their labels), ``missing`` (records whose photo is gone).
    ``progress(n)`` after every record's samples; ``on_record(path, error or None)`` after each used one.
    """
    config = config or ProfileConfig()
    backgrounds = backgrounds or Backgrounds(resolution, "procedural")
    records, disagreeing = usable_records(dataset, model)
    settings = {"command": "profile", "dataset": str(Path(dataset).resolve()), "per_face": per_face, "seed": seed,
                "resolution": resolution, "backgrounds": backgrounds.describe(),
                **{k: getattr(config, k) for k in config.__dataclass_fields__}}
    writer = ShardWriter(out, resolution, generator=settings, model={
        "name": model.metadata.get("name", ""), "sizes": list(model.parameter_sizes)})
    if writer.index["generator"] != settings:
        raise InputError(f"{out}: already holds a dataset made with other settings ({writer.index['generator']})")
    writer.index["labels"] = {"profile": "the model's 68 landmark vertices under the new pose (exact; 3-D places, "
                                         "also where hidden)"}
    face = TexturedFace(model)
    pivot = head_pivot(model)
    synth = SynthConfig(yaw=config.yaw, pitch=config.pitch, roll=config.roll)
    counts = {"made": 0, "records": 0, "disagreeing": disagreeing, "missing": 0}
    for path in records:
        keys = [f"profile:{seed}:{path.stem}:{k}" for k in range(per_face)]
        todo = [k for k, key in enumerate(keys) if key not in writer.done]
        try:
            record = read_fit_record(path)
            if todo:
                photo = load_image(Path(record["source"]))
        except InputError as exc:
            counts["missing"] += 1
            if on_record:
                on_record(path, str(exc))
            continue
        if todo:
            counts["records"] += 1
        texture = record["albedo"].float() / 255
        for k in todo:
            digest = int(hashlib.sha1(f"{seed}:{path.stem}:{k}".encode()).hexdigest()[:12], 16)
            g = torch.Generator().manual_seed(digest)
            sample = _profiled(model, face, record, photo, texture, g, config, synth, backgrounds, resolution, pivot)
            writer.add(Sample(sample[0], sample[1], keys[k], params=sample[2], parameter_weight=torch.tensor(1.0),
                              label="profile"))
            counts["made"] += 1
        if on_record:
            on_record(path, None)
        if progress:
            progress(1)
    writer.flush()
    return counts


def _profiled(model, face: TexturedFace, record: dict, photo: torch.Tensor, texture: torch.Tensor,
              g: torch.Generator, config: ProfileConfig, synth: SynthConfig, backgrounds: Backgrounds,
              resolution: int, pivot: torch.Tensor):
    """One sample: (image uint8 [3,S,S], landmarks [68,2], params {group: [K]}) in the crop's frame."""
    fitted: Parameters = record["params"]
    drawn = sample_parameters(model, g, synth)
    p = turned(model, fitted, drawn.rotation, pivot)
    if torch.rand(1, generator=g).item() < config.expression:
        p.expression = drawn.expression
    if torch.rand(1, generator=g).item() < config.relight:
        p.lighting = drawn.lighting
    # The crop the network would see: made from the new face's own 68 points.
    camera = render.OrthographicCamera((1, 1))
    with torch.no_grad():
        vertices, _ = model(p.identity, p.expression)
        points = camera.project(model.landmark_points(vertices), rotation_matrix(p), p.translation, p.scale)[0]
    crop = make_crop(points, resolution)
    q = crop.pose_from_original(p)
    image, coverage, landmarks = face(q, texture, resolution)
    if torch.rand(1, generator=g).item() < config.own_background:
        background = crop_image(photo, crop)[0].clamp(0, 1)
        _, original, _ = face(crop.pose_from_original(fitted), texture, resolution)
        background = remove_face(background, original)
    else:
        background = backgrounds.draw(g)
    picture = (image + (1 - coverage) * background).clamp(0, 1)
    if torch.rand(1, generator=g).item() < config.occluder:
        picture = _occlude(picture, landmarks, backgrounds.draw(g), g)
    return ((picture * 255).round().to(torch.uint8), landmarks,
            {group: t[0] for group, t in q.groups().items()})
