"""The suite's tiers (tests/conftest.py): a helper that starts a server, a builder child or
a training process calls ``require_system_mark``, which fails the running test unless it is
marked ``system`` or ``browser``.  Outside pytest (the benchmarks) no test runs and the
check passes."""

from __future__ import annotations

import pytest

# The running test item: tests/conftest.py's pytest_runtest_setup sets it.
current_test: pytest.Item | None = None


def require_system_mark(what: str) -> None:
    """Fail a test (or its fixture) that starts ``what`` without the ``system`` (or
    ``browser``) mark."""
    if current_test is not None and not any(
            current_test.get_closest_marker(mark) for mark in ("system", "browser")):
        pytest.fail(f"{current_test.nodeid} starts {what} but is not marked system "
                    "(@pytest.mark.system, or pytestmark = pytest.mark.system): the fast "
                    "tier (make test-fast) starts no server", pytrace=False)
