"""Atomic file outputs and small JSON / Parquet helpers shared by the stages.

Every stage output goes through :func:`atomic_outputs`: all files are written to temporaries in
their final folders and renamed into place only once every one of them has been written, so a
failed stage leaves the previous outputs untouched instead of half-written ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@contextlib.contextmanager
def atomic_outputs(*paths: str | Path) -> Iterator[list[Path]]:
    """Yield temporary paths for ``paths``; on success rename them all into place.

    On an exception the temporaries are removed and the previous outputs stay as they were.
    """
    finals = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
            os.close(fd)
            temps.append(Path(tmp))
        yield temps
        mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; outputs get the usual mode
        for tmp, final in zip(temps, finals, strict=True):
            os.chmod(tmp, mode)
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dump_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON (numpy scalars and arrays allowed)."""
    path.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")


def load_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    df.to_parquet(path, index=False, engine="pyarrow")
