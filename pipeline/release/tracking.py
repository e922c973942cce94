"""Every MLflow call of the project: runs, metrics, artifacts and the model registry.

One explicit :class:`mlflow.MlflowClient` per :class:`Tracker`, never MLflow's global state, so
two stores in one process (tests, a user's server beside a local file) cannot mix. The store is
``MLFLOW_TRACKING_URI`` when set (a server URL, or a database URI, relative or absolute), else
the stage's ``--tracking-db`` file as an absolute ``sqlite:///`` URI.

Artifacts go where the store says: a server keeps its own; a database store (which has no
artifact root of its own, and whose MLflow default would be ``./mlruns`` of whatever directory the
process happens to run in) gets ``mlartifacts/`` beside its SQLite file, or beside
``--tracking-db`` for other databases. Used by train, harden, evaluate and the registry CLI.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

EXPERIMENT = "mlcycle"
CHAMPION = "champion"


def tracking_uri(tracking_db: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` if the user set one, else the absolute SQLite URI of the file."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(tracking_db).resolve()}"


def artifact_root(uri: str, tracking_db: str | Path) -> str | None:
    """Where a new experiment's artifacts go; None lets a tracking server decide."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https", "databricks"):
        return None
    if scheme == "sqlite":
        # sqlite:///rel.db is relative to the working directory, sqlite:////abs.db is absolute.
        db = Path(uri.removeprefix("sqlite:///")).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return (Path(tracking_db).resolve().parent / "mlartifacts").as_uri()


class Run:
    """One MLflow run, logged through the tracker's client."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.id = run_id

    @property
    def artifact_uri(self) -> str:
        return self.client.get_run(self.id).info.artifact_uri

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # the store's batch limit
            self.client.log_batch(self.id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.id, metrics=items[i : i + 1000])

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.id, str(path), artifact_path=folder)

    def log_dict(self, obj: dict[str, Any], name: str) -> None:
        self.client.log_dict(self.id, obj, name)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.id, key, value)


class Tracker:
    """The MLflow store of a stage: runs in experiment ``mlcycle`` and the model registry."""

    def __init__(self, tracking_db: str | Path) -> None:
        import mlflow

        self.uri = tracking_uri(tracking_db)
        self.client = mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self._artifacts = artifact_root(self.uri, tracking_db)

    def experiment_id(self, name: str = EXPERIMENT) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(name, artifact_location=self._artifacts)

    @contextmanager
    def run(
        self, name: str, tags: dict[str, str] | None = None, resume: str | None = None
    ) -> Iterator[Run]:
        """A new run (or run ``resume``, continued); FINISHED on exit, FAILED on an exception."""
        if resume is not None:
            self.client.update_run(resume, status="RUNNING")
            run_id = resume
        else:
            run_id = self.client.create_run(
                self.experiment_id(), run_name=name, tags={"stage": name, **(tags or {})}
            ).info.run_id
        try:
            yield Run(self.client, run_id)
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")

    def find_run(self, tag: str, value: str) -> str | None:
        """The newest run of the experiment tagged ``tag = value``, if any."""
        found = self.client.search_runs(
            [self.experiment_id()],
            filter_string=f"tags.{tag} = '{value}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return found[0].info.run_id if found else None

    # The registry: versions of a registered model, the champion alias, version tags.

    def champion_version(self, model: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(model, CHAMPION).version)
        except MlflowException:
            return None

    def register(
        self, model: str, run: Run, folder: str, tags: dict[str, str], description: str
    ) -> str:
        """A new version of ``model`` from artifact ``folder`` of ``run``; returns its number."""
        if not self.client.search_registered_models(f"name = '{model}'"):
            self.client.create_registered_model(model, description="mlcycle champion line")
        version = self.client.create_model_version(
            model,
            source=f"{run.artifact_uri}/{folder}",
            run_id=run.id,
            tags=tags,
            description=description,
        )
        return str(version.version)

    def set_champion(self, model: str, version: str) -> None:
        self.client.set_registered_model_alias(model, CHAMPION, version)

    def version_tags(self, model: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(model, version).tags)

    def tag_version(self, model: str, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(model, version, key, value)
