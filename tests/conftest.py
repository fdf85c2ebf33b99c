import os

import pytest
import torch

# Models in tests run SimAM's fused kernels in plain PyTorch: compiling them costs about half a minute per
# process on a CPU. tests/test_simam_fused.py checks the compiled kernels against the paper's formula.
os.environ.setdefault("SIMAM_IMPL", "eager")


@pytest.fixture(autouse=True)
def _seed_and_simam_implementation():
    torch.manual_seed(0)
    yield
    import networks  # a test that chose another SimAM implementation must not leak it into the next

    networks.set_simam_implementation(os.environ["SIMAM_IMPL"])
