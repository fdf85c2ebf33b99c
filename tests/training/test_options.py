"""Each subsystem owns its options: every flag is read by one options class, its default written once, and
``--help`` states each default once."""

import dataclasses

import main_imagenet
from training.data import DataOptions
from training.options import Options
from training.presets import AugmentOptions
from training.run import OPTION_KINDS


def dests_of(kind: type[Options]) -> list[str]:
    dests = []
    for field in dataclasses.fields(kind):
        if isinstance(field.default_factory, type) and issubclass(field.default_factory, Options):
            dests += dests_of(field.default_factory)  # nested: DataOptions' augmentation
        elif field.name not in ("train", "whole_batches") and field.default is not dataclasses.MISSING:
            dests.append(kind.DESTS.get(field.name, field.name))  # (no default: another subsystem's, e.g. epochs)
    return dests


def test_every_flag_is_read_by_exactly_one_options_class():
    read = [dest for kind in OPTION_KINDS.values() for dest in dests_of(kind)] + ["cos_lr"]  # cos_lr: a schedule name
    assert len(read) == len(set(read))
    flags = {action.dest for action in main_imagenet.get_args_parser()._actions} - {"help", "config"}
    assert set(read) == flags


def test_defaults_come_from_the_options_classes():
    defaults = vars(main_imagenet.get_args_parser().parse_args([]))
    resolved = {"lr_scheduler": None, "lr_milestones": []}  # None: step, or release_cosine with --cos_lr; a list
    for kind in (*OPTION_KINDS.values(), AugmentOptions):
        for field in dataclasses.fields(kind):
            dest = kind.DESTS.get(field.name, field.name)
            if dest in defaults and field.default is not dataclasses.MISSING:
                assert defaults[dest] == resolved.get(dest, field.default), dest
    config = main_imagenet.check_args(main_imagenet.get_args_parser().parse_args(["DATA"]))
    assert config.data == DataOptions(data="DATA") and config.schedule.epochs == 90


def help_entries() -> dict[str, str]:
    """``--help``'s entries, by their first line (the flags), as one line each."""
    entries: dict[str, str] = {}
    for line in main_imagenet.get_args_parser().format_help().splitlines():
        if line.startswith("  ") and not line.startswith("   "):  # an option's (or DIR's) first line
            flags = line.split("  ")[1].strip()
            entries[flags] = line
        elif line.startswith("    ") and entries:
            entries[flags] += " " + line.strip()
    return entries


def test_help_states_each_default_once():
    entries = help_entries()
    for flags in ("-a ARCH, --arch ARCH", "--attention_type ATTENTION_TYPE", "--gpu GPU", "--dist-url DIST_URL",
                  "--dist-backend DIST_BACKEND", "--simam-impl {auto,compiled,eager,reference}",
                  "--lr-scheduler {step,multistep,cosine,release_cosine,exponential,linear,constant}",
                  "--norm-weight-decay NORM_WEIGHT_DECAY", "--bias-weight-decay BIAS_WEIGHT_DECAY"):
        assert entries[flags].count("default") == 1, entries[flags]
    assert entries["--ra-magnitude RA_MAGNITUDE"].endswith("(default: 9)")
    assert all(entry.count("(default:") <= 1 for entry in entries.values())
