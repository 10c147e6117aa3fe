"""``morph fit`` on clips (video files, ``--video`` folders of frames) and on ``--same-person`` photos.

:func:`fit_multi` is what ``morph fit`` calls for these inputs: it checks the inputs, runs the
tracking or the joint fit with a progress bar, prints a line per result and returns the exit
code. Bad input is one ``morph: error:`` line each; a clip that fails leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import USER_ERRORS, InputError, one_line, report
from ..video import is_video
from .optimise import FitConfig, FitDiverged


def _bar():
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from ..progress import progress_bar

    return progress_bar(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn())


def fit_multi(images: list[Path], out: Path, *, video: bool, same_person: bool, fps: float | None,
              landmarks: Path | None, model: Path | None, device: str, resolution: int, steps: int,
              landmark_steps: int, detector: str = "mediapipe", threshold: float = 0.5) -> int:
    """Track every clip in ``images`` (video files; folders too with ``video``), or fit ``images`` as
    photos of one person (``same_person``). Returns the exit code (0: all done, 1: something failed)."""
    from ..defaults import load_model
    from ..options import check_detector, resolve_device

    try:
        dev = resolve_device(device)
        check_detector(detector)
        if video and same_person:
            raise InputError("--video and --same-person do not go together")
        if same_person:
            from ..files import collect_images

            paths = collect_images(images)
            if not paths:
                raise InputError("no images found in " + ", ".join(map(str, images)))
            if landmarks is not None:
                raise InputError("--landmarks does not go with --same-person (each photo is detected)")
            clips = []
        else:
            clips = [p for p in images if is_video(p) or (video and p.is_dir())]
            others = [p for p in images if p not in clips]
            if others:
                what = "a folder (add --video to read it as frames)" if others[0].is_dir() else "not a video file"
                raise InputError(f"{others[0]}: {what}; fit photos and clips in separate runs")
            if landmarks is not None and len(clips) != 1:
                raise InputError(f"--landmarks goes with exactly one clip, got {len(clips)}")
        face_model = load_model(model)
    except USER_ERRORS as exc:
        report(one_line(exc))
        return 1
    if same_person:
        return _same_person(paths, out, face_model, FitConfig(resolution=resolution, photometric_steps=steps,
                                                                 landmark_steps=landmark_steps), dev, detector,
                            threshold)
    return _clips(clips, out, face_model, resolution, dev, fps, landmarks, detector, threshold)


def _clips(clips: list[Path], out: Path, model, resolution: int, device: str, fps: float | None,
           landmarks: Path | None, detector: str, threshold: float) -> int:
    from .clip import clip_output_name, fit_clip_and_write
    from .tracking import TrackConfig

    config = TrackConfig(fit=FitConfig(resolution=resolution))
    failures = 0
    with _bar() as bar:
        task = bar.add_task("reading", total=None)

        def progress(phase, done, total):
            bar.update(task, description=f"{phase} {name}", completed=done, total=total)

        for clip in clips:
            name = clip.name
            try:
                result = fit_clip_and_write(clip, out, model, config, device, fps, landmarks, detector=detector,
                                            threshold=threshold, progress=progress)
            except (*USER_ERRORS, FitDiverged) as exc:
                failures += 1
                report(one_line(exc))
                continue
            bridged = len(result["interpolated"]) + len(result["carried_over"])
            jitter = result["jitter_px"]
            notes = [f"{bridged} without a face, bridged" if bridged else "",
                     "the file is cut short: used the frames before the cut" if result["truncated"] else "",
                     f"downscaled to {result['working_size'][1]}x{result['working_size'][0]}"
                     if result["working_size"] != result["source_size"] else ""]
            notes = "; ".join(n for n in notes if n)
            typer.echo(f"{clip}: {result['frames']} frames tracked in {result['wall_seconds']:.1f} s "
                       f"({result['seconds_per_frame']:.2f} s/frame"
                       + (f", jitter {jitter['fitted']:.2f} px vs input {jitter['input']:.2f}" if jitter["ratio"]
                          else "")
                       + f") -> {out / clip_output_name(clip)}" + (f" ({notes})" if notes else ""))
    if len(clips) > 1:
        typer.echo(f"{len(clips) - failures} of {len(clips)} clips tracked")
    return 1 if failures else 0


def _same_person(paths: list[Path], out: Path, model, config: FitConfig, device: str, detector: str,
                 threshold: float) -> int:
    from .same_person import fit_same_person_and_write, person_output_name

    failed = []

    def skip(path, exc):
        failed.append(path)
        report(f"{one_line(exc)} (left out of the joint fit)")

    with _bar() as bar:
        task = bar.add_task(f"fitting {len(paths)} photos of one person",
                            total=config.landmark_steps + config.photometric_steps)
        try:
            result, _ = fit_same_person_and_write(paths, out, model, config, device, progress=lambda: bar.advance(task),
                                                  on_error=skip, detector=detector, threshold=threshold)
        except (*USER_ERRORS, FitDiverged) as exc:
            report(one_line(exc))
            return 1
    used = [p for p in paths if p not in failed]
    typer.echo(f"{len(used)} photos of one person fitted in {result.seconds:.1f} s -> "
               f"{out / person_output_name(used)}")
    return 1 if failed else 0
