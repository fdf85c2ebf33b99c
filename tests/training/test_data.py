"""Samplers, seeded samples and loaders: the training order against DistributedSampler, shards that cover every
image once, augmentation that repeats under its seed, and the loaders' handling of odd files."""


import pytest
import torch
from torch.utils.data import DistributedSampler
from torchvision.transforms import v2

from scripts.make_sample_data import make_dataset
from training import data, presets

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


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


def test_a_size_schedule_adds_the_epochs_size_to_the_same_items():
    plain = data.TrainSampler(20, 2, 1, seed=4)
    sized = data.TrainSampler(20, 2, 1, seed=4, size_of_epoch=lambda epoch: 32 * (epoch + 1))
    for epoch, skip in [(0, 0), (2, 3)]:
        plain.set_epoch(epoch, skip)
        sized.set_epoch(epoch, skip)
        items = list(plain)
        assert all(len(item) == 2 for item in items)
        assert list(sized) == [(index, seed, 32 * (epoch + 1)) for index, seed in items]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    make_dataset(str(root), classes=2, train_per_class=3, val_per_class=1, size=40)
    return root


def test_a_sized_item_is_the_transform_at_that_size(folder):
    pipeline_options = dict(auto_augment="ta_wide", random_erase=0.5)
    for pipeline in presets.PIPELINES:
        sized = data.SeededSamples(data.image_folder(str(folder), "train", presets.train_transform(
            32, pipeline, **pipeline_options), data.image_loader(pipeline)))
        at_48 = data.SeededSamples(data.image_folder(str(folder), "train", presets.train_transform(
            48, pipeline, **pipeline_options), data.image_loader(pipeline)))
        for index in range(len(sized)):
            image, target = sized[(index, 11 + index, 48)]
            expected, expected_target = at_48[(index, 11 + index)]
            assert torch.equal(image, expected) and target == expected_target and image.shape == (3, 48, 48)
    synthetic = data.SeededSamples(data.SyntheticImages(4, 32, num_classes=2, uint8=True))
    assert synthetic[(1, 5)][0].shape == (3, 32, 32) and synthetic[(1, 5, 64)][0].shape == (3, 64, 64)


def loader_args(root, pipeline="uint8", dummy=0, train_size_schedule=None, **augment):
    return data.DataOptions(data=str(root), dummy=dummy, train=True, train_crop_size=24, val_resize_size=28,
                            val_crop_size=24, input_pipeline=pipeline, train_size_schedule=train_size_schedule,
                            augment=presets.AugmentOptions(**augment))


def epoch_batches(pipeline, epoch, skip=0):
    return list(pipeline.train_epoch(epoch, skip_batches=skip))


@pytest.mark.parametrize("pipeline", presets.PIPELINES)
@pytest.mark.parametrize("dummy", [0, 6])
def test_loader_batches_have_the_scheduled_size_with_persistent_workers(folder, pipeline, dummy):
    args = loader_args(folder, pipeline, dummy, train_size_schedule="32:96:0:2", auto_augment="ra")
    built = {workers: data.build_data(args, 1, 0, seed=2, batch_per_process=3, workers=workers, pin_memory=False)
             for workers in (0, 1)}
    assert built[1].train_loader.persistent_workers
    for epoch, size in [(0, 32), (1, 64), (2, 96), (0, 32)]:
        in_process, in_worker = (epoch_batches(built[workers], epoch) for workers in (0, 1))
        assert len(in_process) == 2
        for (images, labels), (worker_images, worker_labels) in zip(in_process, in_worker):
            assert images.shape == (3, 3, size, size)
            assert torch.equal(images, worker_images) and torch.equal(labels, worker_labels)
    val_images, _ = next(iter(built[0].val_loader))
    assert val_images.shape[-2:] == (24, 24)  # evaluation keeps its size


@pytest.mark.parametrize("pipeline", presets.PIPELINES)
def test_a_resumed_epoch_has_the_same_augmented_batches(folder, pipeline):
    args = loader_args(folder, pipeline, train_size_schedule="32:64:0:2", auto_augment="augmix", random_erase=0.5)
    loader = data.build_data(args, 1, 0, seed=7, batch_per_process=2, workers=0, pin_memory=False)
    whole = epoch_batches(loader, 1)
    resumed = epoch_batches(loader, 1, skip=1)
    assert len(whole) == 3 and len(resumed) == 2
    for (images, labels), (resumed_images, resumed_labels) in zip(whole[1:], resumed):
        assert images.shape[-1] == 64 and torch.equal(images, resumed_images) and torch.equal(labels, resumed_labels)
    assert not torch.equal(whole[0][0], epoch_batches(loader, 3)[0][0])


def test_augment_options_reach_the_training_transform(folder):
    options = dict(auto_augment="imagenet", ra_magnitude=5, augmix_severity=2, random_erase=0.25)
    loaders = data.build_data(loader_args(folder, **options), 1, 0, seed=0, batch_per_process=2, workers=0,
                              pin_memory=False)
    transform = loaders.train_loader.dataset.dataset.transform
    assert isinstance(transform.policy, v2.AutoAugment) and transform.erasing.p == 0.25
    assert transform.erasing.value == [float(value) for value in presets.UINT8_MEAN]
    assert loaders.train_loader.sampler.size_of_epoch is None
    with pytest.raises(ValueError, match="START:END:FROM_EPOCH:TO_EPOCH"):
        data.build_data(loader_args(folder, train_size_schedule="224"), 1, 0, seed=0, batch_per_process=2,
                        workers=0, pin_memory=False)
