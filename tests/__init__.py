"""The test suite: tests/conftest.py describes its tiers and fixtures."""

import pytest

# testkit's helpers assert as the tests do: pytest rewrites their asserts too, so a helper's
# failed assert shows the values it compared.  Registered here, before tests/conftest.py
# imports testkit.
pytest.register_assert_rewrite("testkit")
