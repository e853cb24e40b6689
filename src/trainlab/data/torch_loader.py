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
from trainlab.errors import DataError

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
        try:
            n = len(self.loader)
        except TypeError:  # an IterableDataset without __len__
            raise DataError("the DataLoader's dataset has no length (an IterableDataset without __len__): give "
                            "it a __len__ returning its number of samples; trainlab needs the batches per epoch "
                            "for the schedule and to resume inside an epoch") from None
        if n == 0:
            raise DataError("the DataLoader holds no batches: its dataset is empty (or drop_last drops them all)")
        return n

    def __iter__(self):
        start, self._start = self._start, 0
        given = 0
        for i, batch in enumerate(self.loader):
            given += 1
            if i < start:  # a resumed epoch: these batches were trained before the interruption
                continue
            x, y = _checked(batch)
            x = x.to(self.device, non_blocking=True)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)
        if not given:
            raise DataError("the DataLoader gave no batches this epoch (an iterable dataset that ran out?)")


def _checked(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of one batch, or one sentence saying what the Dataset gives instead
    (checked on the host, before the batch moves: no device sync)."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise DataError(f"the DataLoader gave a {type(batch).__name__}, not (images, labels): make its "
                        "Dataset return (image tensor, class index) pairs")
    x, y = batch[0], batch[1]
    if not isinstance(x, torch.Tensor) or not (x.is_floating_point() or x.dtype == torch.uint8) or x.dim() < 2:
        what = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"the DataLoader's images are a {what}, not a float or uint8 batch tensor: make its "
                        "Dataset return an image tensor (e.g. transforms.ToTensor())")
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool \
            or y.dim() != 1 or len(y) != len(x):
        what = f"{y.dtype} tensor of shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise DataError(f"the DataLoader's labels are a {what}, not {len(x)} integer class indices: make its "
                        "Dataset return an int class index per image")
    if y.device.type == "cpu" and len(y) and int(y.min()) < 0:
        raise DataError(f"the DataLoader gave a negative label {int(y.min())}: labels are class indices 0..K-1")
    return x, y


def as_loader(loader, device, seed: int = 0):
    """trainlab's own loaders as they are; a torch DataLoader wrapped (see TorchLoader); None stays None."""
    if isinstance(loader, DataLoader):
        return TorchLoader(loader, device, seed)
    return loader
