"""Batch mixing: MixUp and CutMix outputs checked against their definitions (lambda recovered from the mixed images),
draws that are a function of (seed, epoch, iteration, rank) only, and the global RNG left alone."""

import pytest
import torch
import torch.nn.functional as F

from training.mixing import BatchMixer, dominant_label, mixing_seed

NUM_CLASSES = 7


def batch(size: int = 6, height: int = 16, width: int = 20, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, height, width, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (size,), generator=generator)
    return images, labels


def mixed_labels(labels: torch.Tensor, lam: float) -> torch.Tensor:
    one_hot = F.one_hot(labels, NUM_CLASSES).double()
    return lam * one_hot + (1 - lam) * one_hot.roll(1, 0)


def cutmix_box(images: torch.Tensor, mixed: torch.Tensor):
    """The box CutMix pasted, or None when ``mixed`` is not ``images`` with one box taken from the rolled batch."""
    rolled = images.roll(1, 0)
    from_rolled = (mixed == rolled).all(0).all(0)
    from_images = (mixed == images).all(0).all(0)
    if not (from_rolled | from_images).all():
        return None
    rows, columns = torch.nonzero(~from_images, as_tuple=True)
    if len(rows) == 0:
        return 0, 0, 0, 0
    y1, y2, x1, x2 = rows.min().item(), rows.max().item() + 1, columns.min().item(), columns.max().item() + 1
    assert from_rolled[y1:y2, x1:x2].all()  # one solid rectangle
    assert (~from_images).sum() == (y2 - y1) * (x2 - x1)
    return y1, y2, x1, x2


def check_cutmix(images, labels, mixed, target, box) -> None:
    y1, y2, x1, x2 = box
    height, width = images.shape[-2:]
    expected = images.clone()
    expected[..., y1:y2, x1:x2] = images.roll(1, 0)[..., y1:y2, x1:x2]
    assert torch.equal(mixed, expected)
    lam = 1 - (y2 - y1) * (x2 - x1) / (height * width)
    torch.testing.assert_close(target.double(), mixed_labels(labels, lam), rtol=0, atol=1e-6)


def check_mixup(images, labels, mixed, target) -> float:
    """Recover lambda from mixed = lam * images + (1 - lam) * rolled (least squares), then check both outputs."""
    rolled = images.roll(1, 0)
    difference = (images - rolled).double()
    lam = ((mixed.double() - rolled) * difference).sum() / (difference * difference).sum()
    lam = lam.item()
    torch.testing.assert_close(mixed, (lam * images.double() + (1 - lam) * rolled.double()).float(),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(target.double(), mixed_labels(labels, lam), rtol=0, atol=1e-5)
    return lam


def test_mixup_is_the_lambda_weighted_pair():
    mixer = BatchMixer(NUM_CLASSES, mixup_alpha=0.4, seed=3)
    images, labels = batch()
    lambdas = set()
    for iteration in range(10):
        mixed, target = mixer(images, labels, epoch=1, iteration=iteration)
        assert target.shape == (6, NUM_CLASSES) and target.dtype == torch.float32
        assert mixed.shape == images.shape and mixed.dtype == images.dtype
        lambdas.add(round(check_mixup(images, labels, mixed, target), 6))
    assert len(lambdas) == 10 and all(0 <= lam <= 1 for lam in lambdas)


def test_cutmix_pastes_a_box_and_weights_labels_by_its_area():
    mixer = BatchMixer(NUM_CLASSES, cutmix_alpha=1.0, seed=3)
    images, labels = batch()
    areas = set()
    for iteration in range(10):
        mixed, target = mixer(images, labels, epoch=0, iteration=iteration)
        box = cutmix_box(images, mixed)
        assert box is not None
        check_cutmix(images, labels, mixed, target, box)
        areas.add((box[1] - box[0]) * (box[3] - box[2]))
    assert len(areas) > 3


def test_both_alphas_choose_one_mixing_per_batch():
    mixer = BatchMixer(NUM_CLASSES, mixup_alpha=0.2, cutmix_alpha=1.0, seed=0)
    images, labels = batch()
    kinds = []
    for iteration in range(16):
        mixed, target = mixer(images, labels, epoch=0, iteration=iteration)
        box = cutmix_box(images, mixed)
        if box is None:
            check_mixup(images, labels, mixed, target)
        else:
            check_cutmix(images, labels, mixed, target, box)
        kinds.append(box is None)
    assert set(kinds) == {False, True}


def test_draws_are_a_function_of_seed_epoch_iteration_and_rank():
    images, labels = batch()
    mixer = BatchMixer(NUM_CLASSES, mixup_alpha=0.2, cutmix_alpha=1.0, seed=5)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    reference = mixer(images, labels, 2, 7, 1)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is left alone
    torch.manual_seed(456)  # and does not matter
    again = BatchMixer(NUM_CLASSES, mixup_alpha=0.2, cutmix_alpha=1.0, seed=5)(images, labels, 2, 7, 1)
    assert all(torch.equal(a, b) for a, b in zip(reference, again))
    for seed, epoch, iteration, rank in [(6, 2, 7, 1), (5, 3, 7, 1), (5, 2, 8, 1), (5, 2, 7, 0)]:
        other = BatchMixer(NUM_CLASSES, mixup_alpha=0.2, cutmix_alpha=1.0, seed=seed)(images, labels, epoch,
                                                                                        iteration, rank)
        assert not torch.equal(other[1], reference[1])
    seeds = {mixing_seed(s, e, i, r) for s in range(3) for e in range(3) for i in range(30) for r in range(4)}
    assert len(seeds) == 3 * 3 * 30 * 4 and all(0 <= seed < 2 ** 63 for seed in seeds)


def test_memory_format_and_dtype_are_kept():
    images, labels = batch()
    images = images.to(torch.bfloat16, memory_format=torch.channels_last)
    for options in (dict(mixup_alpha=0.2), dict(cutmix_alpha=1.0)):
        mixed, target = BatchMixer(NUM_CLASSES, **options)(images, labels, 0, 0)
        assert mixed.dtype == torch.bfloat16 and mixed.is_contiguous(memory_format=torch.channels_last)
        assert target.dtype == torch.float32


def test_soft_targets_work_with_cross_entropy_and_label_smoothing():
    images, labels = batch()
    _, target = BatchMixer(NUM_CLASSES, mixup_alpha=0.2)(images, labels, 0, 0)
    logits = torch.randn(6, NUM_CLASSES)
    loss = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, target)
    smoothed = target * 0.9 + 0.1 / NUM_CLASSES
    torch.testing.assert_close(loss, -(smoothed * logits.log_softmax(1)).sum(1).mean())


def test_dominant_label_is_the_heavier_of_the_pair():
    labels = torch.tensor([0, 3, 5])
    for lam in (0.8, 0.3):
        expected = labels if lam > 0.5 else labels.roll(1, 0)
        assert torch.equal(dominant_label(mixed_labels(labels, lam).float()), expected)


def test_bad_alphas_are_refused():
    with pytest.raises(ValueError, match="mixup_alpha > 0 or cutmix_alpha > 0"):
        BatchMixer(NUM_CLASSES)
    with pytest.raises(ValueError, match=">= 0"):
        BatchMixer(NUM_CLASSES, mixup_alpha=-1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_mix_as_cpu_batches_and_leave_the_cuda_rng_alone():
    images, labels = batch()
    mixer = BatchMixer(NUM_CLASSES, mixup_alpha=0.2, cutmix_alpha=1.0, seed=1)
    cuda_before = torch.cuda.get_rng_state()
    for iteration in range(6):
        on_cpu = mixer(images, labels, 0, iteration)
        on_cuda = mixer(images.cuda(), labels.cuda(), 0, iteration)
        assert on_cuda[0].is_cuda and on_cuda[1].is_cuda
        torch.testing.assert_close(on_cuda[0].cpu(), on_cpu[0])
        torch.testing.assert_close(on_cuda[1].cpu(), on_cpu[1])
    assert torch.equal(torch.cuda.get_rng_state(), cuda_before)


def test_a_channels_last_batch_stays_channels_last_where_roll_writes_contiguous_tensors(monkeypatch):
    """On CUDA ``roll`` always returns a contiguous tensor, so MixUp's mixed batch came back NCHW; here ``roll``
    is made to behave so on the CPU."""
    roll = torch.Tensor.roll
    monkeypatch.setattr(torch.Tensor, "roll", lambda self, *args, **kwargs: roll(self, *args, **kwargs).contiguous())
    images, labels = batch()
    channels_last = images.to(memory_format=torch.channels_last)
    assert not channels_last.roll(1, 0).is_contiguous(memory_format=torch.channels_last)  # the CUDA behaviour
    for options in (dict(mixup_alpha=0.2), dict(cutmix_alpha=1.0), dict(mixup_alpha=0.2, cutmix_alpha=1.0)):
        mixed, _ = BatchMixer(NUM_CLASSES, **options)(channels_last, labels, 0, 0)
        assert mixed.is_contiguous(memory_format=torch.channels_last), options
        reference, _ = BatchMixer(NUM_CLASSES, **options)(images, labels, 0, 0)
        assert mixed.is_contiguous() is False and torch.equal(mixed, reference)
        assert BatchMixer(NUM_CLASSES, **options)(images, labels, 0, 0)[0].is_contiguous()
