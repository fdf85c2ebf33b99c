"""Errors caused by the user's input: reported as one line, never as a traceback."""

from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """Bad input (missing data, bad flag, unusable checkpoint): ``main_imagenet`` prints it and exits 2."""


class TrainingError(Exception):
    """Training cannot go on (non-finite loss, a checkpoint that cannot be written): printed as one line,
    exit status 1. The last good checkpoints are left as they were."""


class BadImageError(UserError):
    """An image file that cannot be decoded. Raised in data-loading workers, so it takes one string."""


class ShardError(UserError):
    """A tar shard of a sharded dataset that is missing or damaged (``training.data.ShardImages``). Raised in
    data-loading workers too, so it takes one string; never passed over by ``--skip-bad-images``."""


def one_line(error: BaseException) -> str:
    """The user-facing line of ``error``.

    Errors raised in a DataLoader worker come back with the worker's traceback appended to the message;
    the original message is then the last line, after ``module.ClassName: ``.
    """
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    last = lines[-1]
    if len(lines) > 1 and "Traceback" in str(error):
        head, sep, tail = last.partition(": ")
        if sep and head.rsplit(".", 1)[-1] == type(error).__name__:
            return tail
    return last


def exit_status(run: Callable[[], object]) -> int:
    """Run a command-line entry point and return its exit status: an int it returns, else 0. A ``UserError`` is
    one line ``error: ...`` on stderr and status 2, a ``TrainingError`` the same with status 1, Ctrl-C 130;
    never a traceback."""
    try:
        status = run()
    except UserError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status if type(status) is int else 0
