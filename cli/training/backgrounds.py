"""Backgrounds for synthetic faces: procedural patterns and photographs.

Photographs: scikit-image's CC0 / public-domain sample images without faces (read from the
installed package's data folder: the ``train`` extra installs it) and, optionally, any
folder of the user's images. Procedural: colour gradients, smooth noise at random scales,
and stripes. Every draw comes from the caller's generator, so backgrounds are reproducible.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import kornia
import torch

from ..errors import InputError
from ..files import IMAGE_SUFFIXES, collect_images, load_image

# scikit-image sample images with CC0 / public-domain terms and no faces (see their docstrings).
SKIMAGE_FILES = ("brick.png", "chelsea.png", "coffee.png", "grass.png", "gravel.png", "hubble_deep_field.jpg",
                 "ihc.png", "retina.jpg", "rocket.jpg")


def skimage_photos() -> list[Path]:
    """Paths of the scikit-image sample photos (raises InputError if scikit-image is not installed)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("photographic backgrounds need scikit-image: pip install -e '.[train]' "
                         "(or use --backgrounds procedural, or --background-folder DIR)")
    folder = Path(spec.submodule_search_locations[0]) / "data"
    paths = [folder / name for name in SKIMAGE_FILES if (folder / name).is_file()]
    if not paths:
        raise InputError(f"{folder}: scikit-image's sample images are missing")
    return paths


class Backgrounds:
    """Draws ``[3,S,S]`` backgrounds in [0,1].

    Args:
        resolution: S.
        kinds: ``"procedural"``, ``"photos"`` or ``"both"``.
        folder: extra photos (any images) to draw from.
    """

    def __init__(self, resolution: int, kinds: str = "both", folder: Path | None = None):
        if kinds not in ("procedural", "photos", "both"):
            raise InputError(f"--backgrounds {kinds!r}: use procedural, photos or both")
        self.resolution = resolution
        self.procedural = kinds in ("procedural", "both")
        paths = skimage_photos() if kinds in ("photos", "both") else []
        if folder is not None:
            extra = collect_images([Path(folder)])
            if not extra:
                raise InputError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) to use as backgrounds")
            paths += extra
        # Photos are small enough to keep decoded (the scikit-image set is ~10 MB as floats).
        self.photos = [load_image(p) for p in paths]
        self.names = [p.name for p in paths]

    def describe(self) -> str:
        parts = (["procedural"] if self.procedural else []) + ([f"{len(self.photos)} photos"] if self.photos else [])
        return " + ".join(parts)

    def draw(self, g: torch.Generator) -> torch.Tensor:
        use_photo = self.photos and (not self.procedural or torch.rand(1, generator=g).item() < 0.5)
        return self._photo(g) if use_photo else self._procedural(g)

    def _photo(self, g: torch.Generator) -> torch.Tensor:
        photo = self.photos[int(torch.randint(len(self.photos), (1,), generator=g))]
        h, w = photo.shape[1:]
        side = min(h, w) * (0.2 + 0.8 * torch.rand(1, generator=g).item())
        x0 = torch.rand(1, generator=g).item() * (w - side)
        y0 = torch.rand(1, generator=g).item() * (h - side)
        s = self.resolution / side
        m = torch.tensor([[[s, 0.0, -s * x0], [0.0, s, -s * y0]]])
        out = kornia.geometry.transform.warp_affine(photo[None], m, (self.resolution,) * 2, align_corners=False)[0]
        if torch.rand(1, generator=g).item() < 0.5:
            out = out.flip(-1)
        return out.clamp(0, 1)

    def _procedural(self, g: torch.Generator) -> torch.Tensor:
        s = self.resolution
        kind = int(torch.randint(3, (1,), generator=g))
        ys, xs = torch.meshgrid(torch.linspace(0, 1, s), torch.linspace(0, 1, s), indexing="ij")
        if kind == 0:  # a two-colour gradient in a random direction
            angle = 2 * math.pi * torch.rand(1, generator=g).item()
            t = (xs * math.cos(angle) + ys * math.sin(angle)).sub(-1).div(2)
            a, b = torch.rand(3, 1, 1, generator=g), torch.rand(3, 1, 1, generator=g)
            out = a + (b - a) * t
        elif kind == 1:  # smooth colour noise at a random scale
            cells = int(torch.randint(2, 24, (1,), generator=g))
            noise = torch.rand(1, 3, cells, cells, generator=g)
            out = torch.nn.functional.interpolate(noise, size=(s, s), mode="bicubic", align_corners=False)[0]
        else:  # stripes
            angle = 2 * math.pi * torch.rand(1, generator=g).item()
            freq = 2 + 30 * torch.rand(1, generator=g).item()
            t = 0.5 + 0.5 * torch.sin(2 * math.pi * freq * (xs * math.cos(angle) + ys * math.sin(angle)))
            a, b = torch.rand(3, 1, 1, generator=g), torch.rand(3, 1, 1, generator=g)
            out = a + (b - a) * t
        return out.clamp(0, 1)
