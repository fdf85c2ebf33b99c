"""Accuracy counting, device-side running sums and the run's logs (log.txt, metrics.jsonl, TensorBoard)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch

# Output formats, defined once for their writers and their readers (scripts/plot_curves.py and
# scripts/make_results_table.py).

# metrics.jsonl key -> the TensorBoard scalar tag ``RunLog.epoch`` writes it under (step = epoch)
TENSORBOARD_TAGS = {
    "train_loss": "train/loss", "train_top1": "train/top1", "train_top5": "train/top5", "lr": "train/lr",
    "images_per_s": "train/img_per_s", "val_loss": "val/loss", "val_top1": "val/top1", "val_top5": "val/top5",
}
# ... and with --model-ema, the average's
EMA_TENSORBOARD_TAGS = {"val_loss_ema": "val_ema/loss", "val_top1_ema": "val_ema/top1", "val_top5_ema": "val_ema/top5"}

# The keys of the evaluation JSON that ``main_imagenet.py -e`` writes (``report_evaluation``)
EVAL_JSON_KEYS = ("arch", "attention_type", "attention_param", "checkpoint", "epoch", "top1", "top5", "loss",
                  "n_images", "bad_images", "params_m", "gflops", "val_resize_size", "val_crop_size", "data",
                  "tta", "weights", "data_resized", "trained_on_resized")
OPTIONAL_EVAL_JSON_KEYS = ("bad_images", "tta", "weights", "data_resized", "trained_on_resized")  # added later:
# evaluations written before them lack them


def correct_counts(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Number of samples whose target is in the top-k predictions, for each k (capped at the class count)."""
    maxk = min(max(topk), output.size(1))
    predictions = output.topk(maxk, dim=1).indices
    hits = predictions.eq(target.unsqueeze(1))
    return [hits[:, :min(k, maxk)].any(dim=1).sum() for k in topk]


class RunningSums:
    """Loss and top-1/top-5 sums kept on the device (the sample count on the host); read (one host sync)
    only when reported. ``state()`` / ``initial`` is ``[loss, top1, top5, count]``."""

    def __init__(self, device: torch.device, initial: list[float] | None = None) -> None:
        *sums, count = initial or [0.0, 0.0, 0.0, 0]
        self.count = int(count)
        self.sums = torch.tensor(sums, dtype=torch.float64, device=device)

    def update(self, loss_sum: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> None:
        top1, top5 = correct_counts(output.detach(), target)
        self.sums += torch.stack([loss_sum.detach().double(), top1.double(), top5.double()])
        self.count += target.size(0)

    def state(self) -> list[float]:
        return [*self.sums.tolist(), self.count]

    def packed(self) -> torch.Tensor:
        """``[loss, top1, top5, count]`` as one float64 device tensor, to be summed over processes."""
        return torch.cat([self.sums, self.sums.new_tensor([self.count])])

    def averages(self) -> dict[str, float]:
        """This process's ``loss``, ``top1``, ``top5`` (percent) and ``count`` (``training.engine.synchronize``
        gives them over all processes)."""
        return averages_of(self.packed().tolist())


def averages_of(packed: list[float]) -> dict[str, float]:
    """``loss``, ``top1``, ``top5`` (percent) and ``count`` of ``RunningSums.packed()`` values."""
    loss, top1, top5, count = packed
    denominator = max(count, 1.0)
    return {"loss": loss / denominator, "top1": 100.0 * top1 / denominator,
            "top5": 100.0 * top5 / denominator, "count": int(count)}


def progress_line(prefix: str, step: int, total: int, values: dict[str, float], extra: str = "") -> str:
    """A line in the release's style: ``Epoch: [3][ 120/5005]\tLoss 2.1034\tAcc@1 51.20\tAcc@5 76.30``."""
    width = len(str(total))
    line = (f"{prefix}[{step:{width}d}/{total}]\tLoss {values['loss']:.4f}\t"
            f"Acc@1 {values['top1']:6.2f}\tAcc@5 {values['top5']:6.2f}")
    return line + (f"\t{extra}" if extra else "")


class RunLog:
    """Rank 0's logs in the run folder; on other ranks every method does nothing."""

    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool = True) -> None:
        self.enabled, self.run_dir = enabled, run_dir
        self.log_path = os.path.join(run_dir, "log.txt")
        self.metrics_path = os.path.join(run_dir, "metrics.jsonl")
        self._tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=run_dir)

    def print(self, message: str, to_file: bool = False) -> None:
        if self.enabled:
            print(message, flush=True)
            if to_file:
                self.write(message)

    def write(self, message: str) -> None:
        if self.enabled:
            with open(self.log_path, "a") as f:
                f.write(message + "\n")

    def header(self, lines: list[str]) -> None:
        """Write the release's header lines once, when log.txt is new."""
        if self.enabled and not os.path.exists(self.log_path):
            self.write("\n".join(lines + ["-" * 50]))

    def epoch(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl and the epoch's scalars to TensorBoard."""
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = record["epoch"]
            for key, tag in {**TENSORBOARD_TAGS, **EMA_TENSORBOARD_TAGS}.items():
                if record.get(key) is not None:
                    self._tb.add_scalar(tag, record[key], step)
            self._tb.flush()

    def forget_epochs_from(self, epoch: int) -> None:
        """On resume: drop metrics.jsonl lines of epochs that will be trained again."""
        if not (self.enabled and os.path.exists(self.metrics_path)):
            return
        with open(self.metrics_path) as f:
            kept = [line for line in f if line.strip() and json.loads(line).get("epoch", 0) < epoch]
        with open(self.metrics_path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(self.metrics_path + ".tmp", self.metrics_path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def show_progress(enabled: bool, no_progress: bool) -> bool:
    """tqdm bars only on rank 0, on a terminal, unless ``--no-progress``."""
    return enabled and not no_progress and sys.stderr.isatty()
