"""The scripts' command-line boundary: bad input (``UserError``) is one line ``error: ...`` on stderr and
exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from training.errors import UserError, one_line


def make_cli(main: Callable[[Any], object], parser: Callable[[], argparse.ArgumentParser] | None = None
                 ) -> Callable[[list[str] | None], int]:
    """A script's ``cli(argv) -> int``: calls ``main(argv)``, or ``main(parser().parse_args(argv))`` when given
    a ``parser``; returns 0, or 2 after printing ``error: <message>`` on stderr when it raises ``UserError``."""

    def cli(argv: list[str] | None = None) -> int:
        try:
            main(argv if parser is None else parser().parse_args(argv))
        except UserError as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            return 2
        return 0

    return cli
