"""``morph train``: the training loop.

A step is the fitter's photometric step with the optimised variables replaced by the
network's output: crops -> :class:`ParameterRegressor` -> :class:`cli.fitting.scene.FaceScene`
(the same renderer call the fitter makes) -> the same ``losses`` objects:

    loss = w_lm * LandmarkLoss(Deep3DFaceRecon point weights, in 224-px units)
         + w_photo * PhotometricLoss (L2,1 inside the rendered skin)
         + CoefficientPrior(w_id, w_exp, w_alb) + w_light * LightingPrior
         + w_param * ParameterLoss (where the data have ground truth)

AdamW (no decay on biases and norms), linear warm-up then cosine decay, gradient clipping,
optional EMA of the weights (used for validation and the saved network). Outputs in RUN/:
``config.toml`` (resolved settings), ``log.csv`` (one row per logging step), ``val.csv``,
``val/step_NNNNNN.png`` (input | render | landmarks), ``last.ckpt`` (resumable state,
:mod:`cli.training.checkpoint`), ``network.safetensors`` (weights for inference) and
TensorBoard events when ``tensorboard`` is installed. Ctrl-C finishes the current step,
saves and stops; SIGKILL loses at most one checkpoint interval; a non-finite loss stops
with the step and the term, keeping the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

import losses
from morphable import ModelMirror, MorphableModel

from ..defaults import load_model
from ..errors import InputError
from ..files import to_uint8, write_png
from ..fitting.scene import FaceScene
from . import distributed
from .augment import augment
from .checkpoint import NAME as CHECKPOINT, load_checkpoint, save_checkpoint
from .config import TrainConfig, from_dict, save_config, to_dict
from .loader import Batch, BatchStream, split
from .network import ParameterRegressor
from .shards import Dataset, DatasetError, read_index
from .validate import validate


class TrainingDiverged(RuntimeError):
    """A loss term became NaN or infinite."""


class TrainingInterrupted(Exception):
    """Ctrl-C: the state was saved at ``step``."""

    def __init__(self, step: int, path: Path):
        super().__init__(f"interrupted after step {step}; saved {path}; continue with morph train --resume "
                         f"{path.parent}")
        self.step = step


@dataclass
class TrainResult:
    steps: int
    seconds: float
    images_per_second: float
    last_losses: dict
    last_validation: dict


def training_loss(config: TrainConfig, resolution: int) -> losses.WeightedSum:
    w = config.loss
    return (w.landmark * losses.LandmarkLoss(losses.deep3d_landmark_weights(), scale=resolution / 224)
            + w.photometric * losses.PhotometricLoss()
            + losses.CoefficientPrior(w.prior_identity, w.prior_expression, w.prior_albedo)
            + w.lighting * losses.LightingPrior()
            + w.parameters * losses.ParameterLoss())


def _check_datasets(config: TrainConfig, model: MorphableModel, folders: list | None = None) -> Dataset:
    folders = config.datasets if folders is None else folders
    if not folders:
        raise InputError("no datasets given")
    dataset = Dataset([Path(d) for d in folders])
    if dataset.resolution != config.resolution:
        raise DatasetError(f"{folders[0]}: holds {dataset.resolution} px crops but --resolution is "
                           f"{config.resolution} (make the data at the training resolution)")
    for folder in dataset.folders:
        index = read_index(folder)
        if index.get("has_params"):
            made_for = index.get("model") or {}
            mine = {"name": model.metadata.get("name", ""), "sizes": list(model.parameter_sizes)}
            if made_for != mine:
                raise DatasetError(f"{folder}: its ground-truth parameters are for model {made_for}, not {mine}")
    return dataset


def _schedule(config: TrainConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        t = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return factor


def _optimiser(net: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)


def _ema_update(decay: float):
    """EMA with a warm-up: the decay grows as (1 + n) / (10 + n) up to ``decay``, so that a short
    run's average is not dominated by the random initial weights."""
    def update(averaged: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        return d * averaged + (1 - d) * current
    return update


class _StopRequest:
    """The first Ctrl-C asks to stop after the current step; a second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not the main thread: no handler
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def __exit__(self, *exc):
        if self._previous is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGINT, self._previous)
        return False


def train(config: TrainConfig | None, run: Path, resume: bool = False, steps: int | None = None,
          device: str | None = None, progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train a network as ``config`` says, writing RUN/ (see the module docstring).

    With ``resume``, ``config`` is ignored: the settings and state saved in
    ``RUN/last.ckpt`` are loaded and training continues from its step, up to ``steps``
    (default: the saved number), on ``device`` (default: the saved one).
    ``stop_after``: save and return after this many steps of this call (the schedule still
    runs to ``steps``; resume later), e.g. to train in several sittings.
    """
    run = Path(run)
    state = None
    if resume:
        if not run.is_dir():
            raise InputError(f"{run}: no such run folder to resume")
        state = load_checkpoint(run / CHECKPOINT)
        config = from_dict(state["config"])
    if steps is not None:
        config.steps = steps
    if device is not None:
        config.device = device
    config.check()
    d = distributed.setup(config.device)
    try:
        return _train(config, run, state, d, progress, stop_after)
    finally:
        distributed.teardown(d)


def _train(config: TrainConfig, run: Path, state: dict | None, d: distributed.Dist, progress: bool,
           stop_after: int | None) -> TrainResult:
    model = load_model(Path(config.model) if config.model else None)
    dataset = _check_datasets(config, model)
    if config.validation:
        train_ids = split(dataset, 0.0)[0]
        val_dataset = _check_datasets(config, model, config.validation)
        val_ids = split(val_dataset, 1.0, config.val_max, whole=True)[1]
    else:
        train_ids, val_ids = split(dataset, config.val_fraction, config.val_max)
    stream = BatchStream(dataset, train_ids, config.batch_size, config.seed, d.rank, d.world, config.window)
    val_stream = BatchStream(val_dataset, val_ids, 1) if config.validation else stream
    # Flipped samples keep their ground truth, mirrored by the model's own mirror maps, when the
    # model is symmetric enough for a mirror to exist; otherwise they are trained on landmarks only.
    mirror = ModelMirror(model) if config.augment.flip > 0 and config.augment.mirror_params else None
    mirror_note = ""
    if mirror is not None and not mirror.symmetric:
        mirror_note = (f"model '{model.metadata.get('name')}' is not left-right symmetric (mean shape off by "
                       f"{mirror.mean_asymmetry:.1%} of its size, basis residuals "
                       f"{mirror.residual['identity']:.1%} / {mirror.residual['expression']:.1%}): flipped samples "
                       "train on landmarks only")
        mirror = None
    detail = config.render_detail
    if detail == "auto":
        detail = "coarse" if model.coarse_triangles is not None else "full"
    if detail == "coarse" and model.coarse_triangles is None:
        raise InputError(f"render_detail = coarse, but model '{model.metadata.get('name')}' has no coarse_triangles")

    torch.manual_seed(config.seed)
    pretrained = config.trunk_weights or config.pretrained
    if pretrained is True and state is None and d.active:  # one process fetches the published weights
        if d.main:
            ParameterRegressor.for_model(model, config.backbone, config.resolution, pretrained=True)
        distributed.barrier(d)
    net = ParameterRegressor.for_model(model, config.backbone, config.resolution, pretrained=pretrained
                                       if state is None else False).to(d.device)
    optimiser = _optimiser(net, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, _schedule(config))
    ema = None
    if config.ema > 0:
        ema = torch.optim.swa_utils.AveragedModel(net, avg_fn=_ema_update(config.ema), use_buffers=True)
    step = 0
    if state is not None:
        net.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        step = int(state["step"])
        net.trunk_origin = state.get("trunk", net.trunk_origin)
    wrapped = DistributedDataParallel(net) if d.active else net
    scene = FaceScene(model, config.resolution, detail=detail).to(d.device)
    loss_fn = training_loss(config, config.resolution).to(d.device)
    use_bf16 = config.precision == "bf16"

    def autocast():
        return torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=use_bf16)

    log = _Log(run, d.main, resume=state is not None)
    if d.main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(config, run / "config.toml")
        log.note(f"{len(train_ids)} training / {len(val_ids)} validation samples from {len(config.datasets)} "
                 f"dataset(s){f' + {len(config.validation)} for validation' if config.validation else ''}; {config.backbone} at {config.resolution} px, batch {config.batch_size} over "
                 f"{d.world} process(es) on {d.device}, precision {config.precision}, render detail {detail}")
        if mirror_note:
            log.note(mirror_note)

    def checkpoint(at: int) -> Path:
        epoch, batch_index = stream.position(at)
        save_checkpoint(run / CHECKPOINT, {
            "step": at, "epoch": epoch, "batch": batch_index, "network": net.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "optimizer": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "config": to_dict(config),
            "trunk": net.trunk_origin,
            "model": model.metadata.get("name", "")})
        (ema.module if ema is not None else net).save(run / "network.safetensors", {"trained_steps": str(at)})
        return run / CHECKPOINT

    local = config.batch_size // d.world
    rows = slice(d.rank * local, (d.rank + 1) * local)
    started, images_done, window_start, window_images = time.perf_counter(), 0, time.perf_counter(), 0
    last_terms, last_val = {}, {}
    first_step = step
    last_step = config.steps if stop_after is None else min(config.steps, step + stop_after)
    with _StopRequest() as stop, log.progress(config.steps, step, enabled=progress and d.main) as bar:
        while step < last_step:
            batch = augment(stream.batch(step).to(d.device), config.augment, config.seed, step, rows,
                            config.batch_size, mirror)
            net.train()
            with autocast():
                params = wrapped(batch.images)
            prediction = scene(params)
            total, terms = loss_fn(prediction, _target(batch))
            bad = [name for name, t in terms.items() if not torch.isfinite(t)]
            stop_now, diverged = distributed.all_flags(d, stop.requested, bool(bad))
            if diverged:
                saved = f"; the last good checkpoint is {run / CHECKPOINT}" if (run / CHECKPOINT).is_file() else ""
                raise TrainingDiverged(f"training diverged at step {step + 1}: loss term "
                                       f"'{bad[0] if bad else 'on another process'}' is not finite{saved}")
            optimiser.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            optimiser.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(net)
            step += 1
            images_done += config.batch_size
            window_images += config.batch_size
            if d.main:
                bar.advance(step, float(total.detach()), window_images / max(time.perf_counter() - window_start, 1e-9))
            if step % config.log_every == 0 or step == config.steps:
                rate = window_images / max(time.perf_counter() - window_start, 1e-9)
                last_terms = distributed.mean_values(d, {k: float(v.detach()) for k, v in terms.items()}
                                                     | {"total": float(total.detach())})
                log.row(step, last_terms, scheduler.get_last_lr()[0], rate)
                window_start, window_images = time.perf_counter(), 0
            if step % config.val_every == 0 or step == config.steps:
                if d.main:
                    evaluated = ema.module if ema is not None else net
                    evaluated.eval()
                    last_val, grid = validate(evaluated, scene, val_stream, val_ids, d.device, autocast)
                    log.validation(step, last_val, grid)
                distributed.barrier(d)
            if step % config.checkpoint_every == 0 or step == last_step:
                if d.main:
                    checkpoint(step)
                distributed.barrier(d)
            if stop_now and step < config.steps:
                if d.main:
                    checkpoint(step)
                distributed.barrier(d)
                raise TrainingInterrupted(step, run / CHECKPOINT)
    seconds = time.perf_counter() - started
    log.close()
    return TrainResult(step - first_step, seconds, images_done / max(seconds, 1e-9), last_terms, last_val)


def _target(batch: Batch) -> dict:
    target = {"landmarks": batch.landmarks, "image": batch.images, "landmark_weights": batch.landmark_weights,
              "parameter_weights": batch.parameter_loss_weights()}
    if batch.params is not None:
        target.update({g: batch.params[g] for g in ("identity", "expression", "albedo")})
    return target


class _Log:
    """log.csv, val.csv, validation pictures, TensorBoard events (rank 0 only) and the progress bar."""

    def __init__(self, run: Path, main: bool, resume: bool):
        self.run, self.main, self.resume = run, main, resume
        self.writer = None
        self.tensorboard = None
        self.lines: list[str] = []
        if main:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tensorboard = SummaryWriter(str(run / "tensorboard"))
            except ImportError:
                self.lines.append("TensorBoard events off (pip install tensorboard to write them)")

    def note(self, text: str) -> None:
        if self.main:
            print(text, flush=True)
            for line in self.lines:
                print(line, flush=True)
            self.lines = []

    def row(self, step: int, terms: dict, lr: float, rate: float) -> None:
        if not self.main:
            return
        self._csv("log.csv", ["step", *terms, "lr", "images_per_second"], [step, *terms.values(), lr, rate])
        if self.tensorboard:
            for name, value in terms.items():
                self.tensorboard.add_scalar(f"loss/{name}", value, step)
            self.tensorboard.add_scalar("lr", lr, step)
            self.tensorboard.add_scalar("images_per_second", rate, step)

    def validation(self, step: int, metrics: dict, grid: torch.Tensor) -> None:
        self._csv("val.csv", ["step", *metrics], [step, *metrics.values()])
        write_png(self.run / "val" / f"step_{step:06d}.png", to_uint8(grid))
        if self.tensorboard:
            for name, value in metrics.items():
                self.tensorboard.add_scalar(f"val/{name}", value, step)

    def _csv(self, name: str, header: list, values: list) -> None:
        path = self.run / name
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(header)
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in values])

    @contextlib.contextmanager
    def progress(self, total: int, start: int, enabled: bool):
        bar = _Bar(total, start, enabled)
        try:
            yield bar
        finally:
            bar.close()

    def close(self) -> None:
        if self.tensorboard:
            self.tensorboard.close()


class _Bar:
    """A rich progress bar with the loss, images/s and the time left."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.progress = None
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                     TextColumn("loss {task.fields[loss]:.4g}"),
                                     TextColumn("{task.fields[rate]:.1f} img/s"), TimeRemainingColumn(),
                                     transient=True, disable=None)
            self.progress.start()
            self.task = self.progress.add_task("training", total=total, completed=start, loss=float("nan"), rate=0.0)

    def advance(self, step: int, loss: float, rate: float) -> None:
        if self.progress:
            self.progress.update(self.task, completed=step, loss=loss, rate=rate)

    def close(self) -> None:
        if self.progress:
            self.progress.stop()
