"""The training stream: epoch after epoch of seeded permutations, resumable at any sample.

Each draw is an `(index, seed)` pair; the dataset runs its augmentation under that
seed. So a sample's crop and flip depend only on (cfg.seed, epoch, position), not
on which worker loads it or where a run resumed, and a resumed run retraces an
uninterrupted one exactly. With several processes, each takes every world-th
draw of the same stream, so N processes see the same batches as one process
with N times their batch size.

This replaces torch's DistributedSampler on purpose: that one can only start an
epoch from its beginning (set_epoch), so a run resumed mid-epoch would replay or
skip images, and it carries no per-draw augmentation seed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class TrainStream(Sampler[tuple[int, int]]):
    def __init__(self, dataset_size: int, seed: int, start: int = 0, rank: int = 0,
                 world_size: int = 1):
        """`start`: how many draws this process already consumed (step * per-process batch)."""
        if dataset_size < world_size:
            raise ValueError(f"{dataset_size} images cannot be shared by {world_size} processes")
        self.dataset_size = dataset_size
        self.seed = seed
        self.start = start
        self.rank = rank
        self.world_size = world_size
        # every process gets the same number of draws per epoch; the remainder waits a turn
        self.draws_per_epoch = dataset_size // world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.draws_per_epoch)
        while True:
            indices, seeds = self.epoch_draws(epoch)
            for position in range(offset, self.draws_per_epoch):
                yield int(indices[position]), int(seeds[position])
            epoch, offset = epoch + 1, 0

    def epoch_draws(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's (indices, augmentation seeds) for one epoch."""
        entropy = np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(entropy))
        order = torch.randperm(self.dataset_size, generator=generator)
        seeds = torch.randint(0, 2 ** 62, (self.dataset_size,), generator=generator)
        mine = slice(self.rank, self.draws_per_epoch * self.world_size, self.world_size)
        return order[mine], seeds[mine]
