"""Batches from a :class:`Dataset`: a held-out split, a seeded order per epoch, bounded memory.

Order: each epoch permutes the shards (seeded by ``(seed, epoch)``), takes them in windows
of ``window`` shards and permutes the samples inside each window. Global batch ``k`` of an
epoch is samples ``k*B .. (k+1)*B`` of that order; with several processes, rank ``r`` takes
its contiguous slice of every global batch, so the global batch (and everything computed
from it) is the same for any number of processes. A step number alone says where the
stream is, which makes resuming exact. Only the shards of the current window are read, one
sample at a time from memory-mapped files.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch

from morphable import GROUPS

from .shards import Dataset, DatasetError

OPEN_SHARDS = 16


@dataclass
class Batch:
    """Images ``[B,3,S,S]`` float in [0,1]; landmarks ``[B,68,2]`` crop pixels; landmark_weights
    ``[B,68]``; params: group -> ``[B,K]`` ground truth (zeros where a sample has none) or None;
    has_params ``[B]`` bool; parameter_weights ``[B]`` how far each sample's parameters are trusted
    (None: fully, where it has them)."""

    images: torch.Tensor
    landmarks: torch.Tensor
    landmark_weights: torch.Tensor
    params: dict[str, torch.Tensor] | None
    has_params: torch.Tensor
    parameter_weights: torch.Tensor | None = None

    def to(self, device) -> "Batch":
        params = None if self.params is None else {g: t.to(device) for g, t in self.params.items()}
        weights = None if self.parameter_weights is None else self.parameter_weights.to(device)
        return Batch(self.images.to(device), self.landmarks.to(device), self.landmark_weights.to(device), params,
                     self.has_params.to(device), weights)

    def parameter_loss_weights(self) -> torch.Tensor:
        """``[B]`` the weight of each sample's parameter loss: 0 without parameters."""
        has = self.has_params.float()
        return has if self.parameter_weights is None else has * self.parameter_weights

    def __len__(self) -> int:
        return self.images.shape[0]


def split(dataset: Dataset, val_fraction: float = 0.02, val_max: int = 256,
          whole: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ids ``[M,2]`` (shard, index) for training and for validation.

    Validation takes the last ``ceil(val_fraction * count)`` samples (at most ``val_max``) of
    every dataset folder, so adding data to a folder's end does not move samples between splits.
    ``whole``: the folders are validation sets, which may be held out entirely.
    """
    train, val = [], []
    by_folder: dict = {}
    for shard_id, shard in enumerate(dataset.shards):
        by_folder.setdefault(shard.path.parent, []).append(shard_id)
    for shard_ids in by_folder.values():
        total = sum(dataset.shards[s].count for s in shard_ids)
        held = min(val_max, math.ceil(val_fraction * total)) if val_fraction > 0 else 0
        if held >= total and not whole:
            raise DatasetError(f"{dataset.shards[shard_ids[0]].path.parent}: {total} samples are too few to hold out "
                               f"{held} for validation")
        first_val = total - held
        start = 0
        for s in shard_ids:
            count = dataset.shards[s].count
            idx = torch.arange(count)
            ids = torch.stack([torch.full_like(idx, s), idx], 1)
            global_idx = start + idx
            train.append(ids[global_idx < first_val])
            val.append(ids[global_idx >= first_val])
            start += count
    return torch.cat(train), torch.cat(val)


class BatchStream:
    """Global batches of ``batch_size`` from sample ``ids`` (see the module docstring).

    Args:
        dataset: the shards.
        ids: ``[M,2]`` (shard, index) sample ids, e.g. from :func:`split`.
        batch_size: the global batch size.
        seed: seeds the order of every epoch.
        rank, world: this process's slice of each global batch.
        window: shards mixed together at a time (memory: that many shards' pages).
    """

    def __init__(self, dataset: Dataset, ids: torch.Tensor, batch_size: int, seed: int = 0, rank: int = 0,
                 world: int = 1, window: int = 4):
        if batch_size % world:
            raise ValueError(f"the batch size ({batch_size}) must be a multiple of the number of processes ({world})")
        self.dataset, self.ids, self.batch_size = dataset, ids, batch_size
        self.seed, self.rank, self.world, self.window = seed, rank, world, window
        self.steps_per_epoch = len(ids) // batch_size
        if self.steps_per_epoch == 0:
            raise DatasetError(f"{len(ids)} training samples are fewer than one batch of {batch_size}")
        self._epoch, self._order = None, None
        self._open: OrderedDict = OrderedDict()
        shard_of = ids[:, 0]
        self._shards = torch.unique(shard_of)
        sorted_ids = ids[torch.argsort(shard_of, stable=True)]
        self._by_shard = dict(zip(self._shards.tolist(),
                                  torch.split(sorted_ids, torch.bincount(shard_of)[self._shards].tolist())))

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of global step ``step``."""
        return divmod(step, self.steps_per_epoch)

    def order(self, epoch: int) -> torch.Tensor:
        """``[M,2]`` sample ids in the order of ``epoch``."""
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            shards = self._shards[torch.randperm(len(self._shards), generator=g)].tolist()
            parts = []
            for w in range(0, len(shards), self.window):
                members = torch.cat([self._by_shard[s] for s in shards[w:w + self.window]])
                parts.append(members[torch.randperm(len(members), generator=g)])
            self._epoch, self._order = epoch, torch.cat(parts)
        return self._order

    def global_ids(self, step: int) -> torch.Tensor:
        epoch, k = self.position(step)
        return self.order(epoch)[k * self.batch_size:(k + 1) * self.batch_size]

    def batch(self, step: int) -> Batch:
        """This rank's part of global batch ``step``."""
        local = self.batch_size // self.world
        return self.read(self.global_ids(step)[self.rank * local:(self.rank + 1) * local])

    def read(self, ids: torch.Tensor) -> Batch:
        """The samples ``ids [B,2]`` as a :class:`Batch`."""
        rows = [self._shard(int(s)).read(int(i)) for s, i in ids.tolist()]
        images = torch.stack([r["images"] for r in rows]).float() / 255.0
        has = torch.tensor(["params_pose" in r for r in rows])
        params = weights = None
        if has.any():
            sizes = {g: next(r["params_" + g].shape[0] for r in rows if "params_" + g in r) for g in GROUPS}
            params = {g: torch.stack([r["params_" + g] if "params_" + g in r else torch.zeros(sizes[g])
                                      for r in rows]) for g in GROUPS}
            if any("parameter_weights" in r for r in rows):
                weights = torch.stack([r["parameter_weights"].float() if "parameter_weights" in r
                                       else torch.ones(()) for r in rows])
        return Batch(images, torch.stack([r["landmarks"] for r in rows]),
                     torch.stack([r["landmark_weights"] for r in rows]), params, has, weights)

    def _shard(self, shard_id: int):
        shard = self.dataset.shards[shard_id]
        self._open[shard_id] = shard
        self._open.move_to_end(shard_id)
        while len(self._open) > OPEN_SHARDS:
            _, old = self._open.popitem(last=False)
            old.close()
        return shard
