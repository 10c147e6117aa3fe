"""Renderer benchmark: ``python -m render.benchmark [--res 224 512] [--batch 1 8] [--backend torch]``.

A face-like mesh (~35k vertices, ~70k triangles) seen by a pinhole camera filling most of
the frame. Prints the median milliseconds of forward and forward+backward for
rasterize+interpolate, antialias, and a full render (camera, normals, SH shading,
rasterize, interpolate, antialias) + L1 loss, for every available backend.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from . import nvdiffrast_backend, ops
from .cameras import PinholeCamera
from .meshes import grid_face
from .renderer import Renderer


def _timed(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """(median, min) milliseconds of ``repeats`` runs after two warm-ups."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    fn()  # warm-up (and caches)
    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times), 1000.0 * min(times)


def _scene(batch: int, res: int, device: torch.device):
    vertices, tri = grid_face()
    yaw = torch.linspace(-0.3, 0.3, batch)
    rot = torch.zeros(batch, 3, 3)
    rot[:, 0, 0], rot[:, 0, 2], rot[:, 1, 1], rot[:, 2, 0], rot[:, 2, 2] = yaw.cos(), yaw.sin(), 1, -yaw.sin(), yaw.cos()
    camera = PinholeCamera(focal=1015.0 * res / 224, image_size=(res, res))
    translation = torch.tensor([[0.0, 0.0, -1015.0 * 170.0 / 224.0]]).expand(batch, -1)
    light = torch.zeros(batch, 27)
    light[:, [0, 9, 18]] = 0.8 * 2 / math.sqrt(math.pi)
    light[:, [2, 11, 20]] = 0.3
    g = torch.Generator().manual_seed(0)
    albedo = 0.5 + 0.3 * torch.rand(batch, vertices.shape[0], 3, generator=g)
    target = torch.rand(batch, 3, res, res, generator=g)
    to = dict(device=device)
    return (vertices[None].expand(batch, -1, -1).contiguous().to(**to), tri.to(**to), rot.to(**to),
            translation.contiguous().to(**to), light.to(**to), albedo.to(**to), target.to(**to), camera)


def run(backend: str, device: torch.device, res: int, batch: int, repeats: int) -> dict:
    vertices, tri, rot, translation, light, albedo, target, camera = _scene(batch, res, device)
    clip = camera.to_clip(vertices, rot, translation).detach()
    topology = ops.construct_topology_hash(tri, backend=backend)
    renderer = Renderer(tri, backend=backend).to(device)
    results = {}

    def raster(backward: bool):
        pos = clip.clone().requires_grad_(backward)
        attr = albedo.clone().requires_grad_(backward)
        rast, _ = ops.rasterize(pos, tri, (res, res), backend=backend)
        img, _ = ops.interpolate(attr, rast, tri, backend=backend)
        if backward:
            img.sum().backward()
        return pos, rast, img

    _, rast, img = raster(False)
    img = img.detach()

    def aa(backward: bool):
        pos = clip.clone().requires_grad_(backward)
        colour = img.clone().requires_grad_(backward)
        out = ops.antialias(colour, rast, pos, tri, topology, backend=backend)
        if backward:
            out.sum().backward()

    def full(backward: bool):
        v = vertices.clone().requires_grad_(backward)
        a = albedo.clone().requires_grad_(backward)
        out = renderer(v, a, light, camera, rot, translation)
        loss = (out.image - target).abs().mean()
        if backward:
            loss.backward()

    for name, fn in (("rasterize+interpolate", raster), ("antialias", aa), ("render+L1", full)):
        with torch.no_grad():
            results[f"{name} fwd"] = _timed(lambda: fn(False), device, repeats)
        results[f"{name} fwd+bwd"] = _timed(lambda: fn(True), device, repeats)
    return results, (rast[..., 3] > 0).float().mean().item()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m render.benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--res", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--backend", choices=ops.BACKENDS, nargs="+", default=None,
                        help="default: torch on CPU, plus torch and nvdiffrast on CUDA when available")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    setups = [("torch", torch.device("cpu"))]
    if torch.cuda.is_available():
        setups.append(("torch", torch.device("cuda")))
        if nvdiffrast_backend.available():
            setups.append(("nvdiffrast", torch.device("cuda")))
    if args.backend:
        setups = [s for s in setups if s[0] in args.backend]
    vertices, tri = grid_face()
    print(f"mesh: {vertices.shape[0]} vertices, {tri.shape[0]} triangles; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads; milliseconds, median (min) of {args.repeats} runs")
    names = ["rasterize+interpolate", "antialias", "render+L1"]
    print(f"{'backend':10s} {'dev':4s} {'res':>5s} {'B':>2s}  " + "  ".join(f"{n + ' ' + p:>27s}" for n in names
                                                                         for p in ("fwd", "fwd+bwd")))
    for backend, device in setups:
        for res in args.res:
            for batch in args.batch:
                results, coverage = run(backend, device, res, batch, args.repeats)
                cells = "  ".join(f"{med:18.1f} ({low:6.1f})" for med, low in results.values())
                print(f"{backend:10s} {device.type:4s} {res:4d}² {batch:2d}  {cells}   coverage {coverage:.2f}")


if __name__ == "__main__":
    main()
