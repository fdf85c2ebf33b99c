#!/usr/bin/env python
"""Parameters and FLOPs of a network, in the paper's counting convention (see networks/complexity.py).

Examples:
    python scripts/model_complexity.py -a resnet50 --attention_type simam --attention_param 0.1
    python scripts/model_complexity.py -a mobilenet_v2 --attention_type se --json
    python scripts/model_complexity.py --all > complexity.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import networks  # noqa: E402
from scripts._cli import make_cli  # noqa: E402
from training.errors import UserError  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-a", "--arch", default="resnet50",
                        help=f"one of: {', '.join(networks.ARCHS.names())} (default: resnet50)")
    parser.add_argument("--attention_type", default="none",
                        help=f"one of: {', '.join(networks.ATTENTIONS.names())} (default: none)")
    parser.add_argument("--attention_param", type=float, default=None,
                        help="reduction ratio for se/cbam (default 16), lambda for simam (default 0.1), "
                             "kernel size for eca (default adaptive)")
    parser.add_argument("--image-size", type=int, default=224, help="input resolution (default: 224)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier size (default: 1000)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (a list with --all) instead of text")
    parser.add_argument("--all", action="store_true",
                        help="every arch x attention (default parameters) as a markdown table")
    return parser


def report(arch: str, attention_type: str, attention_param: float | None, image_size: int, num_classes: int) -> dict:
    """Complexity of one configuration as a flat dict (attention_param resolved to its default); an unknown
    name or a parameter the module refuses raises ``UserError``."""
    try:
        attention_param = networks.ATTENTIONS.get(attention_type).param_or_default(attention_param)
        result = networks.complexity(arch, attention_type, attention_param, image_size, num_classes)
    except ValueError as error:
        raise UserError(str(error)) from None
    return {"arch": arch, "attention_type": attention_type.lower(), "attention_param": attention_param,
            "image_size": image_size, **result.as_dict()}


def describe(row: dict) -> str:
    attention = row["attention_type"]
    if row["attention_param"] is not None:
        attention += f" ({networks.ATTENTIONS.get(attention).param_name}={row['attention_param']:g})"
    return (f"{row['arch']} + {attention} @ {row['image_size']}px: params {row['params_m']:.2f} M, "
            f"FLOPs {row['gflops']:.2f} G (paper convention), {row['gflops_all_ops']:.3f} G with attention ops")


def markdown_table(rows: list[dict]) -> str:
    lines = ["| Model | Attention | Param | Params (M) | FLOPs (G) | All ops (G) |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        param = "-" if r["attention_param"] is None else f"{r['attention_param']:g}"
        lines.append(f"| {r['arch']} | {r['attention_type']} | {param} | {r['params_m']:.2f} | {r['gflops']:.2f} "
                     f"| {r['gflops_all_ops']:.3f} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> list[dict]:
    if args.all:
        rows = [report(a, t, None, args.image_size, args.num_classes)
                for a in networks.ARCHS.names() for t in networks.ATTENTIONS.names()]
        print(json.dumps(rows) if args.json else markdown_table(rows))
        return rows
    row = report(args.arch, args.attention_type, args.attention_param, args.image_size, args.num_classes)
    print(json.dumps(row) if args.json else describe(row))
    return [row]


cli = make_cli(main, get_args_parser)  # bad input: one line `error: ...`, exit status 2


if __name__ == "__main__":
    sys.exit(cli())
