"""The EMA of the weights against an average computed by hand, torchvision's decay adjustment, the update cadence,
the warmup reset and an exact resumption from its state dict."""

import copy
import io
import math

import pytest
import torch
from torch import nn

from training.ema import ExponentialMovingAverage, build_ema, ema_decay, ema_state, load_ema_state


def small_model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


def tensors_of(model):
    """Parameters then buffers, the order AveragedModel averages them in (use_buffers=True)."""
    return [*model.parameters(), *model.buffers()]


def set_state(model, k):
    """The model's k-th known state: seeded random floats, and num_batches_tracked = 8 * (k + 1)."""
    generator = torch.Generator().manual_seed(k)
    with torch.no_grad():
        for tensor in tensors_of(model):
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
            else:
                tensor.fill_(8 * (k + 1))


def hand_average(states, decay):
    """The EMA by hand in float64: the first state copied, then ema = decay * ema + (1 - decay) * state; an integer
    buffer (num_batches_tracked) is truncated towards zero after each update, as copying a float into it does."""
    ema = None
    for state in states:
        if ema is None:
            ema = [t.double() for t in state]
            continue
        ema = [decay * e + (1 - decay) * s.double() for e, s in zip(ema, state)]
        ema = [e if s.is_floating_point() else e.trunc() for e, s in zip(ema, state)]
    return ema


def snapshot(model):
    return [t.detach().clone() for t in tensors_of(model)]


def assert_close_to_hand(ema, expected):
    for averaged, hand in zip(tensors_of(ema.module), expected):
        if averaged.is_floating_point():
            torch.testing.assert_close(averaged.double(), hand, rtol=0, atol=1e-6)
        else:
            assert averaged.item() == hand.item()


@pytest.mark.parametrize("world_size, batch_size, steps, epochs, decay", [
    (8, 32, 32, 600, 0.99998), (1, 256, 32, 90, 0.99998), (4, 64, 1, 10, 0.999), (8, 128, 32, 1, 0.9),
])
def test_decay_adjustment_is_torchvisions(world_size, batch_size, steps, epochs, decay):
    # torchvision references/classification/train.py
    adjust = world_size * batch_size * steps / epochs
    alpha = 1.0 - decay
    alpha = min(1.0, alpha * adjust)
    assert ema_decay(decay, steps, world_size * batch_size, epochs) == 1.0 - alpha
    assert build_ema(small_model(), decay, steps, world_size * batch_size, epochs).decay == 1.0 - alpha


def test_the_average_of_weights_and_buffers_equals_one_by_hand():
    model = small_model()
    ema = ExponentialMovingAverage(model, decay=0.75)
    states = []
    for k in range(5):
        set_state(model, k)
        states.append(snapshot(model))
        ema.update_parameters(model)
        assert_close_to_hand(ema, hand_average(states, 0.75))
    assert ema.n_averaged.item() == 5
    assert tensors_of(ema.module)[-1].item() == 22  # num_batches_tracked 8, 16, ..., 40 averaged: 8, 10, 13, 17, 22


def test_updates_every_steps_steps_from_the_first():
    model = small_model()
    ema = ExponentialMovingAverage(model, decay=0.5, steps=4)
    states, updated = [], []
    for step in range(10):
        set_state(model, step)
        if ema.maybe_update(model, step, epoch=3, warmup_epochs=2):
            updated.append(step)
            states.append(snapshot(model))
    assert updated == [0, 4, 8] and ema.n_averaged.item() == 3
    assert_close_to_hand(ema, hand_average(states, 0.5))


def test_during_warmup_the_average_follows_the_model():
    model = small_model()
    ema = ExponentialMovingAverage(model, decay=0.9, steps=2)
    for step in range(6):  # epoch 0 of a 1.5-epoch warmup: each update copies and empties the average
        set_state(model, step)
        if ema.maybe_update(model, step, epoch=0, warmup_epochs=1.5):
            assert all(torch.equal(a, b) for a, b in zip(tensors_of(ema.module), tensors_of(model)))
            assert ema.n_averaged.item() == 0
    states = []
    for step in range(6):  # epoch 2: after the warmup, the first update copies and the next average
        set_state(model, 10 + step)
        if ema.maybe_update(model, step, epoch=2, warmup_epochs=1.5):
            states.append(snapshot(model))
    assert ema.n_averaged.item() == 3
    assert_close_to_hand(ema, hand_average(states, 0.9))


def test_a_resumed_average_equals_the_uninterrupted_one_bitwise():
    torch.manual_seed(0)
    model = small_model()
    uninterrupted = ExponentialMovingAverage(model, decay=0.9)
    resumed = ExponentialMovingAverage(model, decay=0.9)
    for k in range(3):
        set_state(model, k)
        uninterrupted.update_parameters(model)
        resumed.update_parameters(model)
    buffer = io.BytesIO()
    torch.save({"model_ema": ema_state(resumed)}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)["model_ema"]
    assert set(saved) == {"n_averaged"} | {f"module.{key}" for key in model.state_dict()}
    resumed = ExponentialMovingAverage(small_model(), decay=0.9)  # a new process: another model's weights
    load_ema_state(resumed, saved, model)
    for k in range(3, 6):
        set_state(model, k)
        uninterrupted.update_parameters(model)
        resumed.update_parameters(model)
    for key, value in uninterrupted.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_without_a_saved_average_it_restarts_from_the_model():
    model = small_model()
    ema = ExponentialMovingAverage(model, decay=0.9)
    ema.update_parameters(model)
    ema.update_parameters(model)
    set_state(model, 7)
    load_ema_state(ema, None, model)
    assert ema.n_averaged.item() == 0
    assert all(torch.equal(a, b) for a, b in zip(tensors_of(ema.module), tensors_of(model)))


def test_exported_weights_are_a_plain_state_dict_of_the_average():
    model = small_model()
    ema = ExponentialMovingAverage(model, decay=0.9)
    for k in range(3):
        set_state(model, k)
        ema.update_parameters(model)
    weights = ema.weights()
    assert list(weights) == list(model.state_dict())
    plain = small_model()
    plain.load_state_dict(weights)
    assert all(torch.equal(a, b) for a, b in zip(tensors_of(plain), tensors_of(ema.module)))


def test_the_average_is_a_copy_in_the_models_memory_format_and_device():
    model = small_model().to(memory_format=torch.channels_last)
    ema = ExponentialMovingAverage(model, decay=0.9)
    conv = ema.module[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert conv.data_ptr() != model[0].weight.data_ptr()
    assert ema.n_averaged.device == model[0].weight.device
    contiguous = ExponentialMovingAverage(small_model(), decay=0.9)
    for k in range(2):
        set_state(model, k)
        ema.update_parameters(model)
    load_ema_state(contiguous, ema.state_dict(), model)  # layouts differ: values restored, layouts kept
    assert ema.module[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert contiguous.module[0].weight.is_contiguous()
    assert torch.equal(contiguous.module[0].weight, ema.module[0].weight)
    load_ema_state(ema, copy.deepcopy(contiguous.state_dict()), model)
    assert ema.module[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_decay_and_steps_are_checked():
    with pytest.raises(ValueError, match="steps"):
        ExponentialMovingAverage(small_model(), decay=0.9, steps=0)
    with pytest.raises(ValueError):
        ExponentialMovingAverage(small_model(), decay=1.5)
    assert math.isclose(ema_decay(0.99998, 32, 1024, 600), 1 - 0.00002 * 1024 * 32 / 600)
