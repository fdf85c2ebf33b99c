"""How a subsystem owns its command-line options: one frozen dataclass per subsystem, whose field defaults are the
flags' defaults (written once, read by its ``add_options(parser)``), built once from the parsed command line by
``from_args`` and range-checked there by its ``check()``. Builders take these objects (or plain keyword arguments),
never the parsed namespace."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, ClassVar, TypeVar

from .errors import UserError

OptionsT = TypeVar("OptionsT", bound="Options")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default stated once: argparse's ``(default: ...)`` unless the help already
    says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help and "default" in action.help:
            return action.help
        return super()._get_help_string(action)


@dataclasses.dataclass(frozen=True)
class Options:
    """Base of the subsystems' options: fields named as the flags' destinations (``DESTS`` names the ones named
    otherwise, as their builder's keywords), defaults as the flags'."""

    DESTS: ClassVar[dict[str, str]] = {}  # field -> the flag's destination, where they differ

    @classmethod
    def values_of(cls, args: Any) -> dict[str, Any]:
        """The fields' values in ``args`` (a parsed namespace, or any object with some of them: the rest keep their
        defaults)."""
        dests = {f.name: cls.DESTS.get(f.name, f.name) for f in dataclasses.fields(cls)}
        return {name: getattr(args, dest) for name, dest in dests.items() if hasattr(args, dest)}

    @classmethod
    def from_args(cls: type[OptionsT], args: Any) -> OptionsT:
        """The options ``args`` give, checked (``check``)."""
        options = cls(**cls.values_of(args))
        options.check()
        return options

    def check(self) -> None:
        """The command line's range checks: a bad value is a ``UserError`` naming its flag."""

    def at_least_one(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 1:
                raise UserError(f"{flag(self.DESTS.get(name, name))} must be at least 1, got {getattr(self, name)}")

    def not_negative(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and value < 0:  # None: the option's default applies
                raise UserError(f"{flag(self.DESTS.get(name, name))} must not be negative, got {value}")


def flag(name: str) -> str:
    """The flag of a destination in error messages: ``batch_size`` -> ``--batch-size``."""
    return f"--{name.replace('_', '-')}"


def user_errors(check, *args, **kwargs):
    """``check(*args, **kwargs)``, its ``ValueError`` (a library's one-line message) as a ``UserError``."""
    try:
        return check(*args, **kwargs)
    except ValueError as error:
        raise UserError(str(error)) from None
