"""Shared fixtures: a private temp home per test, the shared data folder, the embedded model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PANZA_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh PANZA_HOME (and no stray PANZA_* settings from the environment)."""
    for key in list(os.environ):
        if key.startswith("PANZA_") and key != "PANZA_SHARED_DATA":
            monkeypatch.delenv(key, raising=False)
    h = tmp_path / "home"
    monkeypatch.setenv("PANZA_HOME", str(h))
    return h


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a skip that says why."""
    if not SHARED.is_dir():
        pytest.skip(f"needs the shared data set at {SHARED} (absent in a fresh clone)")
    return SHARED


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    """Path of the embedded SmolLM2-135M GGUF."""
    from panza_local import catalogue

    return catalogue.embedded_path("smollm2-135m")
