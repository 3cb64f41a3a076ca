"""Shared test setup: offline Prefect with a per-session PREFECT_HOME, the shared fixtures folder."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"

_prefect_home = tempfile.mkdtemp(prefix="plm-prefect-home-")
os.environ["PREFECT_HOME"] = _prefect_home
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def fixture_path(*parts: str) -> Path:
    """A file under ../shared/fixtures, or skip the test with the reason when it is absent."""
    p = FIXTURES.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared fixture not available: {p}")
    return p


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for the whole session (starting one takes seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; two spinning OpenMP threads on a busy 2-core host are 50x slower.
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
