"""YAML recipes: ``--config FILE`` (given once or more; a file may build on others with ``_base_``) sets parser
defaults, a later file overriding an earlier one, command-line flags override them all, the result is saved."""

from __future__ import annotations

import argparse
import os
from typing import Any, Sequence

import yaml

from .errors import UserError

# Fields of ``args`` that describe the runtime, not the recipe: never written to config.yaml.
RUNTIME_FIELDS = ("config",)

# The key of a recipe that names the recipes it builds on.
BASE_KEY = "_base_"


def read_config(path: str) -> dict[str, Any]:
    """Read a YAML recipe: a flat mapping of option names (``weight_decay`` or ``weight-decay``) to values.

    ``_base_: PATH`` (or a list of paths, relative to the file naming them) builds on other recipes: bases
    apply in order, a later one wins, and the file's own keys win over all of them. The result has no
    ``_base_`` key.
    """
    return _resolve(path, ())


def _resolve(path: str, chain: tuple[str, ...]) -> dict[str, Any]:
    """``path`` with its bases applied; ``chain`` is the files that named it, outermost first."""
    if os.path.realpath(path) in map(os.path.realpath, chain):
        raise UserError(f"config file {chain[0]}: _base_ cycle {' -> '.join(chain + (path,))}")
    recipe = _read_one(path, chain)
    bases = recipe.pop(BASE_KEY, None)
    if bases is None:
        return recipe
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise UserError(f"config file {path}: {BASE_KEY} must be a path or a list of paths")
    merged: dict[str, Any] = {}
    for base in bases:
        merged.update(_resolve(os.path.normpath(os.path.join(os.path.dirname(path), base)), chain + (path,)))
    merged.update(recipe)
    return merged


def _read_one(path: str, chain: tuple[str, ...]) -> dict[str, Any]:
    """One YAML file as a mapping with ``-`` in keys turned into ``_``; ``chain`` as in ``_resolve``."""
    where = f" ({BASE_KEY} of {' -> '.join(chain)})" if chain else ""
    try:
        with open(path) as f:
            recipe = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}{where}") from None
    except OSError as error:
        raise UserError(f"config file {path}{where} cannot be read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise UserError(f"config file {path}{where} is not valid YAML: {str(error).splitlines()[0]}") from None
    if recipe is None:
        return {}
    if not isinstance(recipe, dict):
        raise UserError(f"config file {path}{where} must be a mapping of option names to values")
    return {str(key).replace("-", "_"): value for key, value in recipe.items()}


def add_config_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> argparse.Action:
    """Add ``--config FILE`` (repeatable) to ``parser``, as ``parse_with_config`` reads it."""
    return parser.add_argument(
        "--config", metavar="FILE.yaml", action="append", default=None,
        help="YAML recipe (see configs/); give it again to add a file on top, e.g. --config "
             "configs/resnet50_simam.yaml --config configs/recipes/fast.yaml: a later file overrides an earlier "
             "one, flags given on the command line override them all")


def config_paths(config: str | Sequence[str] | None) -> list[str]:
    """The files of ``args.config``: none, one (a plain ``--config`` option) or a list (``add_config_option``)."""
    if not config:
        return []
    return [config] if isinstance(config, str) else list(config)


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; values from the ``--config`` files replace the parser's defaults (a later file wins),
    explicit flags win over all."""
    args = parser.parse_args(argv)
    paths = config_paths(getattr(args, "config", None))
    if paths:
        merged: dict[str, Any] = {}
        for path in paths:
            recipe = read_config(path)
            check_options(parser, recipe, path)
            merged.update(recipe)
        parser.set_defaults(**merged)
        args = parser.parse_args(argv)
    return args


def apply_config(parser: argparse.ArgumentParser, recipe: dict[str, Any], source: str) -> None:
    """Make ``recipe`` the parser's defaults; an unknown key is an error naming the valid ones."""
    check_options(parser, recipe, source)
    parser.set_defaults(**recipe)


def check_options(parser: argparse.ArgumentParser, recipe: dict[str, Any], source: str) -> None:
    """An error naming ``source`` unless every key of ``recipe`` is an option of ``parser`` (``config`` itself is
    not: a file builds on others with ``_base_``)."""
    known = {action.dest for action in parser._actions if action.dest != "help"} - set(RUNTIME_FIELDS)
    unknown = sorted(set(recipe) - known)
    if unknown:
        hint = f" ({BASE_KEY} builds on other files)" if "config" in unknown else ""
        raise UserError(f"config file {source}: unknown option(s) {', '.join(unknown)}{hint}; "
                        f"valid: {', '.join(sorted(known))}")


def recipe_of(args: argparse.Namespace) -> dict[str, Any]:
    """The effective options as plain YAML-able values."""
    return {key: value for key, value in sorted(vars(args).items())
            if key not in RUNTIME_FIELDS and isinstance(value, (str, int, float, bool, type(None), list))}


def save_config(args: argparse.Namespace, path: str) -> None:
    """Write the effective options to ``path`` (loadable again with ``--config``)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(recipe_of(args), f, sort_keys=True)
    os.replace(tmp, path)
