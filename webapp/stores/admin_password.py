"""The admin password a teacher chooses on the server machine itself (``/admin/setup``),
kept hashed in ``MODEL_DIR/admin_password.json`` beside the session key.

Hashed with scrypt (Werkzeug's ``generate_password_hash``: a standard memory-hard KDF,
random salt, the parameters kept in the hash), never stored as it was typed.  The file is
made once, exclusively (``durable.create_once``): two people choosing a password
at the same moment cannot overwrite each other's.  To choose again, delete the file
(the admin page says so).  ``ADMIN_TOKEN``, when set, wins over it
(``webapp.views.admin.auth``).  No Flask here.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from werkzeug.security import check_password_hash, generate_password_hash

from webapp.durable import create_once

FILE_NAME = "admin_password.json"
MIN_LENGTH = 8


def path(root: str | os.PathLike) -> Path:
    return Path(root) / FILE_NAME


def read_hash(root: str | os.PathLike) -> str:
    """The stored hash, or "" when no password was chosen or the file cannot be read
    (``damaged``)."""
    try:
        data = json.loads(path(root).read_text("utf-8"))
    except (OSError, ValueError):
        return ""
    value = data.get("hash") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value.startswith("scrypt:") else ""


def damaged(root: str | os.PathLike) -> bool:
    """The file is there but holds no hash this module wrote (edited, cut short, no
    permission): nobody logs in with it, and nobody may choose a new password over it."""
    return path(root).exists() and not read_hash(root)


def matches(stored_hash: str, given: str) -> bool:
    return bool(stored_hash) and check_password_hash(stored_hash, given)


def create(root: str | os.PathLike, password: str) -> bool:
    """Keep ``password``'s hash; False when a password exists already (nothing changed)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = path(root)
    if target.exists():
        return False
    record = {"hash": generate_password_hash(password, method="scrypt"),
              "set": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    return create_once(target, (json.dumps(record) + "\n").encode("utf-8"), mode=0o600)
