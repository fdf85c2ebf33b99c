"""ImageNet as WebDataset tar shards (scripts/make_shards.py, training.data.ShardImages): training from shards is
training from the folder, bitwise; exact resume after SIGTERM; every image evaluated once by 4 processes; the
writer's checks and resumption; missing and damaged shards as one-line errors; shards fetched through wids' cache."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import main_imagenet
from helpers import TINY, spawn_on_two_cpus, train_argv
from scripts.make_sample_data import make_dataset
from scripts.make_shards import make_shards
from test_main_imagenet import run_main, same_training_state, sigterm_mid_epoch_then_resume
from training import data, presets
from training.config import parse_with_config
from training.distributed import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = "imagenet-resnet18-simam-param0.1-seed0"


def shard(folder, out, shard_size=4, **options):
    make_shards(str(folder), str(out), shard_size=shard_size, progress=False, **options)
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """3 classes, 21 training images (batches of 8 leave 5) and 15 validation images, 32 px; and its shards
    (4 images a shard, the last of each split shorter)."""
    root = tmp_path_factory.mktemp("small")
    make_dataset(str(root / "folder"), classes=3, train_per_class=7, val_per_class=5, size=32, seed=5)
    return root / "folder", shard(root / "folder", root / "shards")


def checkpoint(ckpt):
    return torch.load(ckpt / RUN / "checkpoint.pth.tar", weights_only=True)


@pytest.mark.parametrize("pipeline", ["pil", "uint8"])
def test_a_split_from_shards_is_the_folder_item_for_item(small, pipeline):
    folder, shards = small
    for split, transform in (("val", presets.eval_transform(36, 32, pipeline)),
                             ("train", presets.train_transform(32, pipeline))):
        a = data.image_folder(str(folder), split, transform, data.image_loader(pipeline))
        b = data.shard_dataset(str(shards), split, transform, pipeline)
        assert len(a) == len(b) and a.classes == b.classes
        for index in range(len(a)):
            torch.manual_seed(index)
            image_a, target_a = a[index]
            torch.manual_seed(index)
            image_b, target_b = b[index]
            assert target_a == target_b and torch.equal(image_a, image_b), (split, index)


@pytest.mark.parametrize("pipeline, extra", [
    ("pil", ["--train-size-schedule", "32:64:0:1", "-j", "2"]),  # loader workers, a size per epoch
    ("uint8", ["--auto-augment", "ta_wide", "--random-erase", "0.5"]),
])
def test_training_from_shards_equals_training_from_the_folder(small, tmp_path, pipeline, extra):
    folder, shards = small
    argv = ["--input-pipeline", pipeline, *extra]
    from_folder = run_main(train_argv(folder, tmp_path / "folder", *argv, epochs=2, batch=8))
    from_shards = run_main(train_argv(shards, tmp_path / "shards", *argv, epochs=2, batch=8))
    a, b = checkpoint(tmp_path / "folder"), checkpoint(tmp_path / "shards")
    assert a["iterations_per_epoch"] == 3  # 21 images: 8 + 8 + 5
    same_training_state(a, b)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert from_folder["val_top1"] == from_shards["val_top1"] and from_folder["val_loss"] == from_shards["val_loss"]


@pytest.mark.slow
def test_two_processes_train_from_shards_as_from_the_folder(small, tmp_path):
    """The --gpu 0,1 path (two CPU devices): 21 images over 2 processes with batches of 4 (each process's share of
    11 leaves a 3-image batch), each rank reading its own samples from the shards, gives the folder's weights."""
    folder, shards = small
    for name, dataset in (("folder", folder), ("shards", shards)):
        spawn_on_two_cpus(parse_with_config(main_imagenet.get_args_parser(), train_argv(
            dataset, tmp_path / name, "--input-pipeline", "uint8", epochs=2, batch=8)))
    a, b = checkpoint(tmp_path / "folder"), checkpoint(tmp_path / "shards")
    assert a["iterations_per_epoch"] == 3 and a["epoch"] == b["epoch"] == 2
    same_training_state(a, b)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_from_shards_is_an_uninterrupted_run(four_class_data, tmp_path):
    shards = shard(four_class_data, tmp_path / "shards", shard_size=32)
    same_training_state(*sigterm_mid_epoch_then_resume(shards, tmp_path))


@pytest.mark.slow
def test_four_processes_evaluate_every_shard_image_once(odd_data, tmp_path):
    shards = shard(odd_data, tmp_path / "shards", shard_size=4)  # 21 validation images in 6 shards
    run_main(train_argv(shards, tmp_path / "model", epochs=1))
    ckpt = tmp_path / "model" / RUN / "checkpoint.pth.tar"

    def evaluate_argv(dataset, name):
        return [str(dataset), "-j", "0", "-e", "--resume", str(ckpt), "--ckpt", str(tmp_path / name),
                "--eval-json", str(tmp_path / f"{name}.json"), *TINY]

    args = parse_with_config(main_imagenet.get_args_parser(), evaluate_argv(shards, "four"))
    main_imagenet.spawn([torch.device("cpu")] * 4, main_imagenet.check_args(args), f"tcp://127.0.0.1:{free_port()}")
    four = json.loads((tmp_path / "four.json").read_text())
    single = run_main(evaluate_argv(odd_data, "single"))  # one process, from the folder
    assert four["n_images"] == single["n_images"] == 21
    assert (four["top1"], four["top5"]) == (single["top1"], single["top5"])
    assert four["loss"] == pytest.approx(single["loss"], rel=1e-5)


def test_the_class_list_of_shards_is_the_folders(small):
    """``--classes-from`` / ``--val`` (eval_variants.py, predict.py): OUT, OUT/val and the folder give one list."""
    folder, shards = small
    names = sorted(os.listdir(folder / "val"))
    assert data.class_list(str(folder / "val"), "--classes-from") == names
    assert data.class_list(str(shards), "--classes-from") == names
    assert data.class_list(str(shards / "val"), "--classes-from") == names
    with pytest.raises(data.UserError, match="^--val .*nowhere: folder not found$"):
        data.class_list(str(shards / "nowhere"), "--val")


def test_make_shards_layout_and_a_second_run_skips_complete_shards(small, tmp_path):
    folder, _ = small
    out = tmp_path / "out"
    first = make_shards(str(folder), str(out), shard_size=4, progress=False)
    assert first["train"] == {"shards": 6, "written": 6, "already_complete": 0, "images": 21, "skipped": []}
    assert (out / "classes.txt").read_text().split() == ["n00000000", "n00000001", "n00000002"]
    index = json.loads((out / "val" / "shardindex.json").read_text())
    assert index["wids_version"] == 1 and [s["nsamples"] for s in index["shardlist"]] == [4, 4, 4, 3]
    assert [s["url"] for s in index["shardlist"]] == [f"val-{n:06d}.tar" for n in range(4)]
    written = {path: path.stat().st_mtime_ns for path in (out / "train").glob("*.tar")}
    (out / "train" / "train-000002.tar").unlink()  # as if the first run had stopped before writing it
    second = make_shards(str(folder), str(out), shard_size=4, workers=2, progress=False)
    assert second["train"]["written"] == 1 and second["train"]["already_complete"] == 5
    assert second["val"]["written"] == 0 and second["val"]["already_complete"] == 4
    for path, mtime in written.items():
        assert path.name == "train-000002.tar" or path.stat().st_mtime_ns == mtime, path
    assert json.loads((out / "val" / "shardindex.json").read_text()) == index
    with pytest.raises(data.UserError, match="other settings"):
        make_shards(str(folder), str(out), shard_size=5, progress=False)


def test_max_side_stores_larger_images_resized_and_the_runs_say_so(tmp_path, capsys):
    """--max-side 20: a 40x24 image is stored 20x12 (its pixels those of the original, shrunk), a 16x12 one as its
    original bytes; the index and the settings record it, a rerun with other settings is refused, and training,
    its checkpoint and -e's JSON say the data is not the paper's."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, wnid in enumerate(("n01", "n02")):
            for i, (w, h) in enumerate([(40, 24), (16, 12), (40, 24)]):
                path = tmp_path / "folder" / split / wnid / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                gradient = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3)) * (0.5 + c / 2)
                Image.fromarray(np.clip(gradient + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)).save(path)
    out = shard(tmp_path / "folder", tmp_path / "out", max_side=20)
    index = json.loads((out / "train" / data.SHARD_INDEX).read_text())
    assert index["resized"] == {"max_side": 20, "jpeg_quality": 90}
    stored = data.ShardImages(str(out), "train")
    for position, (path, _) in enumerate(data.image_folder(str(tmp_path / "folder"), "train", None).samples):
        image = stored[position][0]
        with Image.open(path) as original:
            if original.size == (16, 12):
                assert stored._wids()[position][".jpg"].getvalue() == open(path, "rb").read()
                continue
            assert image.size == (20, 12)
            shrunk = np.asarray(original.convert("RGB").resize((20, 12), Image.Resampling.BOX), dtype=np.float32)
        difference = np.abs(np.asarray(image, dtype=np.float32) - shrunk)
        assert difference.mean() < 6  # JPEG and filter differences; mirrored, the gradient would differ by 65+
    with pytest.raises(data.UserError, match="was written with other settings"):
        shard(tmp_path / "folder", tmp_path / "out")
    capsys.readouterr()
    run_main(train_argv(out, tmp_path / "ckpt", epochs=1, batch=4))
    assert "=> warning: " in capsys.readouterr().out
    log = (tmp_path / "ckpt" / RUN / "log.txt").read_text()
    assert "resized to a longer side of at most 20 px" in log and "not the paper's protocol" in log
    assert checkpoint(tmp_path / "ckpt")["data_resized"] == {"max_side": 20, "jpeg_quality": 90}
    evaluated = run_main([str(tmp_path / "folder"), "-e", "--resume", str(tmp_path / "ckpt" / RUN), "-j", "0",
                          "--ckpt", str(tmp_path / "ckpt"), *TINY])
    assert evaluated["data_resized"] is None and evaluated["trained_on_resized"]["max_side"] == 20


def test_make_shards_names_a_bad_image_or_skips_it(small, tmp_path, capsys):
    folder = tmp_path / "folder"
    shutil.copytree(small[0], folder)
    bad = folder / "train" / "n00000001" / "broken.JPEG"
    bad.write_bytes(b"not an image")
    status = subprocess.run([sys.executable, "scripts/make_shards.py", str(folder), str(tmp_path / "a"),
                             "--shard-size", "4", "--no-progress"], cwd=ROOT, capture_output=True, text=True)
    err = status.stderr.strip().splitlines()
    assert status.returncode == 2 and len(err) == 1 and err[0].startswith("error: cannot read image") \
        and str(bad) in err[0] and "--skip-bad-images" in err[0], status.stderr
    summary = make_shards(str(folder), str(tmp_path / "b"), shard_size=4, skip_bad_images=True, progress=False)
    assert summary["train"]["images"] == 21 and len(summary["train"]["skipped"]) == 1
    assert str(bad) in summary["train"]["skipped"][0] and str(bad) in capsys.readouterr().err


def one_error_line(argv, capsys):
    status = main_imagenet.cli([str(arg) for arg in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    return err[0]


def test_a_missing_or_truncated_shard_is_a_one_line_error_naming_it(small, tmp_path, capsys):
    shards = tmp_path / "shards"
    shutil.copytree(small[1], shards)
    missing = shards / "val" / "val-000001.tar"
    missing.rename(tmp_path / "elsewhere.tar")
    line = one_error_line(train_argv(shards, tmp_path / "ckpt"), capsys)
    assert line.startswith("error: shard ") and str(missing) in line and "missing" in line
    (tmp_path / "elsewhere.tar").rename(missing)
    truncated = shards / "train" / "train-000003.tar"
    truncated.write_bytes(truncated.read_bytes()[:3000])
    line = one_error_line(train_argv(shards, tmp_path / "ckpt"), capsys)
    assert str(truncated) in line and "damaged" in line


def payload_offsets(path):
    """Where each ``.jpg`` of a shard starts and how long it is (wids' tar index)."""
    from wids.wids_mmtar import MMIndexedTar

    tar = MMIndexedTar(str(path))
    try:
        return [(offset + 512, size) for name, offset, size in tar.by_index if name.endswith(".jpg")]
    finally:
        tar.close()


def test_a_damaged_shard_is_a_one_line_error_from_a_loader_worker(small, tmp_path, capsys):
    shards = tmp_path / "shards"
    shutil.copytree(small[1], shards)
    damaged = shards / "train" / "train-000002.tar"
    content = bytearray(damaged.read_bytes())
    content[:512] = b"\xff" * 512  # the first member's header: the tar cannot be indexed, the size is the same
    damaged.write_bytes(bytes(content))
    line = one_error_line(train_argv(shards, tmp_path / "ckpt", workers=1), capsys)
    assert line.startswith(f"error: cannot read shard {damaged}") or line.startswith(f"error: shard {damaged}"), line


def test_skip_bad_images_from_shards_names_the_shard_and_key(small, tmp_path, capsys):
    shards = tmp_path / "shards"
    shutil.copytree(small[1], shards)
    for split in ("train", "val"):
        damaged = shards / split / f"{split}-000001.tar"
        content = bytearray(damaged.read_bytes())
        offset, size = payload_offsets(damaged)[2]  # the shard's third image
        content[offset:offset + size] = b"\0" * size
        damaged.write_bytes(bytes(content))
    line = one_error_line(train_argv(shards, tmp_path / "stop"), capsys)
    assert line.startswith(f"error: cannot read image {shards / 'train' / 'train-000001.tar'}:n00000000/00000006_")
    result = run_main(train_argv(shards, tmp_path / "skip", "--skip-bad-images", batch=8))
    assert result["bad_images"] == 2  # one in train/, one in val/
    evaluated = run_main([str(shards), "-e", "--resume", str(tmp_path / "skip" / RUN / "checkpoint.pth.tar"),
                          "--skip-bad-images", "-j", "0", "--ckpt", str(tmp_path), *TINY])
    assert evaluated["n_images"] == 14 and evaluated["bad_images"] == 1


@pytest.mark.filterwarnings("ignore:-e without --resume")
def test_remote_shards_are_fetched_into_the_wids_cache(small, tmp_path, monkeypatch):
    """Shards listed by URL (here file://, as https://, s3://, gs:// or pipe: would be) are copied once into
    $WIDS_CACHE by wids and read from there, with the same results."""
    folder, shards = small
    remote = tmp_path / "remote"
    shutil.copytree(shards, remote)
    for split in ("train", "val"):
        path = remote / split / "shardindex.json"
        index = json.loads(path.read_text())
        for entry in index["shardlist"]:
            entry["url"] = (shards / split / entry["url"]).as_uri()
        path.write_text(json.dumps(index))
        for tar in (remote / split).glob("*.tar"):
            tar.unlink()
    monkeypatch.setenv("WIDS_CACHE", str(tmp_path / "cache"))
    local = run_main([str(shards), "-e", "-j", "0", "-a", "resnet18", "--ckpt", str(tmp_path / "a"), *TINY])
    fetched = run_main([str(remote), "-e", "-j", "0", "-a", "resnet18", "--ckpt", str(tmp_path / "b"), *TINY])
    assert fetched["n_images"] == local["n_images"] == 15
    assert len(list((tmp_path / "cache").glob("*val-00000*.tar"))) == 4


def test_the_shard_benchmark_reports_folder_and_shards(tmp_path):
    from scripts._data_benchmark import run_shards_suite

    result = run_shards_suite(image_count=8, image_size=(64, 48), crop=32, resize=36, repeats=1, shard_size=3,
                              workdir=str(tmp_path), cold=False)
    rates = result["images_per_sec_per_core"]
    assert len(rates) == 10 and all(rate > 0 for rate in rates.values())
    assert set(result["shards_vs_folder"]) == {"pil/read", "pil/train", "pil/eval", "uint8/train", "uint8/eval"}
