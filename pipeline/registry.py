"""The model registry: MLflow's registry plus the local champion directory the service reads.

    python -m pipeline.registry status     # the champion's version and directory; exit 1 and
                                           # the repair if the directory and MLflow disagree
    python -m pipeline.registry repair     # finish or undo an interrupted promotion
    python -m pipeline.registry rollback   # back to the champion before the current one

    python -m pipeline.registry bundle --target device [--out bundle/device]
                                           # the champion as a folder for a device
                                           # (pipeline/release/bundle.py)

(all take ``--params params.yaml --registry registry --tracking-db mlflow.db``, the defaults)

Every evaluated model becomes a version of the registered model ``gate.model_name`` (ONNX, torch
twin, schema.json, metrics, model card). Promotion copies the version's files to
``registry/versions/<version>/``, then swaps the symlink ``registry/champion`` to it with one
atomic rename, and moves the MLflow alias ``champion``. A reader of ``registry/champion/`` sees the
old files or the new ones, never a mix. ``rollback`` moves both back to the champion before the
current one.

A promotion killed part way (kill -9, a lost machine) leaves one of: a temporary copy in
``versions/`` (never served), a version directory nobody points at, or the symlink on the new
version with MLflow's alias still on the old one. :func:`inspect` names each; :func:`repair`
removes the temporary copies and makes the alias follow the symlink when the version it points
at passed the gate (its ``evaluate.json``), else points the symlink back at the alias. The
evaluate stage repairs before it reads the champion, so the next retrain starts consistent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline.contracts import champion
from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import GateConfig, read_params, section
from pipeline.release.tracking import Tracker

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


@dataclasses.dataclass(frozen=True)
class Inspection:
    """The registry directory against MLflow's alias: what disagrees and what repairs it."""

    alias: str | None  # the version MLflow's ``champion`` alias names
    linked: str | None  # the version directory ``registry/champion`` points at
    problems: tuple[str, ...]
    repairs: tuple[str, ...]  # what :func:`repair` would do, in order


def _passed_gate(directory: Path) -> bool:
    try:
        return bool(json.loads((directory / champion.DECISION).read_text()).get("passed"))
    except (OSError, ValueError):
        return False


def _leftovers(registry: Path) -> list[Path]:
    """Temporary copies and links an interrupted promotion left (never read by the service)."""
    versions = champion.versions(registry)
    found = sorted(versions.glob(".*")) if versions.is_dir() else []
    return found + sorted(registry.glob(f".{champion.LINK}.*.tmp"))


def inspect(tracker: Tracker, name: str, registry: Path) -> Inspection:
    """Compare ``registry/champion`` with MLflow's alias; nothing is changed."""
    alias = tracker.champion_version(name)
    target = champion.target(registry)
    linked = Path(target).name if target is not None else None
    problems, repairs = [], []
    for path in _leftovers(registry):
        problems.append(f"{path}: left by an interrupted promotion (never served)")
        repairs.append(f"remove {path}")
    if target is not None and not Path(target).is_dir():
        problems.append(f"{champion.link(registry)} points at {target}, which does not exist")
    if alias != linked:
        problems.append(
            f"{champion.link(registry)} serves version {linked} but MLflow's alias "
            f"{name}@champion is version {alias}: a promotion or rollback was interrupted"
        )
        if linked is not None and target is not None and _passed_gate(Path(target)):
            repairs.append(f"move MLflow's alias {name}@champion to version {linked} (served)")
        elif alias is not None and (champion.versions(registry) / alias).is_dir():
            repairs.append(f"point {champion.link(registry)} at versions/{alias}")
        else:
            repairs.append("none automatic: run `dvc repro --force --single-item evaluate`")
    return Inspection(alias, linked, tuple(problems), tuple(repairs))


def repair(tracker: Tracker, name: str, registry: Path) -> list[str]:
    """Undo or finish an interrupted promotion (see :func:`inspect`); returns what was done."""
    found = inspect(tracker, name, registry)
    done = []
    for path in _leftovers(registry):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        done.append(f"removed {path}")
    if found.alias != found.linked:
        target = champion.target(registry)
        if found.linked is not None and target is not None and _passed_gate(Path(target)):
            tracker.set_champion(name, found.linked)
            done.append(f"moved MLflow's alias {name}@champion to version {found.linked}")
        elif found.alias is not None and (champion.versions(registry) / found.alias).is_dir():
            point_champion_at(registry, champion.versions(registry) / found.alias)
            done.append(f"pointed {champion.link(registry)} at versions/{found.alias}")
    return done


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
    parser.add_argument("command", choices=["status", "repair", "rollback", "bundle"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--tracking-db", default="mlflow.db")
    parser.add_argument("--target", default="device", help="bundle: the deployment target")
    parser.add_argument("--out", default=None, help="bundle: the folder (bundle/<target>)")
    args = parser.parse_args(argv)
    registry = Path(args.registry)
    try:
        if args.command == "bundle":
            from pipeline.release.bundle import bundle

            out = Path(args.out or f"bundle/{args.target}")
            made = bundle(registry, out, args.target)
            print(
                f"registry: version {made['version']} bundled for {args.target} in {out} "
                f"(model.ort {made['files']['model.ort']['bytes']} bytes; checked on "
                f"{made['checked']['rows']} rows)"
            )
            return 0
        name = section(read_params(args.params), "gate", GateConfig).model_name
        tracker = Tracker(args.tracking_db)
        if args.command == "rollback":
            old, new = rollback(tracker, name, registry)
            print(f"registry: champion of {name!r} rolled back from version {old} to {new}")
        elif args.command == "repair":
            for line in repair(tracker, name, registry) or ["nothing to repair"]:
                print(f"registry: {line}")
        else:
            found = inspect(tracker, name, registry)
            files = champion.directory(registry)
            print(f"registry: {name!r} champion = version {found.alias}, files = {files}")
            for line in found.problems:
                print(f"registry: disagreement: {line}")
            for line in found.repairs:
                print(f"registry: repair: {line} (`python -m pipeline.registry repair`)")
            return 1 if found.problems else 0
    except MlcycleError as exc:
        print(f"registry: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
