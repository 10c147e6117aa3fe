"""Conversion speed and memory on full-size synthetic files: ``python -m morphable.convert.benchmark``.

Writes each source at its real size (vertices, components, file layout; random geometry and
bases from :mod:`morphable.convert.fixtures`) into a temporary folder, then converts and saves
each one in a fresh process (as ``morph convert`` does, float32), printing seconds, the peak
resident memory above the process's baseline after imports, and the target
``2 x output + input``. Needs the ``convert`` extra.

``--visual DIR`` instead writes a real-size BFM 2009 + Deep3DFaceRecon layout built from the
default model (subdivided to 53,490 vertices) for a look at ``morph fit --model``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import fixtures as fx
from .bfm2009 import BFM2009_VERTICES, EOS_IBUG_TO_BFM2009
from .bfm2017 import BFM2017_NOMOUTH_VERTICES, EOS_IBUG_TO_BFM2017_NOMOUTH
from .sfm import EOS_IBUG_TO_SFM

# name -> (format, vertices, identity, expression, albedo components, writer options)
CASES = {
    "bfm2009": ("bfm2009", BFM2009_VERTICES, 199, 0, 199, {}),
    "bfm2009-deep3d-front": ("bfm2009", BFM2009_VERTICES, 199, 79, 199, {"crop": "front"}),
    "bfm2017-nomouth": ("bfm2017", BFM2017_NOMOUTH_VERTICES, 199, 100, 199, {}),
    "bfm2019-fullhead": ("bfm2017", 58203, 199, 100, 199, {}),
    "flame-2020+texture": ("flame", 5023, 300, 100, 200, {}),
    "ict-facekit": ("ict", 26719, 100, 53, 0, {}),
    "sfm-3448": ("sfm", 3448, 63, 6, 0, {}),
    "sfm-29587": ("sfm", 29587, 63, 6, 0, {}),
}

# The child reads its peak resident memory from /proc (VmHWM starts afresh at exec; getrusage's
# ru_maxrss would carry the parent's peak over).
# Fixed working memory of a conversion (imports' first use, small temporaries), allowed on top of
# the 2 x output + input target, which is about the arrays.
SLACK_MB = 32

_CHILD = """
import json, re, sys, time, torch
torch.set_num_threads(1)
from morphable.convert import convert
def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
base = hwm()
t0 = time.perf_counter()
model = convert(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))
t1 = time.perf_counter()
model.save(sys.argv[4], float_dtype=torch.float32)
t2 = time.perf_counter()
print(json.dumps({"convert": t1 - t0, "save": t2 - t1, "base_kb": base, "peak_kb": hwm()}))
"""


def write_case(name: str, folder: Path) -> tuple[Path, dict]:
    """Write one full-size source; returns (SOURCE, converter options)."""
    fmt, n, k_id, k_exp, k_alb, options = CASES[name]
    pinned = {"bfm2009": {k - 1: v for k, v in EOS_IBUG_TO_BFM2009.items()},
              "bfm2017-nomouth": {k - 1: v for k, v in EOS_IBUG_TO_BFM2017_NOMOUTH.items()},
              "sfm-3448": {k - 1: v for k, v in EOS_IBUG_TO_SFM.items()}}.get(name)
    face = fx.make_face(n, k_id, max(k_exp, 1), max(k_alb, 1), pinned=pinned)
    if fmt == "bfm2009":
        deep3d = options.get("crop") == "front"
        trim = np.arange(53215) if deep3d else None
        front = np.sort(np.argsort(-face.vertices[:53215, 2], kind="stable")[:35709]) if deep3d else None
        if deep3d:  # Deep3DFaceRecon's keypoints must lie in the front face
            assert np.isin(face.landmarks, front).all()
        return fx.write_bfm2009(face, folder, expressions=k_exp > 0, deep3d=deep3d, trim=trim, front=front), options
    if fmt == "bfm2017":
        label = "model2017-1_bfm_nomouth.h5" if n == BFM2017_NOMOUTH_VERTICES else "model2019_fullHead.h5"
        mapping = {} if pinned else {"landmarks": fx.write_eos_mapping(face.landmarks, folder / "map.txt")}
        return fx.write_bfm2017(face, folder / label), {**options, **{k: str(v) for k, v in mapping.items()}}
    if fmt == "flame":
        return fx.write_flame(face, folder, texture_side=512, texture_components=k_alb), options
    if fmt == "ict":
        return fx.write_ict(face, folder, expression_names=[f"expression{k:02d}" for k in range(k_exp)]), options
    path = fx.write_sfm(face, folder)
    if not pinned:
        options = {"landmarks": str(fx.write_eos_mapping(face.landmarks, folder / "map.txt", skip=[*range(17)]))}
    return path, options


def run(names: list[str], keep: Path | None = None) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = keep or Path(tmp)
        for name in names:
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            source, options = write_case(name, folder)
            written = time.perf_counter() - t
            out = root / f"{name}.safetensors"
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(source), CASES[name][0], json.dumps(options),
                                   str(out)], capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{name}: {proc.stderr.strip().splitlines()[-1]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            input_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
            output_mb = out.stat().st_size / 2**20
            rows.append({"case": name, "seconds": r["convert"] + r["save"], "convert_s": r["convert"],
                         "save_s": r["save"], "peak_mb": (r["peak_kb"] - r["base_kb"]) / 1024,
                         "base_mb": r["base_kb"] / 1024, "input_mb": input_mb, "output_mb": output_mb,
                         "budget_mb": 2 * output_mb + input_mb, "write_s": written})
            row = rows[-1]
            print(f"{name:22s} {row['seconds']:6.1f} s (convert {row['convert_s']:.1f}, save {row['save_s']:.1f})  "
                  f"peak +{row['peak_mb']:6.0f} MB over {row['base_mb']:.0f} MB baseline  "
                  f"budget {row['budget_mb']:6.0f} MB (in {input_mb:.0f}, out {output_mb:.0f})  "
                  f"{'ok' if row['seconds'] <= 60 and row['peak_mb'] <= row['budget_mb'] + SLACK_MB else 'OVER'}",
                  flush=True)
            if keep is None:
                for f in sorted(folder.rglob("*"), reverse=True):
                    f.unlink() if f.is_file() else f.rmdir()
    return rows


def _subdivide(triangles: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint subdivision: (edges [E,2] whose midpoints become vertices n.., triangles [4F,3])."""
    pairs = np.sort(np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]]), 1)
    edges, index = np.unique(pairs, axis=0, return_inverse=True)
    f = len(triangles)
    m01, m12, m20 = (n + index[k * f:(k + 1) * f] for k in range(3))
    a, b, c = triangles.T
    return edges, np.concatenate([np.stack(t, 1) for t in ((a, m01, m20), (m01, b, m12), (m20, m12, c),
                                                           (m01, m12, m20))])


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull ``[H,2]`` of 2D points (Andrew's monotone chain)."""
    pts = sorted(map(tuple, points))
    def half(seq):
        out = []
        for p in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]
    return np.array(half(pts) + half(pts[::-1]))


def _distance_to_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Signed distance ``[P]`` from 2D points to a convex counter-clockwise polygon (negative inside)."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    ab = b - a
    ap = points[:, None] - a[None]
    t = np.clip((ap * ab).sum(-1) / (ab ** 2).sum(-1), 0, 1)
    edge = np.linalg.norm(ap - t[..., None] * ab, axis=-1).min(1)
    inside = (ab[None, :, 0] * ap[..., 1] - ab[None, :, 1] * ap[..., 0] >= 0).all(1)
    return np.where(inside, -edge, edge)


def write_default_as_bfm2009(folder: Path) -> Path:
    """The default model, subdivided once and padded to 53,490 vertices, as BFM 2009 + Guo et al.'s
    expressions + Deep3DFaceRecon's index files (trim 53,215; a front face of ~40k vertices, its
    keypoints = the default model's landmarks). Bases go in as orthonormal columns and σ (SVD)."""
    import torch

    from ..model import MorphableModel

    m = MorphableModel.from_file(Path(__file__).resolve().parents[2] / "assets" / "morph_face.safetensors")
    tri = m.triangles.numpy()
    edges, fine = _subdivide(tri, m.num_vertices)

    def up(x: torch.Tensor) -> np.ndarray:  # [N,...] -> [N + E + pad, ...], midpoints averaged
        x = x.double().numpy()
        out = np.concatenate([x, (x[edges[:, 0]] + x[edges[:, 1]]) / 2])
        pad = np.repeat(out[:1] * 0 + out.mean(0, keepdims=True), BFM2009_VERTICES - len(out), 0)
        return np.concatenate([out, pad])

    def pca(basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u, s, _ = np.linalg.svd(basis.reshape(-1, basis.shape[2]), full_matrices=False)
        return u.astype(np.float32), s

    vertices = up(m.shape_mean)
    n_real = m.num_vertices + len(edges)
    face = fx.Face(vertices=vertices, triangles=fine, landmarks=m.landmarks.numpy(),
                   id_basis=None, id_sigma=None, exp_basis=None, exp_sigma=None,
                   albedo_mean=up(m.albedo_mean).clip(0, 1).astype(np.float32), albedo_basis=None,
                   albedo_sigma=None, uv=np.zeros((len(vertices), 2)))
    face.id_basis, face.id_sigma = pca(up(m.identity_basis))
    face.exp_basis, face.exp_sigma = pca(up(m.expression_basis))
    face.albedo_basis, face.albedo_sigma = pca(up(m.albedo_basis))
    # Trim: drop 275 padding vertices; front face: the real vertices within 5 mm (frontal view) of
    # the landmarks' convex hull, a face-shaped crop like Deep3DFaceRecon's (about its size).
    trim = np.arange(53215)
    hull = _convex_hull(vertices[m.landmarks.numpy(), :2])
    front = np.flatnonzero(_distance_to_polygon(vertices[:n_real, :2], hull) < 5.0)
    if not np.isin(face.landmarks, front).all():
        raise RuntimeError("a landmark is outside the front crop")
    masks = [up(getattr(m, name).double()[:, None])[:, 0] > 0.75 for name in ("skin_mask", "face_mask")]
    return fx.write_bfm2009(face, folder, expressions=True, deep3d=True, trim=trim, front=front, skin=masks[0],
                            face_region=masks[1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", default=list(CASES), help=f"any of {', '.join(CASES)}")
    parser.add_argument("--keep", type=Path, help="write the sources and outputs here and keep them")
    parser.add_argument("--visual", type=Path, help="write the default-model BFM 2009 layout here and stop")
    args = parser.parse_args(argv)
    if args.visual:
        print(write_default_as_bfm2009(args.visual))
        return
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}")
    print("machine: shared CPU; one BLAS thread per conversion; times are wall-clock; peak = resident memory "
          f"above the baseline after imports; target: 60 s and 2 x output + input (+ {SLACK_MB} MB fixed)")
    run(args.cases, args.keep)


if __name__ == "__main__":
    main()
