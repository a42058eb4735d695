"""The Dockerfile read as its instructions, and the environment its ENV lines give the
server (what ``docker run`` starts it with)."""

from __future__ import annotations

import re
import shlex

from testkit import ROOT


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text("utf-8")
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), " ".join(rest.split())))
    return out


def env_of(instructions) -> dict[str, str]:
    env = {}
    for instruction, args in instructions:
        if instruction == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env
