"""Taishi's HTTP API (FastAPI) and web console; see :mod:`taishi.api.app` and :mod:`taishi.api.auth`."""

from taishi.api.app import create_app

__all__ = ["create_app"]
