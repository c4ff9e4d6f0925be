"""Shared test set-up: small shapes, CPU, and the reference fixtures in ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("INVDIFF_SHARED", REPO.parent / "shared"))
ADM_FIXTURES = Path(os.environ.get("INVDIFF_FIXTURES", SHARED / "fixtures" / "adm"))


@pytest.fixture(scope="session")
def adm_fixtures() -> Path:
    if not (ADM_FIXTURES / "diffusion_io.npz").exists():
        pytest.skip(f"reference fixtures not found at {ADM_FIXTURES} (set INVDIFF_FIXTURES)")
    return ADM_FIXTURES
