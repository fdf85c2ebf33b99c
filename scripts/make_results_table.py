#!/usr/bin/env python
"""Make the ImageNet results table (markdown + CSV) from evaluation JSON files written by `main_imagenet.py -e`
and `scripts/eval_variants.py` (ImageNet-V2, ReaL, -Sketch, -A, -R and -C columns).

Rows follow the paper's ImageNet table: 6 backbones x (baseline, SE, CBAM, ECA, SRM, SimAM). Params and FLOPs
are regenerated here in the paper's convention (224x224, 1000 classes); Top-1/Top-5 come from the evaluations;
the paper's numbers are in PAPER.

Examples:
    python scripts/make_results_table.py results/evals -o results/imagenet.md
    python scripts/make_results_table.py results/evals results/variants -o results/imagenet.md
    python scripts/make_results_table.py run/eval_model_best.json --archs resnet18 --attentions none,simam
    python scripts/make_results_table.py -o results/imagenet.md          # no evaluations yet
    python scripts/make_results_table.py -o results/imagenet.md --benchmark results/benchmarks/table-cpu.csv

Several seeds of a row (run folders ``...-seed<s>``) give mean ± std with n, for the best checkpoints (model_best)
and the final ones (checkpoint.pth.tar), and Δ against the same backbone's baseline row, paired by seed.

``--benchmark`` joins the cost columns measured by ``scripts/benchmark.py --suite table`` (training and inference
images per second, saved activations per image, peak memory) beside Params and FLOPs.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import networks  # noqa: E402
from scripts._cli import make_cli  # noqa: E402
from training.errors import UserError  # noqa: E402
from training.metrics import EVAL_JSON_KEYS, OPTIONAL_EVAL_JSON_KEYS  # noqa: E402

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "mobilenet_v2"]
ATTENTIONS = ["none", "se", "cbam", "eca", "srm", "simam"]
ARCH_NAMES = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50", "resnet101": "ResNet-101",
              "resnext50_32x4d": "ResNeXt-50 (32x4d)", "mobilenet_v2": "MobileNetV2"}
ATTENTION_NAMES = {"none": "baseline", "se": "SE", "cbam": "CBAM", "eca": "ECA", "srm": "SRM", "simam": "SimAM"}
PARAM_SYMBOLS = {"se": "r", "cbam": "r", "eca": "k", "simam": "λ"}

# The paper's (Table 3) top-1 / top-5 on ImageNet val, 224x224 single crop, keyed by (arch, attention_type): every
# row, as printed in the camera-ready paper. SimAM-R34 is 74.46 (the release's README says 74.49, the SRM row's).
PAPER = {
    ("resnet18", "none"): (70.33, 89.58), ("resnet18", "se"): (71.19, 90.21), ("resnet18", "cbam"): (71.24, 90.04),
    ("resnet18", "eca"): (70.71, 89.85), ("resnet18", "srm"): (71.09, 89.98), ("resnet18", "simam"): (71.31, 89.88),
    ("resnet34", "none"): (73.75, 91.60), ("resnet34", "se"): (74.32, 91.99), ("resnet34", "cbam"): (74.41, 91.85),
    ("resnet34", "eca"): (74.03, 91.73), ("resnet34", "srm"): (74.49, 92.01), ("resnet34", "simam"): (74.46, 92.02),
    ("resnet50", "none"): (76.34, 93.12), ("resnet50", "se"): (77.51, 93.74), ("resnet50", "cbam"): (77.63, 93.88),
    ("resnet50", "eca"): (77.17, 93.52), ("resnet50", "srm"): (77.51, 93.06), ("resnet50", "simam"): (77.45, 93.66),
    ("resnet101", "none"): (77.82, 93.85), ("resnet101", "se"): (78.39, 94.13),
    ("resnet101", "cbam"): (78.57, 94.18), ("resnet101", "eca"): (78.46, 94.12),
    ("resnet101", "srm"): (78.58, 94.15), ("resnet101", "simam"): (78.65, 94.11),
    ("resnext50_32x4d", "none"): (77.47, 93.52), ("resnext50_32x4d", "se"): (77.96, 93.93),
    ("resnext50_32x4d", "cbam"): (78.06, 94.07), ("resnext50_32x4d", "eca"): (77.74, 93.87),
    ("resnext50_32x4d", "srm"): (78.04, 93.91), ("resnext50_32x4d", "simam"): (78.00, 93.93),
    ("mobilenet_v2", "none"): (71.90, 90.51), ("mobilenet_v2", "se"): (72.46, 90.85),
    ("mobilenet_v2", "cbam"): (72.49, 90.78), ("mobilenet_v2", "eca"): (72.01, 90.46),
    ("mobilenet_v2", "srm"): (72.32, 90.70), ("mobilenet_v2", "simam"): (72.36, 90.74),
}

# every key of an evaluation but bad_images, which evaluations written before --skip-bad-images lack
# Keys that evaluations written before them lack: bad_images, tta (then none) and weights (then the model's)
REQUIRED_KEYS = tuple(key for key in EVAL_JSON_KEYS if key not in OPTIONAL_EVAL_JSON_KEYS)
CSV_COLUMNS = ["arch", "attention_type", "attention_param", "params_m", "gflops", "top1", "top5", "paper_top1",
               "paper_top5", "delta_top1", "delta_top5", "checkpoint", "n_images"]
# The cost columns of a `scripts/benchmark.py --suite table` CSV joined by --benchmark: (column, markdown header)
BENCHMARK_COLUMNS = [("train_images_per_sec", "Train img/s"), ("infer_images_per_sec", "Infer img/s"),
                     ("saved_activation_mb_per_image", "Saved MB/img"), ("peak_memory_mb", "Peak MB")]
BENCHMARK_SETTINGS = ["device_name", "batch_size", "image_size", "amp", "channels_last", "compile", "simam_impl",
                      "peak_memory_kind", "torch"]
IMAGENET_VAL = {"n_images": 50000, "val_resize_size": 256, "val_crop_size": 224}
DASH = "–"
# The columns of `scripts/eval_variants.py`'s sets, where evaluated: (key, markdown header, the JSON's set, field)
VARIANT_COLUMNS = [("v2_top1", "V2", "v2", "top1"), ("real_top1", "ReaL", "real", "top1"),
                   ("sketch_top1", "Sketch", "sketch", "top1"), ("a_top1", "-A", "a", "top1"),
                   ("r_top1", "-R", "r", "top1"), ("c_mce", "-C mCE", "c", "mce")]
SEED_IN_PATH = re.compile(r"-seed(\d+)(?:[/\\]|$)")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="EVAL_JSON_OR_DIR",
                        help="evaluation JSON files (of main_imagenet.py -e or scripts/eval_variants.py), or folders "
                             "searched recursively for them (other JSON files are skipped)")
    parser.add_argument("-o", "--output", default="results/imagenet.md",
                        help="markdown file to write; the CSV goes beside it with the same stem "
                             "(default: results/imagenet.md)")
    parser.add_argument("--archs", default=None,
                        help=f"comma-separated subset of rows' backbones: {','.join(ARCHS)} (default: all)")
    parser.add_argument("--attentions", default=None,
                        help=f"comma-separated subset of attentions: {','.join(ATTENTIONS)} "
                             f"('baseline' = none; default: all)")
    parser.add_argument("--benchmark", default=None, metavar="TABLE_CSV",
                        help="a CSV of `scripts/benchmark.py --suite table` (e.g. results/benchmarks/table-cpu.csv): "
                             "its speed and memory columns are added beside Params and FLOPs")
    return parser


def _subset(value: str | None, choices: list[str], what: str, aliases: dict[str, str] | None = None) -> list[str]:
    """The table-ordered subset of ``choices`` named in a comma-separated option (all when not given)."""
    if value is None:
        return list(choices)
    names = [(aliases or {}).get(n.strip().lower(), n.strip().lower()) for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in choices]
    if unknown or not names:
        raise UserError(f"unknown {what} {', '.join(map(repr, unknown)) or repr(value)}; "
                        f"valid choices: {', '.join(choices)}")
    return [c for c in choices if c in names]


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class NotAnEvaluation(Exception):
    """A JSON file that is not an evaluation result (the message says why)."""


def read_evaluation(path: str) -> dict:
    """The evaluation in a JSON file; raises NotAnEvaluation when the file is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise NotAnEvaluation(f"not readable JSON ({type(error).__name__})") from None
    if not isinstance(data, dict):
        raise NotAnEvaluation("not a JSON object")
    if "sets" in data and "checkpoint" in data:
        return read_variants(data, path)
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise NotAnEvaluation(f"missing keys {', '.join(missing)}")
    if not (isinstance(data["arch"], str) and isinstance(data["attention_type"], str)):
        raise NotAnEvaluation("arch and attention_type are not strings")
    if not (_is_number(data["top1"]) and _is_number(data["top5"])):
        raise NotAnEvaluation("top1 and top5 are not numbers")
    if data["attention_param"] is not None and not _is_number(data["attention_param"]):
        raise NotAnEvaluation("attention_param is not a number")
    return {**data, "arch": data["arch"].lower(), "attention_type": data["attention_type"].lower(), "json": path}


def read_variants(data: dict, path: str) -> dict:
    """A `scripts/eval_variants.py` JSON as an evaluation: val's top-1/top-5 (None without --val) and the
    variants' numbers under ``variants``."""
    if not (isinstance(data.get("arch"), str) and isinstance(data.get("attention_type"), str)):
        raise NotAnEvaluation("arch and attention_type are not strings")
    val = data.get("val") or {}
    found = {}
    for key, _, name, field in VARIANT_COLUMNS:
        value = (data.get(name) or {}).get(field)
        if _is_number(value):
            found[key] = value
    return {"arch": data["arch"].lower(), "attention_type": data["attention_type"].lower(),
            "attention_param": data.get("attention_param"), "checkpoint": data["checkpoint"],
            "epoch": data.get("epoch"),
            "top1": val.get("top1"), "top5": val.get("top5"), "n_images": val.get("n_images"),
            "val_resize_size": data.get("val_resize_size"), "val_crop_size": data.get("val_crop_size"),
            "tta": "none", "seed": data.get("seed"), "variants": found, "from_variants": True, "json": path,
            "data_resized": (data.get("data_resized") or {}).get("val")}


def merge_by_checkpoint(evaluations: list[dict]) -> list[dict]:
    """One record per checkpoint: an `-e` evaluation and the `eval_variants.py` results of the same file together
    (the variants' val numbers where there is no `-e` evaluation; of two `-e` evaluations, the higher top-1)."""
    merged: dict[str, dict] = {}
    for e in evaluations:
        key = os.path.normpath(str(e["checkpoint"])) if e.get("checkpoint") else e["json"]
        record = merged.get(key)
        if record is None:
            merged[key] = dict(e, variants=dict(e.get("variants") or {}))
            continue
        record["variants"].update(e.get("variants") or {})
        if e.get("from_variants"):
            if record.get("top1") is None and e.get("top1") is not None:
                record.update({k: e[k] for k in ("top1", "top5", "n_images", "val_resize_size", "val_crop_size",
                                                 "data_resized")})
        elif record.get("from_variants") or _top1_key(e) > _top1_key(record):
            merged[key] = dict(e, variants=record["variants"])
    return list(merged.values())


def seed_of(evaluation: dict) -> int | None:
    """The run's seed: the run folder's ``-seed<s>`` (main_imagenet's naming), else the one recorded."""
    found = SEED_IN_PATH.search(str(evaluation.get("checkpoint") or ""))
    if found:
        return int(found.group(1))
    seed = evaluation.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def kind_of(evaluation: dict) -> str:
    """'final' for a run's last checkpoint (checkpoint.pth.tar), else 'best' (model_best, downloaded files)."""
    return "final" if os.path.basename(str(evaluation.get("checkpoint") or "")) == "checkpoint.pth.tar" else "best"


def runs_of(evaluations: list[dict], kind: str) -> dict:
    """The evaluations of ``kind``, one per seed (None: no seed known), the highest top-1 of a seed's."""
    runs: dict = {}
    for e in evaluations:
        if kind_of(e) != kind:
            continue
        seed = seed_of(e)
        if seed not in runs or _top1_key(e) > _top1_key(runs[seed]):
            runs[seed] = e
    return runs


def _top1_key(e: dict) -> float:
    return e["top1"] if e.get("top1") is not None else -math.inf


def mean_std(values: list[float]) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (None for fewer than 2) and count; (None, None, 0) for none."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values)


def paired_delta(ours: dict, baseline: dict) -> tuple[float | None, float | None, int]:
    """Top-1 of ``ours`` - the baseline's (runs by seed): the mean ± std of the per-seed differences over the seeds
    both have (count = pairs); without a common seed the difference of the means (count 0)."""
    common = sorted(seed for seed in ours if seed is not None and seed in baseline
                    and ours[seed].get("top1") is not None and baseline[seed].get("top1") is not None)
    if common:
        return mean_std([ours[s]["top1"] - baseline[s]["top1"] for s in common])
    mine, theirs = (mean_std([e.get("top1") for e in runs.values()])[0] for runs in (ours, baseline))
    return (mine - theirs if None not in (mine, theirs) else None), None, 0


def collect_evaluations(inputs: list[str]) -> list[dict]:
    """Read every evaluation named by ``inputs`` (files must be evaluations; folders are searched)."""
    evaluations, skipped = [], 0
    for given in inputs:
        if not os.path.exists(given):
            raise UserError(f"no such file or folder: {given}")
        if os.path.isdir(given):
            found = 0
            for root, dirs, files in os.walk(given):
                dirs.sort()
                for name in sorted(files):
                    if name.endswith(".json"):
                        try:
                            evaluations.append(read_evaluation(os.path.join(root, name)))
                            found += 1
                        except NotAnEvaluation:
                            skipped += 1
            if not found:
                print(f"warning: no evaluation JSON files under {given}", file=sys.stderr)
        else:
            try:
                evaluations.append(read_evaluation(given))
            except NotAnEvaluation as why:
                raise UserError(f"{given} is not an evaluation result of main_imagenet.py -e: {why}") from None
    if skipped:
        print(f"skipped {skipped} JSON file(s) that are not evaluation results", file=sys.stderr)
    return evaluations


def read_benchmark(path: str) -> dict[tuple[str, str], dict[str, str]]:
    """The rows of a ``benchmark.py --suite table`` CSV keyed by (arch, attention_type)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"cannot read the benchmark CSV {path}: {type(error).__name__}") from None
    needed = {"arch", "attention_type", *(column for column, _ in BENCHMARK_COLUMNS)}
    if not rows or not needed <= set(rows[0]):
        raise UserError(f"{path} is not a CSV of `scripts/benchmark.py --suite table` "
                        f"(needs the columns {', '.join(sorted(needed))})")
    return {(row["arch"].lower(), row["attention_type"].lower()): row for row in rows}


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def join_benchmark(rows: list[dict], benchmark: dict[tuple[str, str], dict[str, str]], path: str) -> list[str]:
    """Add the cost columns to every row (None where the CSV has no such row); returns notes on the settings."""
    for row in rows:
        measured = benchmark.get((row["arch"], row["attention_type"]), {})
        for column, _ in BENCHMARK_COLUMNS:
            row[column] = _float_or_none(measured.get(column))
    used = [benchmark[key] for key in benchmark if key in {(r["arch"], r["attention_type"]) for r in rows}]
    settings = {key: sorted({row.get(key, "") for row in used}) for key in BENCHMARK_SETTINGS}
    described = "; ".join(f"{key} {', '.join(values)}" for key, values in settings.items() if any(values))
    missing = sum(row["train_images_per_sec"] is None for row in rows)
    notes = [f"Cost columns from `{path}` (`scripts/benchmark.py --suite table`): {described}. Train and infer "
             "img/s are medians over alternating rounds (the attentions of one backbone timed in turn); Saved MB/img "
             "is the activations autograd keeps for backward per image; Peak MB is CUDA's max allocated on a GPU, "
             "the saved tensors of the batch (weights included) on a CPU."]
    if missing:
        notes.append(f"{missing} row(s) have no measurement in `{path}`.")
    return notes


def row_param(attention_type: str, evaluated: float | None) -> float | None:
    """The attention parameter of a row: the evaluation's where it has one, else the module's default."""
    return networks.ATTENTIONS.get(attention_type).param_or_default(evaluated)


def attention_label(attention_type: str, param: float | None) -> str:
    """'SimAM', or 'SE (r=8)' where the parameter is not the module's default."""
    label = ATTENTION_NAMES[attention_type]
    if param is not None and param != networks.ATTENTIONS.get(attention_type).param_or_default(None):
        label += f" ({PARAM_SYMBOLS[attention_type]}={param:g})"
    return label


def row_name(arch: str, attention_type: str) -> str:
    """'SimAM-ResNet-18', 'ResNet-18' for the baseline."""
    return ARCH_NAMES[arch] if attention_type == "none" else f"{ATTENTION_NAMES[attention_type]}-{ARCH_NAMES[arch]}"


def _signed(x: float | None) -> str:
    return DASH if x is None else f"{x:+.2f}"


def _fixed(x: float | None) -> str:
    return DASH if x is None else f"{x:.2f}"


def _cell(text) -> str:
    return str(text).replace("|", "\\|")


def _csv_value(x) -> str:
    if x is None:
        return ""
    if isinstance(x, list):
        return " ".join(map(str, x))
    if isinstance(x, float):
        return repr(round(x, 6))
    return str(x)


def build_rows(archs: list[str], attentions: list[str], evaluations: list[dict]) -> tuple[list[dict], list[str]]:
    """One row per (arch, attention) with complexity, the evaluations and the paper's numbers; plus notes.

    A row's evaluations are merged per checkpoint (``-e`` and ``eval_variants.py`` of one file), split into best
    checkpoints (model_best, downloaded files) and final ones (checkpoint.pth.tar), and per seed (the run folder's
    ``-seed<s>``): of one seed's, the highest top-1 is kept. Top-1/Top-5 and the variants' columns are the best
    checkpoints' (the final ones' where a row has no best), as mean ± std over the seeds when there are several;
    Δ vs baseline compares with the same backbone's row without attention, paired by seed where both have it."""
    by_row: dict[tuple[str, str], list[dict]] = {}
    outside = []
    for e in merge_by_checkpoint(evaluations):
        key = (e["arch"], e["attention_type"])
        if e["arch"] in archs and e["attention_type"] in attentions:
            by_row.setdefault(key, []).append(e)
        else:
            outside.append(e)
    headline_runs = {}
    for key, candidates in by_row.items():
        kind = "best" if runs_of(candidates, "best") else "final"
        headline_runs[key] = runs_of(candidates, kind)
    notes, cache, rows = [], {}, []
    for arch in archs:
        for attention in attentions:
            candidates = by_row.get((arch, attention), [])
            runs = headline_runs.get((arch, attention), {})
            best = max(runs.values(), key=_top1_key) if runs else None
            param = row_param(attention, best["attention_param"] if best else None)
            if (arch, attention, param) not in cache:
                try:
                    cache[arch, attention, param] = networks.complexity(arch, attention, param, image_size=224,
                                                                        num_classes=1000)
                except ValueError as error:  # an evaluation's parameter that the module refuses
                    raise UserError(f"{best['json'] if best else arch}: {error}") from None
            cost = cache[arch, attention, param]
            paper_top1, paper_top5 = PAPER.get((arch, attention), (None, None))
            top1, top1_std, n = mean_std([e.get("top1") for e in runs.values()])
            top5, top5_std, _ = mean_std([e.get("top5") for e in runs.values()])
            tta = (best.get("tta") or "none") if best else "none"
            resized = (best.get("data_resized") or best.get("trained_on_resized")) if best else None
            comparable = tta == "none" and not resized  # the paper's single-crop protocol, on the original images
            final_runs = runs_of(candidates, "final")
            final_top1, final_top1_std, final_n = mean_std([e.get("top1") for e in final_runs.values()])
            row = {
                "arch": arch, "attention_type": attention, "attention_param": param,
                "model": ARCH_NAMES[arch], "attention": attention_label(attention, param),
                "params_m": cost.params_m, "gflops": cost.gflops, "top1": top1, "top5": top5,
                "paper_top1": paper_top1, "paper_top5": paper_top5,
                "delta_top1": top1 - paper_top1 if comparable and None not in (top1, paper_top1) else None,
                "delta_top5": top5 - paper_top5 if comparable and None not in (top5, paper_top5) else None,
                "tta": tta,
                "checkpoint": best["checkpoint"] if best else None, "n_images": best["n_images"] if best else None,
                "json": best["json"] if best else None,
                "n": n, "top1_std": top1_std, "top5_std": top5_std,
                "seeds": sorted(seed for seed in runs if seed is not None),
                "final_top1": final_top1, "final_top1_std": final_top1_std, "final_n": final_n,
            }
            for key, *_ in VARIANT_COLUMNS:
                row[key], row[f"{key}_std"], row[f"{key}_n"] = mean_std([e["variants"].get(key) for e in runs.values()])
            baseline = headline_runs.get((arch, "none"), {})
            row["delta_top1_vs_baseline"], row["delta_top1_vs_baseline_std"], row["baseline_pairs"] = (
                paired_delta(runs, baseline) if attention != "none" and runs and baseline else (None, None, 0))
            rows.append(row)
            name = row_name(arch, attention)
            for kind in ("best", "final"):
                for seed, kept in runs_of(candidates, kind).items():
                    same = [e for e in candidates if kind_of(e) == kind and seed_of(e) == seed]
                    if len(same) > 1:
                        others = ", ".join(f"`{e['json']}` ({_fixed(e.get('top1'))})" for e in same if e is not kept)
                        of_seed = "" if seed is None else f" of seed {seed}"
                        notes.append(f"{name}: {len(same)} evaluations{of_seed}; kept the one with the highest "
                                     f"top-1, `{kept['json']}` ({_fixed(kept.get('top1'))}); others: {others}.")
            if n > 1 or final_n > 1:
                notes.append(f"{name}: mean ± std over seeds {', '.join(map(str, row['seeds']))} (best checkpoints"
                             + (f"; final checkpoints: n = {final_n}" if final_n else "") + ").")
            if row["delta_top1_vs_baseline"] is not None and not row["baseline_pairs"]:
                notes.append(f"{name}: no seed in common with the baseline's runs: Δ vs baseline is the difference "
                             "of the means (unpaired).")
            if best:
                differs = [f"{k} {best.get(k)} (ImageNet val: {v})" for k, v in IMAGENET_VAL.items()
                           if best.get(k) != v]
                if not comparable:
                    notes.append(f"{name}: `{best['json']}` was evaluated with {tta} test-time augmentation (--tta "
                                 f"{tta}), not the paper's single-crop protocol: not comparable with the paper's "
                                 "numbers, so no Δ.")
                if resized:
                    notes.append(f"{name}: `{best['json']}` comes from images resized to a longer side of at most "
                                 f"{resized.get('max_side')} px (scripts/make_shards.py --max-side), not the paper's "
                                 "data: not comparable with the paper's numbers, so no Δ.")
                if differs and best.get("top1") is not None:
                    notes.append(f"{name}: `{best['json']}` was not evaluated on the ImageNet validation protocol "
                                 f"({'; '.join(differs)}), so it is not comparable with the paper's numbers.")
                if attention == "simam" and param != networks.ATTENTIONS.get("simam").param_or_default(None):
                    notes.append(f"{name}: evaluated with lambda = {param:g}; "
                                 f"every ImageNet run of the paper uses 0.1.")
    if outside:
        listed = ", ".join(f"`{e['json']}` ({e['arch']} + {e['attention_type']})" for e in outside)
        notes.append(f"{len(outside)} evaluation(s) not shown (arch or attention outside the table's rows): {listed}.")
    return rows, notes


def extra_columns(rows: list[dict]) -> dict[str, bool]:
    """Which optional columns the table has: seeds (n, std), final checkpoints, each variant, Δ vs baseline."""
    present = {"seeds": any(r["n"] > 1 or r["final_n"] > 1 for r in rows),
               "final": any(r["final_n"] for r in rows) and any(r["n"] for r in rows),
               "baseline": any(r["delta_top1_vs_baseline"] is not None for r in rows)}
    for key, *_ in VARIANT_COLUMNS:
        present[key] = any(r[key] is not None for r in rows)
    return present


def _spread(mean: float | None, std: float | None, n: int, signed: bool = False) -> str:
    """'71.31', or '71.20 ± 0.10 (n=3)' over several seeds."""
    if mean is None:
        return DASH
    text = _signed(mean) if signed else _fixed(mean)
    if n > 1:
        text += f" ± {std:.2f} (n={n})"
    return text


def _cost(x: float | None) -> str:
    return DASH if x is None else f"{x:.3g}" if abs(x) < 10 else f"{x:.0f}"


def markdown(rows: list[dict], notes: list[str], command: str, with_cost: bool = False) -> str:
    """The table as a markdown document (``with_cost``: the benchmark's columns after FLOPs)."""
    evaluated = [r for r in rows if r["top1"] is not None]
    lines = [
        "# ImageNet results (generated)", "",
        f"Generated by `{command}`. Rows follow the layout of the paper's ImageNet table (Table 3).",
        "Params and FLOPs are regenerated by the script with `networks.complexity` in the paper's convention "
        "(one 224x224 image, 1000 classes, FLOPs = conv + linear multiply-adds plus 2 per BN output element, "
        "activations and pooling free), not copied from the evaluations; the attention parameter is the module's "
        "default unless an evaluation used another. Top-1/Top-5 are our evaluations (`main_imagenet.py -e`); "
        "Paper Top-1/Top-5 are the published numbers; Δ = ours - paper.",
        "",
    ]
    extra = extra_columns(rows)
    if extra["seeds"]:
        lines += ["Several seeds of a row: mean ± sample std (n = seeds) of the best checkpoints (model_best; "
                  "Final Top-1: the runs' last checkpoint.pth.tar).", ""]
    if any(extra[key] for key, *_ in VARIANT_COLUMNS):
        lines += ["V2, ReaL, Sketch, -A, -R: top-1 (%) on ImageNet-V2 (matched frequency), ReaL labels, "
                  "ImageNet-Sketch, ImageNet-A and -R (logits restricted to their 200 classes); -C mCE: mean "
                  "corruption error relative to AlexNet over the 15 corruptions (lower is better); all by "
                  "`scripts/eval_variants.py` (docs/variants.md).", ""]
    if extra["baseline"]:
        lines += ["Δ Top-1 vs baseline: top-1 minus the same backbone's row without attention (same recipe), "
                  "mean ± std of the per-seed differences over the seeds both rows have.", ""]
    if evaluated:
        lines.append("Evaluated rows and their JSON files:")
        lines.append("")
        for r in evaluated:
            lines.append(f"- {row_name(r['arch'], r['attention_type'])}: `{r['json']}`")
    else:
        lines.append("No evaluations were given: every Top-1 cell reads \"not evaluated\"; the table holds only "
                     "the regenerated Params/FLOPs and the paper's numbers.")
    cost_headers = [header for _, header in BENCHMARK_COLUMNS] if with_cost else []
    extra = extra_columns(rows)
    extra_headers = (["Final Top-1"] if extra["final"] else []) + [
        header for key, header, *_ in VARIANT_COLUMNS if extra[key]] + (["Δ Top-1 vs baseline"] if extra["baseline"]
                                                                        else [])
    lines += ["", "| " + " | ".join(["Model", "Attention", "Params", "FLOPs", *cost_headers, "Top-1", "Top-5",
                                      "Paper Top-1", "Paper Top-5", "Δ Top-1", "Δ Top-5", "Checkpoint",
                                      *extra_headers]) + " |",
              "|---|---|---:|---:|" + "---:|" * len(cost_headers) + "---:|---:|---:|---:|---:|---:|---|"
              + "---:|" * len(extra_headers)]
    for r in rows:
        top1 = "not evaluated" if r["top1"] is None else _spread(r["top1"], r["top1_std"], r["n"])
        if r["top1"] is not None and r["tta"] != "none":
            top1 += f" ({r['tta']} TTA)"
        checkpoint = DASH if not r["checkpoint"] else f"`{r['checkpoint']}`"
        cost = [_cost(r[column]) for column, _ in BENCHMARK_COLUMNS] if with_cost else []
        more = ([_spread(r["final_top1"], r["final_top1_std"], r["final_n"])] if extra["final"] else []) + [
            _spread(r[key], r[f"{key}_std"], r[f"{key}_n"]) for key, *_ in VARIANT_COLUMNS if extra[key]]
        if extra["baseline"]:
            delta = _spread(r["delta_top1_vs_baseline"], r["delta_top1_vs_baseline_std"], r["baseline_pairs"], True)
            more.append(delta + (" (unpaired)" if r["delta_top1_vs_baseline"] is not None and not r["baseline_pairs"]
                                 else f" ({r['baseline_pairs']} pair)" if r["baseline_pairs"] == 1 else ""))
        cells = [r["model"], r["attention"], f"{r['params_m']:.2f} M", f"{r['gflops']:.2f} G", *cost, top1,
                 _spread(r["top5"], r["top5_std"], r["n"]), _fixed(r["paper_top1"]), _fixed(r["paper_top5"]),
                 _signed(r["delta_top1"]), _signed(r["delta_top5"]), checkpoint, *more]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "Notes:", "",
              "- Paper Top-1/Top-5 are Table 3 of the paper, every row, as printed (SimAM-ResNet-34: 74.46; the "
              "release's README says 74.49, the SRM row's number).",
              "- Default attention parameters (rows without another evaluated value): SE and CBAM r = 16, ECA the "
              "adaptive kernel size, SimAM lambda = 0.1 (the paper's ImageNet setting); baseline and SRM take none."]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def csv_columns(with_cost: bool = False, extra: dict[str, bool] | None = None) -> list[str]:
    """The CSV's columns; ``with_cost``: the benchmark's after gflops; ``extra`` (``extra_columns``): seeds, final
    checkpoints, variants and Δ vs baseline at the end, where the table has them."""
    columns = list(CSV_COLUMNS)
    if with_cost:
        at = CSV_COLUMNS.index("gflops") + 1
        columns = CSV_COLUMNS[:at] + [column for column, _ in BENCHMARK_COLUMNS] + CSV_COLUMNS[at:]
    extra = extra or {}
    if extra.get("seeds"):
        columns += ["n", "top1_std", "top5_std", "seeds"]
    if extra.get("final"):
        columns += ["final_top1", "final_top1_std", "final_n"]
    for key, *_ in VARIANT_COLUMNS:
        if extra.get(key):
            columns += [key, f"{key}_std"] if extra.get("seeds") else [key]
    if extra.get("baseline"):
        columns += ["delta_top1_vs_baseline", "delta_top1_vs_baseline_std", "baseline_pairs"]
    return columns


def write_csv(rows: list[dict], path: Path, with_cost: bool = False) -> None:
    columns = csv_columns(with_cost, extra_columns(rows))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_csv_value(r[c]) for c in columns])


def command_line(args: argparse.Namespace) -> str:
    """The command that regenerates this table."""
    argv = ["python", "scripts/make_results_table.py", *args.inputs, "-o", str(args.output)]
    if args.archs is not None:
        argv += ["--archs", args.archs]
    if args.attentions is not None:
        argv += ["--attentions", args.attentions]
    if getattr(args, "benchmark", None) is not None:
        argv += ["--benchmark", args.benchmark]
    return shlex.join(argv)


def main(args: argparse.Namespace) -> dict:
    """Write the markdown table and its CSV; returns the rows, notes and the two paths. Bad input raises
    ``UserError`` before anything is written."""
    output = Path(args.output)
    if output.suffix.lower() == ".csv":
        raise UserError(f"-o names the markdown file (the CSV is written beside it): {output}")
    archs = _subset(args.archs, ARCHS, "arch")
    attentions = _subset(args.attentions, ATTENTIONS, "attention", {"baseline": "none"})
    evaluations = collect_evaluations(args.inputs)  # bad input fails here, before any measurement
    benchmark_path = getattr(args, "benchmark", None)
    benchmark = read_benchmark(benchmark_path) if benchmark_path is not None else None
    rows, notes = build_rows(archs, attentions, evaluations)
    if benchmark is not None:
        notes = join_benchmark(rows, benchmark, benchmark_path) + notes
    csv_path = output.with_suffix(".csv")
    if output.parent != Path(""):
        output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown(rows, notes, command_line(args), benchmark is not None), encoding="utf-8")
    write_csv(rows, csv_path, benchmark is not None)
    print(f"=> wrote {output}")
    print(f"=> wrote {csv_path}")
    return {"rows": rows, "notes": notes, "markdown": output, "csv": csv_path}


cli = make_cli(main, get_args_parser)  # bad input: one line `error: ...`, exit status 2


if __name__ == "__main__":
    sys.exit(cli())
