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
    import networks  # a test that changed the default implementation (of models built afterwards) must not leak it

    networks.set_simam_implementation(os.environ["SIMAM_IMPL"])


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): small inputs gain
    nothing from more, and on a busy machine every operator of a multi-threaded forward waits for a thread that
    another process holds off the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _dataset(tmp_path_factory, name: str, **options):
    from scripts.make_sample_data import make_dataset

    root = tmp_path_factory.mktemp(name)
    make_dataset(str(root), **options)
    return root


# Generated datasets in ImageNet's layout, made once per test session; tests must not modify them.
@pytest.fixture(scope="session")
def four_class_data(tmp_path_factory):
    """4 classes, 160 training images (10 steps of 16), 36 validation images, 40 px."""
    return _dataset(tmp_path_factory, "four_class", classes=4, train_per_class=40, val_per_class=9, size=40, seed=1)


@pytest.fixture(scope="session")
def three_class_data(tmp_path_factory):
    """3 classes, 48 training images (3 steps of 16), 12 validation images, 40 px."""
    return _dataset(tmp_path_factory, "three_class", classes=3, train_per_class=16, val_per_class=4, size=40, seed=3)


@pytest.fixture(scope="session")
def odd_data(tmp_path_factory):
    """3 classes, 48 training images and 21 validation images (an odd count for sharding), 40 px."""
    return _dataset(tmp_path_factory, "odd", classes=3, train_per_class=16, val_per_class=7, size=40, seed=2)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """3 classes, 12 training and 9 validation images, 32 px: for runs that only need to start."""
    return _dataset(tmp_path_factory, "tiny", classes=3, train_per_class=4, val_per_class=3, size=32)
