"""``morph synth``: faces drawn from the model's prior, rendered with exact landmarks and parameters.

Sample ``i`` of seed ``s`` depends only on ``(s, i)`` (its own generator), so the same seed
gives the same bytes, and an interrupted run continues where it stopped. Each face:

- identity and albedo ~ N(0, 1); expression: N(0, 0.5^2) plus a few strong one-sided
  activations (blendshape bases such as ARKit's act in one direction), optionally with the
  left and right units of a pair moving together (``SynthConfig.expression_symmetry``);
- pose: yaw in +-70 deg, pitch in +-30 deg, roll in +-20 deg (uniform);
- SH light: ambient with a random tint and strength, a random directional (band 1) term,
  a little band 2;
- albedo: the model's, or (with a texture bank, ``SynthConfig.texture`` of the time) the albedo
  of a real photo baked into the model's UV layout by ``morph prepare --fit`` (its fitted
  albedo coefficients are stored as the sample's albedo);
- a background (procedural or photographic, :mod:`cli.training.backgrounds`) behind the
  face, often with a head-sized ellipse of a darkened texture just behind it (the model has
  no hair, ears or neck: the face should not always meet the background at its edge);
  optionally a random occluder (a patch of another background) over part of the face.

The face is rendered directly in the frame of the crop :mod:`cli.fitting.crop` makes from its
landmarks (the crop is a similarity, so the pose is mapped exactly), so synthetic crops
look like crops of photos. The stored parameters are in that crop's frame.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import kornia
import torch

from morphable import MorphableModel, Parameters
from morphable.parameters import DEFAULT_SH_DC, NUM_SH

from ..errors import InputError
from ..files import to_uint8, write_png, write_text
from ..fitting.crop import CROP_SCALE, make_crop
from ..fitting.scene import FaceScene, VertexRows
from .backgrounds import Backgrounds
from .shards import SHARD_SIZE, Sample, ShardWriter

BATCH = 16
# ARKit pairs whose two sides are opposite movements, not one movement on both sides of the face
# (the jaw or mouth shifted left or right; the eyes looking in or out is a squint, not a glance).
OPPOSED_PAIRS = ("jaw", "mouth", "eyeLookIn", "eyeLookOut")


@dataclass
class SynthConfig:
    yaw: float = 70.0  # +- degrees
    pitch: float = 30.0
    roll: float = 20.0
    expression_sigma: float = 0.5
    expression_kicks: float = 2.0  # mean number of strong one-sided activations
    expression_kick: float = 3.0  # their maximum coefficient
    expression_symmetry: float = 0.0  # left/right units (names ending Left/Right) move together: correlation
    occluder: float = 0.2  # probability of an occluding patch
    head: float = 0.6  # probability of a head-sized backdrop (hair, neck, ears are not in the model)
    texture: float = 0.0  # probability of a real face's baked albedo from the texture bank (if one is given)


def sample_parameters(model: MorphableModel, g: torch.Generator, config: SynthConfig) -> Parameters:
    """One face's parameters (batch 1) with a frontal-scale pose: scale 1, translation 0."""
    sizes = model.parameter_sizes
    p = Parameters.neutral(sizes, 1)
    p.identity[:] = torch.randn(1, sizes.identity, generator=g)
    p.albedo[:] = torch.randn(1, sizes.albedo, generator=g)
    expression = config.expression_sigma * torch.randn(sizes.expression, generator=g)
    # Faces mostly move both sides at once (a smile is mouthSmileLeft and mouthSmileRight): with
    # expression_symmetry each left/right pair's draws are mixed to that correlation (each unit
    # keeps its variance), and a kicked unit's partner gets the same kick that often.
    rho = config.expression_symmetry
    partner = _symmetric_partners(tuple(model.expression_names or ()), sizes.expression) if rho else None
    if rho:
        left = (partner >= 0) & (torch.arange(sizes.expression) < partner)
        expression[partner[left]] = rho * expression[left] + math.sqrt(1 - rho ** 2) * expression[partner[left]]
    kicks = int(torch.poisson(torch.tensor([config.expression_kicks]), generator=g))
    if kicks and sizes.expression:
        units = torch.randint(sizes.expression, (kicks,), generator=g)
        strength = config.expression_kick * torch.rand(kicks, generator=g)
        if rho:
            paired = (partner[units] >= 0) & (torch.rand(kicks, generator=g) < rho)
            units, strength = torch.cat([units, partner[units[paired]]]), torch.cat([strength, strength[paired]])
        expression[units] += strength
    p.expression[:] = expression
    angles = (torch.rand(3, generator=g) * 2 - 1) * torch.tensor([config.pitch, config.yaw, config.roll])
    p.pose[:, :3] = kornia.geometry.conversions.rotation_matrix_to_axis_angle(
        _euler_xyz(torch.deg2rad(angles))[None])
    light = torch.zeros(3, 9)
    strength = 0.6 + 0.7 * torch.rand(1, generator=g)
    tint = 1 + 0.08 * torch.randn(3, generator=g)
    light[:, 0] = DEFAULT_SH_DC * strength * tint
    direction = torch.nn.functional.normalize(torch.randn(3, generator=g), dim=0)
    direction[2] = direction[2].abs()  # light from the camera's side of the face
    light[:, 1:4] = (DEFAULT_SH_DC * strength * 0.8 * torch.rand(1, generator=g)
                     * direction[[1, 2, 0]])[None] * tint[:, None]  # SH order y, z, x
    light[:, 4:] = 0.1 * DEFAULT_SH_DC * torch.randn(1, 5, generator=g)
    p.lighting[:] = light.reshape(1, NUM_SH)
    return p


def mirror_partners(names: list[str] | None, count: int, skip: tuple[str, ...] = ()) -> torch.Tensor:
    """``[E]`` the index of each expression unit's mirror unit (``xLeft`` <-> ``xRight``), -1 where
    none or where the stem ``x`` is in ``skip``."""
    partner = torch.full((count,), -1, dtype=torch.long)
    index = {name: i for i, name in enumerate(names or [])}
    for name, i in index.items():
        for side, other in (("Left", "Right"), ("Right", "Left")):
            stem = name[:-len(side)]
            if name.endswith(side) and stem not in skip and stem + other in index:
                partner[i] = index[stem + other]
    return partner


@functools.lru_cache(maxsize=8)
def _symmetric_partners(names: tuple[str, ...], count: int) -> torch.Tensor:
    """:func:`mirror_partners` without the opposed pairs, once per model (not once per face)."""
    return mirror_partners(list(names), count, OPPOSED_PAIRS)


def _euler_xyz(angles: torch.Tensor) -> torch.Tensor:
    """Rotation ``[3,3]`` = Rz(roll) Ry(yaw) Rx(pitch) for (pitch, yaw, roll) in radians."""
    rx, ry, rz = (kornia.geometry.conversions.axis_angle_to_rotation_matrix(
        torch.eye(3)[i:i + 1] * angles[i])[0] for i in range(3))
    return rz @ ry @ rx


def place_in_crop(model: MorphableModel, p: Parameters, resolution: int, crop_scale: float = CROP_SCALE) -> Parameters:
    """``p`` (batch 1) moved into the frame of the crop made from its own landmarks."""
    # At scale 1 and translation 0 the landmarks sit at pixels (x, -y) of the rotated model.
    rows = VertexRows(model, model.landmarks)
    rotation = kornia.geometry.conversions.axis_angle_to_rotation_matrix(p.rotation)
    points = rows.shape(p.identity, p.expression) @ rotation.transpose(1, 2)
    crop = make_crop(torch.stack([points[0, :, 0], -points[0, :, 1]], -1), resolution, crop_scale)
    q = p.clone()
    q.pose[:, 3] = -crop.origin_x * crop.scale
    q.pose[:, 4] = -crop.origin_y * crop.scale
    q.pose[:, 6] = crop.scale
    return q


def synthesize(model: MorphableModel, out: Path, count: int, seed: int = 0, resolution: int = 224,
               backgrounds: Backgrounds | None = None, config: SynthConfig | None = None, images: bool = False,
               progress=None, shard_size: int = SHARD_SIZE, textures: list[Path] | None = None) -> int:
    """Render ``count`` faces into the dataset folder ``out``; returns how many were made now.

    Samples already in ``out`` (an interrupted run with the same settings) are skipped.
    ``progress(n)`` is called after every ``n`` faces. ``textures``: fit records of ``morph prepare
    --fit`` (:func:`cli.training.prepare.fit_records`), the texture bank.
    """
    from .prepare import read_fit_record
    from .textured import TexturedFace

    config = config or SynthConfig()
    backgrounds = backgrounds or Backgrounds(resolution, "procedural")
    bank = sorted(textures or [])
    settings = {"command": "synth", "seed": seed, "resolution": resolution, "backgrounds": backgrounds.describe(),
                **{k: getattr(config, k) for k in config.__dataclass_fields__}}
    if bank and config.texture > 0:
        settings["textures"] = f"{len(bank)} fit records from {sorted({str(p.resolve().parent.parent) for p in bank})}"
    textured = TexturedFace(model) if bank and config.texture > 0 else None
    loaded: dict[Path, tuple] = {}

    def bank_texture(g: torch.Generator):
        path = bank[int(torch.randint(len(bank), (1,), generator=g))]
        if path not in loaded:
            record = read_fit_record(path)
            loaded[path] = (record["albedo"], record["params"].albedo[0])
        return loaded[path]
    writer = ShardWriter(out, resolution, generator=settings, model={
        "name": model.metadata.get("name", ""), "sizes": list(model.parameter_sizes)}, shard_size=shard_size)
    if writer.index["generator"] != settings:
        raise InputError(f"{out}: already holds a dataset made with other settings ({writer.index['generator']})")
    scene = FaceScene(model, resolution)
    todo = [i for i in range(count) if f"synth:{seed}:{i}" not in writer.done]
    made = 0
    for first in range(0, len(todo), BATCH):
        chunk = todo[first:first + BATCH]
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in chunk]
        params = [place_in_crop(model, sample_parameters(model, g, config), resolution) for g in gens]
        batch = Parameters(*(torch.cat([getattr(p, group) for p in params]) for group in
                             ("identity", "expression", "albedo", "lighting", "pose")))
        with torch.no_grad():
            rendered = scene(batch)
        for k, (i, g) in enumerate(zip(chunk, gens)):
            background = backgrounds.draw(g)
            if torch.rand(1, generator=g).item() < config.head:
                background = _head_backdrop(background, rendered["landmarks"][k], backgrounds.draw(g), g)
            face, coverage = rendered["image"][k], rendered["coverage"][k]
            if textured is not None and torch.rand(1, generator=g).item() < config.texture:
                albedo8, coefficients = bank_texture(g)
                params[k].albedo[:] = coefficients
                face, coverage, _ = textured(params[k], albedo8.float() / 255, resolution)
            image = face.clamp(0, 1) + (1 - coverage) * background
            if torch.rand(1, generator=g).item() < config.occluder:
                image = _occlude(image, rendered["landmarks"][k], backgrounds.draw(g), g)
            image8 = (image * 255).round().to(torch.uint8)
            sample = Sample(image8, rendered["landmarks"][k], f"synth:{seed}:{i}",
                            params={group: getattr(params[k], group)[0] for group in
                                    ("identity", "expression", "albedo", "lighting", "pose")})
            writer.add(sample)
            if images:
                _write_image_files(out / "images", i, image8, sample, model)
        made += len(chunk)
        if progress:
            progress(len(chunk))
    writer.flush()
    return made


def _ellipse(size: int, centre: torch.Tensor, radii: torch.Tensor, angle: float) -> torch.Tensor:
    """``[1,S,S]`` 1 inside the ellipse, 0 outside (pixel centres)."""
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    dx, dy = xs - centre[0], ys - centre[1]
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    return ((u / radii[0]) ** 2 + (v / radii[1]) ** 2 <= 1).to(torch.float32)[None]


def _head_backdrop(background: torch.Tensor, landmarks: torch.Tensor, texture: torch.Tensor,
                   g: torch.Generator) -> torch.Tensor:
    """An ellipse a little larger than the face, of a darkened texture (hair, ears, neck), behind it."""
    lo, hi = landmarks.amin(0), landmarks.amax(0)
    centre = 0.5 * (lo + hi) + (hi - lo) * torch.tensor([0.0, -0.15]) + 3 * torch.randn(2, generator=g)
    radii = 0.5 * (hi - lo) * (1.25 + 0.35 * torch.rand(2, generator=g))
    shade = 0.15 + 0.6 * torch.rand(1, generator=g)
    tint = torch.rand(3, 1, 1, generator=g) * 0.5 + 0.5
    inside = _ellipse(background.shape[-1], centre, radii, 0.3 * (torch.rand(1, generator=g).item() - 0.5))
    return background * (1 - inside) + (texture * shade * tint).clamp(0, 1) * inside


def _occlude(image: torch.Tensor, landmarks: torch.Tensor, patch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Cover a random ellipse near a random landmark with a patch of another background."""
    size = image.shape[-1]
    centre = landmarks[int(torch.randint(68, (1,), generator=g))] + 10 * torch.randn(2, generator=g)
    radii = size * (0.08 + 0.17 * torch.rand(2, generator=g))
    inside = _ellipse(size, centre, radii, math.pi * torch.rand(1, generator=g).item())
    return image * (1 - inside) + patch * inside


def _write_image_files(folder: Path, index: int, image8: torch.Tensor, sample: Sample, model: MorphableModel) -> None:
    """``synth_NNNNNN.png`` + ``.pts`` (1-based, as iBUG's) + ``.params.safetensors`` beside it."""
    stem = folder / f"synth_{index:06d}"
    write_png(stem.with_suffix(".png"), to_uint8(image8.float() / 255))
    points = "".join(f"{x + 0.5:.4f} {y + 0.5:.4f}\n" for x, y in sample.landmarks.tolist())
    write_text(stem.with_suffix(".pts"), f"version: 1\nn_points: 68\n{{\n{points}}}\n")
    Parameters(**{g: t[None] for g, t in sample.params.items()}).save(
        stem.with_name(stem.name + ".params.safetensors"),
        metadata={"frame": "the image itself: it is the crop (scaled-orthographic camera in its pixels)",
                  "model": model.metadata.get("name", "")})
