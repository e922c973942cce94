"""Publishing a gated candidate: its files registered as an MLflow version, the champion swapped
if it passed, the monitor's drift reference and label-free estimate beside it, the decision
written to ``--metrics``.

Torch-free; the evaluate stage (:mod:`pipeline.evaluate`) calls :func:`publish` once it has the
decision and the model card.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import registry
from pipeline.contracts import champion as champion_files
from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.io import atomic_outputs, dump_json
from pipeline.contracts.params import GateConfig
from pipeline.contracts.schema import FEEDBACK, Schema
from pipeline.release.bundle import check, convert
from pipeline.release.decision import Decision
from pipeline.release.tracking import Tracker

# A retrain's train split with at least this many production rows re-baselines the monitor on them.
REBASELINE_ROWS = 200


def drift_reference(train: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """The rows the monitor compares production windows with: the train split, or, once it holds
    at least ``REBASELINE_ROWS`` labelled production rows (a retrain on feedback), those rows
    alone: the model was refit on what production now sends, so the same shift would otherwise
    alarm in every window after a successful retrain (the mix of source and production rows
    differs from either)."""
    production = train[FEEDBACK].notna() if FEEDBACK in train.columns else None
    if production is not None and int(production.sum()) >= REBASELINE_ROWS:
        train = train[production]
    return train[schema.names].astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Release:
    """A candidate's files as the registry keeps them (the evaluate stage's inputs)."""

    onnx: Path  # the graph the gate chose (fp32 or int8): the server's
    twin: Path
    schema: Path
    export: Path
    reference: pd.DataFrame  # the monitor's drift reference (:func:`drift_reference`)
    # Each deployment target's graph (deploy's choice; the server's is ``onnx``).
    targets: dict[str, Path] = dataclasses.field(default_factory=dict)


def publish(
    release: Release,
    tracker: Tracker,
    cfg: GateConfig,
    decision: Decision,
    card: str,
    registry_dir: Path,
    metrics: str | Path,
) -> str:
    """The candidate's files (with the model card, the decision, the monitor's drift reference
    and, where the decision has one, its label-free estimate) registered as a new version,
    promoted if it passed; then ``metrics`` (the decision with its version) and the hints.
    Returns the version."""
    with tempfile.TemporaryDirectory() as tmp:
        card_path = Path(tmp) / champion_files.CARD
        decision_path = Path(tmp) / champion_files.DECISION
        reference_path = Path(tmp) / champion_files.REFERENCE
        card_path.write_text(card)
        release.reference.to_parquet(reference_path, index=False)
        dump_json(decision.as_json(), decision_path)  # the figures GET /model shows
        files = {
            champion_files.ONNX: release.onnx,
            champion_files.TWIN: release.twin,
            champion_files.SCHEMA: release.schema,
            champion_files.EXPORT: release.export,
            champion_files.DECISION: decision_path,
            champion_files.CARD: card_path,  # registered with the version, shipped if promoted
            champion_files.REFERENCE: reference_path,  # the monitor's reference for this version
        }
        # One graph per target: a retrain's page and device bundle are the version the service
        # answers with. The device's is converted to ORT and checked now.
        for target, name in champion_files.TARGET_GRAPHS.items():
            files[name] = release.targets.get(target, release.onnx)
        device_graph(release, files[champion_files.DEVICE_ONNX], Path(tmp), files)
        if decision.estimate is not None:  # the monitor's label-free estimate (a classifier's)
            estimate_path = Path(tmp) / champion_files.ESTIMATE
            dump_json(decision.estimate, estimate_path)
            files[champion_files.ESTIMATE] = estimate_path
        version = register(tracker, decision, files, card, cfg)
        if decision.passed:
            registry.promote(tracker, cfg.model_name, version, registry_dir, files)
    with atomic_outputs(metrics) as (tmp_metrics,):
        dump_json(dataclasses.replace(decision, version=version).as_json(), tmp_metrics)
    for line in decision.hints:
        print(f"evaluate: hint: {line}")
    return version


def device_graph(release: Release, graph: Path, folder: Path, files: dict[str, Path]) -> None:
    """``model.ort`` and its ``required_operators.config`` (:mod:`pipeline.release.bundle`)
    from the device's ``graph``, checked against it on the drift reference's rows, into
    ``files``. A graph that fails the check is left out with a warning (the server's graph
    still ships; a device bundle of this version converts again and names the failure)."""
    try:
        convert(graph, folder)
        schema = Schema.from_dict(json.loads(release.schema.read_text()))
        rows = release.reference[schema.names].to_numpy(np.float32)
        check(graph, folder / champion_files.DEVICE, rows, schema)
    except MlcycleError as exc:
        print(f"evaluate: warning: no device graph for this version: {exc}", file=sys.stderr)
        return
    files[champion_files.DEVICE] = folder / champion_files.DEVICE
    files[champion_files.OPERATORS] = folder / champion_files.OPERATORS


def verdict(decision: Decision) -> str:
    if decision.passed:
        return "promoted to champion"
    return "rejected: " + "; ".join(decision.reasons)


def group_metrics(decision: Decision) -> dict[str, float]:
    """The candidate's per-group test figures as MLflow metrics (``group_<name>_<figure>``,
    the name reduced to the characters MLflow accepts), and its largest gap."""
    test = (decision.groups or {}).get("candidate", {}).get("test")
    if not test:
        return {}
    out = {}
    for name, figs in test["by_group"].items():
        safe = re.sub(r"[^0-9A-Za-z_\-. /]", "_", str(name))
        out.update(
            {f"group_{safe}_{k}": float(v) for k, v in figs.items() if not isinstance(v, list)}
        )
    if "gap" in test:
        out["group_gap"] = float(test["gap"]["value"])
    return out


def register(
    tracker: Tracker,
    decision: Decision,
    files: dict[str, Path],
    card: str,
    cfg: GateConfig,
) -> str:
    """Log the candidate's files to an MLflow run and create a registry version; returns it."""
    with tracker.run("evaluate") as run:
        for src in files.values():
            run.log_artifact(src, folder="model")
        run.log_metrics({f"candidate_{k}": v for k, v in decision.candidate.items()})
        run.log_metrics(group_metrics(decision))
        run.log_dict(decision.as_json(), "evaluate.json")
        tags = {
            "gate": "passed" if decision.passed else "failed",
            "variant": decision.variant,
            "failed_rules": ",".join(decision.failed_rules),
        }
        return tracker.register(cfg.model_name, run, "model", tags, card)
