"""Devices and process groups: one process per GPU (spawned or torchrun), gloo on CPU."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from .errors import TrainingError, UserError, one_line
from .options import Options

T = TypeVar("T")


@dataclass
class Context:
    """Where this process runs and its place in the job."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class LaunchOptions(Options):
    """Which devices, and how the processes of a job meet."""

    gpu: str | None = None
    multiprocessing_distributed: bool = False
    world_size: int = -1  # nodes
    rank: int = -1  # this node's
    dist_url: str | None = None
    dist_backend: str | None = None
    dist_timeout: float = 30.0  # minutes

    @property
    def nodes(self) -> int:
        return max(self.world_size, 1)

    def devices(self) -> list[torch.device]:
        """This node's devices: one process each."""
        return parse_gpus(self.gpu, every_gpu=self.multiprocessing_distributed)

    def meeting_point(self) -> LaunchOptions:
        """These options with ``dist_url`` resolved: a free local port on one node."""
        if self.nodes > 1 and not self.dist_url:
            raise UserError("--dist-url is required with --world-size > 1 (e.g. tcp://MASTER_ADDR:23456)")
        return replace(self, dist_url=self.dist_url or f"tcp://127.0.0.1:{free_port()}")


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("devices and launch (one process per GPU, spawned here or by torchrun)")
    arg = group.add_argument
    arg("--gpu", default=None, type=str,
        help="GPU ids to use, e.g. 0,1,2,3 (one process per GPU), or 'cpu' "
             "(default: GPU 0 if CUDA is available, else CPU)")
    arg("--multiprocessing-distributed", action="store_true",
        help="the release's flag: one process per GPU (every visible GPU without --gpu) on each of --world-size "
             "nodes; implied when --gpu lists several GPUs")
    arg("--world-size", default=LaunchOptions.world_size, type=int,
        help="number of nodes for distributed training (with --gpu / spawn)")
    arg("--rank", default=LaunchOptions.rank, type=int, help="node rank for distributed training (with --gpu / spawn)")
    arg("--dist-url", default=None, type=str,
        help="url used to set up distributed training (default: a free local port on one node; env:// under torchrun)")
    arg("--dist-backend", default=None, type=str, help="distributed backend (default: nccl on GPUs, gloo on CPU)")
    arg("--dist-timeout", default=LaunchOptions.dist_timeout, type=float, metavar="MIN",
        help="minutes a process waits for the others before failing")


def torchrun_context(launch: LaunchOptions) -> Context:
    """This process's place in a job torchrun started, from its environment; joins the job's process group."""
    env = os.environ
    rank, world_size, local_rank = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    local_world_size = int(env.get("LOCAL_WORLD_SIZE", world_size))
    if torch.cuda.is_available() and (launch.gpu or "").lower() != "cpu":
        devices = parse_gpus(launch.gpu) if launch.gpu else None
        if devices is not None and local_rank >= len(devices):
            raise UserError(f"--gpu {launch.gpu} lists {len(devices)} GPUs "
                            f"but torchrun started {local_world_size} per node")
        device = devices[local_rank] if devices else torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    ctx = Context(device, rank, world_size, local_rank, local_world_size)
    init_process_group(ctx, launch.dist_backend, "env://", launch.dist_timeout)
    return ctx


def spawned_context(local_rank: int, devices: list[torch.device], launch: LaunchOptions) -> Context:
    """The place of process ``local_rank`` of this node's ``devices`` (one each); joins the job's process group at
    ``launch.dist_url``."""
    node_rank = max(launch.rank, 0)
    ctx = Context(devices[local_rank], node_rank * len(devices) + local_rank, launch.nodes * len(devices),
                  local_rank, len(devices))
    init_process_group(ctx, launch.dist_backend, launch.dist_url, launch.dist_timeout)
    return ctx


# ---------------------------------------------------------------------------------------------------------
# Launch: one process here, one per device (spawn), or torchrun's
# ---------------------------------------------------------------------------------------------------------

def launch(worker: Callable[[Context, Any], T], job: Any) -> T | None:
    """``worker(ctx, job)`` where ``job.launch`` (``LaunchOptions``) says: in each process torchrun started, here on
    the one device, or in one spawned process per device (``spawn``). Returns the worker's result when it ran in
    this process, None after spawning. ``job`` is a frozen dataclass with a ``launch`` field; ``worker`` a
    module-level function (spawned processes import it)."""
    options = job.launch
    if launched_by_torchrun():
        return worker(torchrun_context(options), job)
    devices = options.devices()
    if len(devices) == 1 and options.nodes == 1:
        return worker(Context(device=devices[0]), job)
    job = replace(job, launch=options.meeting_point())
    if len(devices) == 1:  # one device here, other nodes elsewhere
        return worker(spawned_context(0, devices, job.launch), job)
    spawn(worker, devices, job)
    return None


def spawn(worker: Callable[[Context, Any], Any], devices: list[torch.device], job: Any) -> None:
    """One process per device, meeting at ``job.launch.dist_url``; SIGTERM is passed on to them, Ctrl-C reaches them
    from the terminal. The first process's one-line error is printed once and is the exit status (``SystemExit``)."""
    import torch.multiprocessing as mp

    errors = mp.get_context("spawn").SimpleQueue()
    context = mp.start_processes(_spawned_worker, args=(worker, devices, job, errors), nprocs=len(devices),
                                 join=False, start_method="spawn")

    def forward(signum, frame):
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    try:
        while not context.join():
            pass
    except (mp.ProcessExitedException, mp.ProcessRaisedException) as error:  # join() has stopped the others
        if not errors.empty():  # a process's own error; the others may have failed after it, waiting for it
            status, message = errors.get()
        else:  # killed by a signal, or an unexpected exception (its traceback is the message)
            exited = isinstance(error, mp.ProcessExitedException) and error.exit_code and error.exit_code > 0
            status = error.exit_code if exited else 1
            message = f"error: {error}; the other processes were stopped; continue with --resume auto"
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(status) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _spawned_worker(local_rank: int, worker, devices: list[torch.device], job, errors) -> None:
    """One spawned process. Its one-line error goes to the parent (``errors``), which prints the first one: a
    corrupt image in any process's share is named, once."""
    try:
        worker(spawned_context(local_rank, devices, job.launch), job)
    except (UserError, TrainingError) as error:
        status = 2 if isinstance(error, UserError) else 1
        errors.put((status, f"error: {one_line(error)}"))
        sys.exit(status)
    except KeyboardInterrupt:  # a second Ctrl-C; torch's wrapper would report it as success
        sys.exit(130)


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def parse_gpus(spec: str | None, every_gpu: bool = False) -> list[torch.device]:
    """Devices for ``--gpu``: ``"0,1,2,3"`` -> those GPUs; ``"cpu"`` -> CPU; ``None`` -> GPU 0 if any, else CPU,
    or with ``every_gpu`` (the release's ``--multiprocessing-distributed``) every visible GPU."""
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if every_gpu and (spec is None or spec.strip().lower() == "cpu"):
        if not available or spec is not None:
            raise UserError("--multiprocessing-distributed starts one process per GPU and "
                            + ("this machine has no CUDA GPU" if not available else "--gpu cpu asks for none")
                            + "; omit it to train on the CPU")
        return [torch.device("cuda", i) for i in range(available)]
    if spec is None:
        return [torch.device("cuda", 0) if available else torch.device("cpu")]
    if spec.strip().lower() == "cpu":
        return [torch.device("cpu")]
    try:
        ids = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--gpu takes comma-separated GPU ids such as 0,1,2,3 (or 'cpu'), got {spec!r}") from None
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise UserError(f"--gpu takes distinct non-negative GPU ids such as 0,1,2,3, got {spec!r}")
    missing = [i for i in ids if i >= available]
    if missing:
        seen = f"GPUs 0-{available - 1}" if available else "no CUDA GPU"
        raise UserError(f"--gpu {spec}: GPU {missing[0]} does not exist (this machine has {seen}); "
                        "omit --gpu to run on CPU")
    return [torch.device("cuda", i) for i in ids]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(ctx: Context, backend: str | None, init_method: str, timeout_min: float) -> None:
    """Join the job's process group (nccl on GPUs, gloo on CPU unless ``backend`` says otherwise)."""
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    backend = backend or ("nccl" if ctx.device.type == "cuda" else "gloo")
    timeout = timedelta(minutes=timeout_min)
    device_id = ctx.device if ctx.device.type == "cuda" else None
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if init_method == "env://" and restart is not None:
        # torchrun's store outlives its workers: keys of a restart's processes under their own prefix, or gloo's
        # connection set-up may read the dead processes' addresses (and fail or hang)
        store, _, _ = next(dist.rendezvous(init_method, timeout=timeout))
        dist.init_process_group(backend=backend, store=dist.PrefixStore(f"restart{restart}", store),
                                world_size=ctx.world_size, rank=ctx.rank, timeout=timeout, device_id=device_id)
        return
    dist.init_process_group(backend=backend, init_method=init_method, world_size=ctx.world_size,
                            rank=ctx.rank, timeout=timeout, device_id=device_id)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes (in place; a no-op without a process group)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(value):
    """Rank 0's ``value`` (any picklable object) on every process."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's ``value`` on every process."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def any_process(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any process (a collective; ``flag`` itself without a process group)."""
    if not dist.is_initialized():
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=device)).item() > 0)


def agree_on_errors(function: Callable[[], T]) -> T:
    """``function()`` on every process; a ``UserError`` raised on any of them is raised on all, naming the first
    process that raised it, so that no process goes on to a collective the others never reach (a collective)."""
    result, error = None, None
    try:
        result = function()
    except UserError as raised:
        error = one_line(raised)
    if not dist.is_initialized():
        if error is not None:
            raise UserError(error)
        return result
    errors: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    for rank, message in enumerate(errors):
        if message is not None:
            raise UserError(message if rank == 0 else f"process {rank}: {message}")
    return result
