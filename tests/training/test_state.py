"""The run's identity and its checkpoint format: run folders named as the release names them, and a file written
field by field in the documented layout (as every earlier version wrote it) resumes and evaluates."""

import os

import torch

import networks
from helpers import TINY, direct_accuracy, train_argv
from test_main_imagenet import run_main
from training.state import CHECKPOINT_FORMAT, run_folder

RUN = "imagenet-resnet18-simam-param0.1-seed0"


def test_run_folder_is_named_as_the_release():
    simam = networks.identify_network(None, "resnet50", "simam", 0.1)
    assert run_folder("./ckpts/", simam, 7).replace("\\", "/") == "./ckpts/imagenet-resnet50-simam-param0.1-seed7"
    assert run_folder("./ckpts/", networks.identify_network(None, "resnet18"), None).replace("\\", "/") == \
        "./ckpts/imagenet-resnet18"
    default_lambda = networks.identify_network(None, "resnet18", "simam")
    assert run_folder("out", default_lambda, None).endswith("imagenet-resnet18-simam-param0.1")


def written_field_by_field(model, optimizer, scheduler, classes) -> dict:
    """A checkpoint in the layout the README documents, assembled here key by key (not by the code under test)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "format": CHECKPOINT_FORMAT, "epoch": 1, "arch": "resnet18", "state_dict": model.state_dict(), "best_acc": 12.5,
        "optimizer": optimizer.state_dict(), "iteration": 0, "iterations_per_epoch": 3,
        "scheduler": scheduler.state_dict(), "scaler": {}, "attention_type": "simam", "attention_param": 0.1,
        "num_classes": len(classes), "classes": classes, "seed": 0, "sums": None,
        "args": {"arch": "resnet18", "epochs": 1}, "torch_version": str(torch.__version__),
        "rng": {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                        gauss], "torch": torch.get_rng_state()},
    }


def test_a_file_in_the_documented_layout_resumes_and_evaluates(three_class_data, tmp_path):
    classes = sorted(os.listdir(three_class_data / "val"))
    model = networks.create_net("resnet18", "simam", 0.1, num_classes=len(classes))
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
    optimizer.zero_grad()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for _ in range(3):
        scheduler.step()
    run_dir = tmp_path / RUN
    run_dir.mkdir()
    torch.save(written_field_by_field(model, optimizer, scheduler, classes), run_dir / "checkpoint.pth.tar")

    evaluated = run_main([str(three_class_data), "-e", "--resume", str(run_dir / "checkpoint.pth.tar"), "-j", "0",
                          "--ckpt", str(tmp_path / "eval"), *TINY])
    top1, top5, count = direct_accuracy(model, three_class_data / "val")
    assert (evaluated["arch"], evaluated["attention_type"], evaluated["attention_param"]) == ("resnet18", "simam", 0.1)
    assert (evaluated["top1"], evaluated["top5"], evaluated["n_images"]) == (top1, top5, count)

    resumed = run_main(train_argv(three_class_data, tmp_path, "--resume", "auto", epochs=2))
    saved = torch.load(run_dir / "checkpoint.pth.tar", weights_only=True)
    assert saved["epoch"] == 2 and resumed["epoch"] == 1 and saved["best_acc"] >= 12.5
    assert saved["scheduler"]["last_epoch"] == 3 + saved["iterations_per_epoch"]
