"""Samplers, seeded samples and loaders: the training order against DistributedSampler, shards that cover every
image once, augmentation that repeats under its seed, and the loaders' handling of odd files."""

import pytest
import torch
from torch.utils.data import DistributedSampler

from training import data


@pytest.mark.parametrize("length, world", [(10, 1), (10, 3), (7, 4), (100, 8)])
def test_train_order_is_distributed_samplers(length, world):
    for rank in range(world):
        ours = data.TrainSampler(length, world, rank, seed=5)
        reference = DistributedSampler(range(length), num_replicas=world, rank=rank, seed=5)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            reference.set_epoch(epoch)
            indices = [index for index, _ in ours]
            assert indices == list(reference) and len(ours) == len(reference)


def test_skipping_continues_the_same_epoch():
    sampler = data.TrainSampler(50, 2, 1, seed=1)
    sampler.set_epoch(4)
    whole = list(sampler)
    sampler.set_epoch(4, skip=7)
    assert list(sampler) == whole[7:] and len(sampler) == len(whole) - 7
    assert len({seed for _, seed in whole}) == len(whole)  # every sample has its own augmentation seed


@pytest.mark.parametrize("length, world", [(21, 2), (21, 4), (5, 8)])
def test_evaluation_shards_cover_every_image_once(length, world):
    seen = [i for rank in range(world) for i in data.EvalShard(length, world, rank)]
    assert sorted(seen) == list(range(length))


def test_seeded_samples_repeat_their_augmentation():
    class RandomItem(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, index):
            return torch.rand(3)

    samples = data.SeededSamples(RandomItem())
    before = torch.get_rng_state()
    assert torch.equal(samples[(2, 99)], samples[(2, 99)])
    assert not torch.equal(samples[(2, 99)], samples[(2, 100)])
    assert torch.equal(torch.get_rng_state(), before)  # the main process's RNG is left alone
