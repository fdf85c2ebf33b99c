"""Small helpers shared by the tests."""

import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


def randomize_bn_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Give every BN random affine parameters and running statistics, so that eval-mode BN is not
    the identity and a misplaced or skipped layer changes the output."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


# Small images so that training tests take seconds on a CPU.
TINY = ["--train-crop-size", "32", "--val-resize-size", "36", "--val-crop-size", "32", "--no-progress"]


def train_argv(data, ckpt, *extra, arch="resnet18", attention="simam", epochs=1, batch=16, workers=0, seed=0):
    """Command-line arguments of a tiny training run."""
    return [str(data), "-a", arch, "--attention_type", attention, "--epochs", str(epochs), "-b", str(batch),
            "-j", str(workers), "--seed", str(seed), "--ckpt", str(ckpt), *TINY, *map(str, extra)]


def direct_accuracy(model, val_dir, resize=36, crop=32):
    """Top-1 / top-5 (percent) and image count of ``model`` on an ImageFolder, computed without the project's
    data or evaluation code: torchvision's transforms and a plain loop."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    dataset = datasets.ImageFolder(str(val_dir), tf)
    model.eval()
    top1 = top5 = 0
    with torch.no_grad():
        for image, label in dataset:
            logits = model(image[None])[0]
            ranked = logits.argsort(descending=True).tolist()
            top1 += ranked[0] == label
            top5 += label in ranked[:5]
    return 100.0 * top1 / len(dataset), 100.0 * top5 / len(dataset), len(dataset)


def release_sgd_state(model: torch.nn.Module, steps: int = 2) -> dict:
    """The state the release's plain SGD (not fused) leaves after a few steps: real momentum buffers."""
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 32, 32)).logsumexp(1).mean().backward()
        optimizer.step()
    return optimizer.state_dict()


def spawn_on_two_cpus(args) -> None:
    """``main_imagenet.spawn``, the --gpu 0,1 path (one process per device), with two CPU devices."""
    import main_imagenet
    from training.distributed import free_port

    main_imagenet.spawn([torch.device("cpu"), torch.device("cpu")], main_imagenet.check_args(args),
                        f"tcp://127.0.0.1:{free_port()}")
