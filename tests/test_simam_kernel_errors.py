"""SimAM's 'auto' implementation falls back to plain PyTorch when the compiler fails, and lets the device's errors
(out of memory, device-side asserts, cuDNN/cuBLAS) through without switching the process to the fallback."""

import warnings

import pytest
import torch
import torch._inductor.exc
from torch._dynamo.exc import BackendCompilerFailed

from networks import simam, simam_batch_norm, simam_fused
from networks.attentions import simam_kernels


def raising(error):
    """A ``_compiled`` whose kernels raise ``error``."""
    def compiled(function, **options):
        def kernel(*args):
            raise error
        return kernel
    return compiled


@pytest.fixture
def kernels(monkeypatch):
    """Compiled kernels 'available' on CPU until one fails; ``_compile_failed`` is restored afterwards."""
    monkeypatch.setattr(simam_kernels, "_compile_failed", set())
    monkeypatch.setattr(simam_kernels, "compiled_available",
                        lambda device: device.type not in simam_kernels._compile_failed)

    def kernels_raising(error):
        monkeypatch.setattr(simam_kernels, "_compiled", raising(error))
    return kernels_raising


def compiler_failure(inner):
    try:
        raise BackendCompilerFailed(lambda *args: None, inner, None) from inner
    except BackendCompilerFailed as error:
        return error


DEVICE_ERRORS = {
    "out of memory": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "device-side assert": RuntimeError("CUDA error: device-side assert triggered"),
    "cuDNN": RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"),
    "cuBLAS": RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm(handle, ...)`"),
    "Triton launch": RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered"),
    "out of memory while autotuning": compiler_failure(torch.OutOfMemoryError("CUDA out of memory")),
}
if hasattr(torch, "AcceleratorError"):
    DEVICE_ERRORS["accelerator"] = torch.AcceleratorError("CUDA error: an illegal memory access was encountered")


@pytest.mark.parametrize("error", DEVICE_ERRORS.values(), ids=DEVICE_ERRORS)
def test_device_errors_propagate_and_keep_the_compiled_kernels(kernels, error):
    kernels(error)
    with pytest.raises(type(error)) as raised:
        simam_fused(torch.randn(2, 3, 5, 5), 0.1, "auto")
    assert raised.value is error
    assert simam_kernels._compile_failed == set()


COMPILER_ERRORS = {
    "C++ compiler missing": compiler_failure(RuntimeError("InvalidCxxCompiler: No working C++ compiler found")),
    "unknown": RuntimeError("no compiler"),
}
if hasattr(torch._inductor.exc, "InductorError"):
    COMPILER_ERRORS["inductor"] = torch._inductor.exc.InductorError(RuntimeError("Cannot find a working triton"), None)


@pytest.mark.parametrize("error", COMPILER_ERRORS.values(), ids=COMPILER_ERRORS)
def test_compiler_errors_fall_back_to_the_plain_implementation(kernels, error):
    kernels(error)
    x = torch.randn(2, 3, 5, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = simam_fused(x, 0.1, "auto")
    torch.testing.assert_close(y, simam(x, 0.1), rtol=1e-6, atol=1e-6)
    assert any("plain PyTorch" in str(w.message) for w in caught)
    assert simam_kernels._compile_failed == {"cpu"}


def test_simam_batch_norm_lets_out_of_memory_through(kernels):
    kernels(torch.OutOfMemoryError("CUDA out of memory"))
    weight, bias = torch.ones(3), torch.zeros(3)
    with pytest.raises(torch.OutOfMemoryError):
        simam_batch_norm(torch.randn(2, 3, 5, 5), 0.1, "auto", weight, bias, None, None, 0.1, 1e-5)
    assert simam_kernels._compile_failed == set()
