"""Request bodies.  Uploaded images stay in memory (Werkzeug would spool files over
500 KB to a temporary file, and photos must never be written to disk; MAX_CONTENT_LENGTH
bounds them).  A few routes take big files — checkpoints, dataset archives — with a
size limit of their own; their file parts go to a temporary file in the store they are
meant for (same file system: storing is a rename) and are removed after the request,
whatever happened."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, Request, current_app, g


@dataclass(frozen=True)
class SpooledRoute:
    """POSTs to ``paths`` (only multipart ones with ``multipart_only``) may be as large
    as the ``limit_setting`` config value in MB; their files go to ``temp_path()``."""

    paths: tuple[str, ...]
    limit_setting: str
    temp_path: Callable[[], Path]
    multipart_only: bool = False


class UploadRequest(Request):
    @property
    def spooled_route(self) -> SpooledRoute | None:
        """The big-file route this request is for, if any."""
        if self.method != "POST":
            return None
        for route in current_app.extensions.get("spooled_routes", ()):
            if self.path in route.paths and (
                not route.multipart_only or self.mimetype == "multipart/form-data"
            ):
                return route
        return None

    @property
    def max_content_length(self):
        route = self.spooled_route
        if route is not None:
            return int(current_app.config[route.limit_setting] * 1024 * 1024)
        return super().max_content_length

    @max_content_length.setter
    def max_content_length(self, value):
        self._max_content_length = value

    def _get_file_stream(self, total_content_length, content_type, filename=None,
                         content_length=None):
        route = self.spooled_route
        if route is None:
            return io.BytesIO()
        path = route.temp_path()
        stream = open(path, "xb+")  # noqa: SIM115 - closed in teardown
        g.setdefault("spooled_files", []).append((path, stream))
        return stream


def init_app(app: Flask) -> None:
    app.request_class = UploadRequest
    app.extensions["spooled_routes"] = []
    app.teardown_request(_remove_spooled_files)


def spool(app: Flask, route: SpooledRoute) -> None:
    app.extensions["spooled_routes"].append(route)


def _remove_spooled_files(exc=None) -> None:
    """No upload is left behind in a store's temp folder (a stored one was moved away
    already; a store that went read-only keeps it until its next sweep)."""
    for path, stream in g.pop("spooled_files", []):
        with contextlib.suppress(OSError):
            stream.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
