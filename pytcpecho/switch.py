"""``PYTCPECHO_PURE_PYTHON``: one reading for the build and for the running package.

setup.py decides with it whether to compile the Cython core, and
``pytcpecho.core`` whether to use it, so both must read a value the same way;
a value that is neither on nor off is an error in both, never a silent choice.
setup.py loads this file by its path, before the package can be imported, so it
imports nothing from the package.
"""

from __future__ import annotations

from collections.abc import Mapping

PURE_PYTHON = "PYTCPECHO_PURE_PYTHON"
ON = ("1", "true", "yes", "on")
OFF = ("0", "false", "no", "off")


class SwitchError(ValueError):
    """A switch variable is set to something that is neither on nor off."""


def flag(text: str) -> bool:
    """True for 1/true/yes/on, False for 0/false/no/off (any case); ValueError otherwise."""
    word = text.strip().lower()
    if word in ON:
        return True
    if word in OFF:
        return False
    raise ValueError("give 1/0, true/false, yes/no or on/off")


def pure_python(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` asks for the pure-Python core (unset or empty: no).

    Raises SwitchError, one line naming the variable and the values it takes,
    for anything else.
    """
    text = environ.get(PURE_PYTHON, "")
    if not text.strip():
        return False
    try:
        return flag(text)
    except ValueError:
        raise SwitchError(
            f"{PURE_PYTHON}={text!r} is not a switch value: set it to 1, true, yes or on "
            "for the pure-Python core, or to 0, false, no, off or nothing for the "
            "compiled one") from None
