#!/usr/bin/env python
"""Make the ImageNet results table (markdown + CSV) from evaluation JSON files written by `main_imagenet.py -e`.

Rows follow the paper's ImageNet table: 6 backbones x (baseline, SE, CBAM, ECA, SRM, SimAM). Params and FLOPs
are regenerated here in the paper's convention (224x224, 1000 classes); Top-1/Top-5 come from the evaluations;
the paper's numbers are in PAPER.

Examples:
    python scripts/make_results_table.py results/evals -o results/imagenet.md
    python scripts/make_results_table.py run/eval_model_best.json --archs resnet18 --attentions none,simam
    python scripts/make_results_table.py -o results/imagenet.md          # no evaluations yet
    python scripts/make_results_table.py -o results/imagenet.md --benchmark results/benchmarks/table-cpu.csv

``--benchmark`` joins the cost columns measured by ``scripts/benchmark.py --suite table`` (training and inference
images per second, saved activations per image, peak memory) beside Params and FLOPs.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import networks  # noqa: E402
from scripts._cli import make_cli  # noqa: E402
from training.errors import UserError  # noqa: E402
from training.metrics import EVAL_JSON_KEYS  # noqa: E402

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "mobilenet_v2"]
ATTENTIONS = ["none", "se", "cbam", "eca", "srm", "simam"]
ARCH_NAMES = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50", "resnet101": "ResNet-101",
              "resnext50_32x4d": "ResNeXt-50 (32x4d)", "mobilenet_v2": "MobileNetV2"}
ATTENTION_NAMES = {"none": "baseline", "se": "SE", "cbam": "CBAM", "eca": "ECA", "srm": "SRM", "simam": "SimAM"}
PARAM_SYMBOLS = {"se": "r", "cbam": "r", "eca": "k", "simam": "λ"}

# The paper's (Table 3) top-1 / top-5 on ImageNet val, 224x224 single crop, keyed by (arch, attention_type).
# Only the SimAM rows are verified (they also match the release's evaluation logs); add the other rows from
# Table 3 of the paper here.
PAPER = {
    ("resnet18", "simam"): (71.31, 89.88),
    ("resnet34", "simam"): (74.49, 92.02),
    ("resnet50", "simam"): (77.45, 93.66),
    ("resnet101", "simam"): (78.65, 94.11),
    ("resnext50_32x4d", "simam"): (78.00, 93.93),
    ("mobilenet_v2", "simam"): (72.36, 90.74),
}

# every key of an evaluation but bad_images, which evaluations written before --skip-bad-images lack
# Keys that evaluations written before them lack: bad_images, tta (then none) and weights (then the model's)
REQUIRED_KEYS = tuple(key for key in EVAL_JSON_KEYS if key not in ("bad_images", "tta", "weights"))
CSV_COLUMNS = ["arch", "attention_type", "attention_param", "params_m", "gflops", "top1", "top5", "paper_top1",
               "paper_top5", "delta_top1", "delta_top5", "checkpoint", "n_images"]
# The cost columns of a `scripts/benchmark.py --suite table` CSV joined by --benchmark: (column, markdown header)
BENCHMARK_COLUMNS = [("train_images_per_sec", "Train img/s"), ("infer_images_per_sec", "Infer img/s"),
                     ("saved_activation_mb_per_image", "Saved MB/img"), ("peak_memory_mb", "Peak MB")]
BENCHMARK_SETTINGS = ["device_name", "batch_size", "image_size", "amp", "channels_last", "compile", "simam_impl",
                      "peak_memory_kind", "torch"]
IMAGENET_VAL = {"n_images": 50000, "val_resize_size": 256, "val_crop_size": 224}
DASH = "–"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="EVAL_JSON_OR_DIR",
                        help="evaluation JSON files, or folders searched recursively for them "
                             "(other JSON files are skipped)")
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
    if isinstance(x, float):
        return repr(round(x, 6))
    return str(x)


def build_rows(archs: list[str], attentions: list[str], evaluations: list[dict]) -> tuple[list[dict], list[str]]:
    """One row per (arch, attention) with complexity, the best evaluation and the paper's numbers; plus notes."""
    by_row: dict[tuple[str, str], list[dict]] = {}
    outside = []
    for e in evaluations:
        key = (e["arch"], e["attention_type"])
        if e["arch"] in archs and e["attention_type"] in attentions:
            by_row.setdefault(key, []).append(e)
        else:
            outside.append(e)
    notes, cache, rows = [], {}, []
    for arch in archs:
        for attention in attentions:
            candidates = by_row.get((arch, attention), [])
            best = max(candidates, key=lambda e: e["top1"]) if candidates else None
            param = row_param(attention, best["attention_param"] if best else None)
            if (arch, attention, param) not in cache:
                try:
                    cache[arch, attention, param] = networks.complexity(arch, attention, param, image_size=224,
                                                                        num_classes=1000)
                except ValueError as error:  # an evaluation's parameter that the module refuses
                    raise UserError(f"{best['json'] if best else arch}: {error}") from None
            cost = cache[arch, attention, param]
            paper_top1, paper_top5 = PAPER.get((arch, attention), (None, None))
            top1, top5 = (best["top1"], best["top5"]) if best else (None, None)
            tta = (best.get("tta") or "none") if best else "none"
            comparable = tta == "none"  # the paper's single-crop protocol
            rows.append({
                "arch": arch, "attention_type": attention, "attention_param": param,
                "model": ARCH_NAMES[arch], "attention": attention_label(attention, param),
                "params_m": cost.params_m, "gflops": cost.gflops, "top1": top1, "top5": top5,
                "paper_top1": paper_top1, "paper_top5": paper_top5,
                "delta_top1": top1 - paper_top1 if comparable and None not in (top1, paper_top1) else None,
                "delta_top5": top5 - paper_top5 if comparable and None not in (top5, paper_top5) else None,
                "tta": tta,
                "checkpoint": best["checkpoint"] if best else None, "n_images": best["n_images"] if best else None,
                "json": best["json"] if best else None,
            })
            name = row_name(arch, attention)
            if len(candidates) > 1:
                others = ", ".join(f"`{e['json']}` ({e['top1']:.2f})" for e in candidates if e is not best)
                notes.append(f"{name}: {len(candidates)} evaluations; kept the one with the highest top-1, "
                             f"`{best['json']}` ({best['top1']:.2f}); others: {others}.")
            if best:
                differs = [f"{k} {best.get(k)} (ImageNet val: {v})" for k, v in IMAGENET_VAL.items()
                           if best.get(k) != v]
                if not comparable:
                    notes.append(f"{name}: `{best['json']}` was evaluated with {tta} test-time augmentation (--tta "
                                 f"{tta}), not the paper's single-crop protocol: not comparable with the paper's "
                                 "numbers, so no Δ.")
                if differs:
                    notes.append(f"{name}: `{best['json']}` was not evaluated on the ImageNet validation protocol "
                                 f"({'; '.join(differs)}), so it is not comparable with the paper's numbers.")
                if attention == "simam" and param != networks.ATTENTIONS.get("simam").param_or_default(None):
                    notes.append(f"{name}: evaluated with lambda = {param:g}; "
                                 f"every ImageNet run of the paper uses 0.1.")
    if outside:
        listed = ", ".join(f"`{e['json']}` ({e['arch']} + {e['attention_type']})" for e in outside)
        notes.append(f"{len(outside)} evaluation(s) not shown (arch or attention outside the table's rows): {listed}.")
    return rows, notes


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
    if evaluated:
        lines.append("Evaluated rows and their JSON files:")
        lines.append("")
        for r in evaluated:
            lines.append(f"- {row_name(r['arch'], r['attention_type'])}: `{r['json']}`")
    else:
        lines.append("No evaluations were given: every Top-1 cell reads \"not evaluated\"; the table holds only "
                     "the regenerated Params/FLOPs and the paper's numbers.")
    cost_headers = [header for _, header in BENCHMARK_COLUMNS] if with_cost else []
    lines += ["", "| " + " | ".join(["Model", "Attention", "Params", "FLOPs", *cost_headers, "Top-1", "Top-5",
                                      "Paper Top-1", "Paper Top-5", "Δ Top-1", "Δ Top-5", "Checkpoint"]) + " |",
              "|---|---|---:|---:|" + "---:|" * len(cost_headers) + "---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        top1 = "not evaluated" if r["top1"] is None else f"{r['top1']:.2f}"
        if r["top1"] is not None and r["tta"] != "none":
            top1 += f" ({r['tta']} TTA)"
        checkpoint = DASH if not r["checkpoint"] else f"`{r['checkpoint']}`"
        cost = [_cost(r[column]) for column, _ in BENCHMARK_COLUMNS] if with_cost else []
        cells = [r["model"], r["attention"], f"{r['params_m']:.2f} M", f"{r['gflops']:.2f} G", *cost, top1,
                 _fixed(r["top5"]), _fixed(r["paper_top1"]), _fixed(r["paper_top5"]), _signed(r["delta_top1"]),
                 _signed(r["delta_top5"]), checkpoint]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += ["", "Notes:", "",
              "- Paper numbers are filled in for the SimAM rows only (the verified ones). The other rows' published "
              "top-1/top-5 are in Table 3 of the paper and can be added to `PAPER` in `scripts/make_results_table.py`.",
              "- Default attention parameters (rows without another evaluated value): SE and CBAM r = 16, ECA the "
              "adaptive kernel size, SimAM lambda = 0.1 (the paper's ImageNet setting); baseline and SRM take none."]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def csv_columns(with_cost: bool = False) -> list[str]:
    """The CSV's columns; ``with_cost``: the benchmark's after gflops."""
    if not with_cost:
        return list(CSV_COLUMNS)
    at = CSV_COLUMNS.index("gflops") + 1
    return CSV_COLUMNS[:at] + [column for column, _ in BENCHMARK_COLUMNS] + CSV_COLUMNS[at:]


def write_csv(rows: list[dict], path: Path, with_cost: bool = False) -> None:
    columns = csv_columns(with_cost)
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
