"""What the container files say, read as written, and how to run it on this machine.

``dockerfile()`` parses the Dockerfile's stages (ENV, ENTRYPOINT, CMD,
HEALTHCHECK, ...) so the tests run exactly the commands an image would run;
``local_command()`` and ``local_env()`` turn an image's command and
environment into this machine's.  The services run in network namespaces:
see netns.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# -- the Dockerfile -------------------------------------------------------------

@dataclass
class Stage:
    """One FROM ... stage, its instructions in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    @property
    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for rest in self.all("ENV"):
            for item in shlex.split(rest):
                key, sep, value = item.partition("=")
                assert sep, f"ENV in the legacy 'KEY VALUE' form: {rest!r}"
                values[key] = value
        return values

    def exec_form(self, keyword: str) -> list[str]:
        """ENTRYPOINT/CMD as written: must be the JSON exec form."""
        text = self.last(keyword)
        assert text is not None, f"no {keyword}"
        argv = json.loads(text)
        assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), text
        return argv

    @property
    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """(options such as interval and timeout, the command in exec form)."""
        text = self.last("HEALTHCHECK")
        assert text is not None, "no HEALTHCHECK"
        options: dict[str, str] = {}
        while m := re.match(r"--([a-z-]+)=(\S+)\s+", text):
            options[m[1]] = m[2]
            text = text[m.end():]
        keyword, _, command = text.partition(" ")
        assert keyword == "CMD", text
        return options, json.loads(command)


def logical_lines(text: str) -> list[str]:
    """Instructions with their continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current.strip():
        lines.append(current)
    return lines


def dockerfile(path: Path = ROOT / "Dockerfile") -> list[Stage]:
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return stages


def tool(name: str) -> str | None:
    """A console script installed with this Python (or on PATH)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def local_command(argv: list[str]) -> list[str]:
    """An image's command for this machine: ``pytcpecho`` if installed, else python -m."""
    if argv and argv[0] == "pytcpecho":
        script = tool("pytcpecho")
        return [script, *argv[1:]] if script else [sys.executable, "-m", "pytcpecho", *argv[1:]]
    return argv


def local_env(image_env: dict[str, str]) -> dict[str, str]:
    """The image's environment over ours, importing this checkout's package first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTCPECHO_")}
    env.update(image_env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return env
