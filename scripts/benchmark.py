#!/usr/bin/env python
"""Benchmarks that measure ratios within one run (absolute times vary between runs and machines).

    python scripts/benchmark.py --suite simam    # fused SimAM vs the paper's formula: speed, saved memory
    python scripts/benchmark.py --suite train -a resnet18 --attention_type simam -b 16 --image-size 224 --steps 10
    python scripts/benchmark.py --suite data     # uint8 input pipeline vs torchvision's PIL pipeline
    python scripts/benchmark.py --suite eval -a resnet50 --attention_type simam -b 32

Every suite prints its JSON (device, torch version, settings, figures) and writes it to
``results/benchmarks/<suite>-<device>.json`` (or ``--output``). ``--json`` prints one line instead and
writes a file only with ``--output``. Candidates are timed in alternation, round after round, and each
figure is the median over rounds, so that a ratio compares like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from functools import partial
from typing import Callable

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import networks  # noqa: E402
from scripts._cli import make_cli  # noqa: E402
from scripts._timing import alternate  # noqa: E402
from training.distributed import Context  # noqa: E402
from training.engine import StepOptions, train_step  # noqa: E402
from training.errors import UserError  # noqa: E402
from training.optim import build_optimizer  # noqa: E402
from training.performance import AMP_CHOICES, FAST_SETTINGS, amp_dtype_for, to_device  # noqa: E402
from training.state import TrainState  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    arg = parser.add_argument
    arg("--suite", required=True, choices=sorted(SUITES))
    arg("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    arg("--output", default=None,
        help="JSON file; by default results/benchmarks/<suite>[-<arch>-<attention>]-<device>.json")
    arg("--json", action="store_true", help="print one JSON line; write a file only with --output")
    arg("--rounds", type=int, default=5, help="alternating timing rounds (the median is reported)")
    # simam
    arg("--shape", type=int, nargs=4, default=[32, 64, 56, 56], metavar=("N", "C", "H", "W"))
    arg("--memory-batch", type=int, default=2, help="batch of the saved-memory count at 224 px")
    # train / eval
    arg("-a", "--arch", default="resnet18", choices=list(networks.ARCHS))
    arg("--attention_type", default="simam", choices=list(networks.ATTENTIONS))
    arg("--attention_param", type=float, default=None)
    arg("-b", "--batch-size", type=int, default=16)
    arg("--image-size", type=int, default=224)
    arg("--steps", type=int, default=10, help="timed steps (split over the rounds)")
    arg("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    arg("--num-classes", type=int, default=1000)
    arg("--amp", default=FAST_SETTINGS["amp"], choices=AMP_CHOICES, help="mixed precision of the recommended settings")
    arg("--no-compile", action="store_true", help="recommended settings without torch.compile")
    arg("--no-baseline", action="store_true", help="skip the release's fp32 eager baseline")
    arg("--attention-overhead", action="store_true",
        help="also time the same network without attention (recommended settings) for the attention's overhead")
    # data
    arg("--images", type=int, default=64, help="data suite: generated JPEGs")
    return parser


# ---------------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------------

def environment(device: torch.device) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return {"device": str(device), "device_name": name, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def saved_for_backward(model: nn.Module, images: torch.Tensor) -> dict[str, int]:
    """Bytes of the unique storages autograd keeps for backward after one forward: all of them (weights
    included) and the activations alone (parameter storages left out)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(images)
    return {"all": sum(storages.values()),
            "activations": sum(n for ptr, n in storages.items() if ptr not in weights)}


# ---------------------------------------------------------------------------------------------------------
# Suites
# ---------------------------------------------------------------------------------------------------------

def suite_simam(args) -> dict:
    """The fused SimAM (eager and compiled kernels) against the paper's formula in eager PyTorch."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(*args.shape, device=device, requires_grad=True)
    grad = torch.randn_like(x)
    implementations = ["reference", "eager"]
    if networks.attentions.simam_kernels.compiled_available(device):
        implementations.append("compiled")
    reference_out = networks.simam(x, 0.1)
    reference_grad, = torch.autograd.grad(reference_out, x, grad)

    def fwd_bwd(implementation: str) -> Callable[[], None]:
        return lambda: torch.autograd.grad(networks.simam_fused(x, 0.1, implementation), x, grad)

    accuracy = {}
    for name in implementations[1:]:
        out = networks.simam_fused(x, 0.1, name)
        out_grad, = torch.autograd.grad(out, x, grad)
        accuracy[name] = {"output_max_abs_diff": (out - reference_out).abs().max().item(),
                          "grad_max_rel_diff": ((out_grad - reference_grad).abs().max()
                                                / reference_grad.abs().max()).item()}
        fwd_bwd(name)()  # warm-up (compiles)
    times = alternate({name: fwd_bwd(name) for name in implementations}, args.rounds, 3, partial(synchronize, device))
    speed = {name: {"fwd_bwd_ms": 1e3 * t, "speedup_vs_reference": times["reference"] / t} for name, t in times.items()}

    memory = {}
    images = torch.randn(args.memory_batch, 3, 224, 224, device=device)
    for arch in ("resnet18", "resnet50", "mobilenet_v2"):
        counts = {"none": saved_for_backward(networks.create_net(arch, "none").to(device), images)}
        for implementation in ("reference", "eager"):
            networks.set_simam_implementation(implementation)
            counts[implementation] = saved_for_backward(networks.create_net(arch, "simam").to(device), images)
        memory[arch] = {
            kind: {"none_mb": counts["none"][kind] / 2 ** 20,
                   "paper_formula_overhead_pct": 100 * (counts["reference"][kind] / counts["none"][kind] - 1),
                   "fused_overhead_pct": 100 * (counts["eager"][kind] / counts["none"][kind] - 1)}
            for kind in ("all", "activations")}
    return {"shape": list(args.shape), "dtype": "float32", "speed": speed, "accuracy": accuracy,
            "saved_memory": {"batch": args.memory_batch, "image_size": 224,
                             "note": "'all': every unique storage saved for backward (weights included); "
                                     "'activations': parameter storages left out", "archs": memory}}


class TrainBench:
    """One model, optimizer and batch with given settings; ``step()`` is the project's training step."""

    def __init__(self, args, device: torch.device, *, amp: str, channels_last: bool, compile: bool,
                 simam_impl: str, uint8: bool, attention_type: str | None = None,
                 release_optimizer: bool = False) -> None:
        torch.manual_seed(0)
        self.device, self.simam_impl = device, simam_impl
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        attention_type = attention_type or args.attention_type
        param = args.attention_param if attention_type == args.attention_type else None
        model = networks.create_net(args.arch, attention_type, param, args.num_classes)
        model.to(device, memory_format=self.memory_format).train()
        self.model = torch.compile(model) if compile else model
        amp_dtype = amp_dtype_for(amp, device)
        lr, momentum, weight_decay = 0.1, 0.9, 1e-4
        # the project's optimizer, or the release's (torch's default SGD implementation)
        optimizer = (build_optimizer(model, lr, momentum, weight_decay) if not release_optimizer else
                     torch.optim.SGD(model.parameters(), lr, momentum=momentum, weight_decay=weight_decay))
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.state = TrainState(model, optimizer, scheduler=None, scaler=scaler, iterations_per_epoch=1)  # no schedule
        self.options = StepOptions(Context(device), nn.CrossEntropyLoss(), self.memory_format, amp_dtype)
        shape = (args.batch_size, 3, args.image_size, args.image_size)
        # what the loader hands over: uint8 (normalised on the device) or normalised floats (pinned on CUDA)
        images = torch.randint(0, 256, shape, dtype=torch.uint8) if uint8 else torch.randn(shape)
        target = torch.randint(0, args.num_classes, (args.batch_size,))
        self.batch = (images.pin_memory(), target.pin_memory()) if device.type == "cuda" else (images, target)
        self.settings = {"amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
                         "channels_last": channels_last, "compile": compile, "simam_impl": simam_impl,
                         "input": "uint8, normalised on the device" if uint8 else "float32"}

    def step(self) -> None:
        networks.set_simam_implementation(self.simam_impl)
        images, target = to_device(*self.batch, self.device, self.memory_format)
        train_step(self.model, images, target, self.state, self.options)


def recommended_and_release(args, device: torch.device) -> dict[str, TrainBench]:
    recommended = dict(amp=args.amp, channels_last=FAST_SETTINGS["channels_last"],
                       compile=FAST_SETTINGS["compile"] and not args.no_compile,
                       simam_impl=FAST_SETTINGS["simam_impl"], uint8=True)
    benches = {"recommended": TrainBench(args, device, **recommended)}
    if args.attention_overhead and args.attention_type != "none":
        benches["no_attention"] = TrainBench(args, device, **recommended, attention_type="none")
    if not args.no_baseline:  # the release: fp32, eager, contiguous, the paper's SimAM formula
        benches["release"] = TrainBench(args, device, amp="off", channels_last=False, compile=False,
                                        simam_impl="reference", uint8=False, release_optimizer=True)
    return benches


def suite_train(args) -> dict:
    """Training steps per second with the recommended settings (configs/fast/) and the release's."""
    device = torch.device(args.device)
    benches = recommended_and_release(args, device)
    for bench in benches.values():
        for _ in range(args.warmup):
            bench.step()
    rounds = max(1, min(args.rounds, args.steps))
    times = alternate({name: bench.step for name, bench in benches.items()}, rounds,
                      max(1, args.steps // rounds), partial(synchronize, device))
    result = {"arch": args.arch, "attention_type": args.attention_type, "attention_param": args.attention_param,
              "batch_size": args.batch_size, "image_size": args.image_size, "steps": args.steps,
              "settings": benches["recommended"].settings,
              "images_per_sec": args.batch_size / times["recommended"], "step_ms": 1e3 * times["recommended"]}
    return {**result, **comparisons(benches, times, args.batch_size)}


def comparisons(benches: dict[str, TrainBench], times: dict[str, float], batch_size: int) -> dict:
    """The release baseline's and the no-attention network's figures, and their ratios to the recommended run."""
    result = {}
    if "no_attention" in benches:
        result.update(no_attention_images_per_sec=batch_size / times["no_attention"],
                      attention_overhead_pct=100 * (times["recommended"] / times["no_attention"] - 1))
    if "release" in benches:
        result.update(release_settings=benches["release"].settings,
                      release_images_per_sec=batch_size / times["release"],
                      speedup_vs_release=times["release"] / times["recommended"])
    return result


def suite_eval(args) -> dict:
    """Inference images per second (recommended settings vs the release's fp32 eager)."""
    device = torch.device(args.device)
    benches = recommended_and_release(args, device)

    def infer(bench: TrainBench) -> Callable[[], None]:
        def run() -> None:
            networks.set_simam_implementation(bench.simam_impl)
            with torch.inference_mode(), torch.autocast(device.type, dtype=bench.options.amp_dtype,
                                                        enabled=bench.options.amp_dtype is not None):
                bench.model(to_device(*bench.batch, device, bench.memory_format)[0])
        return run

    for bench in benches.values():
        bench.model.eval()
        for _ in range(args.warmup):
            infer(bench)()
    rounds = max(1, min(args.rounds, args.steps))
    times = alternate({name: infer(bench) for name, bench in benches.items()}, rounds,
                      max(1, args.steps // rounds), partial(synchronize, device))
    result = {"arch": args.arch, "attention_type": args.attention_type, "batch_size": args.batch_size,
              "image_size": args.image_size, "settings": benches["recommended"].settings,
              "images_per_sec": args.batch_size / times["recommended"]}
    return {**result, **comparisons(benches, times, args.batch_size)}


def suite_data(args) -> dict:
    """Decode + augmentation images/s of one worker: the uint8 pipeline vs torchvision's PIL pipeline."""
    from scripts._data_benchmark import run_data_suite
    return run_data_suite(image_count=args.images)


SUITES = {"simam": suite_simam, "train": suite_train, "data": suite_data, "eval": suite_eval}


def device_tag(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    return "gpu-" + torch.cuda.get_device_name(device).lower().replace("nvidia ", "").replace(" ", "-")


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but CUDA is not available")
    chosen = networks.get_simam_implementation()
    try:
        result = {"suite": args.suite, **environment(device), **SUITES[args.suite](args)}
    finally:  # suites switch implementations while they compare them
        networks.set_simam_implementation(chosen)
    text = json.dumps(result, indent=None if args.json else 2)
    print(text, flush=True)
    name = args.suite + (f"-{args.arch}-{args.attention_type}" if args.suite in ("train", "eval") else "")
    output = args.output or (None if args.json else os.path.join(ROOT, "results", "benchmarks",
                                                                   f"{name}-{device_tag(device)}.json"))
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    return result


cli = make_cli(main)  # bad input: one line `error: ...`, exit status 2


if __name__ == "__main__":
    sys.exit(cli())
