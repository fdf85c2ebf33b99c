"""The scripts' command-line boundary (``training.errors.exit_status``): bad input (``UserError``) is one line
``error: ...`` on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from training.errors import exit_status


def make_cli(main: Callable[[Any], object], parser: Callable[[], argparse.ArgumentParser] | None = None
             ) -> Callable[[list[str] | None], int]:
    """A script's ``cli(argv) -> int``: calls ``main(argv)``, or ``main(parser().parse_args(argv))`` when given
    a ``parser``, and returns ``exit_status`` of it (0, an int ``main`` returns, or 2 after printing
    ``error: <message>`` on stderr when it raises ``UserError``)."""

    def cli(argv: list[str] | None = None) -> int:
        return exit_status(lambda: main(argv if parser is None else parser().parse_args(argv)))

    return cli


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """``-a``, ``--attention_type`` and ``--attention_param``: the network of a checkpoint, where given
    (``networks.identify_network`` fills in the rest from the checkpoint)."""
    import networks  # here: scripts without networks (make_sample_data) start without torch
    parser.add_argument("-a", "--arch", default=None,
                        help=f"one of {', '.join(networks.ARCHS.names())}; wins over the checkpoint's record "
                             "(default: the checkpoint's, or inferred from its keys)")
    parser.add_argument("--attention_type", default=None,
                        help=f"one of {', '.join(networks.ATTENTIONS.names())}; wins over the checkpoint's record "
                             "(default: the checkpoint's, or inferred from its keys)")
    parser.add_argument("--attention_param", type=float, default=None,
                        help="wins over the checkpoint's record (default: the checkpoint's for its attention, else "
                             "the module's default, lambda 0.1 for simam)")
