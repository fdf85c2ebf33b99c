#!/usr/bin/env python
"""Benchmarks that measure ratios within one run (absolute times vary between runs and machines).

    python scripts/benchmark.py --suite simam    # fused SimAM vs the paper's formula: speed, saved memory
    python scripts/benchmark.py --suite train -a resnet18 --attention_type simam -b 16 --image-size 224 --steps 10
    python scripts/benchmark.py --suite data     # uint8 input pipeline vs torchvision's PIL pipeline
    python scripts/benchmark.py --suite data --shards   # reading tar shards (scripts/make_shards.py) vs the folder
    python scripts/benchmark.py --suite eval -a resnet50 --attention_type simam -b 32
    python scripts/benchmark.py --suite table -b 8 --image-size 64 --no-compile   # cost of every arch x attention
    python scripts/benchmark.py --suite table -b 64 --image-size 224 --device cuda  # the GPU table
    python scripts/benchmark.py --suite guard    # operations the non-finite guard adds to a training step

Every suite prints its JSON (device, torch version, settings, figures) and writes it to
``results/benchmarks/<suite>-<device>.json`` (or ``--output``); ``--suite table`` also writes
``results/benchmarks/table-<device>.csv`` (one row per arch x attention), which
``scripts/make_results_table.py --benchmark`` joins into the results table. ``--json`` prints one line instead and
writes a file only with ``--output``. Candidates are timed in alternation, round after round, and each
figure is the median over rounds, so that a ratio compares like with like. The settings' ``compile`` is True only
where every timed call ran compiled graphs (past dynamo's recompile limit, a model runs eager).
"""

from __future__ import annotations

import argparse
import copy
import csv
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
from training.engine import StepOptions, count_step, train_step  # noqa: E402
from training.errors import UserError  # noqa: E402
from training.metrics import RunningSums  # noqa: E402
from training.optim import NonFiniteGuard, build_optimizer, flatten_buffers  # noqa: E402
from training.performance import AMP_CHOICES, FAST_SETTINGS, amp_dtype_for, compile_model, to_device  # noqa: E402
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
    arg("--attention_param", type=float, default=None, help="default: the attention's own (SimAM lambda 0.1)")
    arg("-b", "--batch-size", type=int, default=16)
    arg("--image-size", type=int, default=224)
    arg("--steps", type=int, default=10, help="timed steps (split over the rounds)")
    arg("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    arg("--num-classes", type=int, default=1000)
    arg("--amp", default=FAST_SETTINGS["amp"], choices=AMP_CHOICES, help="mixed precision of the recommended settings")
    arg("--no-compile", action="store_true", help="recommended settings without torch.compile")
    arg("--compile-backend", default="inductor", help="torch.compile's backend (aot_eager: graph capture alone)")
    arg("--no-baseline", action="store_true", help="skip the release's fp32 eager baseline")
    arg("--attention-overhead", action="store_true",
        help="also time the same network without attention (recommended settings) for the attention's overhead")
    # data
    arg("--images", type=int, default=64, help="data suite: generated JPEGs")
    arg("--shards", action="store_true",
        help="data suite: images/s per core reading tar shards (scripts/make_shards.py) against the folder, "
             "in random order, both pipelines; written to results/benchmarks/data-shards-<device>.json")
    # table
    arg("--archs", default=None, help="table suite: comma-separated archs (default: the results table's)")
    arg("--attentions", default=None, help="table suite: comma-separated attentions (default: all)")
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
    included) and the activations alone (parameter and buffer storages left out: BatchNorm keeps its running
    statistics, stored one way or another, ``training.optim.flatten_buffers``)."""
    weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
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

    speed_with_bn = simam_bn_speed(args, device, x, grad)
    memory = {}
    images = torch.randn(args.memory_batch, 3, 224, 224, device=device)
    for arch in ("resnet18", "resnet50", "mobilenet_v2"):
        counts = {"none": saved_for_backward(networks.create_net(arch, "none").to(device), images)}
        for name, implementation, fuse in (("reference", "reference", False), ("eager", "eager", False),
                                           ("fused_bn", "eager", True)):
            model = networks.create_net(arch, "simam", simam_impl=implementation, fuse_simam_bn=fuse)
            counts[name] = saved_for_backward(model.to(device), images)
        memory[arch] = {
            kind: {"none_mb": counts["none"][kind] / 2 ** 20,
                   "paper_formula_overhead_pct": 100 * (counts["reference"][kind] / counts["none"][kind] - 1),
                   "fused_overhead_pct": 100 * (counts["eager"][kind] / counts["none"][kind] - 1),
                   "fused_with_bn_overhead_pct": 100 * (counts["fused_bn"][kind] / counts["none"][kind] - 1)}
            for kind in ("all", "activations")}
    return {"shape": list(args.shape), "dtype": "float32", "speed": speed, "speed_with_bn": speed_with_bn,
            "accuracy": accuracy,
            "saved_memory": {"batch": args.memory_batch, "image_size": 224,
                             "note": "'all': every unique storage saved for backward (weights included); "
                                     "'activations': parameter storages left out; 'fused': SimAM's custom function "
                                     "with the BN after it run separately; 'fused_with_bn': SimAM and the BN "
                                     "as one fused step (create_net's default)", "archs": memory}}


def simam_bn_speed(args, device: torch.device, x: torch.Tensor, grad: torch.Tensor) -> dict:
    """Forward + backward of SimAM followed by a training-mode BatchNorm: the unfused pair (the paper's formula,
    then SimAM's custom function) against the fused step (eager and compiled kernels)."""
    norm = nn.BatchNorm2d(x.shape[1]).to(device)

    def pair(implementation: str) -> Callable[[], None]:
        return lambda: torch.autograd.grad(norm(networks.simam_fused(x, 0.1, implementation)), x, grad)

    def fused(implementation: str) -> Callable[[], None]:
        def run() -> None:
            out = networks.simam_batch_norm(x, 0.1, implementation, norm.weight, norm.bias, norm.running_mean,
                                            norm.running_var, 0.1, norm.eps)
            torch.autograd.grad(out, x, grad)
        return run

    candidates = {"reference_then_bn": pair("reference"), "eager_then_bn": pair("eager"),
                  "fused_eager": fused("eager")}
    if networks.attentions.simam_kernels.compiled_available(device):
        candidates.update(compiled_then_bn=pair("compiled"), fused_compiled=fused("compiled"))
    for run in candidates.values():
        run()  # warm-up (compiles)
    times = alternate(candidates, args.rounds, 3, partial(synchronize, device))
    return {name: {"fwd_bwd_ms": 1e3 * t, "speedup_vs_reference": times["reference_then_bn"] / t}
            for name, t in times.items()}


class CountingBackend:
    """A ``torch.compile`` backend (``name``'s) that counts the calls of the graphs it compiled: a frame past
    dynamo's recompile budget runs eager without a word, and a benchmark must say what it timed."""

    def __init__(self, name: str = "inductor") -> None:
        self.backend = torch._dynamo.lookup_backend(name)
        self.calls = 0

    def __call__(self, graph_module, example_inputs):
        compiled = self.backend(graph_module, example_inputs)

        def run(*args):
            self.calls += 1
            return compiled(*args)
        return run


class TrainBench:
    """One model, optimizer and batch with given settings; ``step()`` is the step ``main_imagenet.py`` runs (with
    the non-finite guard and the running sums; the release's loop, ``release_optimizer``, has neither)."""

    def __init__(self, args, device: torch.device, *, amp: str, channels_last: bool, compile: bool,
                 simam_impl: str, uint8: bool, attention_type: str | None = None,
                 release_optimizer: bool = False, fuse_simam_bn: bool = True) -> None:
        torch.manual_seed(0)
        self.device, self.simam_impl = device, simam_impl
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        attention_type = attention_type or args.attention_type
        self.label = f"{args.arch} with {attention_type}"
        param = args.attention_param if attention_type == args.attention_type else None
        model = networks.create_net(args.arch, attention_type, param, args.num_classes, simam_impl=simam_impl,
                                    fuse_simam_bn=fuse_simam_bn)
        model.to(device, memory_format=self.memory_format).train()
        self.guard, self.sums = None, None
        if not release_optimizer:  # as main_imagenet.py's fit and train_one_epoch do
            flatten_buffers(model)
            self.guard, self.sums = NonFiniteGuard(device, 1, model), RunningSums(device)
        self.module = model  # (uncompiled: saved-memory counts)
        self.backend = CountingBackend(args.compile_backend) if compile else None
        self.model = compile_model(model, backend=self.backend) if compile else model
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

    def graph_calls(self) -> int:
        """Calls of compiled graphs so far."""
        return self.backend.calls if self.backend is not None else 0

    def ran_compiled(self, method: str, graph_calls: int, timed_calls: int) -> bool:
        """Whether ``timed_calls`` of ``method`` ('step', 'infer') that ran ``graph_calls`` compiled graphs all ran
        the graphs that one more call runs."""
        before = self.graph_calls()
        getattr(self, method)()
        per_call = self.graph_calls() - before
        return per_call > 0 and graph_calls == per_call * timed_calls

    def step(self) -> None:
        images, target = to_device(*self.batch, self.device, self.memory_format)
        output, loss = train_step(self.model, images, target, self.state, self.options, self.guard, 0)
        if self.sums is not None:
            count_step(self.sums, loss, output, target)

    def infer(self) -> None:
        with torch.inference_mode(), self.autocast():
            self.model(to_device(*self.batch, self.device, self.memory_format)[0])

    def autocast(self):
        amp_dtype = self.options.amp_dtype
        return torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def saved_for_backward(self) -> dict[str, int]:
        """``saved_for_backward`` of one training forward of the uncompiled model with these settings."""
        images = to_device(*self.batch, self.device, self.memory_format)[0]
        with self.autocast():
            return saved_for_backward(self.module, images)


def time_benches(benches: dict[str, TrainBench], method: str, rounds: int, per_round: int,
                 synchronize: Callable[[], None]) -> dict[str, float]:
    """``alternate`` over ``method`` ('step' or 'infer') of the benches. A compiled bench whose timed calls did not
    all run compiled (dynamo past its recompile budget runs eager without a word) gets ``compile`` False."""
    graph_calls = {name: bench.graph_calls() for name, bench in benches.items()}
    times = alternate({name: getattr(bench, method) for name, bench in benches.items()}, rounds, per_round, synchronize)
    for name, bench in benches.items():
        if bench.backend is not None and not bench.ran_compiled(method, bench.graph_calls() - graph_calls[name],
                                                                  rounds * per_round):
            bench.settings["compile"] = False
            print(f"warning: {bench.label} ({name}): the timed {method} calls ran eager, not compiled "
                  "(past dynamo's recompile limit?)", file=sys.stderr)
    return times


def recommended_and_release(args, device: torch.device) -> dict[str, TrainBench]:
    recommended = dict(amp=args.amp, channels_last=FAST_SETTINGS["channels_last"],
                       compile=FAST_SETTINGS["compile"] and not args.no_compile,
                       simam_impl=FAST_SETTINGS["simam_impl"], uint8=True)
    benches = {"recommended": TrainBench(args, device, **recommended)}
    if args.attention_overhead and args.attention_type != "none":
        benches["no_attention"] = TrainBench(args, device, **recommended, attention_type="none")
        if args.attention_type == "simam":  # SimAM and its BN as separate modules (before the fused step)
            benches["unfused"] = TrainBench(args, device, **recommended, fuse_simam_bn=False)
    if not args.no_baseline:  # the release: fp32, eager, contiguous, the paper's SimAM formula
        benches["release"] = TrainBench(args, device, amp="off", channels_last=False, compile=False,
                                        simam_impl="reference", uint8=False, release_optimizer=True)
    return benches


def suite_train(args) -> dict:
    """Training steps per second with the recommended settings (configs/recipes/fast.yaml) and the release's."""
    device = torch.device(args.device)
    benches = recommended_and_release(args, device)
    for bench in benches.values():
        for _ in range(args.warmup):
            bench.step()
    rounds = max(1, min(args.rounds, args.steps))
    times = time_benches(benches, "step", rounds, max(1, args.steps // rounds), partial(synchronize, device))
    result = {"arch": args.arch, "attention_type": args.attention_type, "attention_param": attention_param(args),
              "batch_size": args.batch_size, "image_size": args.image_size, "steps": args.steps,
              "settings": benches["recommended"].settings,
              "images_per_sec": args.batch_size / times["recommended"], "step_ms": 1e3 * times["recommended"]}
    if "no_attention" in benches:  # saved for backward under the recommended settings, over the plain network
        saved = {name: benches[name].saved_for_backward() for name in ("recommended", "no_attention", "unfused")
                 if name in benches}
        result["saved_for_backward_overhead_pct"] = {
            name: {kind: 100 * (counts[kind] / saved["no_attention"][kind] - 1) for kind in ("all", "activations")}
            for name, counts in saved.items() if name != "no_attention"}
    return {**result, **comparisons(benches, times, args.batch_size)}


def attention_param(args) -> float | None:
    """The parameter the attention is built with (its default where none was given)."""
    return networks.ATTENTIONS.get(args.attention_type).param_or_default(args.attention_param)


def comparisons(benches: dict[str, TrainBench], times: dict[str, float], batch_size: int) -> dict:
    """The release baseline's and the no-attention network's figures, and their ratios to the recommended run."""
    result = {}
    if "no_attention" in benches:
        result.update(no_attention_images_per_sec=batch_size / times["no_attention"],
                      attention_overhead_pct=100 * (times["recommended"] / times["no_attention"] - 1))
    if "unfused" in benches:
        result.update(unfused_images_per_sec=batch_size / times["unfused"],
                      unfused_attention_overhead_pct=100 * (times["unfused"] / times["no_attention"] - 1))
    if "release" in benches:
        result.update(release_settings=benches["release"].settings,
                      release_images_per_sec=batch_size / times["release"],
                      speedup_vs_release=times["release"] / times["recommended"])
    return result


def suite_guard(args) -> dict:
    """The operations the non-finite guard adds to a training step, counted by torch.profiler (every aten
    operation, nested ones included; on CUDA also the kernels): guard on minus guard off, with the buffers stored
    flat as main_imagenet.py keeps them, and per buffer for comparison. fp32, eager, batch 2 at 32 px: the counts
    do not depend on the size."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(args.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    archs = _names(args.archs, ["resnet18", "resnet50", "mobilenet_v2"], "arch")
    rows = []
    for arch in archs:
        torch.manual_seed(0)
        model = networks.create_net(arch, args.attention_type, args.attention_param, 10).to(device).train()
        images, target = torch.randn(2, 3, 32, 32, device=device), torch.tensor([0, 1], device=device)
        counts = {}
        for name, flat, guarded in (("off", True, False), ("flat", True, True), ("per_buffer", False, True)):
            step_model = copy.deepcopy(model)
            if flat:
                flatten_buffers(step_model)
            state = TrainState(step_model, build_optimizer(step_model, 0.1, 0.9, 1e-4), scheduler=None,
                               scaler=torch.amp.GradScaler(device.type, enabled=False), iterations_per_epoch=1)
            guard = NonFiniteGuard(device, 1, step_model) if guarded else None
            options = StepOptions(Context(device))
            train_step(step_model, images, target, state, options, guard, 0)  # warm-up: lazy initialisations
            synchronize(device)
            with profile(activities=activities) as prof:
                train_step(step_model, images, target, state, options, guard, 0)
                synchronize(device)
            events = prof.events()
            counts[name] = {"ops": sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CPU),
                            "kernels": sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)}
        row = {"arch": arch, "attention_type": args.attention_type, "buffers": len(list(model.buffers())),
               "ops_added": counts["flat"]["ops"] - counts["off"]["ops"],
               "ops_added_per_buffer_guard": counts["per_buffer"]["ops"] - counts["off"]["ops"]}
        if device.type == "cuda":
            row.update(kernels_added=counts["flat"]["kernels"] - counts["off"]["kernels"],
                       kernels_added_per_buffer_guard=counts["per_buffer"]["kernels"] - counts["off"]["kernels"])
        rows.append(row)
    return {"rows": rows}


def suite_eval(args) -> dict:
    """Inference images per second (recommended settings vs the release's fp32 eager)."""
    device = torch.device(args.device)
    benches = recommended_and_release(args, device)

    for bench in benches.values():
        bench.model.eval()
        for _ in range(args.warmup):
            bench.infer()
    rounds = max(1, min(args.rounds, args.steps))
    times = time_benches(benches, "infer", rounds, max(1, args.steps // rounds), partial(synchronize, device))
    result = {"arch": args.arch, "attention_type": args.attention_type, "attention_param": attention_param(args),
              "batch_size": args.batch_size, "image_size": args.image_size, "settings": benches["recommended"].settings,
              "images_per_sec": args.batch_size / times["recommended"]}
    return {**result, **comparisons(benches, times, args.batch_size)}


def suite_data(args) -> dict:
    """Decode + augmentation images/s of one worker: the uint8 pipeline vs torchvision's PIL pipeline; with
    ``--shards``, reading tar shards against reading the folder."""
    from scripts._data_benchmark import run_data_suite, run_shards_suite
    if args.shards:
        return run_shards_suite(image_count=args.images)
    return run_data_suite(image_count=args.images)


TABLE_COLUMNS = ["arch", "attention_type", "attention_param", "train_images_per_sec", "infer_images_per_sec",
                 "saved_activation_mb_per_image", "peak_memory_mb", "peak_memory_kind", "batch_size", "image_size",
                 "amp", "channels_last", "compile", "simam_impl", "device", "device_name", "threads", "torch"]


def _names(value: str | None, choices: list[str], what: str) -> list[str]:
    if value is None:
        return list(choices)
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in choices]
    if unknown or not names:
        raise UserError(f"unknown {what} {', '.join(map(repr, unknown)) or repr(value)}; "
                        f"valid choices: {', '.join(choices)}")
    return names


def peak_memory(bench: TrainBench) -> tuple[float, str]:
    """MB of one training step's peak: CUDA's max allocated on a GPU; on a CPU (no allocator statistics) every
    storage saved for backward, weights included."""
    if bench.device.type == "cuda":
        synchronize(bench.device)
        torch.cuda.reset_peak_memory_stats(bench.device)
        bench.step()
        synchronize(bench.device)
        return torch.cuda.max_memory_allocated(bench.device) / 2 ** 20, "cuda_max_allocated"
    return bench.saved_for_backward()["all"] / 2 ** 20, "saved_tensors"


def suite_table(args) -> dict:
    """The cost columns of the results table: for every arch x attention, training and inference images per
    second with the recommended settings, saved activations per image and the peak memory of a training step.
    The attentions of one arch are timed in alternation (their ratios compare like with like)."""
    from scripts.make_results_table import ARCHS as TABLE_ARCHS
    from scripts.make_results_table import ATTENTIONS as TABLE_ATTENTIONS

    device = torch.device(args.device)
    archs = _names(args.archs, TABLE_ARCHS if args.archs is None else list(networks.ARCHS), "arch")
    attentions = _names(args.attentions, TABLE_ATTENTIONS if args.attentions is None else list(networks.ATTENTIONS),
                        "attention")
    recommended = dict(amp=args.amp, channels_last=FAST_SETTINGS["channels_last"],
                       compile=FAST_SETTINGS["compile"] and not args.no_compile,
                       simam_impl=FAST_SETTINGS["simam_impl"], uint8=True)
    rounds = max(1, min(args.rounds, args.steps))
    sync = partial(synchronize, device)
    rows = []
    for arch in archs:
        arch_args = argparse.Namespace(**{**vars(args), "arch": arch, "attention_param": None})
        benches = {attention: TrainBench(arch_args, device, **recommended, attention_type=attention)
                   for attention in attentions}
        memory = {attention: (bench.saved_for_backward()["activations"], peak_memory(bench))
                  for attention, bench in benches.items()}
        for bench in benches.values():
            for _ in range(args.warmup):
                bench.step()
        train = time_benches(benches, "step", rounds, max(1, args.steps // rounds), sync)
        for bench in benches.values():
            bench.model.eval()
            for _ in range(args.warmup):
                bench.infer()
        infer = time_benches(benches, "infer", rounds, max(1, args.steps // rounds), sync)
        for attention, bench in benches.items():
            activations, (peak_mb, peak_kind) = memory[attention]
            settings = bench.settings
            rows.append({"arch": arch, "attention_type": attention,
                         "attention_param": networks.ATTENTIONS.get(attention).param_or_default(None),
                         "train_images_per_sec": args.batch_size / train[attention],
                         "infer_images_per_sec": args.batch_size / infer[attention],
                         "saved_activation_mb_per_image": activations / 2 ** 20 / args.batch_size,
                         "peak_memory_mb": peak_mb, "peak_memory_kind": peak_kind,
                         "batch_size": args.batch_size, "image_size": args.image_size, "amp": settings["amp"],
                         "channels_last": settings["channels_last"], "compile": settings["compile"],
                         "simam_impl": settings["simam_impl"]})
        del benches
    return {"batch_size": args.batch_size, "image_size": args.image_size, "steps": args.steps, "rows": rows}


def write_table_csv(result: dict, path: str) -> None:
    """One CSV row per arch x attention (``TABLE_COLUMNS``), with the run's device and versions in every row."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, TABLE_COLUMNS)
        writer.writeheader()
        for row in result["rows"]:
            full = {**row, **{key: result[key] for key in ("device", "device_name", "threads", "torch")}}
            writer.writerow({key: "" if full[key] is None else
                             repr(round(full[key], 4)) if isinstance(full[key], float) else full[key]
                             for key in TABLE_COLUMNS})


SUITES = {"simam": suite_simam, "train": suite_train, "data": suite_data, "eval": suite_eval, "table": suite_table,
          "guard": suite_guard}


def device_tag(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    return "gpu-" + torch.cuda.get_device_name(device).lower().replace("nvidia ", "").replace(" ", "-")


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but CUDA is not available")
    result = {"suite": args.suite, **environment(device), **SUITES[args.suite](args),
              "command": "python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    text = json.dumps(result, indent=None if args.json else 2)
    print(text, flush=True)
    name = args.suite + (f"-{args.arch}-{args.attention_type}" if args.suite in ("train", "eval") else "")
    name += "-shards" if args.suite == "data" and args.shards else ""
    output = args.output or (None if args.json else os.path.join(ROOT, "results", "benchmarks",
                                                                   f"{name}-{device_tag(device)}.json"))
    if output:
        if args.suite == "table":  # the CSV beside the JSON
            output = os.path.splitext(output)[0] + ".json"
            write_table_csv(result, os.path.splitext(output)[0] + ".csv")
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    return result


cli = make_cli(main)  # bad input: one line `error: ...`, exit status 2


if __name__ == "__main__":
    sys.exit(cli())
