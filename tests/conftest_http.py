"""Pytest fixture of the local HTTP test server (see ``http_server.py``); import it into a test module:

    from conftest_http import http_server  # noqa: F401  (pytest finds the fixture by name)

    def test_x(http_server):
        http_server.put("/a.txt", b"hello")
        ...
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from http_server import LocalHTTPServer

__all__ = ["http_server"]


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[LocalHTTPServer]:
    """A running :class:`LocalHTTPServer` serving ``tmp_path / "www"``; stopped after the test."""
    with LocalHTTPServer(tmp_path / "www") as srv:
        yield srv
