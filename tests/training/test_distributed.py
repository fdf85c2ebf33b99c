"""Devices for --gpu and --multiprocessing-distributed (CUDA's device count stubbed where there is no GPU)."""

import pytest
import torch

from training import distributed
from training.errors import UserError


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)


def test_gpu_lists_and_the_release_flag(four_gpus):
    assert distributed.parse_gpus("0,2") == [torch.device("cuda", 0), torch.device("cuda", 2)]
    assert distributed.parse_gpus(None) == [torch.device("cuda", 0)]
    assert distributed.parse_gpus("cpu") == [torch.device("cpu")]
    assert distributed.parse_gpus(None, every_gpu=True) == [torch.device("cuda", i) for i in range(4)]
    assert distributed.parse_gpus("2,3", every_gpu=True) == [torch.device("cuda", 2), torch.device("cuda", 3)]


@pytest.mark.parametrize("spec, message", [("4", "GPU 4 does not exist"), ("1,1", "distinct"), ("a", "comma-separated"),
                                           ("cpu", "--gpu cpu asks for none")])
def test_bad_gpu_lists_are_one_line_errors(four_gpus, spec, message):
    with pytest.raises(UserError, match=message):
        distributed.parse_gpus(spec, every_gpu=spec == "cpu")


def test_single_process_helpers_need_no_process_group():
    assert distributed.broadcast_int(7, torch.device("cpu")) == 7
    assert distributed.all_reduce_sum(torch.tensor([2.0])).item() == 2.0
