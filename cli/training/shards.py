"""The training-data format: one folder per dataset, samples in safetensors shards.

Layout of a dataset folder::

    DATASET/
      dataset.json            index: format, resolution, shards and their counts, sources
      shard-00000.safetensors
      shard-00001.safetensors
      ...

A shard holds ``n`` samples (at most ``SHARD_SIZE``) as tensors:

===================  ================  ===============================================
images               [n,3,S,S] uint8   face crops (the crop of :mod:`cli.fitting.crop`), RGB
landmarks            [n,68,2] float32  68 iBUG landmarks in crop pixels (morph's convention)
landmark_weights     [n,68] float32    1 where a landmark is valid, 0 where it is not
params_identity ...  [n,K] float32     optional ground-truth parameters (synthetic data,
                                       fitted photos): ``params_`` + each of the five
                                       groups, in the crop's frame
parameter_weights    [n] float32       optional, with the parameters: how far each
                                       sample's parameters are trusted (0..1; absent: 1)
===================  ================  ===============================================

and the metadata strings ``sources`` (a JSON list: each sample's source, e.g. the photo's
path or ``synth:<seed>:<index>``) and, where the writer said, ``labels`` (a JSON list: what
each sample's landmarks are, e.g. ``template`` or ``detector``; the index's ``labels`` says
what each kind means). ``dataset.json`` holds ``format`` (``morph-dataset``),
``version``, ``resolution`` (S), ``shards`` ([{"file", "count"}] in order), ``count``,
``has_params``, ``model`` (for ground-truth parameters: the morphable model's name and
sizes), ``done`` and ``failed`` (sources processed, for resumable preparation), and
``generator`` (the command and its settings). Shards and the index are written
atomically, the index after its shard, so an interrupted writer leaves a valid dataset.

Readers open shards lazily with safetensors (memory-mapped; no code runs) and read single
samples, so memory stays bounded whatever the dataset's size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from morphable import GROUPS
from morphable.schema import atomic_save_safetensors

from ..errors import InputError
from ..files import write_json

FORMAT = "morph-dataset"
VERSION = 1
SHARD_SIZE = 256
INDEX = "dataset.json"
REQUIRED = ("images", "landmarks", "landmark_weights")


class DatasetError(InputError):
    """A dataset folder is missing, empty, or has an unreadable or corrupt shard."""


@dataclass
class Sample:
    """One training sample (see the module docstring for shapes)."""

    image: torch.Tensor  # [3,S,S] uint8
    landmarks: torch.Tensor  # [68,2]
    source: str
    landmark_weights: torch.Tensor | None = None  # [68]
    params: dict[str, torch.Tensor] | None = None  # group -> [K]
    parameter_weight: torch.Tensor | None = None  # [] how far the params are trusted (None: fully)
    label: str = ""  # what the landmarks are (see the module docstring)


class ShardWriter:
    """Appends samples to a dataset folder, a shard at a time (creates the folder if needed)."""

    def __init__(self, folder: Path, resolution: int, generator: dict | None = None, model: dict | None = None,
                 shard_size: int = SHARD_SIZE):
        self.folder = Path(folder)
        self.shard_size = shard_size
        self.pending: list[Sample] = []
        if (self.folder / INDEX).is_file():
            self.index = read_index(self.folder)
            if self.index["resolution"] != resolution:
                raise DatasetError(f"{self.folder}: holds {self.index['resolution']} px crops, not {resolution} px")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.index = {"format": FORMAT, "version": VERSION, "resolution": resolution, "shards": [], "count": 0,
                          "has_params": None, "model": model, "done": [], "failed": {}, "generator": generator}
        self.done = set(self.index["done"])

    def add(self, sample: Sample) -> None:
        self.pending.append(sample)
        if len(self.pending) >= self.shard_size:
            self.flush()

    def fail(self, source: str, reason: str) -> None:
        self.index["failed"][source] = reason

    def flush(self) -> None:
        """Write the pending samples as one shard, then the index (both atomically)."""
        if self.pending:
            samples, self.pending = self.pending, []
            has_params = samples[0].params is not None
            if self.index["has_params"] is None:
                self.index["has_params"] = has_params
            if any((s.params is not None) != self.index["has_params"] for s in samples):
                raise ValueError("a dataset's samples must all have ground-truth parameters, or none")
            tensors = {
                "images": torch.stack([s.image for s in samples]).to(torch.uint8).contiguous(),
                "landmarks": torch.stack([s.landmarks for s in samples]).float(),
                "landmark_weights": torch.stack([torch.ones(68) if s.landmark_weights is None else s.landmark_weights
                                                 for s in samples]).float(),
            }
            if has_params:
                for group in GROUPS:
                    tensors["params_" + group] = torch.stack([s.params[group] for s in samples]).float()
                if any(s.parameter_weight is not None for s in samples):
                    tensors["parameter_weights"] = torch.stack([
                        torch.ones(()) if s.parameter_weight is None else s.parameter_weight.reshape(())
                        for s in samples]).float()
            name = f"shard-{len(self.index['shards']):05d}.safetensors"
            metadata = {"sources": json.dumps([s.source for s in samples])}
            if any(s.label for s in samples):
                metadata["labels"] = json.dumps([s.label for s in samples])
            atomic_save_safetensors(tensors, metadata, self.folder / name)
            self.index["shards"].append({"file": name, "count": len(samples)})
            self.index["count"] += len(samples)
            new = [s.source for s in samples]
            self.index["done"] += new
            self.done.update(new)
            for source in new:
                self.index["failed"].pop(source, None)
        write_json(self.folder / INDEX, self.index)


def read_index(folder: Path) -> dict:
    """``dataset.json`` of ``folder``, checked; raises :class:`DatasetError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such dataset folder")
    path = folder / INDEX
    if not path.is_file():
        raise DatasetError(f"{folder}: not a morph dataset (no {INDEX}; make one with morph prepare or morph synth)")
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DatasetError(f"{path}: not a {FORMAT} index")
    if index.get("version") != VERSION:
        raise DatasetError(f"{path}: dataset version {index.get('version')}, this morph reads {VERSION}")
    return index


@dataclass
class Shard:
    path: Path
    count: int
    has_params: bool
    _file: object = field(default=None, repr=False)

    def open(self):
        if self._file is None:
            self._file = safe_open(str(self.path), framework="pt")
        return self._file

    def close(self) -> None:
        self._file = None

    def read(self, i: int) -> dict[str, torch.Tensor]:
        """Sample ``i`` as ``{name: tensor without the sample dimension}``."""
        f = self.open()
        return {name: f.get_slice(name)[i:i + 1][0] for name in f.keys()}


class Dataset:
    """One or more dataset folders seen as one list of shards (all of one resolution).

    Every shard's header is checked when the dataset is opened, so a corrupt or truncated
    shard is reported up front (:class:`DatasetError`), not in the middle of training.
    """

    def __init__(self, folders: list[Path]):
        if not folders:
            raise DatasetError("no dataset folders given")
        self.shards: list[Shard] = []
        self.folders = [Path(f) for f in folders]
        self.resolution = None
        self.has_params = []
        for folder in self.folders:
            index = read_index(folder)
            if self.resolution is None:
                self.resolution = index["resolution"]
            elif index["resolution"] != self.resolution:
                raise DatasetError(f"{folder}: {index['resolution']} px crops; the other datasets have "
                                   f"{self.resolution} px (prepare them at one --resolution)")
            if not index["shards"] or not index["count"]:
                raise DatasetError(f"{folder}: the dataset is empty")
            for entry in index["shards"]:
                shard = Shard(folder / entry["file"], int(entry["count"]), bool(index["has_params"]))
                _check_shard(shard, self.resolution)
                self.shards.append(shard)
        self.counts = torch.tensor([s.count for s in self.shards])

    def __len__(self) -> int:
        return int(self.counts.sum())

    def folder_of(self, shard_id: int) -> Path:
        return self.shards[shard_id].path.parent


def _check_shard(shard: Shard, resolution: int) -> None:
    try:
        f = shard.open()
        names = set(f.keys())
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in names}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DatasetError(f"{shard.path}: not a readable shard ({str(exc).splitlines()[0]})") from None
    finally:
        shard.close()
    n = shard.count
    expected = {"images": (n, 3, resolution, resolution), "landmarks": (n, 68, 2), "landmark_weights": (n, 68)}
    for name, shape in expected.items():
        if shapes.get(name) != shape:
            raise DatasetError(f"{shard.path}: tensor '{name}' has shape {list(shapes.get(name, ()))}, "
                               f"expected {list(shape)}")
    if shard.has_params and not all("params_" + g in names for g in GROUPS):
        raise DatasetError(f"{shard.path}: ground-truth parameters missing")
