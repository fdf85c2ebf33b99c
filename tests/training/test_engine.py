"""The loops: a step and an evaluation against plain PyTorch, no host reads inside steps, no GPU synchronisation."""

import copy

import pytest
import torch
from torch import nn

import networks
from helpers import train_argv
from test_main_imagenet import run_main
from training.distributed import Context
from training.engine import StepOptions, evaluate, train_step
from training.metrics import RunLog
from training.optim import build_optimizer
from training.performance import amp_dtype_for, to_device
from training.state import TrainState


def host_reads_during_training(monkeypatch, data, ckpt, batches: int) -> int:
    """How many tensor values training reads back to the host (``.item()``, ``.tolist()``, ``float()``)."""
    count = 0
    for name in ("item", "tolist", "__float__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original):
            nonlocal count
            count += 1
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    # one epoch of `batches` steps, printing only at the first and last
    run_main(train_argv(data, ckpt, "-p", "1000", "--log_freq", "1000", "--dummy", str(8 * batches), batch=8,
                        arch="resnet18", attention="simam"))
    monkeypatch.undo()
    return count


def test_host_reads_do_not_grow_with_the_number_of_steps(monkeypatch, four_class_data, tmp_path):
    few = host_reads_during_training(monkeypatch, four_class_data, tmp_path / "few", batches=3)
    many = host_reads_during_training(monkeypatch, four_class_data, tmp_path / "many", batches=9)
    assert many == few


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA synchronisation checks need a GPU")
def test_training_steps_do_not_synchronise_the_gpu():
    device = torch.device("cuda")
    model = networks.create_net("resnet18", "simam", num_classes=4).cuda().to(memory_format=torch.channels_last)
    amp = amp_dtype_for("auto", device)
    state = state_for(model, amp_dtype=amp)
    options = StepOptions(Context(device), memory_format=torch.channels_last, amp_dtype=amp)
    batch = (torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8).pin_memory(),
             torch.randint(0, 4, (8,)).pin_memory())
    train_step(model, *to_device(*batch, device, torch.channels_last), state, options)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            train_step(model, *to_device(*batch, device, torch.channels_last), state, options)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def state_for(model: nn.Module, amp_dtype=None) -> TrainState:
    optimizer = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    device_type = next(model.parameters()).device.type
    return TrainState(model, optimizer, scheduler=None, iterations_per_epoch=1,
                      scaler=torch.amp.GradScaler(device_type, enabled=amp_dtype == torch.float16))


def test_train_steps_equal_torchs_sgd_on_the_same_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    reference = copy.deepcopy(model)
    state, options = state_for(model), StepOptions(Context(torch.device("cpu")))
    plain = torch.optim.SGD(reference.parameters(), 0.1, momentum=0.9, weight_decay=1e-4, foreach=False)
    for _ in range(3):
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        output, loss = train_step(model, x, y, state, options)
        plain.zero_grad()
        expected_loss = nn.functional.cross_entropy(reference(x), y)
        expected_loss.backward()
        plain.step()
        torch.testing.assert_close(loss, expected_loss)
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_evaluate_equals_a_plain_loop(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 7).eval()
    batches = [(torch.randn(5, 4), torch.randint(0, 7, (5,))) for _ in range(3)]
    result = evaluate(model, batches, StepOptions(Context(torch.device("cpu")), progress=False),
                      RunLog(str(tmp_path), enabled=False))
    logits = torch.cat([model(x) for x, _ in batches])
    target = torch.cat([y for _, y in batches])
    ranked = logits.argsort(dim=1, descending=True)
    assert result["count"] == 15 and result["bad_images"] == 0
    assert result["top1"] == pytest.approx(100 * (ranked[:, 0] == target).float().mean().item())
    assert result["top5"] == pytest.approx(100 * (ranked[:, :5] == target[:, None]).any(1).float().mean().item())
    assert result["loss"] == pytest.approx(nn.functional.cross_entropy(logits, target).item(), rel=1e-6)
