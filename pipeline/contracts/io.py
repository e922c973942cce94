"""Atomic file outputs and the readers / writers every stage shares.

Every stage output goes through :func:`atomic_outputs`: all files are written to temporaries in
their final folders and renamed into place only once every one of them has been written, so a
failed stage leaves the previous outputs untouched instead of half-written ones.

Writers are byte-stable: the same object gives the same bytes (no temporary file names inside
torch archives), so DVC's hashes depend on content alone. Readers
turn a missing or unreadable input into :class:`MlcycleError` naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contracts.errors import MlcycleError


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


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder for the folder ``path``; on success it replaces ``path``
    (and what it held) whole. On an exception the previous folder stays as it was."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


def require_file(path: str | Path) -> Path:
    """``path`` as a Path, or the project error naming it when it is not a readable file."""
    path = Path(path)
    if not path.is_file():
        raise MlcycleError(f"input file {str(path)!r} not found (run the stage that writes it)")
    return path


def source_file(source: str) -> Path:
    """``data.source`` as a Path, or the project error saying why it is not a readable file."""
    path = Path(source)
    if path.is_dir():
        raise MlcycleError(
            f"data.source: {source!r} is a directory; point it at one .csv or .parquet file"
        )
    if not path.is_file():
        raise MlcycleError(f"data.source: file {source!r} not found")
    return path


def load_json(path: str | Path) -> Any:
    path = require_file(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MlcycleError(f"input file {str(path)!r} is not valid JSON: {exc}") from None


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    path = require_file(path)
    try:
        return pd.read_parquet(path, columns=columns)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise MlcycleError(f"input file {str(path)!r} is not readable Parquet: {exc}") from None


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    df.to_parquet(path, index=False, engine="pyarrow")
