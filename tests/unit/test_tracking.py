"""MLflow set-up: the embedded SQLite store by default, the user's server when named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline import tracking


def test_each_call_gets_its_own_database_and_leaves_no_env(tmp_path: Path) -> None:
    first = tracking.configure(tmp_path / "a.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ  # a subprocess must not inherit it
    second = tracking.configure(tmp_path / "b.db")
    assert first == f"sqlite:///{tmp_path / 'a.db'}"
    assert second == f"sqlite:///{tmp_path / 'b.db'}"


def test_a_user_server_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tracking.configure(tmp_path / "a.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'server.db'}")
    assert tracking.configure(tmp_path / "b.db") == f"sqlite:///{tmp_path / 'server.db'}"
