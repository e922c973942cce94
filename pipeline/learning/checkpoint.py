"""Checkpoints: the stages' torch files (``models/*.pt``), written and read without pickle.

Used by train, harden, export and evaluate; the service never reads a checkpoint (it serves the
ONNX graph), so this lives in the learning layer, apart from :mod:`pipeline.contracts.io`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.io import require_file


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a file handle: the archive then names no (temporary) file."""
    import torch

    with open(path, "wb") as fh:
        torch.save(obj, fh)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by a stage, on the CPU, tensors and plain data only (no pickle)."""
    import torch

    path = require_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError) as exc:
        raise MlcycleError(
            f"input file {str(path)!r} is not a readable checkpoint: {exc}"
        ) from None


def warm_start(
    path: str | Path, model_config: dict[str, Any], transform: dict[str, Any] | None = None
) -> tuple[dict[str, Any] | None, str]:
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
    ours, theirs = _plain(model_config), _plain(saved.get("model_config") or {})
    if transform is not None and "transform" in saved:  # older checkpoints do not record it
        ours["transform"], theirs["transform"] = transform, saved["transform"]
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
    identity = load_checkpoint(path).get("transform")
    if not identity:
        return None, f"{path} does not record its feature transform"
    return dict(identity), f"its network reads it ({path})"


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
