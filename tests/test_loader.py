"""DeviceLoader and the validation split: determinism, coverage, normalization, sharding."""

import pytest
import torch

from trainlab.data import DeviceLoader, stratified_split
from trainlab.errors import TrainlabError

MEAN, STD = 0.2861, 0.3528


def make(n=100, batch_size=16, **kw):
    """Loader whose label is the sample's index, so batches say which samples they hold."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g)
    kw.setdefault("shuffle", True)
    return DeviceLoader(images, torch.arange(n), batch_size, mean=MEAN, std=STD, **kw)


def order(loader, epoch=0):
    loader.set_epoch(epoch)
    return torch.cat([y for _, y in loader])


def test_same_seed_same_batches():
    a, b = make(seed=5), make(seed=5)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_order_changes_with_epoch_and_seed_and_is_stable():
    base = order(make(seed=5), epoch=0)
    assert torch.equal(order(make(seed=5), epoch=0), base)
    assert not torch.equal(order(make(seed=5), epoch=1), base)
    assert not torch.equal(order(make(seed=6), epoch=0), base)
    # the order depends on (seed, epoch) only, not on what was iterated before
    loader = make(seed=5)
    order(loader, 3)
    assert torch.equal(order(loader, 0), base)


def test_no_shuffle_keeps_the_stored_order():
    assert torch.equal(order(make(shuffle=False)), torch.arange(100))


@pytest.mark.parametrize("n,bs", [(100, 16), (64, 64), (130, 32)])
def test_every_sample_exactly_once_per_epoch(n, bs):
    loader = make(n, bs, seed=1)
    seen = order(loader, epoch=2)
    assert torch.equal(seen.sort().values, torch.arange(n))
    assert len(loader) == -(-n // bs)
    assert [len(y) for _, y in loader][:-1] == [bs] * (len(loader) - 1)


def test_normalization_is_x_over_255_minus_mean_over_std():
    loader = make(shuffle=False, batch_size=100)
    x, _ = next(iter(loader))
    expected = (loader.images.float() / 255 - MEAN) / STD
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)


def test_uint8_stays_resident():
    loader = make()
    assert loader.images.dtype == torch.uint8


def test_float32_resident_gives_the_same_batches():
    a, b = make(shuffle=False), make(shuffle=False, resident="float32", memory_limit=10**9)
    assert b.images.dtype == torch.float32
    for (xa, _), (xb, _) in zip(a, b, strict=True):
        torch.testing.assert_close(xa, xb, rtol=0, atol=1e-5)


def test_float32_resident_memory_check_fails_clearly():
    with pytest.raises(TrainlabError) as e:
        make(n=1024 * 64, resident="float32", memory_limit=2**20)  # needs 4 MiB of float32
    msg = str(e.value)
    assert "needs 4 MiB" in msg and "only 1 MiB is free" in msg and "uint8" in msg


def test_float_images_are_normalized_without_the_255():
    images = torch.rand(10, 3, 2, 2)
    loader = DeviceLoader(images, torch.zeros(10), 10, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.5])
    x, y = next(iter(loader))
    m, s = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.5]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (images - m) / s)
    assert y.dtype == torch.long


def test_lone_last_sample_is_dropped_when_shuffling():
    # BatchNorm cannot train on a batch of one
    assert len(make(65, 64)) == 1 and len(order(make(65, 64))) == 64
    assert len(make(66, 64)) == 2 and len(order(make(66, 64))) == 66
    assert len(make(65, 64, shuffle=False)) == 2  # evaluation keeps every sample
    assert len(make(70, 64, drop_last=True)) == 1


def test_ddp_shards_are_equal_disjoint_and_cover_the_epoch():
    n, world = 103, 4
    shards = [order(make(n, 20, seed=3, rank=r, world_size=world), epoch=1) for r in range(world)]
    per_rank = n // world
    assert [len(s) for s in shards] == [per_rank] * world  # equal steps on every rank
    assert [len(make(n, 20, rank=r, world_size=world)) for r in range(world)] == [5] * world
    union = torch.cat(shards)
    assert len(set(union.tolist())) == per_rank * world  # disjoint
    # together the ranks take the first per_rank*world samples of the single-process order
    full = order(make(n, 20, seed=3), epoch=1)
    assert set(union.tolist()) == set(full[:per_rank * world].tolist())


def test_batch_size_is_global_under_ddp():
    loader = make(100, 32, rank=1, world_size=4)
    assert loader.local_batch == 8
    with pytest.raises(TrainlabError, match="must divide evenly"):
        make(100, 10, world_size=4)


def test_images_and_labels_must_match():
    with pytest.raises(TrainlabError, match="10 images but 9 labels"):
        DeviceLoader(torch.zeros(10, 1, 2, 2), torch.zeros(9), 4, mean=0, std=1)


def labels_with_counts(counts):
    g = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=g)]


@pytest.mark.parametrize("counts,val_size", [([100] * 10, 50), ([37, 41, 22], 17), ([5, 500, 95], 60)])
def test_stratified_split_sizes_proportions_disjoint(counts, val_size):
    labels = labels_with_counts(counts)
    n = len(labels)
    train, val = stratified_split(labels, val_size, seed=0)
    assert len(val) == val_size and len(train) == n - val_size
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(n))
    got = torch.bincount(labels[val], minlength=len(counts))
    for k, c in enumerate(counts):
        assert abs(int(got[k]) - c * val_size / n) < 1  # each class in proportion


def test_stratified_split_is_seeded():
    labels = labels_with_counts([100] * 10)
    a = stratified_split(labels, 50, seed=1)[1]
    assert torch.equal(a, stratified_split(labels, 50, seed=1)[1])
    assert not torch.equal(a, stratified_split(labels, 50, seed=2)[1])


def test_stratified_split_edges():
    labels = labels_with_counts([10, 10])
    train, val = stratified_split(labels, 0, seed=0)
    assert len(train) == 20 and len(val) == 0
    with pytest.raises(TrainlabError, match="val_size = 20 must be smaller than the 20"):
        stratified_split(labels, 20, seed=0)
