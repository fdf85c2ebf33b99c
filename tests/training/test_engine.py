"""The loops: a step and an evaluation against plain PyTorch, no host reads inside steps, no GPU synchronisation."""

import contextlib
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


def host_reads_during_training(monkeypatch, data, ckpt, batches: int, *flags) -> int:
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
    run_main(train_argv(data, ckpt, "-p", "1000", "--log_freq", "1000", "--dummy", str(8 * batches), *flags,
                        batch=8, arch="resnet18", attention="simam"))
    monkeypatch.undo()
    return count


def test_host_reads_do_not_grow_with_the_number_of_steps(monkeypatch, four_class_data, tmp_path):
    few = host_reads_during_training(monkeypatch, four_class_data, tmp_path / "few", batches=3)
    many = host_reads_during_training(monkeypatch, four_class_data, tmp_path / "many", batches=9)
    assert many == few


def test_host_reads_do_not_grow_with_the_steps_of_an_ema(monkeypatch, four_class_data, tmp_path):
    """torch's AveragedModel reads its update count back from the device twice per update (a GPU sync every
    --model-ema-steps steps); ours counts on the host."""
    flags = ("--model-ema", "--model-ema-steps", "1")
    few = host_reads_during_training(monkeypatch, four_class_data, tmp_path / "few", 3, *flags)
    many = host_reads_during_training(monkeypatch, four_class_data, tmp_path / "many", 9, *flags)
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


class NoSyncCounter(nn.Module):
    """A network without BatchNorm that records DDP-style ``no_sync`` use: gradient synchronisation skipped."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        self.unsynced_backwards = 0
        self._in_no_sync = False

    def forward(self, x):
        if self._in_no_sync:
            self.unsynced_backwards += 1
        return self.net(x)

    @contextlib.contextmanager
    def no_sync(self):
        self._in_no_sync = True
        try:
            yield
        finally:
            self._in_no_sync = False


@pytest.mark.parametrize("soft_targets", [False, True])
def test_k_micro_steps_equal_one_big_step_on_a_network_without_batchnorm(soft_targets):
    torch.manual_seed(0)
    model = NoSyncCounter()
    big = copy.deepcopy(model)
    accumulated_state, big_state = state_for(model), state_for(big)
    accumulated = StepOptions(Context(torch.device("cpu")), accum_steps=4)
    plain = StepOptions(Context(torch.device("cpu")))
    for _ in range(3):
        x = torch.randn(16, 3, 8, 8)
        y = torch.softmax(torch.randn(16, 3), 1) if soft_targets else torch.randint(0, 3, (16,))
        output, loss = train_step(model, x, y, accumulated_state, accumulated)
        big_output, big_loss = train_step(big, x, y, big_state, plain)
        torch.testing.assert_close(loss, big_loss, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(output, big_output.detach(), rtol=1e-6, atol=1e-7)
    for ours, theirs in zip(model.parameters(), big.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    assert model.unsynced_backwards == 3 * 3  # K - 1 of the K micro-batches of each step skip the gradient sync
    assert big.unsynced_backwards == 0


def test_flip_tta_is_the_mean_of_the_two_logits(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.Flatten(), nn.LazyLinear(4)).eval()
    batches = [(torch.randn(3, 3, 6, 6), torch.randint(0, 4, (3,))) for _ in range(2)]
    model(batches[0][0])
    options = StepOptions(Context(torch.device("cpu")), progress=False, tta=True)
    result = evaluate(model, batches, options, RunLog(str(tmp_path), enabled=False))
    with torch.no_grad():
        logits = torch.cat([(model(x) + model(torch.flip(x, dims=[3]))) / 2 for x, _ in batches])
        single = torch.cat([model(x) for x, _ in batches])
    target = torch.cat([y for _, y in batches])
    assert result["loss"] == pytest.approx(nn.functional.cross_entropy(logits, target).item(), rel=1e-6)
    assert result["loss"] != pytest.approx(nn.functional.cross_entropy(single, target).item(), rel=1e-6)


def test_the_sizes_of_a_size_schedule_compile_once_each():
    """``--compile`` compiles with ``dynamic=False`` (training.performance.compile_model): each training size is
    one graph, compiled on its first use and reused when it comes back."""
    from training.performance import compile_model

    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(tuple(example_inputs[0].shape) if example_inputs else ())
        return graph_module.forward

    torch._dynamo.reset()
    model = compile_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                          backend=counting_backend)
    for size in (32, 32, 64, 64, 96, 32, 64, 96, 96):  # epochs of a schedule, then a resumed run's sizes again
        model(torch.randn(2, 3, size, size))
    assert len(graphs) == 3
    torch._dynamo.reset()


@pytest.mark.parametrize("size", [15, 13, 6])  # micro-batches of 4,4,4,3 / 4,4,4,1 / 2,2,2 (only three)
def test_micro_batches_of_a_batch_that_does_not_split_evenly_weigh_by_their_size(size):
    """``chunk(K)`` of such a batch gives unequal or fewer micro-batches; each loss weighs by its share of the batch,
    so the step is still the whole batch's (the training loaders leave such batches out; other callers may not)."""
    torch.manual_seed(0)
    model = NoSyncCounter()
    big = copy.deepcopy(model)
    accumulated_state, big_state = state_for(model), state_for(big)
    x, y = torch.randn(size, 3, 8, 8), torch.randint(0, 3, (size,))
    _, loss = train_step(model, x, y, accumulated_state, StepOptions(Context(torch.device("cpu")), accum_steps=4))
    _, big_loss = train_step(big, x, y, big_state, StepOptions(Context(torch.device("cpu"))))
    torch.testing.assert_close(loss, big_loss, rtol=1e-6, atol=1e-7)
    for ours, theirs in zip(model.parameters(), big.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
