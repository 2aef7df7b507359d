"""Shared fixtures.

``shared_data`` is the public data set beside the repository (``../shared/data``,
or ``$TAISHI_SHARED_DATA``). Tests that need it take this fixture: when it is
absent they skip with a clear message, except under ``CI=true``, where a
missing data set is a failure. ``require_tool`` lives in ``support.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _shared_data_dir() -> Path:
    env = os.environ.get("TAISHI_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared_data_dir()
    if not (path / "MANIFEST.md").is_file():
        msg = f"shared data set not found at {path} (set TAISHI_SHARED_DATA)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh Taishi data directory."""
    d = tmp_path / "taishi-data"
    d.mkdir()
    return d
