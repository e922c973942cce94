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
