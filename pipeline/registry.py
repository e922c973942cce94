"""The model registry: MLflow's registry plus the local champion directory the service reads.

    python -m pipeline.registry status     # the champion's version and directory
    python -m pipeline.registry rollback   # back to the champion before the current one

(both take ``--params params.yaml --registry registry --tracking-db mlflow.db``, the defaults)

Every evaluated model becomes a version of the registered model ``gate.model_name`` (ONNX, torch
twin, schema.json, metrics, model card). Promotion copies the version's files to
``registry/versions/<version>/``, then swaps the symlink ``registry/champion`` to it with one
atomic rename, and moves the MLflow alias ``champion``. A reader of ``registry/champion/`` sees the
old files or the new ones, never a mix. ``rollback`` moves both back to the champion before the
current one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline.contracts import champion
from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import GateConfig, read_params, section
from pipeline.learning.tracking import Tracker

PREVIOUS_TAG = "previous_champion"


def stage_version_dir(registry: Path, version: str, files: dict[str, Path]) -> Path:
    """Copy ``files`` (name -> source) into ``registry/versions/<version>`` atomically."""
    versions = champion.versions(registry)
    versions.mkdir(parents=True, exist_ok=True)
    final = versions / version
    if final.exists():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=versions))
    try:
        for name, src in files.items():
            shutil.copy2(src, tmp / name)
        tmp.chmod(0o755)  # mkdtemp makes 0700; the service may run as another user
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def point_champion_at(registry: Path, target: Path) -> None:
    """Atomically repoint ``registry/champion`` (a relative symlink) at ``target``."""
    link = champion.link(registry)
    tmp = registry / f".{link.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(target, registry))
    os.replace(tmp, link)


def promote(
    tracker: Tracker, name: str, version: str, registry: Path, files: dict[str, Path]
) -> str | None:
    """Make ``version`` the champion; returns the version it replaced."""
    previous = tracker.champion_version(name)
    target = stage_version_dir(registry, version, files)
    if previous is not None:
        tracker.tag_version(name, version, PREVIOUS_TAG, previous)
    point_champion_at(registry, target)
    tracker.set_champion(name, version)
    return previous


def rollback(tracker: Tracker, name: str, registry: Path) -> tuple[str, str]:
    """Move the champion back to the one before it; returns (from, to) versions."""
    current = tracker.champion_version(name)
    if current is None:
        raise MlcycleError(f"registered model {name!r} has no champion to roll back")
    previous = tracker.version_tags(name, current).get(PREVIOUS_TAG)
    if not previous:
        raise MlcycleError(f"champion version {current} of {name!r} has no previous champion")
    target = champion.versions(registry) / previous
    if not target.is_dir():
        raise MlcycleError(f"the files of version {previous} are missing from {target}")
    point_champion_at(registry, target)
    tracker.set_champion(name, previous)
    tracker.tag_version(name, current, "rolled_back", "true")
    return current, previous


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["status", "rollback"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--tracking-db", default="mlflow.db")
    args = parser.parse_args(argv)
    registry = Path(args.registry)
    try:
        name = section(read_params(args.params), "gate", GateConfig).model_name
        tracker = Tracker(args.tracking_db)
        if args.command == "rollback":
            old, new = rollback(tracker, name, registry)
            print(f"registry: champion of {name!r} rolled back from version {old} to {new}")
        else:
            version, files = tracker.champion_version(name), champion.directory(registry)
            print(f"registry: {name!r} champion = version {version}, files = {files}")
    except MlcycleError as exc:
        print(f"registry: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
