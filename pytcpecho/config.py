"""Options from the environment: ``PYTCPECHO_<OPTION>`` for every ``--option`` of a command.

Containers and orchestrators configure a program by environment, so each
long option of ``serve`` also reads ``PYTCPECHO_`` plus its name in capitals
(``--max-clients`` from ``PYTCPECHO_MAX_CLIENTS``).  A flag on the command line
wins over the variable; an empty variable counts as unset.  A bad value is not
reported while the parser is built (other commands must not fail for it) but
kept for ``finish(args)`` to raise after parsing, one line naming the variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from . import switch

PREFIX = "PYTCPECHO_"


def env_name(action: argparse.Action) -> str | None:
    """PYTCPECHO_MAX_CLIENTS for --max-clients; None for options without a long name."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    if not longs or action.dest in ("help", "version"):
        return None
    return PREFIX + longs[0][2:].replace("-", "_").upper()


def apply_env(parser: argparse.ArgumentParser,
              environ: Mapping[str, str] | None = None) -> None:
    """Make each set PYTCPECHO_* variable the default of its option (flags still win)."""
    environ = os.environ if environ is None else environ
    late: dict[str, object] = {}
    defaults: dict[str, object] = {"env_error": None, "env_late": late}
    for action in parser._actions:
        name = env_name(action)
        if name is None:
            continue
        if action.help not in (None, argparse.SUPPRESS):
            action.help = f"{action.help} [env: {name}]"
        text = environ.get(name, "").strip()
        if not text:
            continue
        try:
            value = _convert(action, text)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            defaults["env_error"] = f"{name}={text!r}: {exc}"
            break
        if isinstance(action, argparse._AppendAction | argparse._CountAction):
            late[action.dest] = value  # argparse adds flags to a default: set it after
        else:
            defaults[action.dest] = value
    parser.set_defaults(**defaults)


class EnvError(ValueError):
    """A PYTCPECHO_* variable has a value its option does not accept."""


def finish(args: argparse.Namespace) -> None:
    """After parsing: raise EnvError for a bad variable; fill -v/--allow-like options
    from the environment where no flag gave them."""
    if args.env_error:
        raise EnvError(args.env_error)
    for dest, value in args.env_late.items():
        if not getattr(args, dest):
            setattr(args, dest, value)


def _convert(action: argparse.Action, text: str) -> object:
    """The value ``text`` means for ``action``, checked as the command line would check it."""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return switch.flag(text) == isinstance(action, argparse._StoreTrueAction)
    if isinstance(action, argparse._CountAction):
        if not text.isdigit():
            raise ValueError("give a whole number, e.g. 1")
        return int(text)
    if isinstance(action, argparse._AppendAction):
        return [_one(action, item) for item in text.replace(",", " ").split()]
    return _one(action, text)


def _one(action: argparse.Action, text: str) -> object:
    value = action.type(text) if callable(action.type) else text
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ValueError(f"invalid choice {text!r}: choose from {choices}")
    return value
