"""MLflow set-up shared by the stages: an embedded SQLite tracking database by default.

``MLFLOW_TRACKING_URI`` wins when set (any tracking server); otherwise the stage's ``--tracking-db``
path becomes an absolute ``sqlite:///`` URI (DVC runs stages from the repo root, but an absolute
URI keeps tests and other working directories honest) with artifacts in ``mlartifacts/`` beside it.
"""

from __future__ import annotations

import os
from pathlib import Path


def configure(tracking_db: str | Path) -> str:
    """Point MLflow at the tracking store; returns the URI in use."""
    import mlflow

    from_user = os.environ.get("MLFLOW_TRACKING_URI")
    uri = from_user or f"sqlite:///{Path(tracking_db).resolve()}"
    mlflow.set_tracking_uri(uri)
    if from_user is None:
        # set_tracking_uri also exports the URI to the environment, where a later call (or a
        # subprocess) would take this database for the user's own server.
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    return uri


def experiment_id(name: str, tracking_db: str | Path) -> str:
    """Get or create experiment ``name``; local stores keep artifacts beside the database."""
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    # A local SQLite store (not a server named by the user) keeps artifacts beside it.
    if mlflow.get_tracking_uri() == f"sqlite:///{Path(tracking_db).resolve()}":
        location = (Path(tracking_db).resolve().parent / "mlartifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)
