"""Paths off the even sizes: the last batch of an epoch under gradient accumulation, a restarted worker given
``--resume FILE``, and the loaded checkpoint's memory during training."""

import gc
import json
import shutil
import weakref

import pytest
import torch

from helpers import train_argv
from scripts.make_sample_data import make_dataset
from test_main_imagenet import run_main
from training import run as run_phases
from training.checkpoint import LATEST
from training.state import LoadedCheckpoint

RUN = "imagenet-resnet18-simam-param0.1-seed0"


@pytest.fixture(scope="module")
def fifteen_images(tmp_path_factory):
    """3 classes, 15 training images: batches of 4 leave 3 (= K + 1 for K = 2, and K - 1 for K = 4)."""
    root = tmp_path_factory.mktemp("fifteen")
    make_dataset(str(root), classes=3, train_per_class=5, val_per_class=2, size=32, seed=4)
    return root


@pytest.mark.parametrize("accum_steps", [2, 4])
def test_accumulation_drops_the_incomplete_last_batch_instead_of_crashing(fifteen_images, tmp_path, accum_steps,
                                                                          monkeypatch):
    """The 3-image tail, cut into micro-batches of 2 and 1, stopped BatchNorm ("Expected more than 1 value per
    channel"); now each epoch is the whole batches only, every one split into equal micro-batches."""
    batch = 4 if accum_steps == 2 else 8
    seen = []
    original = run_phases.train_one_epoch

    def counting(model, pipeline, *args, **kwargs):
        seen.extend(len(target) for _, target in pipeline.train_loader)
        return original(model, pipeline, *args, **kwargs)

    monkeypatch.setattr(run_phases, "train_one_epoch", counting)
    result = run_main(train_argv(fifteen_images, tmp_path, "--accum-steps", accum_steps, batch=batch))
    assert seen == [batch] * (15 // batch)
    saved = torch.load(tmp_path / RUN / LATEST, weights_only=True)
    assert saved["iterations_per_epoch"] == 15 // batch and result["epoch"] == 0


def test_under_accumulation_and_compile_every_step_runs_one_graph(fifteen_images, tmp_path, monkeypatch):
    """-b 8 --accum-steps 2 on 15 images: with the 7-image tail (micro-batches of 4 and 3) the compiled training
    model would capture a second graph for the odd size; whole batches keep it at one over two epochs."""
    import functools

    from training import evaluation, performance

    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    monkeypatch.setattr(run_phases, "compile_model",
                        functools.partial(performance.compile_model, backend=counting_backend))
    monkeypatch.setattr(evaluation, "compile_model", functools.partial(performance.compile_model, backend="eager"))
    torch._dynamo.reset()
    try:
        run_main(train_argv(fifteen_images, tmp_path, "--compile", "--accum-steps", 2, batch=8, epochs=2))
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 1


def test_a_micro_batch_of_one_image_is_a_one_line_error(fifteen_images, tmp_path):
    from training.errors import UserError

    with pytest.raises(UserError, match="1 image per micro-batch, and BatchNorm needs at least 2"):
        run_main(train_argv(fifteen_images, tmp_path, "--accum-steps", 4, batch=4))


def test_a_restarted_worker_given_resume_file_continues_from_the_run_folder(fifteen_images, tmp_path, monkeypatch):
    """torchrun --max-restarts restarts a worker with the same command line: ``--resume FILE`` must not take it
    back to FILE (and truncate metrics.jsonl) when its run folder has got further."""
    ckpt = tmp_path / "ckpt"
    run_main(train_argv(fifteen_images, ckpt, batch=4, epochs=1))
    start = tmp_path / "start.pth.tar"  # the file the job was started from: epoch 1
    shutil.copy(ckpt / RUN / LATEST, start)
    run_main(train_argv(fifteen_images, ckpt, "--resume", start, batch=4, epochs=3))
    assert torch.load(ckpt / RUN / LATEST, weights_only=True)["epoch"] == 3
    with open(ckpt / RUN / "metrics.jsonl") as f:
        before = [json.loads(line) for line in f]

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # the same command, as torchrun restarts it
    result = run_main(train_argv(fifteen_images, ckpt, "--resume", start, batch=4, epochs=4))
    log = (ckpt / RUN / "log.txt").read_text()
    assert f"=> resumed from {ckpt / RUN / LATEST} at epoch 3" in log
    with open(ckpt / RUN / "metrics.jsonl") as f:
        after = [json.loads(line) for line in f]
    assert [r["epoch"] for r in after] == [0, 1, 2, 3] and after[:3] == before
    assert result["epoch"] == 3

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # a first start: FILE is what it says
    run_main(train_argv(fifteen_images, ckpt, "--resume", start, batch=4, epochs=2))
    assert f"=> resumed from {start} at epoch 1" in (ckpt / RUN / "log.txt").read_text()


class Content(dict):
    """A checkpoint's content that can be watched with a weak reference."""


def test_the_loaded_checkpoint_is_freed_before_training(fifteen_images, tmp_path, monkeypatch):
    run_main(train_argv(fifteen_images, tmp_path, batch=4, epochs=1))
    watched = []
    find = run_phases.find_checkpoint

    def find_watched(config, ctx):
        found = find(config, ctx)
        content = Content(found.content)
        watched.append(weakref.ref(content))
        return LoadedCheckpoint(found.path, content, found.listed)

    alive_in_fit = []
    fit = run_phases.fit

    def fit_watched(run, state, lock=None):
        gc.collect()
        alive_in_fit.append(watched[0]() is not None)
        return fit(run, state, lock)

    monkeypatch.setattr(run_phases, "find_checkpoint", find_watched)
    monkeypatch.setattr(run_phases, "fit", fit_watched)
    run_main(train_argv(fifteen_images, tmp_path, "--resume", tmp_path / RUN, batch=4, epochs=2))
    assert alive_in_fit == [False]
