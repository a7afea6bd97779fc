"""Reliability tests compile into a private cache folder and may be heavy (`-m "not slow"`)."""
import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a heavy scale test (> 5 s); deselect with -m 'not slow'")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    old = os.environ.get("PULLBACK_CACHE_DIR")
    os.environ["PULLBACK_CACHE_DIR"] = str(tmp_path_factory.mktemp("pullback-cache"))
    yield
    if old is None:
        os.environ.pop("PULLBACK_CACHE_DIR", None)
    else:
        os.environ["PULLBACK_CACHE_DIR"] = old
