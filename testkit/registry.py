"""The model store's folder (webapp.stores.registry) seen from outside: every file in it
with its size, to check that a refused request left the store unchanged, and what an
interrupted write left in its tmp/ folder."""

from __future__ import annotations

from pathlib import Path


def snapshot(root: Path) -> dict:
    """Every file in the store (outside tmp/) with its size: "the store is unchanged"."""
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and "tmp" not in p.relative_to(root).parts and p.name != ".lock"
    }


def leftovers(root: Path) -> list[str]:
    tmp = root / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []
