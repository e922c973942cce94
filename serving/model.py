"""The champion the service answers with, and its hot reload.

:func:`load` reads a champion directory (``model.onnx``, ``schema.json``, ``export.json``,
``model_card.md``, written by the evaluate stage's promotion), opens the graph in onnxruntime and
runs a self-check: the graph takes the schema's feature count and answers a probe batch built
from the schema's bounds with finite probabilities over the schema's classes (a regressor's:
finite predictions inside their intervals). A directory that
fails any of this raises :class:`ModelLoadError` and is never served.

:class:`ChampionWatcher` polls ``<registry>/champion`` (the symlink promotion swaps atomically).
When it points somewhere new, the new model is loaded and checked beside the old one, the
caller's ``prepare`` hook readies whatever it keeps per model (the service's encoder and
counters), and only then is it swapped in with one reference assignment: a request that sees the
new model finds everything it needs, requests that already hold the old model finish with it, and
a broken directory leaves the old model serving. No torch, no training code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.contracts import champion
from pipeline.contracts.runtime import session
from pipeline.contracts.schema import Schema

log = logging.getLogger("mlcycle.serving")


class ModelLoadError(Exception):
    """A champion directory that cannot be served; the message says why."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    version: str
    directory: Path
    schema: Schema
    session: Any  # onnxruntime.InferenceSession
    card: str
    export: dict[str, Any]

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (rows, classes) float32, labels (rows,) int64) for encoded ``X``."""
        probs, labels = self.session.run(None, {"features": X})
        return probs, labels

    def predict_interval(self, X: np.ndarray) -> np.ndarray:
        """A regressor's (rows, 3) float32: prediction, lower, upper per row."""
        return np.stack(self.session.run(None, {"features": X}), axis=1)


def _providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def load(directory: Path, threads: int = 1) -> LoadedModel:
    """Load and self-check the champion files in ``directory``."""
    directory = Path(directory).resolve()
    try:
        schema = Schema.from_dict(json.loads((directory / champion.SCHEMA).read_text()))
        export = json.loads((directory / champion.EXPORT).read_text())
        card = (directory / champion.CARD).read_text()
        # CUDA when the image has onnxruntime-gpu and a GPU (the Dockerfile's build argument).
        sess = session(directory / champion.ONNX, threads, _providers())
    except Exception as exc:  # a missing, truncated or foreign file: refuse the directory
        raise ModelLoadError(f"{directory}: {type(exc).__name__}: {exc}") from None
    model = LoadedModel(directory.name, directory, schema, sess, card, export)
    self_check(model)
    return model


def self_check(model: LoadedModel) -> None:
    """The graph must fit the schema and answer sensibly before it may serve."""
    inputs, outputs = model.session.get_inputs(), model.session.get_outputs()
    names = [i.name for i in inputs], [o.name for o in outputs]
    if model.schema.regression:
        return _self_check_regression(model, names)
    if names != (["features"], ["probabilities", "label"]):
        raise ModelLoadError(f"{model.directory}: graph inputs/outputs are {names}")
    width = inputs[0].shape[1]
    n_features, n_classes = len(model.schema.features), model.schema.n_classes
    if width != n_features:
        raise ModelLoadError(
            f"{model.directory}: the graph takes {width} features, schema.json has {n_features}"
        )
    low, high = (np.nan_to_num(b) for b in model.schema.bounds)
    probe = np.stack([low, (low + high) / 2, high]).astype(np.float32)
    try:
        probs, labels = model.predict(probe)
    except Exception as exc:
        raise ModelLoadError(f"{model.directory}: the graph failed on a probe: {exc}") from None
    if probs.shape != (3, n_classes) or not np.all(np.isfinite(probs)):
        raise ModelLoadError(
            f"{model.directory}: probe answered probabilities of shape {probs.shape}, "
            f"expected (3, {n_classes}) finite values"
        )
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3) or labels.max() >= n_classes:
        raise ModelLoadError(f"{model.directory}: probe answers are not class probabilities")


def _self_check_regression(model: LoadedModel, names: tuple[list[str], list[str]]) -> None:
    if names != (["features"], ["prediction", "lower", "upper"]):
        raise ModelLoadError(f"{model.directory}: a regressor's graph inputs/outputs are {names}")
    width = model.session.get_inputs()[0].shape[1]
    if width != len(model.schema.features):
        raise ModelLoadError(
            f"{model.directory}: the graph takes {width} features, schema.json has "
            f"{len(model.schema.features)}"
        )
    low, high = (np.nan_to_num(b) for b in model.schema.bounds)
    probe = np.stack([low, (low + high) / 2, high]).astype(np.float32)
    try:
        out = model.predict_interval(probe)
    except Exception as exc:
        raise ModelLoadError(f"{model.directory}: the graph failed on a probe: {exc}") from None
    if out.shape != (3, 3) or not np.all(np.isfinite(out)):
        raise ModelLoadError(f"{model.directory}: probe answered {out.shape}, not finite (3, 3)")
    if not np.all((out[:, 1] <= out[:, 0]) & (out[:, 0] <= out[:, 2])):
        raise ModelLoadError(f"{model.directory}: probe intervals do not hold their predictions")


class ChampionWatcher:
    """Holds the served model; a thread swaps in a new champion once it loaded and checked."""

    def __init__(
        self,
        registry: Path,
        interval_s: float,
        prepare: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        self.registry = Path(registry)
        self.interval_s = interval_s
        self.prepare = prepare  # runs before readers can see the model
        self.current: LoadedModel | None = None
        self.refused: dict[str, str] = {}  # target -> why, so a broken one is not retried
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def target(self) -> str | None:
        return champion.target(self.registry)

    def check(self) -> bool:
        """Load the link's target if it is new; True if the served model changed."""
        target = self.target()
        current = str(self.current.directory) if self.current else None
        if target is None or target == current or target in self.refused:
            return False
        try:
            model = load(Path(target))
        except ModelLoadError as exc:
            self.refused[target] = str(exc)
            log.error("refusing champion %s, still serving %s: %s", target, current, exc)
            return False
        if self.prepare is not None:
            self.prepare(model)
        previous, self.current = self.current, model  # one assignment: atomic for readers
        log.warning(
            "now serving version %s (was %s)",
            model.version,
            previous.version if previous else None,
        )
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # never let the watcher die: the old model keeps serving
                log.exception("champion watcher")
