"""DeviceLoader: a whole split held once on the training device, served in batches.

The textbook loop (Dataset.__getitem__ per sample + DataLoader collation + .to(device) per
batch) spends a third of a small model's epoch in Python. Here the split is one tensor on
the device (uint8: 4x smaller than float32), each epoch is one seeded permutation, a batch
is one indexing op, and normalization (and augmentation) are batched tensor ops.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from trainlab.errors import TrainlabError

# Odd constants mixed into seeds so that the data order, augmentation and each rank
# draw from unrelated streams.
_ORDER_SALT = 0x5EED_0001
_AUG_SALT = 0x5EED_0002
_BALANCE_SALT = 0x5EED_0004


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, rank, salt...), stable across runs."""
    h = 0xCBF29CE484222325
    for p in parts:
        h ^= int(p) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def stratified_split(labels: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) with `val_size` samples drawn per class in proportion, seeded."""
    n = len(labels)
    if val_size == 0:
        return torch.arange(n), torch.empty(0, dtype=torch.long)
    if not 0 < val_size < n:
        raise TrainlabError(f"val_size = {val_size} must be smaller than the {n} training samples")
    g = torch.Generator().manual_seed(derive_seed(seed, 0x5A11))
    if labels.min() >= 0:  # class indices: bincount is ~10x cheaper than unique (which sorts)
        per_class = torch.bincount(labels)
        classes = torch.nonzero(per_class).flatten()
        counts = per_class[classes]
    else:
        classes, counts = torch.unique(labels, return_counts=True)
    # Largest-remainder allocation so the per-class quotas sum to exactly val_size.
    exact = counts.double() * val_size / n
    quota = exact.floor().long()
    short = val_size - int(quota.sum())
    if short:
        quota[torch.argsort(exact - quota, descending=True, stable=True)[:short]] += 1
    val_parts = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        idx = torch.nonzero(labels == c).flatten()
        val_parts.append(idx[torch.randperm(len(idx), generator=g)[:q]])
    val = torch.cat(val_parts).sort().values
    mask = torch.ones(n, dtype=torch.bool)
    mask[val] = False
    return torch.nonzero(mask).flatten(), val


class DeviceLoader:
    """Batches of (normalized float images, int64 labels) from tensors resident on `device`.

    images: N,C,H,W uint8 (0-255) or float32; kept as given unless `resident="float32"`.
    Each epoch's order is a permutation from (seed, epoch) drawn on the CPU, so the same seed
    gives the same order on every device and resuming needs no loader state. Under DDP each
    rank takes an equal, disjoint shard of that order (`rank`, `world_size`), and
    `batch_size` is the global batch. `balanced`: each epoch is instead a draw with replacement
    in which every class is equally likely (a class, then one of its rows), from (seed, epoch):
    as seeded as the permutation, and sharded across ranks the same way.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 mean, std, device="cpu", shuffle=False, seed=0, drop_last=False,
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                 resident: str = "as-is", rank: int = 0, world_size: int = 1,
                 memory_limit: int | None = None, memory_budget: int | None = None,
                 subset: torch.Tensor | None = None, balanced: bool = False):
        if subset is not None:  # the rows of `images` served: taken now, or when streaming
            subset = torch.as_tensor(subset, dtype=torch.long).cpu()
            labels = labels[subset]
        if len(images if subset is None else subset) != len(labels):
            raise TrainlabError(f"{len(images)} images but {len(labels)} labels")
        if batch_size % world_size:
            raise TrainlabError(f"batch_size {batch_size} is the global batch: it must divide evenly "
                                f"across the {world_size} processes")
        self.device = torch.device(device)
        self.scale = 255.0 if images.dtype == torch.uint8 else 1.0
        if resident == "float32" and images.dtype == torch.uint8:
            need = images.numel() * 4
            limit = memory_limit if memory_limit is not None else _free_memory(self.device)
            if limit is not None and need > limit:
                raise TrainlabError(f"holding these images as float32 needs {need / 2**20:.0f} MiB on "
                                    f"{self.device}, but only {limit / 2**20:.0f} MiB is free; "
                                    "keep them as uint8 (resident='as-is')")
            images = images.float()
        # Larger than the budget: the images stay where they are (CPU memory, or the memory-
        # mapped decode cache) and are streamed to the device in chunks of whole batches, in
        # the same order, so every batch -- and every result -- is what the resident path gives.
        budget = memory_budget if memory_budget is not None else default_memory_budget(self.device)
        per_image = images[0].numel() * images.element_size() if len(images) else 0
        need = per_image * (len(images) if subset is None else len(subset))
        self.streaming = budget is not None and need > budget
        self._subset = subset if self.streaming else None
        if self.streaming:
            self.images = images.cpu()
        else:
            self.images = (images if subset is None else images[subset]).to(self.device)
        self.labels = labels.to(self.device, torch.long)
        c = self.images.shape[1]
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, c, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, c, 1, 1)
        # (x/scale - mean)/std folded into one multiply-add per batch
        self._mul = (1.0 / (self.scale * std_t)).to(self.device)
        self._add = (-mean_t / std_t).to(self.device)
        self.batch_size = batch_size
        self.local_batch = batch_size // world_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.augment = augment
        self.rank, self.world_size = rank, world_size
        self._classes = _class_rows(self.labels.cpu()) if balanced else None
        self.epoch = 0
        self.channels_last = False  # hand out NHWC batches (for channels_last conv models)
        self._start_step, self._aug_state = 0, None
        self._aug_gen: torch.Generator | None = None

    def set_epoch(self, epoch: int, start_step: int = 0, aug_state: torch.Tensor | None = None) -> None:
        """Select the epoch to serve; `start_step`/`aug_state` continue one mid-way (resume)."""
        self.epoch, self._start_step, self._aug_state = epoch, start_step, aug_state

    def aug_state(self) -> torch.Tensor | None:
        """The augmentation generator's state now: saved by mid-epoch checkpoints."""
        return None if self._aug_gen is None else self._aug_gen.get_state()

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if self._classes is not None and n:
            order = self._balanced_draw(n)
        elif self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, _ORDER_SALT))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size > 1:  # equal shards: every rank the same number of steps
            per_rank = n // self.world_size
            order = order[self.rank: per_rank * self.world_size: self.world_size]
        return order.to(self.device)

    def _balanced_draw(self, n: int) -> torch.Tensor:
        """n rows drawn with replacement, each a uniformly chosen class's uniformly chosen row:
        two batched draws, no per-sample Python."""
        by_class, starts, counts = self._classes
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, _BALANCE_SALT))
        cls = torch.randint(len(counts), (n,), generator=g)
        within = (torch.rand(n, generator=g, dtype=torch.float64) * counts[cls]).long()  # < counts[cls]
        return by_class[starts[cls] + within]

    def __len__(self) -> int:
        n = len(self.labels) // self.world_size
        full, rest = divmod(n, self.local_batch)
        return full + (1 if rest and not self._drop_tail(rest) else 0)

    def _drop_tail(self, rest: int) -> bool:
        # BatchNorm cannot train on a batch of one, so a lone leftover sample is dropped.
        return self.drop_last or (self.shuffle and rest < 2)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().mul_(self._mul).add_(self._add) if x.dtype == torch.uint8 else \
            x.mul(self._mul).add_(self._add)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._indices()
        aug_gen = None
        if self.augment is not None:
            aug_gen = torch.Generator(device=self.device)
            aug_gen.manual_seed(derive_seed(self.seed, self.epoch, self.rank, _AUG_SALT))
            if self._aug_state is not None:
                aug_gen.set_state(self._aug_state)
        self._aug_gen = aug_gen
        start, self._start_step, self._aug_state = self._start_step, 0, None
        batches = self._streamed(order, start) if self.streaming else \
            ((order[i * self.local_batch:(i + 1) * self.local_batch], None) for i in range(start, len(self)))
        for idx, raw in batches:
            x = self.normalize(self.images[idx] if raw is None else raw)
            if aug_gen is not None:
                x = self.augment(x, aug_gen)
            yield x, self.labels[idx]

    def _streamed(self, order: torch.Tensor, start: int):
        """(device indices, the batch's raw images on the device), gathered from the host copy
        STREAM_CHUNK bytes at a time (one indexing op each; pinned + non_blocking on CUDA)."""
        order_cpu = order.cpu()
        per_batch = max(1, self.local_batch * self.images[0].numel() * self.images.element_size())
        chunk = max(1, STREAM_CHUNK // per_batch)
        cuda = self.device.type == "cuda"
        for c0 in range(start, len(self), chunk):
            c1 = min(len(self), c0 + chunk)
            lo, hi = c0 * self.local_batch, min(len(order_cpu), c1 * self.local_batch)
            rows = order_cpu[lo:hi]
            host = self.images[rows if self._subset is None else self._subset[rows]]
            if cuda:
                host = host.pin_memory()
            block = host.to(self.device, non_blocking=cuda)
            for i in range(c0, c1):
                a, b = (i - c0) * self.local_batch, (i - c0 + 1) * self.local_batch
                yield order[lo + a:lo + b], block[a:b]


def _class_rows(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows grouped by class, where each class's rows start, how many it has): the classes present."""
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    return torch.argsort(inverse, stable=True), torch.cumsum(counts, 0) - counts, counts


STREAM_CHUNK = 64 << 20  # bytes of images gathered and copied to the device at once when streaming
BUDGET_FRACTION = 0.5  # of the memory free now: the default memory_budget


def default_memory_budget(device: torch.device) -> int | None:
    """What a split may take on `device` before it is streamed: half of what is free now
    (available memory on the CPU, free GPU memory on CUDA); None: unknown, keep it resident."""
    free = _free_memory(torch.device(device))
    return None if free is None else int(free * BUDGET_FRACTION)


def _free_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    import os

    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    # In a container the limit is the cgroup's, not the host's free memory.
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current").read())
        if limit != "max":
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free
