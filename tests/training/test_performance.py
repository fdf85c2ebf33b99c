"""The fast path's pieces: precision choice and batches normalised on the device."""

import json
import os

import pytest
import torch

from training.performance import amp_dtype_for, to_device
from training.presets import IMAGENET_MEAN, IMAGENET_STD


def test_uint8_batches_are_normalised_on_the_device_like_torchvision():
    images = torch.randint(0, 256, (3, 3, 5, 7), dtype=torch.uint8)
    moved, target = to_device(images, torch.tensor([1, 2, 3]), torch.device("cpu"), torch.channels_last)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(moved, (images.float() / 255 - mean) / std, rtol=0, atol=1e-6)
    assert moved.is_contiguous(memory_format=torch.channels_last) and target.tolist() == [1, 2, 3]


def test_amp_choices_map_to_autocast_dtypes():
    cpu = torch.device("cpu")
    assert amp_dtype_for("off", cpu) is None and amp_dtype_for("fp16", cpu) is torch.float16
    assert amp_dtype_for("bf16", cpu) is torch.bfloat16
    assert amp_dtype_for("auto", cpu) in (None, torch.bfloat16)  # bf16 only where the CPU computes it natively


def test_tf32_is_one_choice_for_matrix_products_and_convolutions(tiny_data, tmp_path):
    """torch's defaults differ (TF32 convolutions, fp32 matrix products); a run sets both one way, --no-tf32 off."""
    import main_imagenet
    from helpers import train_argv
    from training.config import parse_with_config

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for flags, expected in (([], True), (["--no-tf32"], False)):
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not expected
            args = parse_with_config(main_imagenet.get_args_parser(),
                                     train_argv(tiny_data, tmp_path / str(expected), *flags, batch=4))
            main_imagenet.main(args)
            assert torch.backends.cuda.matmul.allow_tf32 is expected and torch.backends.cudnn.allow_tf32 is expected
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_the_cpu_bf16_probe_is_measured_once_per_machine_and_torch_version(tmp_path, monkeypatch):
    from training import performance

    measured = []
    monkeypatch.setattr(performance, "_measure_bf16_speedup", lambda: measured.append(1) or 1.25)
    speedup, path = performance.cpu_bf16_speedup(str(tmp_path))
    assert (speedup, len(measured)) == (1.25, 1) and path.startswith(str(tmp_path))
    assert performance.cpu_bf16_speedup(str(tmp_path)) == (1.25, path) and len(measured) == 1  # read back
    monkeypatch.setattr(torch, "__version__", "0.0.0-another")
    performance.cpu_bf16_speedup(str(tmp_path))
    assert len(measured) == 2  # another torch: measured again, both kept
    assert len(json.loads(open(path).read())) == 2


@pytest.mark.parametrize("speedup, expected", [(1.6, torch.bfloat16), (0.65, None)])
def test_amp_auto_on_a_cpu_follows_the_measurement_and_the_header_says_why(speedup, expected, tiny_data, tmp_path,
                                                                           monkeypatch, capsys):
    import main_imagenet
    from helpers import train_argv
    from training import performance
    from training.config import parse_with_config

    monkeypatch.setattr(performance, "cpu_bf16_speedup", lambda cache_dir=None: (speedup, "CACHE"))
    cpu = torch.device("cpu")
    assert performance.amp_dtype_for("auto", cpu) is expected
    assert performance.amp_dtype_for("bf16", cpu) is torch.bfloat16 and performance.amp_dtype_for("off", cpu) is None
    main_imagenet.main(parse_with_config(main_imagenet.get_args_parser(),
                                         train_argv(tiny_data, tmp_path, "--amp", "auto", batch=4)))
    out = capsys.readouterr().out
    chosen = "bf16" if expected else "fp32"
    assert (f"=> --amp auto: {chosen}, as a bf16 convolution forward+backward ran {speedup:.2f}x the speed of fp32 "
            "on this CPU (measured once, kept in CACHE)") in out
    assert f"=> precision {'bfloat16' if expected else 'fp32'}, contiguous" in out


def test_the_real_probe_gives_a_positive_ratio(tmp_path):
    from training import performance

    speedup, path = performance.cpu_bf16_speedup(str(tmp_path))
    assert speedup > 0 and os.path.isfile(path)
