"""Using trained models: safetensors weights with their metadata and weights card, scripts/predict.py, hubconf.py, and
the one loader they share (networks.load_network)."""

import csv
import json
import os
import shutil
import subprocess
import sys
from unittest import mock

import pytest
import torch

import main_imagenet
import networks
from helpers import ROOT, TINY, train_argv
from scripts import export, predict
from training.config import parse_with_config
from training.optim import flatten_buffers

RUN = "imagenet-resnet18-simam-param0.1-seed0"


def run_main(argv):
    return main_imagenet.main(parse_with_config(main_imagenet.get_args_parser(), [str(a) for a in argv]))


def one_line_error(capsys, status):
    """The command's error: exit status 2 and one line ``error: ...`` on stderr."""
    assert status == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def trained(three_class_data, tmp_path_factory):
    """A 1-epoch SimAM-ResNet-18 run on 3 classes, its -e evaluation and its weights saved as safetensors by
    ``-e --save_weights``: (checkpoint, safetensors file, -e's result, folder)."""
    folder = tmp_path_factory.mktemp("using")
    run_main(train_argv(three_class_data, folder, epochs=1))
    checkpoint = folder / RUN / "checkpoint.pth.tar"
    weights = folder / "export" / "r18_simam.safetensors"
    evaluated = run_main(train_argv(three_class_data, folder, "-e", "--resume", checkpoint, "--save_weights", weights))
    return checkpoint, weights, evaluated, folder


def checkpoint_model(checkpoint, num_classes=3):
    """``networks.create_net`` plus strict loading of the checkpoint's weights, in eval mode."""
    model = networks.create_net("resnet18", "simam", 0.1, num_classes=num_classes)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"], strict=True)
    return model.eval()


def logits(model, seed=0):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


# ----------------------------------------------------------------------------------------------- safetensors

def test_save_weights_writes_safetensors_with_metadata_and_a_card(trained, three_class_data):
    checkpoint, weights, evaluated, _ = trained
    assert evaluated["saved_weights"] == str(weights)
    record = networks.read_safetensors(weights)
    meta = record["metadata"]
    assert (meta["arch"], meta["attention_type"], meta["attention_param"]) == ("resnet18", "simam", 0.1)
    assert meta["classes"] == sorted(os.listdir(three_class_data / "val")) and meta["num_classes"] == 3
    assert meta["transform"] == {"resize_size": 36, "crop_size": 32, "mean": [0.485, 0.456, 0.406],
                                 "std": [0.229, 0.224, 0.225], "interpolation": "bilinear"}
    assert (meta["top1"], meta["top5"]) == (evaluated["top1"], evaluated["top5"])
    assert meta["recipe"]["epochs"] == 1 and meta["source"] == "checkpoint.pth.tar" and meta["source_epoch"] == 1
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert record["state_dict"].keys() == saved.keys()
    assert all(torch.equal(record["state_dict"][key], saved[key]) for key in saved)

    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["sha256"] == networks.sha256_of(weights) and card["file"] == weights.name
    assert card["params_m"] == pytest.approx(sum(p.numel() for p in checkpoint_model(checkpoint).parameters()) / 1e6)
    assert card["gflops"] > 0 and card["evaluations"]["val"]["top1"] == evaluated["top1"]
    markdown = weights.with_suffix(".md").read_text()
    for text in ("resnet18", "simam", "0.1000", f"{evaluated['top1']:.2f} / {evaluated['top5']:.2f}", card["sha256"],
                 "centre crop 32", "## Training recipe", "epochs: 1"):
        assert text in markdown, text


def test_safetensors_round_trip_identifies_the_network_and_gives_equal_logits(trained):
    checkpoint, weights, _, _ = trained
    loaded = networks.load_network(weights)  # no arch given: from the metadata
    assert (loaded.arch, loaded.attention_type, loaded.attention_param, loaded.num_classes) == \
        ("resnet18", "simam", 0.1, 3)
    assert loaded.transform == networks.EvalTransform(36, 32)
    assert loaded.description == "resnet18 + simam (e_lambda=0.1)"
    assert torch.equal(logits(loaded.model), logits(checkpoint_model(checkpoint)))
    # the same from a file of another name: safetensors is recognised by its content
    renamed = weights.parent / "renamed.bin"
    shutil.copy(weights, renamed)
    assert torch.equal(logits(networks.load_network(renamed).model), logits(loaded.model))


def test_evaluating_and_fine_tuning_from_safetensors(trained, three_class_data, tmp_path, capsys):
    _, weights, evaluated, _ = trained
    again = run_main([three_class_data, "-j", "0", "-e", "--resume", weights, "--ckpt", tmp_path, *TINY])
    assert (again["arch"], again["attention_type"], again["attention_param"]) == ("resnet18", "simam", 0.1)
    assert (again["top1"], again["top5"]) == (evaluated["top1"], evaluated["top5"])
    # fine-tuning: weights only, from epoch 0, as from a bare state dict
    result = run_main(train_argv(three_class_data, tmp_path, "--resume", weights, epochs=1))
    assert result["epoch"] == 0
    assert f"=> resumed from {weights} at epoch 0" in capsys.readouterr().out


def test_backbones_load_safetensors(trained):
    _, weights, _, _ = trained
    backbone = networks.create_net("resnet18", "simam", 0.1, features_only=True)
    networks.load_backbone(backbone, weights)
    model = networks.load_network(weights).model
    assert torch.equal(backbone.layer1[0].conv1.weight, model.layer1[0].conv1.weight)


def test_buffers_sharing_one_storage_are_saved(tmp_path):
    model = networks.create_net("resnet18", "simam", num_classes=3)
    flatten_buffers(model)  # BN buffers of several dtypes in one storage, as in training
    networks.save_safetensors(tmp_path / "w.safetensors", model.state_dict(), {"arch": "resnet18"})
    loaded = networks.read_safetensors(tmp_path / "w.safetensors")["state_dict"]
    assert all(torch.equal(loaded[key], value) for key, value in model.state_dict().items())


def test_damaged_and_foreign_files_are_one_line_errors(trained, three_class_data, tmp_path, capsys):
    _, weights, _, _ = trained
    data = weights.read_bytes()
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(data[:len(data) // 2])
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.randn(4, 4)}, str(foreign), metadata={"format": "pt"})
    html = tmp_path / "page.safetensors"
    html.write_text("<!DOCTYPE html><html>Google Drive - virus scan warning</html>")
    for path, words in ((damaged, "truncated or damaged"), (foreign, "fit none of the networks"),
                        (html, "HTML page")):
        with pytest.raises(ValueError, match=words):
            networks.load_network(path)
        argv = [three_class_data, "-j", "0", "-e", "--resume", path, "--ckpt", tmp_path, *TINY]
        assert words in one_line_error(capsys, main_imagenet.cli([str(a) for a in argv]))
        assert words in one_line_error(capsys, predict.cli(["--resume", str(path), str(three_class_data / "val")]))
        assert words in one_line_error(capsys, export.cli([str(path), "--format", "torchscript", "-o",
                                                           str(tmp_path / "m.pt")]))


# ----------------------------------------------------------------------------------------------- predict

def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("which", ["checkpoint", "safetensors"])
def test_predict_top1_over_a_labelled_folder_is_the_evaluations(trained, three_class_data, tmp_path, which):
    checkpoint, weights, evaluated, _ = trained
    out = tmp_path / "predictions.csv"
    source = checkpoint if which == "checkpoint" else weights
    assert predict.cli(["--resume", str(source), str(three_class_data / "val"), "--topk", "2", "--csv", str(out),
                        "-j", "0", "-b", "5", "--no-progress"]) == 0
    rows = read_rows(out)
    assert list(rows[0]) == ["path", "index_1", "wnid_1", "name_1", "prob_1", "index_2", "wnid_2", "name_2", "prob_2"]
    images = sorted(str(p) for p in (three_class_data / "val").rglob("*") if p.is_file())
    assert sorted(row["path"] for row in rows) == images
    top1 = 100.0 * sum(row["wnid_1"] == os.path.basename(os.path.dirname(row["path"])) for row in rows) / len(rows)
    assert top1 == pytest.approx(evaluated["top1"])
    classes = sorted(os.listdir(three_class_data / "val"))
    for row in rows:  # names are the class folders (not 1,000 classes); probabilities sorted
        assert row["wnid_1"] == classes[int(row["index_1"])] == row["name_1"]
        assert 1.0 >= float(row["prob_1"]) >= float(row["prob_2"]) >= 0.0


def test_predict_skips_unreadable_images_and_writes_json(trained, three_class_data, tmp_path, capsys):
    checkpoint = trained[0]
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in sorted((three_class_data / "val").rglob("*.JPEG"))[:3]:
        shutil.copy(image, folder / image.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out.json"
    assert predict.cli(["--resume", str(checkpoint), str(folder), "--json", str(out), "-j", "0", "--topk", "9"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "broken.jpg" in err[0], err
    written = json.loads(out.read_text())
    assert written["topk"] == 3 and len(written["predictions"]) == 3 and len(written["skipped"]) == 1
    assert written["arch"] == "resnet18" and written["transform"]["crop_size"] == 32
    assert {"index", "wnid", "name", "prob"} == set(written["predictions"][0]["top"][0])
    # without --csv/--json: one line per image on stdout
    assert predict.cli(["--resume", str(checkpoint), str(folder / "broken.jpg"), *map(str, folder.glob("*.JPEG")),
                        "-j", "0"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_predict_bad_input(trained, three_class_data, tmp_path, capsys):
    checkpoint = trained[0]
    image = str(sorted((three_class_data / "val").rglob("*.JPEG"))[0])
    assert "image not found" in one_line_error(capsys, predict.cli(["--resume", str(checkpoint), "nope.jpg"]))
    (tmp_path / "empty").mkdir()
    assert "no image files" in one_line_error(capsys, predict.cli(["--resume", str(checkpoint),
                                                                   str(tmp_path / "empty")]))
    assert "checkpoint not found" in one_line_error(capsys, predict.cli(["--resume", "missing.pth", image]))
    assert "--classes-from" in one_line_error(capsys, predict.cli(["--resume", str(checkpoint), image,
                                                                   "--classes-from", str(tmp_path / "empty")]))
    assert "--topk" in one_line_error(capsys, predict.cli(["--resume", str(checkpoint), "--topk", "0", "x.jpg"]))
    one_line_error(capsys, predict.cli(["--resume", str(checkpoint), "x.jpg", "--csv", "a", "--json", "b"]))


def test_predict_names_wnids_and_classes_from(trained, three_class_data, tmp_path):
    image = str(sorted((three_class_data / "val").rglob("*.JPEG"))[0])
    # the release's layout records no classes: wnids empty unless --classes-from
    weights = torch.load(trained[0], weights_only=True)["state_dict"]
    release = tmp_path / "model_best_in_100_epochs.pth.tar"
    torch.save({"epoch": 100, "arch": "resnet18", "state_dict": {f"module.{k}": v for k, v in weights.items()}},
               release)
    out = tmp_path / "p.csv"
    assert predict.cli(["--resume", str(release), image, "--csv", str(out), "-j", "0"]) == 0
    assert read_rows(out)[0]["wnid_1"] == ""
    assert predict.cli(["--resume", str(release), image, "--csv", str(out), "-j", "0",
                        "--classes-from", str(three_class_data / "train")]) == 0
    row = read_rows(out)[0]
    assert row["wnid_1"] == sorted(os.listdir(three_class_data / "train"))[int(row["index_1"])]
    # 1,000 classes: torchvision's ImageNet names
    model = networks.create_net("mobilenet_v2", "simam", num_classes=1000)
    torch.save(model.state_dict(), tmp_path / "imagenet.pth")
    assert predict.cli(["--resume", str(tmp_path / "imagenet.pth"), image, "--csv", str(out), "-j", "0"]) == 0
    from torchvision.models import ResNet50_Weights

    row = read_rows(out)[0]
    assert row["name_1"] == ResNet50_Weights.IMAGENET1K_V1.meta["categories"][int(row["index_1"])]
    assert row["wnid_1"] == ""


# ----------------------------------------------------------------------------------------------- torch.hub

@pytest.mark.parametrize("which", ["checkpoint", "safetensors"])
def test_hub_load_gives_the_logits_of_create_net_and_strict_loading(trained, which):
    checkpoint, weights, _, _ = trained
    model = torch.hub.load(ROOT, "resnet18_simam", source="local", weights=str(weights if which == "safetensors"
                                                                               else checkpoint))
    assert not model.training
    assert torch.equal(logits(model), logits(checkpoint_model(checkpoint)))


def test_hub_entries_are_listed_and_documented():
    with mock.patch.object(torch.hub, "_get_cache_or_reload", lambda *args, **kwargs: ROOT):  # no download
        entries = torch.hub.list("owner/repo")
        assert sorted(entries) == sorted(f"{a}_{t}" for a in networks.ARCHS for t in networks.ATTENTIONS)
        assert "resnet50_simam" in entries and "resnet50_none" in entries
        assert "resnet50 with simam attention" in torch.hub.help("owner/repo", "resnet50_simam")
    model = torch.hub.load(ROOT, "resnet50_none", source="local", num_classes=7)
    assert model.fc.out_features == 7


def test_hub_refuses_another_networks_weights_and_contradictions(trained):
    weights = str(trained[1])
    with pytest.raises(ValueError, match="resnet34_simam was given weights of another network: .* load it with the "
                                         "entry resnet18_simam"):
        torch.hub.load(ROOT, "resnet34_simam", source="local", weights=weights)
    with pytest.raises(ValueError, match="num_classes=10 contradicts"):
        torch.hub.load(ROOT, "resnet18_simam", source="local", weights=weights, num_classes=10)


def test_hub_weights_from_a_url_are_cached_and_checked_against_the_manifest(trained, tmp_path):
    weights = trained[1]
    url = weights.resolve().as_uri()  # file://...: urllib downloads it like an http URL
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"file,arch,attention_type,attention_param,sha256,url\nx,,,,{'0' * 64},{url}\n")
    hub_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        cached = tmp_path / "hub" / "checkpoints" / weights.name
        with pytest.raises(ValueError, match="does not match"):
            networks.weights_file(url, progress=False, manifest=manifest)
        assert not cached.exists()  # deleted: the next call downloads it again
        manifest.write_text(f"file,arch,attention_type,attention_param,sha256,url\nx,,,,"
                            f"{networks.sha256_of(weights)},{url}\n")
        assert networks.weights_file(url, progress=False, manifest=manifest) == str(cached)
        model = torch.hub.load(ROOT, "resnet18_simam", source="local", weights=url, progress=False)
        assert torch.equal(logits(model), logits(checkpoint_model(trained[0])))
    finally:
        torch.hub.set_dir(hub_dir)


def test_hub_checks_a_local_file_against_the_manifest_listing_it(trained, tmp_path):
    weights = tmp_path / "listed.safetensors"
    shutil.copy(trained[1], weights)
    (tmp_path / "manifest.csv").write_text(f"file,arch,attention_type,attention_param,sha256\n"
                                           f"listed.safetensors,,,,{'f' * 64}\n")
    with pytest.raises(ValueError, match="does not match"):
        torch.hub.load(ROOT, "resnet18_simam", source="local", weights=str(weights))


def test_importing_hubconf_builds_and_reads_nothing():
    code = ("import sys, hubconf; "
            "print(sorted(m for m in ('training', 'safetensors', 'scripts') if m in sys.modules)); "
            "print(len([n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith('_')]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", str(len(networks.ARCHS) * len(networks.ATTENTIONS))]


# ----------------------------------------------------------------------------------------------- the shared loader

def test_scripts_share_the_loader(trained):
    checkpoint = trained[0]
    from scripts import visualize_attention

    net = visualize_attention.load_network(str(checkpoint))
    model, name = export.load_network(str(checkpoint))
    assert (net.arch, net.attention_type, net.num_classes, name) == ("resnet18", "simam", 3,
                                                                      "resnet18 + simam (e_lambda=0.1)")
    assert torch.equal(logits(net.model), logits(model))


def test_eval_transform_record_matches_the_presets():
    from training import presets

    assert (networks.loading.IMAGENET_MEAN, networks.loading.IMAGENET_STD) == (presets.IMAGENET_MEAN,
                                                                                 presets.IMAGENET_STD)
    transform = networks.EvalTransform(40, 32)
    assert networks.EvalTransform.from_dict(transform.as_dict()) == transform
    with pytest.raises(ValueError, match="not an evaluation transform"):
        networks.EvalTransform.from_dict({"resize_size": "big"})
