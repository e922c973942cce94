"""MLflow set-up shared by the stages: an embedded SQLite tracking database by default.

``MLFLOW_TRACKING_URI`` wins when set (any tracking server); otherwise the stage's ``--tracking-db``
path becomes an absolute ``sqlite:///`` URI (DVC runs stages from the repo root, but an absolute
URI keeps tests and other working directories honest) with artifacts in ``mlartifacts/`` beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

_set_here: set[str] = set()  # URIs configure() has set (MLflow exports each to the env)


def configure(tracking_db: str | Path) -> str:
    """Point MLflow at the tracking store; returns the URI in use."""
    import mlflow

    # set_tracking_uri also exports MLFLOW_TRACKING_URI, so an env value set here is ours, not
    # the user's: a later call with another database must not inherit it.
    from_user = os.environ.get("MLFLOW_TRACKING_URI")
    if from_user in _set_here:
        from_user = None
    uri = from_user or f"sqlite:///{Path(tracking_db).resolve()}"
    mlflow.set_tracking_uri(uri)
    _set_here.add(uri)
    return uri


def experiment_id(name: str, tracking_db: str | Path) -> str:
    """Get or create experiment ``name``; local stores keep artifacts beside the database."""
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    # set_tracking_uri exports MLFLOW_TRACKING_URI, so compare URIs rather than read the env.
    if mlflow.get_tracking_uri() == f"sqlite:///{Path(tracking_db).resolve()}":
        location = (Path(tracking_db).resolve().parent / "mlartifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)
