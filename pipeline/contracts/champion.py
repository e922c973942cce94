"""The champion directory: where promotion leaves the served model, and how to read it.

The evaluate stage's promotion copies a version's files into ``<registry>/versions/<version>/``
and swaps the symlink ``<registry>/champion`` to it with one atomic rename
(:mod:`pipeline.registry`). This module is the one place that knows that path and the files'
names; the service (``serving/model.py``) and the monitor read the champion through it. Torch-free;
nothing runs on import.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.estimate import AccuracyEstimator
from pipeline.contracts.schema import Schema
from pipeline.contracts.tasks import ChampionFigures, served_task

LINK = "champion"  # <registry>/champion -> versions/<version>
VERSIONS = "versions"

# The files of a version directory (what promotion copies, what readers open).
ONNX = "model.onnx"  # the graph that serves: raw features -> probabilities, label
TWIN = "model.pt"  # its PyTorch twin (the gate attacks it; never served)
SCHEMA = "schema.json"
EXPORT = "export.json"  # parity and int8 figures
DECISION = "evaluate.json"  # the gate's decision that promoted it
CARD = "model_card.md"
REFERENCE = "reference.parquet"  # the train split's features: the monitor's drift reference
ESTIMATE = "estimate.json"  # the label-free accuracy estimator, fit on val (contracts.estimate)
BROWSER = "browser.onnx"  # the browser target's graph (deploy.browser; the page at / runs it)
DEVICE_ONNX = "device.onnx"  # the device target's graph (deploy.device) ...
DEVICE = "model.ort"  # ... in onnxruntime's ORT format (release.bundle)
OPERATORS = "required_operators.config"  # its operators, for a minimal onnxruntime build


TARGET_GRAPHS = {"browser": BROWSER, "device": DEVICE_ONNX}


def target_graph(directory: Path, target: str) -> Path:
    """A version's graph for deployment target ``target`` (browser, device), or the server's in
    a version registered before targets."""
    graph = directory / TARGET_GRAPHS[target]
    return graph if graph.is_file() else directory / ONNX


def link(registry: str | Path) -> Path:
    """``<registry>/champion``, whether or not it exists yet."""
    return Path(registry) / LINK


def versions(registry: str | Path) -> Path:
    return Path(registry) / VERSIONS


def directory(registry: str | Path) -> Path | None:
    """The version directory the champion link points at, or None before the first promotion."""
    path = link(registry)
    return path.resolve() if path.exists() else None


def target(registry: str | Path) -> str | None:
    """Where the link points (resolved), even if that is missing; None without a link."""
    path = link(registry)
    return os.path.realpath(path) if os.path.lexists(path) else None


@dataclasses.dataclass(frozen=True)
class Champion:
    """What the monitor needs of the champion: its version, files, schema, test figures (the
    task's) and label-free estimator (None for a regressor, or a champion promoted before it
    was shipped)."""

    version: str
    directory: Path
    schema: Schema
    figures: ChampionFigures
    estimator: AccuracyEstimator | None = None

    @property
    def reference(self) -> Path:
        return self.directory / REFERENCE


def read(registry: str | Path) -> Champion:
    """The champion the service serves, as promotion left it; a clear error if there is none."""
    path = link(registry)
    if not path.exists():
        raise MlcycleError(f"{path}: no champion has been promoted yet; run `make repro`")
    where = path.resolve()
    try:
        schema = Schema.from_dict(json.loads((where / SCHEMA).read_text()))
        gate = json.loads((where / DECISION).read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise MlcycleError(f"champion {where}: unreadable: {exc}") from None
    if not (where / REFERENCE).is_file():
        raise MlcycleError(
            f"champion {where}: no {REFERENCE} (promoted by an older mlcycle); "
            "run `make repro` once to promote a model that ships it"
        )
    estimator = None
    if (where / ESTIMATE).is_file():
        try:
            estimator = AccuracyEstimator.from_dict(json.loads((where / ESTIMATE).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MlcycleError(f"champion {where}: {ESTIMATE} unreadable: {exc}") from None
    figures = served_task(schema).champion_figures(gate)
    return Champion(where.name, where, schema, figures, estimator)
