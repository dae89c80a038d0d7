"""Options from the environment: ``PYTCPECHO_<OPTION>`` for every ``--option`` of a command.

Containers and orchestrators configure a program by environment, so each
long option of ``serve`` also reads ``PYTCPECHO_`` plus its name in capitals
(``--max-clients`` from ``PYTCPECHO_MAX_CLIENTS``).  A flag on the command line
wins over the variable; an empty variable counts as unset.  A bad value is not
reported while the parser is built (other commands must not fail for it) but
kept for ``finish(args)`` to raise after parsing, one line naming the variable.
A flag-like option (``-q``, ``-v``, ``--reuse-port``) reads its variable as a
switch, with the one reading every switch of pytcpecho has (``pytcpecho.switch``).
After ``finish(args)``, ``origin(args, dest)`` says where an option's value came
from, so a check made later (a host that does not resolve) names the variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass

from . import switch
from .units import quote

PREFIX = "PYTCPECHO_"


def env_name(action: argparse.Action) -> str | None:
    """PYTCPECHO_MAX_CLIENTS for --max-clients; None for options without a long name."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    if not longs or action.dest in ("help", "version"):
        return None
    return PREFIX + longs[0][2:].replace("-", "_").upper()


@dataclass(frozen=True)
class FromEnv:
    """An option's default that a variable gave: unwrapped by finish(), and only ever
    seen there where no flag replaced it (so a flag always wins, whatever its value)."""

    name: str
    text: str
    value: object

    def origin(self) -> str:
        return f"{self.name}={quote(self.text)}"


def apply_env(parser: argparse.ArgumentParser,
              environ: Mapping[str, str] | None = None) -> None:
    """Make each set PYTCPECHO_* variable the default of its option (flags still win)."""
    environ = os.environ if environ is None else environ
    late: dict[str, FromEnv] = {}
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
            given = FromEnv(name, text, _convert(action, text))
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            defaults["env_error"] = f"{name}={quote(text)}: {exc}"
            break
        if isinstance(action, argparse._AppendAction | argparse._CountAction):
            late[action.dest] = given  # argparse adds flags to a default: set it after
        else:
            defaults[action.dest] = given
    parser.set_defaults(**defaults)


class EnvError(ValueError):
    """A PYTCPECHO_* variable has a value its option does not accept."""


def finish(args: argparse.Namespace) -> None:
    """After parsing: raise EnvError for a bad variable; put each variable's value where
    no flag gave one, and record in ``args.origins`` which variable gave it."""
    if args.env_error:
        raise EnvError(args.env_error)
    origins: dict[str, str] = {}
    for dest, value in list(vars(args).items()):
        if isinstance(value, FromEnv):
            setattr(args, dest, value.value)
            origins[dest] = value.origin()
    for dest, given in args.env_late.items():
        if not getattr(args, dest):
            setattr(args, dest, given.value)
            origins[dest] = given.origin()
    args.origins = origins


def origin(args: argparse.Namespace, dest: str, option: str) -> str:
    """Where ``args.<dest>`` came from, to begin an error line: ``PYTCPECHO_HOST='a..b'``
    when a variable gave it, else ``argument OPTION`` as argparse says it."""
    return getattr(args, "origins", {}).get(dest) or f"argument {option}"


def _convert(action: argparse.Action, text: str) -> object:
    """The value ``text`` means for ``action``, checked as the command line would check it."""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return switch.flag(text) == isinstance(action, argparse._StoreTrueAction)
    if isinstance(action, argparse._CountAction):
        return int(switch.flag(text))  # on: as one -v; a level is not a switch value
    if isinstance(action, argparse._AppendAction):
        return [_one(action, item) for item in text.replace(",", " ").split()]
    return _one(action, text)


def _one(action: argparse.Action, text: str) -> object:
    value = action.type(text) if callable(action.type) else text
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ValueError(f"invalid choice {quote(text)}: choose from {choices}")
    return value
