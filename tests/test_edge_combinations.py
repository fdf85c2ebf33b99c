"""Options combined, on data that does not divide evenly: every pair of option values is trained for two short
epochs and resumed from inside the second one, and the resumed run must end bitwise where the uninterrupted run
ends.

The options: gradient accumulation, batch mixing, a size schedule, EMA, each attention type, channels_last,
``--compile`` and the uint8 input pipeline, on training sets whose last batch leaves 1, 2 and K - 1 images
(batches of 8, K = 4 micro-batches). The rows cover every pair of values at least once (pairwise), not the full
product. ``--compile`` runs torch.compile with dynamo's "eager" backend here: graph capture, guards and recompiles
as in a real run, without the minutes inductor's code generation takes on a CPU (its kernels are tested in
tests/test_simam_fused.py and tests/test_compile_budget.py).
"""

import functools
import itertools
import json
import os
import shutil

import pytest
import torch

from helpers import train_argv
from scripts.make_sample_data import make_dataset
from test_main_imagenet import run_main, same_training_state
from training import evaluation, performance, run
from training.checkpoint import LATEST, PREVIOUS

pytestmark = pytest.mark.slow  # about 40 short training runs

BATCH, K = 8, 4
FACTORS = {
    "attention": ["none", "se", "cbam", "eca", "srm", "simam"],
    "remainder": [1, 2, K - 1],  # images in the last batch of an epoch
    "accum": [1, K],
    "mixing": ["none", "mixup", "cutmix", "mixup+cutmix"],
    "size_schedule": [False, True],
    "ema": [False, True],
    "channels_last": [False, True],
    "compile": [False, True],
    "uint8": [False, True],
}


def pairwise(factors: dict[str, list]) -> list[dict]:
    """Rows (one value per factor) in which every pair of values of two factors appears at least once: greedily,
    each new row the candidate that covers the most pairs not yet covered (deterministic)."""
    names = list(factors)
    uncovered = {((a, va), (b, vb)) for a, b in itertools.combinations(names, 2)
                 for va in factors[a] for vb in factors[b]}
    rows = []
    while uncovered:
        (first, first_value), (second, second_value) = min(uncovered, key=repr)  # a pair the row must cover
        row = {first: first_value, second: second_value}
        for name in names:
            if name in row:
                continue
            row[name] = max(factors[name], key=lambda value: sum(
                ((name, value), (other, row[other])) in uncovered or ((other, row[other]), (name, value)) in uncovered
                for other in row))
        uncovered -= {((a, row[a]), (b, row[b])) for a, b in itertools.combinations(names, 2)}
        rows.append({name: row[name] for name in names})
    return rows


ROWS = pairwise(FACTORS)


def test_the_rows_cover_every_pair_of_option_values():
    for a, b in itertools.combinations(FACTORS, 2):
        for va, vb in itertools.product(FACTORS[a], FACTORS[b]):
            assert any(row[a] == va and row[b] == vb for row in ROWS), (a, va, b, vb)
    assert len(ROWS) < 30  # far fewer than the product (4,608)


@pytest.fixture(scope="module")
def datasets_by_remainder(tmp_path_factory):
    """3 classes, 16 + r training images (two whole batches of 8 and r over), 6 validation images, 32 px."""
    made = {}
    for remainder in FACTORS["remainder"]:
        root = tmp_path_factory.mktemp(f"remainder{remainder}")
        make_dataset(str(root), classes=3, train_per_class=7, val_per_class=2, size=32, seed=remainder)
        files = sorted(os.path.join(folder, name) for folder, _, names in os.walk(root / "train") for name in names)
        for path in files[:21 - (2 * BATCH + remainder)]:  # from the first class: every class keeps images
            os.remove(path)
        made[remainder] = root
    return made


def flags_of(row: dict) -> list:
    flags = ["--checkpoint-every-steps", 1, "--lr", 0.05]
    if row["accum"] > 1:
        flags += ["--accum-steps", row["accum"]]
    if "mixup" in row["mixing"]:
        flags += ["--mixup-alpha", 0.2]
    if "cutmix" in row["mixing"]:
        flags += ["--cutmix-alpha", 1.0]
    if row["size_schedule"]:
        flags += ["--train-size-schedule", "32:64:0:1"]  # 32 px in epoch 0, 64 px in epoch 1
    if row["ema"]:
        flags += ["--model-ema", "--model-ema-steps", 1, "--model-ema-decay", 0.9]
    if row["channels_last"]:
        flags += ["--channels-last"]
    if row["compile"]:
        flags += ["--compile"]
    if row["uint8"]:
        flags += ["--input-pipeline", "uint8"]
    return flags


def run_folder_of(ckpt, attention: str):
    suffix = "" if attention == "none" else f"-{attention}" + ("-param0.1" if attention == "simam" else "")
    for name in os.listdir(ckpt):
        if name.startswith(f"imagenet-resnet18{suffix}-"):
            return ckpt / name
    raise AssertionError(f"no run folder in {ckpt}")


@pytest.mark.parametrize("row", ROWS, ids=lambda row: "-".join(map(str, row.values())))
def test_two_epochs_resumed_inside_the_second_equal_two_uninterrupted_epochs(row, datasets_by_remainder, tmp_path,
                                                                            monkeypatch):
    for module in (run, evaluation):  # the training model's compile and the evaluation models'
        monkeypatch.setattr(module, "compile_model", functools.partial(performance.compile_model, backend="eager"))
    torch._dynamo.reset()
    data = datasets_by_remainder[row["remainder"]]
    flags = flags_of(row)
    run_main(train_argv(data, tmp_path / "straight", *flags, attention=row["attention"], batch=BATCH, epochs=2))
    straight_dir = run_folder_of(tmp_path / "straight", row["attention"])
    straight = torch.load(straight_dir / LATEST, weights_only=True)
    # whole batches only under accumulation; else the remainder too, unless it is a single image
    steps = 2 + (row["accum"] == 1 and row["remainder"] > 1)
    assert (straight["epoch"], straight["iteration"], straight["iterations_per_epoch"]) == (2, 0, steps)

    # the checkpoint saved inside epoch 1, one step before its end (kept as the previous checkpoint)
    inside = torch.load(straight_dir / PREVIOUS, weights_only=True)
    assert (inside["epoch"], inside["iteration"]) == (1, steps - 1)
    resumed_dir = tmp_path / "resumed" / straight_dir.name
    resumed_dir.mkdir(parents=True)
    shutil.copy(straight_dir / PREVIOUS, resumed_dir / LATEST)
    shutil.copy(straight_dir / "metrics.jsonl", resumed_dir / "metrics.jsonl")
    torch._dynamo.reset()
    run_main(train_argv(data, tmp_path / "resumed", *flags, "--resume", resumed_dir / LATEST,
                        attention=row["attention"], batch=BATCH, epochs=2))
    resumed = torch.load(resumed_dir / LATEST, weights_only=True)
    same_training_state(resumed, straight)
    if row["ema"]:
        for key, value in straight["model_ema"].items():
            assert torch.equal(value, resumed["model_ema"][key]), key
    records = [[json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
               for folder in (straight_dir, resumed_dir)]
    assert [r["epoch"] for r in records[1]] == [0, 1]
    for key in ("train_top1", "train_top5", "val_top1", "val_top5", "val_loss"):
        assert records[0][1][key] == records[1][1][key], key
    assert records[1][1]["train_loss"] == pytest.approx(records[0][1]["train_loss"], rel=1e-12)
    torch._dynamo.reset()
