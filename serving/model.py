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
from pipeline.contracts.tasks import ServedTask, served_task

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
    task: ServedTask  # how its answers are served and logged (schema.json's task)

    def run(self, X: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs (the task's, in order) for encoded ``X``."""
        return self.session.run(None, {"features": X})


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
    model = LoadedModel(directory.name, directory, schema, sess, card, export, served_task(schema))
    self_check(model)
    return model


def self_check(model: LoadedModel) -> None:
    """The graph must fit the schema and answer a probe batch sensibly before it may serve."""
    inputs, outputs = model.session.get_inputs(), model.session.get_outputs()
    names = [i.name for i in inputs], [o.name for o in outputs]
    if names != (["features"], list(model.task.outputs)):
        raise ModelLoadError(
            f"{model.directory}: graph inputs/outputs are {names}; a {model.task.name} model's "
            f"are (['features'], {list(model.task.outputs)})"
        )
    width, n_features = inputs[0].shape[1], len(model.schema.features)
    if width != n_features:
        raise ModelLoadError(
            f"{model.directory}: the graph takes {width} features, schema.json has {n_features}"
        )
    low, high = (np.nan_to_num(b) for b in model.schema.bounds)
    probe = np.stack([low, (low + high) / 2, high]).astype(np.float32)
    try:
        answers = model.run(probe)
    except Exception as exc:
        raise ModelLoadError(f"{model.directory}: the graph failed on a probe: {exc}") from None
    problem = model.task.probe_problem(answers, model.schema)
    if problem is not None:
        raise ModelLoadError(f"{model.directory}: {problem}")


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
