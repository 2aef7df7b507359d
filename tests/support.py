"""Helpers tests import by name (``from support import require_tool``).

Not in ``conftest.py``: with one conftest in ``tests/`` and another in
``tests/integration/``, ``import conftest`` gets whichever pytest loaded last.
"""

from __future__ import annotations

import os
import shutil

import pytest


def unavailable(msg: str):
    """Something a test needs is missing: skip, but fail under CI=true (CI must not skip)."""
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def require_tool(name: str) -> str:
    """Path of a system tool a test drives; skip when absent, but fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (make test installs it: make system-deps)")
    return path
