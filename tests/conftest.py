"""Every test compiles into a private cache folder, never the user's (subprocesses inherit it)."""
import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    old = os.environ.get("PULLBACK_CACHE_DIR")
    os.environ["PULLBACK_CACHE_DIR"] = str(tmp_path_factory.mktemp("pullback-cache"))
    yield
    if old is None:
        os.environ.pop("PULLBACK_CACHE_DIR", None)
    else:
        os.environ["PULLBACK_CACHE_DIR"] = old
