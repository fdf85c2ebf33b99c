import os

import pytest
import torch

# Models in tests run SimAM's fused kernels in plain PyTorch: compiling them costs about half a minute per
# process on a CPU. tests/test_simam_fused.py checks the compiled kernels against the paper's formula.
os.environ.setdefault("SIMAM_IMPL", "eager")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
