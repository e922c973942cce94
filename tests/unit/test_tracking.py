"""MLflow: the store the stage or the user names, and artifacts where that store says.

Each test runs in its own working directory: MLflow's default for a database store without an
artifact root is ``./mlruns`` of the current directory, which these tests would catch.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.release.tracking import Tracker, artifact_root, tracking_uri
from tests.conftest import tracking_db


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An unrelated working directory, as when a stage or a notebook runs from another place."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def logged_artifact(tracker: Tracker, tmp_path: Path) -> tuple[str, list[Path]]:
    """Log one artifact in a new run; returns the run's artifact URI and where the file went."""
    note = tmp_path / "note.txt"
    note.write_text("hello")
    with tracker.run("probe") as run:
        run.log_artifact(note)
        uri = run.artifact_uri
    return uri, sorted(tmp_path.rglob("note.txt"))


@pytest.mark.slow  # MLflow creates and migrates a real store: 3 s (make test < 2 min)
def test_default_store_keeps_artifacts_beside_the_database(tmp_path: Path, elsewhere: Path) -> None:
    tracker = Tracker(tmp_path / "store/mlflow.db")
    assert tracker.uri == f"sqlite:///{tmp_path / 'store/mlflow.db'}"
    uri, found = logged_artifact(tracker, tmp_path)
    assert uri.startswith((tmp_path / "store/mlartifacts").as_uri())
    assert found == [tmp_path / "note.txt", *(tmp_path / "store/mlartifacts").rglob("note.txt")]
    assert not (elsewhere / "mlruns").exists()


@pytest.mark.slow  # two real stores: 4 s
@pytest.mark.parametrize("form", ["relative", "absolute"])
def test_a_user_sqlite_uri_keeps_artifacts_beside_its_file(
    form: str, tmp_path: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = elsewhere / "user/runs.db"
    db.parent.mkdir()
    uri = "sqlite:///user/runs.db" if form == "relative" else f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracker = Tracker(tmp_path / "ignored.db")  # the user's store wins over the stage's file
    assert tracker.uri == uri and not (tmp_path / "ignored.db").exists()
    artifact_uri, _ = logged_artifact(tracker, tmp_path)
    assert artifact_uri.startswith((elsewhere / "user/mlartifacts").as_uri())
    assert list((elsewhere / "user/mlartifacts").rglob("note.txt"))
    assert not (elsewhere / "mlruns").exists()


def test_a_server_keeps_its_own_artifacts_and_other_databases_get_a_root() -> None:
    assert artifact_root("http://127.0.0.1:5000", "mlflow.db") is None
    root = artifact_root("postgresql://u@localhost/mlflow", "/srv/repo/mlflow.db")
    assert root == Path("/srv/repo/mlartifacts").as_uri()


def test_trackers_do_not_share_state(tmp_path: Path, elsewhere: Path) -> None:
    a, b = Tracker(tracking_db(tmp_path / "a.db")), Tracker(tracking_db(tmp_path / "b.db"))
    with a.run("one"), b.run("two"):
        pass
    assert len(a.client.search_runs([a.experiment_id()])) == 1
    assert len(b.client.search_runs([b.experiment_id()])) == 1
    assert "MLFLOW_TRACKING_URI" not in os.environ  # a subprocess must not inherit a store
    assert tracking_uri(tmp_path / "c.db") == f"sqlite:///{tmp_path / 'c.db'}"


def test_a_failed_body_marks_the_run_failed(tmp_path: Path, elsewhere: Path) -> None:
    tracker = Tracker(tracking_db(tmp_path / "mlflow.db"))
    with pytest.raises(RuntimeError), tracker.run("boom") as run:
        raise RuntimeError("boom")
    assert tracker.client.get_run(run.id).info.status == "FAILED"
