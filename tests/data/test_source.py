"""An edited source file is noticed: a real `dvc repro ingest` re-runs ingest when (and only
when) the bytes of ``data.source`` change."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.source import fingerprint
from tests.conftest import ROOT, pinned_env


def dvc(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        **pinned_env(),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.mark.slow  # a real dvc repro, three times
def test_editing_the_source_csv_reruns_ingest(tmp_path: Path) -> None:
    shutil.copytree(
        ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("dvc.yaml", "data/feedback.parquet"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source="data/users.csv", target="y")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=60), "y": rng.choice(["p", "q"], 60)})
    frame.to_csv(tmp_path / "data/users.csv", index=False)
    dvc(tmp_path, "init", "--no-scm", "-q")

    assert ran(dvc(tmp_path, "repro", "ingest")) == {"source", "ingest"}
    assert ran(dvc(tmp_path, "repro", "ingest")) == {"source"}  # same bytes: ingest skipped

    # The user adds a column and drops half the rows of the same file.
    frame.assign(b=rng.normal(size=60)).iloc[:30].to_csv(tmp_path / "data/users.csv", index=False)
    assert ran(dvc(tmp_path, "repro", "ingest")) == {"source", "ingest"}
    schema = json.loads((tmp_path / "data/schema.json").read_text())
    assert [f["name"] for f in schema["features"]] == ["a", "b"]
    assert len(pd.read_parquet(tmp_path / "data/raw.parquet")) == 30


def test_fingerprint_changes_with_the_bytes_only(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,y\n1,p\n")
    first = fingerprint(str(path))
    assert fingerprint(str(path)) == first
    path.write_text("a,y\n2,p\n")
    assert fingerprint(str(path))["sha256"] != first["sha256"]
    assert fingerprint("digits")["source"] == "digits"
