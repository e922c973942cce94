"""MLflow set-up: the embedded SQLite store by default, the user's server when named."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import tracking


def test_each_call_gets_its_own_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = tracking.configure(tmp_path / "a.db")
    second = tracking.configure(tmp_path / "b.db")  # not the URI the first call exported
    assert first == f"sqlite:///{tmp_path / 'a.db'}"
    assert second == f"sqlite:///{tmp_path / 'b.db'}"


def test_a_user_server_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tracking.configure(tmp_path / "a.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'server.db'}")
    assert tracking.configure(tmp_path / "b.db") == f"sqlite:///{tmp_path / 'server.db'}"
