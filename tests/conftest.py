"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The read-only reference data (../shared/reference); tests that need it skip without it."""
    path = Path(__file__).resolve().parents[2] / "shared" / "reference"
    if not path.is_dir():
        pytest.skip(f"reference data not found at {path}")
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Module-wide: one intra-op torch thread. Tests of many small ops run faster that way than
    with two threads fighting over the shared 2-core machine."""
    from compofa_bench.convert import torch_threads

    with torch_threads(1):
        yield
