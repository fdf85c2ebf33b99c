"""scripts/eval_variants.py and training/variants.py: ImageNet-V2, ReaL, -A, -R, -Sketch and -C on generated data.

The expected numbers are computed here with plain torch + PIL + torchvision's transforms from a small checkpoint's
per-image logits, not with the script's code; the folders are laid out from those logits so that each trap (V2's
numeric folders, the A/R class mask, ReaL's file-name order and empty lists, ImageNet-C's names) changes the result
when it is not handled."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets, transforms

import networks
from scripts import eval_variants
from training import distributed, variants
from training.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 12  # > 10: the folders "10" and "11" sort before "2" as strings
WNIDS = [f"n{7 * i + 1:08d}" for i in range(NUM_CLASSES)]
N_IMAGES = 30
RESIZE, CROP = 36, 32
ALEXNET = {"gaussian_noise": 0.886428, "fog": 0.819324}  # reference.md, by name


def plain_transform(path):
    """The evaluation transform, written out with torchvision: resize 36, centre crop 32, normalise."""
    tf = transforms.Compose([transforms.Resize(RESIZE), transforms.CenterCrop(CROP), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with Image.open(path) as image:
        return tf(image.convert("RGB"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Base images, a ResNet-18 (12 classes) checkpoint whose logits on them vary, and those logits."""
    tmp = tmp_path_factory.mktemp("variants")
    rng = np.random.default_rng(0)
    base = tmp / "base"
    base.mkdir()
    paths = []
    for i in range(N_IMAGES):
        colour = rng.integers(0, 256, 3)
        pixels = np.clip(rng.normal(colour, 60, (44, 40, 3)), 0, 255).astype(np.uint8)
        path = base / f"img{i:02d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    torch.manual_seed(0)
    model = networks.create_net("resnet18", "simam", 0.1, NUM_CLASSES).eval()
    with torch.no_grad():
        model.fc.weight.normal_(0, 1.0)
        model.fc.bias.zero_()
        images = torch.stack([plain_transform(p) for p in paths])
        model.fc.bias -= model(images).mean(0)  # centred logits: the predictions spread over the classes
        logits = model(images)
    checkpoint = tmp / "model_best.pth.tar"
    torch.save({"state_dict": model.state_dict(), "arch": "resnet18", "attention_type": "simam",
                "attention_param": 0.1, "num_classes": NUM_CLASSES, "classes": WNIDS, "epoch": 3}, checkpoint)
    return {"tmp": tmp, "paths": paths, "logits": logits, "checkpoint": checkpoint, "model": model}


def put(path, folder, name=None):
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name or path.name)
    target.write_bytes(path.read_bytes())
    return target


def top5(logits):
    return logits.topk(5, dim=1).indices


@pytest.fixture(scope="module")
def sets(world):
    """The sets, laid out from the logits, with the expected results computed here."""
    tmp, paths, logits = world["tmp"], world["paths"], world["logits"]
    pred = logits.argmax(1).tolist()
    assert len(set(pred)) >= 4, pred  # the predictions spread: the label traps change the results
    expected = {}

    # val: image i in the folder of its prediction for i % 3 != 0, else of the next class; file names numbered in
    # an order unrelated to the folders' (ReaL follows the sorted file names)
    numbers = np.random.default_rng(1).permutation(N_IMAGES) + 1
    val_labels, val_files = [], []
    for i, path in enumerate(paths):
        label = pred[i] if i % 3 else (pred[i] + 1) % NUM_CLASSES
        val_labels.append(label)
        val_files.append(f"ILSVRC2012_val_{numbers[i]:08d}.png")
        put(path, tmp / "val" / WNIDS[label], val_files[-1])
    labels = torch.tensor(val_labels)
    expected["val"] = {"top1": 100.0 * (logits.argmax(1) == labels).float().mean().item(),
                       "top5": 100.0 * (top5(logits) == labels[:, None]).any(1).float().mean().item(),
                       "n_images": N_IMAGES}

    # ReaL: one list per val image in sorted file-name order: empty, the prediction with another class, or not it
    by_name = sorted(range(N_IMAGES), key=lambda i: val_files[i])
    real, scored, correct = [], 0, 0
    for position, i in enumerate(by_name):
        kind = position % 4
        entry = [] if kind == 0 else [(pred[i] + 3) % NUM_CLASSES, pred[i]] if kind == 1 else \
            [(pred[i] + 1) % NUM_CLASSES] if kind == 2 else [val_labels[i]]
        real.append(entry)
        if entry:
            scored += 1
            correct += pred[i] in entry
    (tmp / "real.json").write_text(json.dumps(real))
    expected["real"] = {"top1": 100.0 * correct / scored, "n_images": scored}

    # V2: folders named by class index; image i in its prediction's folder unless i % 4 == 0
    v2_labels = []
    for i, path in enumerate(paths):
        label = pred[i] if i % 4 else (pred[i] + 5) % NUM_CLASSES
        v2_labels.append(label)
        put(path, tmp / "v2" / str(label))
    for k in range(NUM_CLASSES):  # every index folder present, so that string order differs from numeric
        put(paths[0], tmp / "v2" / str(k), "extra.png")
        v2_labels.append(k)
    v2_logits = torch.cat([logits, logits[:1].expand(NUM_CLASSES, -1)])
    v2_target = torch.tensor(v2_labels)
    expected["v2"] = {"top1": 100.0 * (v2_logits.argmax(1) == v2_target).float().mean().item(),
                      "top5": 100.0 * (top5(v2_logits) == v2_target[:, None]).any(1).float().mean().item(),
                      "n_images": len(v2_labels)}

    # A: 6 of the 12 classes; every image in the folder of its best class among them, except i % 5 == 0
    subset = [1, 2, 5, 7, 10, 11]
    masked = logits[:, subset]
    a_labels = []
    for i, path in enumerate(paths):
        best = subset[masked[i].argmax().item()]
        label = best if i % 5 else subset[(subset.index(best) + 1) % len(subset)]
        a_labels.append(label)
        put(path, tmp / "a" / WNIDS[label])
    a_target = torch.tensor([subset.index(label) for label in a_labels])
    expected["a"] = {"top1": 100.0 * (masked.argmax(1) == a_target).float().mean().item(),
                     "top5": 100.0 * (masked.topk(5, 1).indices == a_target[:, None]).any(1).float().mean().item(),
                     "n_images": N_IMAGES}
    expected["a_unmasked_top1"] = 100.0 * (logits.argmax(1) == torch.tensor(a_labels)).float().mean().item()

    # C: two corruptions x 5 severities; severity s holds images s-1, s+4, s+9 in their val folders
    errors = {}
    for corruption in ALEXNET:
        errors[corruption] = []
        for severity in range(1, 6):
            chosen = [severity - 1, severity + 4, severity + 9] if corruption == "fog" else [severity + 14, severity]
            for i in chosen:
                put(paths[i], tmp / "c" / corruption / str(severity) / WNIDS[val_labels[i]])
            hits = [pred[i] == val_labels[i] for i in chosen]
            errors[corruption].append(100.0 - 100.0 * sum(hits) / len(hits))
    expected["c"] = errors
    return expected


def run_script(world, *argv):
    return eval_variants.main(eval_variants.get_args_parser().parse_args(
        ["--resume", str(world["checkpoint"]), "-j", "0", "-b", "8", "--no-progress", *map(str, argv)]))


@pytest.fixture(scope="module")
def result(world, sets):
    tmp = world["tmp"]
    run_script(world, "--val", tmp / "val", "--real", tmp / "real.json", "--v2", tmp / "v2", "--a", tmp / "a",
               "--r", tmp / "a", "--sketch", tmp / "val", "--c", tmp / "c", "--json", tmp / "out" / "v.json",
               "--val-resize-size", RESIZE, "--val-crop-size", CROP)
    return json.loads((tmp / "out" / "v.json").read_text())


def close(entry, want):
    for key, value in want.items():
        assert entry[key] == pytest.approx(value, abs=1e-4), (key, entry, want)  # float32 means in here


def test_val_and_sketch_match_plain_torch(result, sets):
    close(result["val"], sets["val"])
    close(result["sketch"], sets["val"])
    assert (result["arch"], result["attention_type"], result["epoch"]) == ("resnet18", "simam", 3)


def test_real_follows_sorted_file_names_and_leaves_out_empty_lists(result, sets):
    close(result["real"], sets["real"])
    assert result["real"]["n_images"] < N_IMAGES and set(result["real"]) == {"top1", "n_images"}


def test_v2_reads_folder_names_as_class_indices(result, sets, world):
    close(result["v2"], sets["v2"])
    # torchvision's ImageFolder sorts "10" before "2": its labels differ (the trap is live in this data)
    folder = datasets.ImageFolder(str(world["tmp"] / "v2"))
    assert folder.classes[:4] == ["0", "1", "10", "11"]
    assert [folder.classes[t] for t in folder.targets] != [str(t) for t in folder.targets]


def test_a_and_r_argmax_among_present_classes(result, sets):
    close(result["a"], sets["a"])
    close(result["r"], sets["a"])
    assert sets["a"]["top1"] != pytest.approx(sets["a_unmasked_top1"])  # the mask changes the answer here


def test_c_errors_ce_by_name_and_no_mce_without_all_15(result, sets):
    c = result["c"]
    assert set(c["corruptions"]) == set(ALEXNET) and c["mce"] is None
    for name, alexnet in ALEXNET.items():
        entry = c["corruptions"][name]
        assert entry["top1_error"] == pytest.approx(sets["c"][name], abs=1e-6)
        assert entry["ce"] == pytest.approx(100 * (sum(sets["c"][name]) / 5 / 100) / alexnet, abs=1e-6)
    every = [e for name in ALEXNET for e in sets["c"][name]]
    assert c["mean_error"] == pytest.approx(sum(every) / len(every), abs=1e-6)


def test_json_has_every_set(result):
    assert {"val", "real", "v2", "a", "r", "sketch", "c"} <= set(result)
    assert result["checkpoint"].endswith("model_best.pth.tar") and result["val_crop_size"] == CROP


def test_unknown_class_folder_is_one_line(world, sets, tmp_path, capsys):
    bad = tmp_path / "sketch"
    put(world["paths"][0], bad / WNIDS[0])
    put(world["paths"][1], bad / "n99999999")
    put(world["paths"][2], bad / "n99999998")
    argv = ["--resume", str(world["checkpoint"]), "-j", "0", "--sketch", str(bad), "--json", str(tmp_path / "o.json")]
    assert eval_variants.cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "'n99999998'" in err and "n99999999" not in err
    assert not (tmp_path / "o.json").exists()
    v2 = tmp_path / "v2"
    put(world["paths"][0], v2 / "3")
    put(world["paths"][0], v2 / "12")  # index 12 of 12 classes
    assert eval_variants.cli([*argv[:4], "--v2", str(v2), "--json", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "'12'" in err and "\n" not in err


def test_a_checkpoint_without_classes_takes_them_from_a_folder(world, sets, tmp_path, capsys):
    content = torch.load(world["checkpoint"], weights_only=False)
    del content["classes"]
    release = tmp_path / "release.pth"
    torch.save(content, release)
    tmp = world["tmp"]
    argv = ["--resume", str(release), "-j", "0", "--no-progress", "--val-resize-size", str(RESIZE),
            "--val-crop-size", str(CROP), "--a", str(tmp / "a"), "--json", str(tmp_path / "o.json")]
    assert eval_variants.cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --a needs the model's class names") and "\n" not in err
    classes = tmp_path / "train"  # e.g. the training set: one folder per class
    for wnid in reversed(WNIDS):
        (classes / wnid).mkdir(parents=True)
    assert eval_variants.cli([*argv, "--classes-from", str(classes)]) == 0
    close(json.loads((tmp_path / "o.json").read_text())["a"], sets["a"])


def test_evaluation_sizes_come_from_the_checkpoints_recipe(world, sets, tmp_path):
    content = torch.load(world["checkpoint"], weights_only=False)
    content["args"] = {"val_resize_size": RESIZE, "val_crop_size": CROP}
    recorded = tmp_path / "recorded.pth.tar"
    torch.save(content, recorded)
    out = eval_variants.main(eval_variants.get_args_parser().parse_args(
        ["--resume", str(recorded), "-j", "0", "--no-progress", "--val", str(world["tmp"] / "val"),
         "--json", str(tmp_path / "o.json")]))
    assert (out["val_resize_size"], out["val_crop_size"]) == (RESIZE, CROP)
    close(out["val"], sets["val"])


# ---------------------------------------------------------------------------------------------------------
# The library, on synthetic 1000-class logits
# ---------------------------------------------------------------------------------------------------------

def test_v2_labels_are_folder_indices(tmp_path):
    for name in ("0", "2", "10", "999"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "x.png")
    samples = variants.v2_samples(str(tmp_path), 1000)
    assert [(Path(p).parent.name, label) for p, label in samples] == [("0", 0), ("2", 2), ("10", 10), ("999", 999)]


def test_restrict_takes_the_argmax_among_present_classes():
    torch.manual_seed(0)
    logits = torch.randn(64, 1000)
    present = sorted(torch.randperm(1000)[:200].tolist())
    restricted = variants.restrict(logits, present)
    for row in range(64):  # independently: the best present class by a plain loop
        best = max(present, key=lambda c: logits[row, c].item())
        assert present[restricted[row].argmax().item()] == best
    assert (logits.argmax(1) != torch.tensor([present[j] for j in restricted.argmax(1)])).any()
    wrapped = variants.RestrictedLogits(torch.nn.Identity(), present)
    assert torch.equal(wrapped(logits), restricted)


def test_real_top1_by_sorted_file_name():
    # folder order (a, then b) differs from the file-name order (val_1, val_2, val_3, val_4)
    samples = [("a/val_3.JPEG", 0), ("a/val_1.JPEG", 0), ("b/val_4.JPEG", 1), ("b/val_2.JPEG", 1)]
    labels = [[5, 7], [], [9], [2]]  # val_1: {5, 7}; val_2: none; val_3: {9}; val_4: {2}
    predictions = [9, 7, 3, 2]  # val_3 -> 9 (right), val_1 -> 7 (right), val_4 -> 3 (wrong), val_2 -> left out
    assert variants.real_top1(predictions, samples, labels) == {"top1": pytest.approx(200 / 3), "n_images": 3}
    with pytest.raises(UserError, match="4 images"):
        variants.real_top1(predictions, samples, labels[:3])


def test_c_summary_matches_alexnet_by_name_and_mce_needs_all_15():
    errors = {name: [50.0, 60.0, 70.0, 80.0, 90.0] for name in reversed(variants.C_CORRUPTIONS)}
    errors["spatter"] = [10.0] * 5
    summary = variants.c_summary(errors)
    assert summary["corruptions"]["brightness"]["ce"] == pytest.approx(70.0 / 0.564592)
    assert summary["corruptions"]["impulse_noise"]["ce"] == pytest.approx(70.0 / 0.922640)
    assert summary["corruptions"]["spatter"]["ce"] is None
    reference = {"gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
                 "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
                 "snow": 0.866816, "frost": 0.826572, "fog": 0.819324, "brightness": 0.564592,
                 "contrast": 0.853204, "elastic_transform": 0.646056, "pixelate": 0.717840,
                 "jpeg_compression": 0.606500}
    assert summary["mce"] == pytest.approx(sum(70.0 / a for a in reference.values()) / 15)  # spatter left out
    del errors["fog"]
    assert variants.c_summary(errors)["mce"] is None and variants.c_summary(errors)["missing"] == ["fog"]


def test_unknown_wnid_folder_is_named(tmp_path):
    for name in ("n1", "n3", "n2"):
        (tmp_path / name).mkdir()
    with pytest.raises(UserError, match=r"class folder 'n2' is not among the model's 2 classes"):
        variants.wnid_samples(str(tmp_path), ["n1", "n3"], "ImageNet-R")


@pytest.mark.parametrize("pipeline", ["pil", "uint8"])
def test_val_and_real_from_shards_are_the_folders(world, sets, result, tmp_path, pipeline):
    """--val given make_shards.py's OUT (or OUT/val) scores the same images with the same labels, and ReaL follows
    the file names kept in the shards' keys; the shards' class list (the 9 or so classes present) is mapped to the
    model's 12 by wnid. Shards of 7 images: the last one shorter."""
    from scripts.make_shards import make_shards

    tmp = world["tmp"]
    data = tmp_path / "data"
    shutil.copytree(tmp / "val", data / "val")
    shutil.copytree(tmp / "val", data / "train")
    make_shards(str(data), str(tmp_path / "out"), shard_size=7, progress=False)
    present = sorted(os.listdir(tmp / "val"))
    assert len(present) < NUM_CLASSES and present != WNIDS[:len(present)]  # shard class i is not model class i
    want = result
    if pipeline == "uint8":  # the uint8 decoder's numbers differ from PIL's: compare with the folder read so
        run_script(world, "--val", tmp / "val", "--real", tmp / "real.json", "--json", tmp_path / "folder.json",
                   "--val-resize-size", RESIZE, "--val-crop-size", CROP, "--input-pipeline", pipeline)
        want = json.loads((tmp_path / "folder.json").read_text())
    for val in (tmp_path / "out", tmp_path / "out" / "val"):
        out = tmp_path / f"{val.name}.json"
        run_script(world, "--val", val, "--real", tmp / "real.json", "--json", out, "--val-resize-size", RESIZE,
                   "--val-crop-size", CROP, "--input-pipeline", pipeline)
        got = json.loads(out.read_text())
        for name in ("val", "real"):
            close(got[name], want[name])
        if pipeline == "pil":
            close(got["real"], sets["real"])


def test_shards_holding_an_unknown_class_are_named(world, tmp_path):
    from scripts.make_shards import make_shards

    for split in ("train", "val"):
        put(world["paths"][0], tmp_path / "data" / split / WNIDS[1])
        put(world["paths"][1], tmp_path / "data" / split / "n99999999")
    make_shards(str(tmp_path / "data"), str(tmp_path / "out"), progress=False)
    with pytest.raises(UserError, match=r"class folder 'n99999999' is not among the model's 12 classes"):
        variants.wnid_samples(str(tmp_path / "out"), WNIDS, "ImageNet val")


@pytest.mark.slow
def test_torchrun_two_processes_count_every_image_once(world, sets, result, tmp_path):
    tmp = world["tmp"]
    out = tmp_path / "ddp.json"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "scripts" / "eval_variants.py"), "--resume", str(world["checkpoint"]), "-j", "0", "-b", "8",
         "--no-progress", "--val", str(tmp / "val"), "--real", str(tmp / "real.json"), "--a", str(tmp / "a"),
         "--c", str(tmp / "c"), "--json", str(out), "--val-resize-size", str(RESIZE), "--val-crop-size", str(CROP)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads(out.read_text())
    for name in ("val", "real", "a"):
        close(ddp[name], sets[name])
    for name, entry in result["c"]["corruptions"].items():
        assert ddp["c"]["corruptions"][name]["top1_error"] == pytest.approx(entry["top1_error"], abs=1e-6)


def test_the_table_reads_the_json(result, world):
    from scripts import make_results_table as table
    read = table.read_evaluation(str(world["tmp"] / "out" / "v.json"))
    assert (read["arch"], read["attention_type"], read["top1"]) == ("resnet18", "simam", result["val"]["top1"])
    assert read["variants"] == {"v2_top1": result["v2"]["top1"], "real_top1": result["real"]["top1"],
                                "sketch_top1": result["sketch"]["top1"], "a_top1": result["a"]["top1"],
                                "r_top1": result["r"]["top1"]}  # no mCE: 2 of the 15 corruptions


@pytest.mark.slow
def test_one_process_per_device_counts_every_image_once(world, sets, tmp_path):
    """The --gpu 0,1 path (one spawned process per device), here with two CPU devices; -b 6 over 2 processes
    leaves the 30 val images in uneven last batches."""
    from training.distributed import free_port

    tmp = world["tmp"]
    args = eval_variants.get_args_parser().parse_args(
        ["--resume", str(world["checkpoint"]), "-j", "0", "-b", "6", "--no-progress", "--val", str(tmp / "val"),
         "--v2", str(tmp / "v2"), "--a", str(tmp / "a"), "--json", str(tmp_path / "spawned.json"),
         "--val-resize-size", str(RESIZE), "--val-crop-size", str(CROP), "--dist-url",
         f"tcp://127.0.0.1:{free_port()}"])
    distributed.spawn(eval_variants.worker, [torch.device("cpu"), torch.device("cpu")], eval_variants.resolve(args))
    spawned = json.loads((tmp_path / "spawned.json").read_text())
    for name in ("val", "v2", "a"):
        close(spawned[name], sets[name])
