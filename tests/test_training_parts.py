"""The training pieces checked against independent statements: torch's schedulers and samplers, argparse."""

import math

import pytest
import torch
from torch.utils.data import DistributedSampler

import main_imagenet
from training import checkpoint, data, errors, schedule
from training.config import parse_with_config


def release_cosine_lrs(base_lr, epochs):
    """The release's cosine: CosineAnnealingLR(T_max=epochs) stepped once before each epoch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], base_lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    lrs = []
    for _ in range(epochs):
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def lrs_per_iteration(epochs, iters, **options):
    args = main_imagenet.get_args_parser().parse_args(["--epochs", str(epochs), "--lr", "0.05", *options.get("flags", [])])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], args.lr)
    scheduler = schedule.build_scheduler(optimizer, args, iters)
    lrs = []
    for _ in range(epochs * iters):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_cosine_is_the_release_schedule():
    lrs = lrs_per_iteration(12, 3, flags=["--cos_lr"])
    expected = release_cosine_lrs(0.05, 12)
    for epoch in range(12):
        assert lrs[epoch * 3: epoch * 3 + 3] == pytest.approx([expected[epoch]] * 3, abs=1e-12)


def test_step_schedule_divides_by_ten_every_30_epochs():
    lrs = lrs_per_iteration(95, 1)
    assert lrs[0] == lrs[29] == pytest.approx(0.05)
    assert lrs[30] == lrs[59] == pytest.approx(0.005)
    assert lrs[60] == pytest.approx(0.0005) and lrs[90] == pytest.approx(0.00005)


def test_warmup_is_linear_per_iteration_then_the_schedule():
    lrs = lrs_per_iteration(40, 4, flags=["--warmup-epochs", "2"])
    assert lrs[:8] == pytest.approx([0.05 * (i + 1) / 8 for i in range(8)])
    assert lrs[8] == pytest.approx(0.05) and lrs[30 * 4] == pytest.approx(0.005)


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


def test_command_line_overrides_the_config(tmp_path):
    (tmp_path / "recipe.yaml").write_text("arch: mobilenet_v2\nlr: 0.05\nweight-decay: 4e-5\ncos_lr: true\nepochs: 150\n")
    args = parse_with_config(main_imagenet.get_args_parser(), ["--config", str(tmp_path / "recipe.yaml"), "--epochs", "3"])
    assert (args.arch, args.lr, args.weight_decay, args.cos_lr, args.epochs) == ("mobilenet_v2", 0.05, 4e-5, True, 3)
    assert args.momentum == 0.9  # untouched defaults stay


def test_release_flags_keep_their_names_and_meanings():
    args = main_imagenet.get_args_parser().parse_args(
        ["DATA", "--gpu", "0,1,2,3", "--epochs", "150", "-j", "20", "-a", "mobilenet_v2", "--attention_type", "simam",
         "--attention_param", "0.1", "--lr", ".05", "--cos_lr", "--wd", "4e-5", "-p", "20", "--log_freq", "100",
         "--start-epoch", "2", "-b", "512", "--momentum", "0.8", "--world-size", "2", "--rank", "1",
         "--dist-url", "tcp://h:1", "--dist-backend", "nccl", "--multiprocessing-distributed", "--ckpt", "out/",
         "--seed", "3", "--save_weights", "w.pth", "-e", "--resume", "x.pth"])
    assert (args.data, args.gpu, args.epochs, args.workers, args.arch, args.lr, args.weight_decay) == \
        ("DATA", "0,1,2,3", 150, 20, "mobilenet_v2", 0.05, 4e-5)
    assert (args.print_freq, args.log_freq, args.start_epoch, args.batch_size, args.momentum) == (20, 100, 2, 512, 0.8)
    assert (args.world_size, args.rank, args.dist_url, args.dist_backend, args.ckpt, args.seed) == \
        (2, 1, "tcp://h:1", "nccl", "out/", 3)
    assert args.cos_lr and args.multiprocessing_distributed and args.evaluate and args.resume == "x.pth"
    defaults = main_imagenet.get_args_parser().parse_args(["DATA"])
    assert (defaults.epochs, defaults.batch_size, defaults.lr, defaults.weight_decay, defaults.workers) == (90, 256, 0.1, 1e-4, 4)
    assert defaults.attention_param is None  # the module's default (0.1 for SimAM), not the release's 4


def test_run_folder_is_named_as_the_release():
    parser = main_imagenet.get_args_parser()
    args = parser.parse_args(["D", "-a", "resnet50", "--attention_type", "simam", "--attention_param", "0.1", "--seed", "7"])
    main_imagenet.choose_network(args, None, None)
    assert main_imagenet.run_folder(args).replace("\\", "/") == "./ckpts/imagenet-resnet50-simam-param0.1-seed7"
    args = parser.parse_args(["D", "-a", "resnet18"])
    main_imagenet.choose_network(args, None, None)
    assert main_imagenet.run_folder(args).replace("\\", "/") == "./ckpts/imagenet-resnet18"


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth.tar"
    checkpoint.atomic_save({"epoch": 1}, str(path))

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        checkpoint.atomic_save({"epoch": 2}, str(path))
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth.tar"]  # no temporary file left behind


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    import random

    import numpy as np

    states = checkpoint.capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    torch.save({"rng": states}, tmp_path / "rng.pth")
    checkpoint.restore_rng(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_worker_errors_are_reduced_to_their_message():
    wrapped = errors.BadImageError("Caught BadImageError in DataLoader worker process 0.\nOriginal Traceback (most "
                                   "recent call last):\n  File \"x.py\", line 1\ntraining.errors.BadImageError: "
                                   "cannot read image a/b.JPEG: truncated")
    assert errors.one_line(wrapped) == "cannot read image a/b.JPEG: truncated"
    assert errors.one_line(errors.UserError("plain message")) == "plain message"
