"""Install torch and torchvision (the versions requirements.txt pins) from PyTorch's
CPU-only package index when it answers, before ``pip install -r requirements.txt``: PyPI's
builds carry CUDA (torch 1.2 GB, NVIDIA's libraries 3-4 GB, triton 0.5-1 GB) that a
classroom PC without an NVIDIA GPU never uses.  When the index does not answer, one line
says so and pip takes torch from the default index afterwards.  ``make install`` runs it
(``TORCH_INDEX_URL=`` skips it).  Standard library only: it runs before anything else.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 10  # seconds the index has to answer


def pins() -> list[str]:
    text = (ROOT / "requirements.txt").read_text("utf-8")
    return [m.group(0) for m in re.finditer(r"^(torch|torchvision)==\S+", text, re.M)]


def answers(index: str) -> bool:
    try:
        with urllib.request.urlopen(f"{index.rstrip('/')}/torch/", timeout=TIMEOUT) as reply:
            return reply.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def main(argv: list[str]) -> int:
    index = argv[1] if len(argv) > 1 else ""
    if not index:
        return 0
    wanted = pins()
    if not answers(index):
        print(f"The CPU-only torch index ({index}) does not answer: installing torch from "
              "the default index instead (with CUDA libraries, about 5 GB more).", flush=True)
        return 0
    print(f"Installing CPU-only {' and '.join(wanted)} from {index} (no CUDA libraries).",
          flush=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted,
                           "--index-url", index])
    if done.returncode != 0:
        print("That did not work: installing torch from the default index instead.",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
