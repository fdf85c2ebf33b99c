#!/usr/bin/env python
"""Export a trained network to ONNX, torch.export (ExportedProgram) or TorchScript, and check the file.

The file gets a dynamic batch axis (ONNX, ExportedProgram; a traced TorchScript module runs any batch size)
and SimAM is written as the paper's formula in plain operators. The written file is then loaded (ONNX with
onnxruntime) and its logits are compared with eager PyTorch's on random inputs of another batch size and on a
few images (--images, else generated ones); the max |delta| is printed as one line, and a value above
--tolerance (relative to the largest |logit| where that is above 1) is an error (exit status 1).

The network comes from the checkpoint's record (our checkpoints, safetensors metadata), its 'arch' field and key
layout (the release's) or its key layout (a bare state dict); -a/--arch, --attention_type and --attention_param
override them. Files are read by networks.load_network (torch.load(weights_only=True), or safetensors): nothing in
them is executed.

Examples:
    python scripts/export.py ckpts/imagenet-resnet50-simam-param0.1/model_best.pth.tar --format onnx -o r50_simam.onnx
    python scripts/export.py release_r50_simam.pth.tar -a resnet50 --format exported_program -o r50_simam.pt2
    python scripts/export.py CKPT --format onnx -o model.onnx --images cat.jpg dog.jpg --benchmark
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import networks  # noqa: E402
from scripts._cli import add_network_arguments, make_cli  # noqa: E402
from scripts.make_sample_data import draw  # noqa: E402
from training.errors import UserError, one_line  # noqa: E402
from training.presets import eval_transform  # noqa: E402

# The packages each format needs beyond torch (optional: training does not need them).
FORMATS = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "exported_program": (), "torchscript": ()}
EXPORT_BATCH = 2  # the example batch the file is exported with; checks use other batch sizes
CHECK_BATCH = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line (``error: ...``, exit status 2) instead of usage + message
        raise UserError(message)


def get_args_parser() -> argparse.ArgumentParser:
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CKPT",
                        help="checkpoint: ours (.pth.tar or .safetensors), the official release's, or a bare state "
                             "dict")
    parser.add_argument("--format", required=True, choices=list(FORMATS),
                        help="onnx, exported_program (.pt2) or torchscript")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write")
    parser.add_argument("--image-size", type=int, default=224, help="input height and width (default: 224)")
    parser.add_argument("--eval-ema", action="store_true", help="export the checkpoint's EMA weights ('model_ema')")
    add_network_arguments(parser)
    parser.add_argument("--images", nargs="+", default=None, metavar="IMG",
                        help="images for the parity check (default: a few generated ones)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest max |delta| of logits accepted, relative to the largest |logit| where that is "
                             "above 1 (default: 1e-4)")
    parser.add_argument("--benchmark", action="store_true",
                        help="also time eager PyTorch and the exported file on the CPU, in alternation, "
                             "and print img/s")
    parser.add_argument("--benchmark-batch", type=int, default=8, help="batch size of the benchmark (default: 8)")
    parser.add_argument("--benchmark-rounds", type=int, default=10, help="timed rounds of each (default: 10)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of PyTorch and onnxruntime alike (default: PyTorch's default)")
    return parser


# ----------------------------------------------------------------------------------------------- the network

def require(fmt: str) -> None:
    """Import the packages ``fmt`` needs; a missing one is a ``UserError`` saying how to install it."""
    for package in FORMATS[fmt]:
        try:
            importlib.import_module(package)
        except ImportError:
            raise UserError(f"--format {fmt} needs the package {package}: python -m pip install "
                            f"{' '.join(FORMATS[fmt])}") from None


def load_network(path: str, arch: str | None = None, attention_type: str | None = None,
                 attention_param: float | None = None, eval_ema: bool = False) -> tuple[nn.Module, str]:
    """The checkpoint's network in eval mode, loaded strictly, and a description ('resnet50 + simam (e_lambda=0.1)'):
    ``networks.load_network`` (torch files with ``weights_only=True``, or safetensors), one-line ``UserError``s."""
    try:
        loaded = networks.load_network(path, arch, attention_type, attention_param, ema=eval_ema)
    except ValueError as error:  # unreadable, unknown names (listing the choices), an ambiguous network, a mismatch
        raise UserError(str(error)) from None
    return loaded.model, loaded.description


# ----------------------------------------------------------------------------------------------- export

def exported_program(model: nn.Module, image_size: int) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (eval mode) for (N, 3, image_size, image_size) inputs, N dynamic."""
    example = (torch.randn(EXPORT_BATCH, 3, image_size, image_size),)
    with torch.no_grad():
        return torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch")},))


def write_exported(program: torch.export.ExportedProgram, fmt: str, path: str) -> None:
    """Save an exported program as a .pt2 file (exported_program) or convert it to ONNX (onnx)."""
    if fmt == "exported_program":
        torch.export.save(program, path)
    elif fmt == "onnx":
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
            torch.onnx.export(program, f=path, input_names=["images"], output_names=["logits"], external_data=False)
    else:
        raise ValueError(f"not a format of exported programs: {fmt!r}")


def export_model(model: nn.Module, fmt: str, path: str, image_size: int) -> None:
    """Write ``model`` (eval mode) for (N, 3, image_size, image_size) inputs, N dynamic where the format has it
    (a traced TorchScript module runs any N)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid choices: {', '.join(FORMATS)}")
    if fmt != "torchscript":
        write_exported(exported_program(model, image_size), fmt, path)
        return
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's deprecation notice
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # H and W are constants of the trace, as intended
        example = torch.randn(EXPORT_BATCH, 3, image_size, image_size)
        torch.jit.save(torch.jit.trace(model, example), path)


def load_exported(fmt: str, path: str) -> Callable[[Tensor], Tensor]:
    """A function running the exported file on a batch (ONNX: onnxruntime on the CPU)."""
    if fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as many threads as PyTorch uses
        # idle threads sleep instead of spinning (spinning would take the CPU from whatever runs next)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    if fmt == "exported_program":
        return torch.export.load(path).module()
    if fmt == "torchscript":
        return _load_torchscript(path)
    raise ValueError(f"unknown format {fmt!r}; valid choices: {', '.join(FORMATS)}")


def _load_torchscript(path: str) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        return torch.jit.load(path, map_location="cpu")


def graph_operators(fmt: str, path: str) -> set[str]:
    """The operators in the exported file's graph ('Sigmoid', 'aten.sigmoid.default', 'aten::sigmoid', ...)."""
    if fmt == "onnx":
        import onnx

        graph = onnx.load(path, load_external_data=False)
        return {f"{node.domain}::{node.op_type}" if node.domain else node.op_type for node in graph.graph.node}
    if fmt == "exported_program":
        return {str(node.target) for node in torch.export.load(path).graph.nodes if node.op == "call_function"}
    if fmt == "torchscript":
        return {node.kind() for node in _load_torchscript(path).inlined_graph.nodes()}
    raise ValueError(f"unknown format {fmt!r}; valid choices: {', '.join(FORMATS)}")


# ----------------------------------------------------------------------------------------------- checks

def sample_images(paths: list[str] | None, image_size: int, count: int = 4) -> Tensor:
    """The images at ``paths`` (else ``count`` generated ones) as evaluation crops: resize to image_size / 0.875,
    centre crop, normalise."""
    transform = eval_transform(round(image_size / 0.875), image_size)
    if not paths:
        rng = np.random.default_rng(0)
        return torch.stack([transform(draw(i, count, round(image_size * 1.2), rng)) for i in range(count)])
    images = []
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"image not found: {path}")
        try:
            with Image.open(path) as image:
                images.append(transform(image.convert("RGB")))
        except (UnidentifiedImageError, OSError) as error:
            raise UserError(f"{path}: not a readable image ({one_line(error)})") from None
    return torch.stack(images)


def max_abs_diff(run: Callable[[Tensor], Tensor], model: nn.Module, x: Tensor) -> tuple[float, float]:
    """(max |run(x) - model(x)|, max |model(x)|) over the logits."""
    with torch.no_grad():
        expected = model(x)
        return (run(x) - expected).abs().max().item(), expected.abs().max().item()


def benchmark(run: Callable[[Tensor], Tensor], model: nn.Module, x: Tensor, rounds: int) -> tuple[float, float]:
    """Images per second of eager ``model`` and of ``run`` on ``x``, timed in alternation (median of ``rounds``)."""
    times: tuple[list[float], list[float]] = ([], [])
    with torch.no_grad():
        for i in range(rounds + 1):  # the first round warms up
            for fn, kept in ((model, times[0]), (run, times[1])):
                start = time.perf_counter()
                fn(x)
                if i:
                    kept.append(time.perf_counter() - start)
    return len(x) / statistics.median(times[0]), len(x) / statistics.median(times[1])


def main(args: argparse.Namespace) -> int:
    """Export and check; returns the exit status (1: the file's logits differ from eager PyTorch's)."""
    if min(args.image_size, args.benchmark_batch, args.benchmark_rounds, args.threads or 1) < 1:
        raise UserError("--image-size, --benchmark-batch, --benchmark-rounds and --threads must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    require(args.format)
    if args.format == "exported_program" and not args.output.endswith(".pt2"):
        raise UserError(f"-o {args.output}: torch.export's files end in .pt2")
    if "SIMAM_IMPL" not in os.environ:  # plain PyTorch kernels (the compiled ones take half a minute to build)
        networks.set_simam_implementation("eager")
    model, name = load_network(args.checkpoint, args.arch, args.attention_type, args.attention_param, args.eval_ema)
    images = sample_images(args.images, args.image_size)
    if os.path.dirname(args.output):
        os.makedirs(os.path.dirname(args.output), exist_ok=True)
    export_model(model, args.format, args.output, args.image_size)
    run = load_exported(args.format, args.output)
    random, random_scale = max_abs_diff(run, model, torch.randn(CHECK_BATCH, 3, args.image_size, args.image_size))
    real, real_scale = max_abs_diff(run, model, images)
    size_mb = os.path.getsize(args.output) / 2**20
    print(f"{args.format}: {args.output} ({name}, {args.image_size} px, {size_mb:.1f} MiB); max |delta| of logits vs "
          f"eager PyTorch: {random:.2e} on {CHECK_BATCH} random inputs, {real:.2e} on {len(images)} "
          f"{'images' if args.images else 'generated images'} (logits up to {max(random_scale, real_scale):.3g}; "
          f"tolerance {args.tolerance:g} x max(1, |logit|))", flush=True)
    if args.benchmark:
        x = torch.randn(args.benchmark_batch, 3, args.image_size, args.image_size)
        eager, exported = benchmark(run, model, x, args.benchmark_rounds)
        threads = torch.get_num_threads()
        print(f"benchmark (CPU, {threads} thread{'s' if threads > 1 else ''}, batch {len(x)}, {args.image_size} px, "
              f"{args.benchmark_rounds} rounds in alternation): eager PyTorch {eager:.1f} img/s, {args.format} "
              f"{exported:.1f} img/s, {exported / eager:.2f}x", flush=True)
    # fp32 rounding differences grow with the logits' magnitude: the tolerance is relative above 1
    if not (random <= args.tolerance * max(1.0, random_scale) and real <= args.tolerance * max(1.0, real_scale)):
        print("error: the exported logits differ from eager PyTorch's by more than the tolerance", file=sys.stderr)
        return 1
    return 0


cli = make_cli(main, get_args_parser)


if __name__ == "__main__":
    sys.exit(cli())
