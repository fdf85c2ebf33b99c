"""The shell launchers: --help works, dry runs print commands main_imagenet.py accepts, eval_checkpoints.sh
evaluates a folder of checkpoints (official names or ours) and checks the manifest's sha256."""

import hashlib
import json
import os
import shlex
import subprocess

import pytest
import torch

import main_imagenet
import networks
from helpers import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = {
    "scripts/train_resnet18_simam.sh": ["DATA"],
    "scripts/train_mobilenet_v2_simam.sh": ["DATA"],
    "scripts/eval_resnet18.sh": ["DATA", "ckpt.pth"],
    "scripts/dist_train.sh": ["DATA", "--config", "configs/resnet50_simam.yaml"],
    "scripts/slurm_train.sbatch": ["DATA", "configs/resnet50_simam.yaml"],
}


def bash(script, *args, env=None, cwd=ROOT):
    return subprocess.run(["bash", script, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def main_argv(command_line):
    """The arguments given to main_imagenet.py in a printed command."""
    words = shlex.split(command_line)
    return words[[i for i, w in enumerate(words) if w.endswith("main_imagenet.py")][0] + 1:]


@pytest.mark.parametrize("script", list(LAUNCHERS) + ["scripts/eval_checkpoints.sh"])
def test_help(script):
    done = bash(script, "--help")
    assert done.returncode == 0 and done.stdout.strip(), done.stderr


@pytest.mark.parametrize("script", LAUNCHERS)
def test_dry_run_prints_a_command_main_imagenet_accepts(script):
    done = bash(script, *LAUNCHERS[script], env={"DRY_RUN": "1", "NPROC_PER_NODE": "2"})
    assert done.returncode == 0, done.stderr
    args = main_imagenet.get_args_parser().parse_args(main_argv(done.stdout.strip().splitlines()[-1]))
    assert args.data == "DATA"


def test_paper_commands_are_verbatim():
    done = bash("scripts/train_mobilenet_v2_simam.sh", "DATA", env={"DRY_RUN": "1"})
    assert done.stdout.strip() == ("python main_imagenet.py DATA --gpu 0,1,2,3 --epochs 150 -j 20 -a mobilenet_v2 "
                                   "--attention_type simam --attention_param 0.1 --lr .05 --cos_lr --wd 4e-5")
    done = bash("scripts/eval_resnet18.sh", "DATA", "PATH.pth", env={"DRY_RUN": "1"})
    assert done.stdout.strip() == "python main_imagenet.py DATA --gpu 0,1,2,3 -j 20 -a resnet18 -e --resume PATH.pth"


def test_dist_train_passes_the_node_layout():
    done = bash("scripts/dist_train.sh", "DATA", env={"DRY_RUN": "1", "NNODES": "4", "NODE_RANK": "2",
                                                     "NPROC_PER_NODE": "8", "MASTER_ADDR": "node0",
                                                     "MASTER_PORT": "1234"})
    words = shlex.split(done.stdout)
    for flag, value in (("--nnodes", "4"), ("--node_rank", "2"), ("--nproc_per_node", "8"),
                        ("--master_addr", "node0"), ("--master_port", "1234")):
        assert words[words.index(flag) + 1] == value


def test_slurm_job_resumes_automatically():
    done = bash("scripts/slurm_train.sbatch", "DATA", "configs/resnet50_simam.yaml", env={"DRY_RUN": "1"})
    argv = main_argv(done.stdout)
    assert argv[argv.index("--resume") + 1] == "auto"
    text = open(os.path.join(ROOT, "scripts/slurm_train.sbatch")).read()
    assert "#SBATCH --requeue" in text and "scontrol requeue" in text and "kill -TERM" in text


@pytest.mark.slow
def test_resume_auto_starts_then_continues(tiny_data, tmp_path):
    argv = [str(tiny_data), "-a", "resnet18", "--attention_type", "simam", "-b", "6", "-j", "0", "--seed", "0",
            "--ckpt", str(tmp_path), "--resume", "auto", *TINY]
    first = main_imagenet.main(main_imagenet.get_args_parser().parse_args([*argv, "--epochs", "1"]))
    second = main_imagenet.main(main_imagenet.get_args_parser().parse_args([*argv, "--epochs", "2"]))
    assert (first["epoch"], second["epoch"]) == (0, 1)
    log = (tmp_path / "imagenet-resnet18-simam-param0.1-seed0" / "log.txt").read_text()
    assert "=> resumed from" in log and log.count("----------- Acc@1") == 2


@pytest.mark.slow
def test_eval_checkpoints_evaluates_every_file_and_checks_sha256(tiny_data, tmp_path):
    folder = tmp_path / "checkpoints"
    simam = networks.create_net("resnet18", "simam", num_classes=3)
    official = folder / "imagenet-resnet18-simam-param0.1" / "model_best_in_100_epochs.pth.tar"
    official.parent.mkdir(parents=True)
    torch.save({"epoch": 100, "arch": "resnet18", "best_acc": torch.tensor(1.0),
                "state_dict": {f"module.{k}": v for k, v in simam.state_dict().items()}}, official)
    torch.save(networks.create_net("resnet34", "se", 8, num_classes=3).state_dict(), folder / "se34.pth")
    torch.save(networks.create_net("resnet18", num_classes=3).state_dict(), folder / "tampered.pth")
    digest = hashlib.sha256((folder / "se34.pth").read_bytes()).hexdigest()
    (folder / "manifest.csv").write_text("file,arch,attention_type,attention_param,sha256\n"
                                         f"se34.pth,resnet34,se,8,{digest}\n"
                                         f"tampered.pth,resnet18,none,,{'0' * 64}\n")
    out = tmp_path / "evals"
    done = bash("scripts/eval_checkpoints.sh", tiny_data, folder, "-j", "0", *TINY, env={"OUT": str(out)})
    assert done.returncode == 1  # one file failed its check
    assert "tampered.pth: sha256" in done.stderr and "does not match" in done.stderr
    assert "evaluated 2 of 3" in done.stderr
    results = {p.name: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert set(results) == {"imagenet-resnet18-simam-param0.1__model_best_in_100_epochs.json", "se34.json"}
    official_result = results["imagenet-resnet18-simam-param0.1__model_best_in_100_epochs.json"]
    assert (official_result["arch"], official_result["attention_type"], official_result["n_images"]) == \
        ("resnet18", "simam", 9)
    assert (results["se34.json"]["arch"], results["se34.json"]["attention_type"],
            results["se34.json"]["attention_param"]) == \
        ("resnet34", "se", 8.0)
