"""Checkpoints: the stages' torch files (``models/*.pt``), written and read without pickle.

Used by train, harden, export and evaluate; the service never reads a checkpoint (it serves the
ONNX graph), so this lives in the learning layer, apart from :mod:`pipeline.contracts.io`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.io import require_file


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A model checkpoint (``models/model.pt``, ``models/hardened.pt``, ``data/warm_start.pt``).

    The train stage writes the network and what rebuilds it (:func:`pipeline.learning.model.build`):
    its config, the feature transform's arrays and which transform it is, the schema's names and
    classes, the train config, and the task's own (``task`` and ``target_scaling`` for a
    regressor). Harden replaces ``net`` and adds its config and the calibration head export
    puts in the graph (``temperature``; a regressor's ``interval``). A field that is None is not
    in the file (a classifier's file has no ``task``: a checkpoint without it is a classifier's,
    as before regression existed).
    """

    model_config: dict[str, Any]
    net: dict[str, Any]  # the network's state dict
    transform_state: dict[str, Any]  # the feature transform's arrays, as tensors
    transform: dict[str, Any] | None  # transform_identity(); None in checkpoints before it
    feature_names: list[str]
    classes: list[Any]
    train_config: dict[str, Any]
    task: str | None = None  # None: classification
    target_scaling: dict[str, Any] | None = None  # a regressor's
    harden_config: dict[str, Any] | None = None
    temperature: float | None = None  # a classifier's calibration head
    interval: dict[str, Any] | None = None  # a regressor's: half_width, coverage, calibrated_on

    ALWAYS = ("model_config", "net", "transform_state", "transform")

    @property
    def task_name(self) -> str:
        return self.task or "classification"

    def as_dict(self) -> dict[str, Any]:
        """What the file holds: plain containers and tensors, so it loads without pickle."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: v for k, v in out.items() if v is not None or k in self.ALWAYS}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str | Path) -> Checkpoint:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        missing = sorted({"model_config", "net", "transform_state"} - set(d))
        if unknown or missing:
            raise MlcycleError(
                f"input file {str(where)!r} is not a model checkpoint of this version "
                f"(unknown keys {unknown}, missing {missing})"
            )
        return cls(
            **{"transform": None, "feature_names": [], "classes": [], "train_config": {}, **d}
        )


def save_checkpoint(obj: Checkpoint | dict[str, Any], path: Path) -> None:
    """``torch.save`` through a file handle: the archive then names no (temporary) file."""
    import torch

    with open(path, "wb") as fh:
        torch.save(obj.as_dict() if isinstance(obj, Checkpoint) else obj, fh)


def load_file(path: str | Path) -> dict[str, Any]:
    """A torch file a stage wrote, on the CPU, tensors and plain data only (no pickle)."""
    import torch

    path = require_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError) as exc:
        raise MlcycleError(
            f"input file {str(path)!r} is not a readable checkpoint: {exc}"
        ) from None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """A model checkpoint written by train or harden."""
    return Checkpoint.from_dict(load_file(path), path)


def warm_start(
    path: str | Path, model_config: dict[str, Any], transform: dict[str, Any] | None = None
) -> tuple[Checkpoint | None, str]:
    """The champion's checkpoint a retrain starts from, or None, with the reason either way.

    ``path`` (``data/warm_start.pt``) is empty in git: a first run trains from scratch. The
    monitor writes the champion's hardened checkpoint there before it retrains; it is used only
    if its network has the shape this run builds (same architecture, inputs and classes) and,
    given ``transform`` (:func:`transform_identity`), its inputs come from the same kind of
    feature transform, since params may have changed either since.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None, f"from scratch ({path} is empty: no champion to start from)"
    saved = load_checkpoint(path)
    ours, theirs = _plain(model_config), _plain(saved.model_config or {})
    if transform is not None and saved.transform is not None:  # older ones do not record it
        ours["transform"], theirs["transform"] = transform, saved.transform
    if theirs != ours:
        changed = sorted(k for k in ours if theirs.get(k) != ours[k])
        return None, (
            f"from scratch ({path}: the champion's network differs in {', '.join(changed)})"
        )
    return saved, f"warm start from the champion's weights ({path})"


def transform_identity(kind: str, n_components: int | None) -> dict[str, Any]:
    """What a checkpoint records of the feature transform its network reads (``transform``):
    a retrain's features stage keeps it, and a warm start needs it unchanged."""
    return {"kind": kind, "n_components": n_components}


def warm_start_transform(path: str | Path) -> tuple[dict[str, Any] | None, str]:
    """The feature transform (:func:`transform_identity`) of the checkpoint at ``path``, which a
    retrain's features stage keeps, or None (an empty file, or a checkpoint that does not record
    it), with the reason either way. torch is imported only for a non-empty file."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None, f"{path} is empty: a first run"
    identity = load_file(path).get("transform")  # only this field: the rest may be any shape
    if not identity:
        return None, f"{path} does not record its feature transform"
    return dict(identity), f"its network reads it ({path})"


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
