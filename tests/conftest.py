"""Fixtures and hooks: the fake embedder registered, an isolated environment, Prefect's test harness.

Helpers that test modules import (paths, ``make_settings``, ``write``, ...) are in ``tests/helpers.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedpipe.embedding.embedder import register_embedder
from tests.fakes import FakeEmbedder

register_embedder("fake:", FakeEmbedder)

# Tests never reach a model hub, and Prefect never phones home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No EMBEDPIPE_* variables or embedpipe.toml from the developer's shell leak into a test."""
    for key in list(os.environ):
        if key.startswith("EMBEDPIPE_"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[str]:
    """A temporary Prefect server for the whole session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield str(PREFECT_API_URL.value())
