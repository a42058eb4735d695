"""A real server process on 127.0.0.1 (gunicorn or the development server), as the tests
and the benchmarks start it: ``Server`` runs a command line from the repository's root,
``wait_ready`` polls ``/readyz``, ``stop`` stops it the way ``docker stop`` does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

from testkit import ROOT
from testkit.tiers import require_system_mark


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A real server process on 127.0.0.1 (gunicorn or the dev server)."""

    def __init__(self, argv, env, port, log_path, cpus=None):
        require_system_mark("a server")
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=preexec)

    def wait_ready(self, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log}")
            try:
                response = requests.get(self.url + "/readyz", timeout=5)
                if response.status_code == 200:
                    return response.json()
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log}")

    @property
    def log(self) -> str:
        self._log.flush()
        return Path(self.log_path).read_text("utf-8", errors="replace")

    def wait_exit(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self):
        """SIGTERM to the server process alone, as ``docker stop`` and Kubernetes send it
        (gunicorn's master then stops its workers), then SIGKILL to whatever of its
        process group is left.  (A SIGTERM to the whole group reached the workers before
        the master; once, with two test processes busy, the master then logged the signal
        and its workers' exits and still took the 30 s to the SIGKILL.)"""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._log.close()
