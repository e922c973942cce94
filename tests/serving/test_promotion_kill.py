"""A promotion killed with SIGKILL at each of its steps, in the slow tier: the service still loads
a whole champion (the old or the new one), ``python -m pipeline.registry status`` names any
disagreement between the champion directory and MLflow's alias, and ``repair`` ends it."""

from __future__ import annotations

import contextlib
import io
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import registry
from pipeline.contracts import champion
from pipeline.release.tracking import Tracker
from serving.model import load
from tests.conftest import ROOT
from tests.serving.promotion_killer import NAME, STEPS

pytestmark = pytest.mark.slow


def status(state: Path, command: str = "status") -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = registry.main(
            [command, "--params", str(state / "params.yaml"), "--registry",
             str(state / "registry"), "--tracking-db", str(state / "mlflow.db")]
        )  # fmt: skip
    return code, out.getvalue()


def test_a_promotion_killed_at_each_step_serves_a_whole_champion_and_is_repaired(
    served_state: Path, tmp_path: Path
) -> None:
    for step in STEPS:
        dest = tmp_path / step
        dest.mkdir()
        for name in ("registry", "mlartifacts"):
            shutil.copytree(served_state / name, dest / name, symlinks=True)
        for name in ("mlflow.db", "params.yaml"):
            shutil.copy2(served_state / name, dest / name)
    killer = subprocess.run(
        [sys.executable, "-m", "tests.serving.promotion_killer", str(tmp_path), *STEPS],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killer.returncode == 0, killer.stderr[-3000:]
    statuses = dict(line.split() for line in killer.stdout.splitlines())
    assert statuses == {step: str(signal.SIGKILL) for step in STEPS}, killer.stderr[-3000:]
    served = {}
    for step in STEPS:
        state = tmp_path / step
        model = load(champion.link(state / "registry"))  # what a (re)starting service loads
        served[step] = model.version
        code, said = status(state)
        if step == "copying":  # a temporary copy, never served
            assert code == 1 and "interrupted promotion (never served)" in said, said
        elif step == "swapped":  # the symlink moved, the alias did not
            assert code == 1 and "serves version 2 but MLflow's alias" in said, said
            assert "move MLflow's alias mlcycle@champion to version 2" in said
        else:
            assert code == 0 and "disagreement" not in said, said
        status(state, "repair")
        code, said = status(state)
        assert code == 0, said
        alias = Tracker(state / "mlflow.db").champion_version(NAME)
        assert alias == model.version == champion.directory(state / "registry").name, said
    print(f"served after the kill: {served}")
    # The files are whole the moment the symlink moves: before it, the old champion serves.
    assert served == {"copying": "1", "copied": "1", "tagged": "1", "swapped": "2", "aliased": "2"}
