"""A torch DataLoader where trainlab expects its own loader (fit(), evaluate): the user's
Dataset, transforms and workers as they are, each batch moved to the model's device as it
comes (no resident copy: the data may be larger than memory).

The shuffle order is trainlab's: a RandomSampler's generator is seeded from (seed, epoch), so
an epoch has the same order on every run and a resumed epoch skips exactly the batches already
trained. What stays the user's: randomness inside their Dataset or workers (random transforms
drawn from the global generator or numpy), which replays only if they seed it per sample.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader, RandomSampler

from trainlab.data.loader import derive_seed

log = logging.getLogger("trainlab")

_ORDER_SALT = 0x5EED_0011


class TorchLoader:
    """trainlab's loader protocol (len, iteration of (x, y) on `device`, set_epoch, aug_state,
    channels_last) over a torch DataLoader."""

    def __init__(self, loader: DataLoader, device, seed: int = 0):
        self.loader, self.device, self.seed = loader, torch.device(device), seed
        self.channels_last = False
        self._start = 0
        sampler = getattr(loader, "sampler", None)
        self.shuffle = isinstance(sampler, RandomSampler)
        if self.shuffle:
            if sampler.generator is None:  # the global generator would make the order unrepeatable
                sampler.generator = torch.Generator()
            self._generator = sampler.generator
        else:
            self._generator = None

    def set_epoch(self, epoch: int, start_step: int = 0, aug_state=None) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler: its own (seed, epoch) order
            sampler.set_epoch(epoch)
        if self._generator is not None:
            self._generator.manual_seed(derive_seed(self.seed, epoch, _ORDER_SALT))
        self._start = start_step

    def aug_state(self):
        return None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        start, self._start = self._start, 0
        for i, batch in enumerate(self.loader):
            if i < start:  # a resumed epoch: these batches were trained before the interruption
                continue
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                from trainlab.errors import DataError

                raise DataError(f"the DataLoader gave a {type(batch).__name__}, not (images, labels): make its "
                                "Dataset return (image tensor, class index) pairs")
            x = batch[0].to(self.device, non_blocking=True)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, batch[1].to(self.device, non_blocking=True)


def as_loader(loader, device, seed: int = 0):
    """trainlab's own loaders as they are; a torch DataLoader wrapped (see TorchLoader); None stays None."""
    if isinstance(loader, DataLoader):
        return TorchLoader(loader, device, seed)
    return loader
