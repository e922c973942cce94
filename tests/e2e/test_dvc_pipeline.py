"""A real `dvc repro` in a copy of the project: runs, is a no-op the second time, re-runs only
what a params change touches, gives the same bytes in a second fresh copy, and takes a user's CSV
with categorical columns. Slow tier: each test runs the whole pipeline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, pinned_env

pytestmark = pytest.mark.slow

ALL = {
    "source",
    "ingest",
    "preprocess",
    "features",
    "tune",
    "train",
    "harden",
    "export",
    "compress",
    "evaluate",
}


def copy_pristine(dest: Path) -> Path:
    """The pipeline, dvc.yaml, the repo's params and the empty feedback file, DVC initialised."""
    shutil.copytree(
        ROOT / "pipeline", dest / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("dvc.yaml", "params.yaml", "data/feedback.parquet", "data/warm_start.pt"):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, dest / name)
    dvc(dest, "init", "--no-scm", "-q")
    return dest


def copy_project(dest: Path) -> Path:
    copy_pristine(dest)
    # The stages' behaviour is what is tested here; the model tests hold the quality floors.
    edit_params(dest, "compute", "device", "cpu")
    for key, value in {
        "epochs": 4,
        "eval_eps": [0.1],
        "eval_steps": 5,
        "eval_apgd_iter": 5,
        "eval_restarts": 1,
        "art_check": False,
    }.items():
        edit_params(dest, "harden", key, value)
    # The gate's attacks as short as harden's here: the stages' mechanics, not the figure.
    for key, value in {"robust_steps": 5, "apgd_iter": 5, "square_queries": 20}.items():
        edit_params(dest, "gate", key, value)
    edit_params(dest, "train", "epochs", 10)
    # The pruned network fine-tuned 2 epochs, first run and retrain (compress's mechanics), and
    # no byte or time budget, so no target needs it (a pruned graph this short of training
    # fails the clean budget): the targets' choices are tests/model/test_compress.py's.
    edit_params(dest, "compress", "epochs", 2)
    edit_params(dest, "compress", "warm_start_epochs", 2)
    no_budget = {"max_bytes": None, "max_p99_ms": None}
    edit_params(dest, "deploy", "device", no_budget)
    edit_params(dest, "deploy", "browser", no_budget)
    # A retrain here (the killed-retrain test) fine-tunes and hardens on for 2 epochs, not 10 + 20.
    edit_params(dest, "train", "warm_start_epochs", 2)
    edit_params(dest, "harden", "warm_start_epochs", 2)
    # Two folds on 600 rows: the search's mechanics (every candidate scored, the winner fit on
    # all train rows) at a third of its cost.
    edit_params(dest, "features", "cv_folds", 2)
    edit_params(dest, "features", "search_rows", 600)
    # A gate every model here passes, so the first run promotes a champion (the retrain test
    # starts from it): the stages' mechanics are tested here, the quality floors elsewhere.
    for key, value in {"min_accuracy": 0.0, "min_robust_accuracy": 0.0, "max_ece": 1.0,
                       "max_accuracy_drop": 1.0, "max_robust_drop": 1.0,
                       "max_baseline_gap": None}.items():  # fmt: skip
        edit_params(dest, "gate", key, value)
    return dest


def dvc(
    cwd: Path,
    *args: str,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    launcher: tuple[str, ...] = (),
) -> str:
    """``dvc <args>`` in ``cwd`` (``launcher``: python arguments that start it, e.g. the
    kernels launcher as `make repro` does; with it the stages get exactly ``env``'s kernels)."""
    env = {
        **os.environ,
        **({} if launcher else pinned_env()),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(cwd),
        **(env or {}),
    }
    head = [sys.executable, *launcher, "--"] if launcher else []
    proc = subprocess.run(
        [*head, sys.executable, "-m", "dvc", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def edit_params(project: Path, section: str, key: str, value: object) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params))


def lock_hashes(project: Path) -> dict[str, str]:
    """path -> md5 of every dep and out that dvc.lock records."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {
        entry["path"]: entry["md5"]
        for stage in lock["stages"].values()
        for key in ("deps", "outs")
        for entry in stage.get(key, [])
    }


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, str]]:
    """A fresh copy after its first `dvc repro`: (project, dvc's output, the lock's hashes)."""
    project = copy_project(tmp_path_factory.mktemp("project"))
    output = dvc(project, "repro")
    # As the run left it, for a test that retrains (the others edit `project`'s params).
    shutil.copytree(project, project.parent / "snapshot", symlinks=True)
    return project, output, lock_hashes(project)


@pytest.fixture(scope="module")
def project(first_run: tuple[Path, str, dict[str, str]]) -> Path:
    return first_run[0]


def test_repro_runs_every_stage_then_is_a_no_op(first_run: tuple, project: Path) -> None:
    assert ran(first_run[1]) == ALL
    lock = (project / "dvc.lock").read_bytes()
    second = dvc(project, "repro")
    assert ran(second) == {"source"}  # always_changed: it hashes data.source, nothing else runs
    for stage in ALL - {"source"}:
        assert f"Stage '{stage}' didn't change, skipping" in second
    assert (project / "dvc.lock").read_bytes() == lock
    for out in (
        "data/raw.parquet",
        "data/schema.json",
        "data/prepared/test.parquet",
        "models/features.npz",
        "metrics/features.json",
        "reports/label_noise.csv",
    ):
        assert (project / out).is_file(), out


def test_changing_one_section_reruns_only_its_stages(project: Path) -> None:
    edit_params(project, "export", "parity_atol", 2.0e-5)
    # compress exports its graphs with export's settings too.
    assert ran(dvc(project, "repro")) == {"source", "export", "compress", "evaluate"}
    # The search changes but its winner (and so models/features.*) does not: train is skipped.
    edit_params(project, "features", "pca_components", [8, 24])
    assert ran(dvc(project, "repro")) == {"source", "features"}
    metrics = json.loads((project / "metrics/features.json").read_text())
    assert {"pca8", "pca24"} <= {row["name"] for row in metrics["search"]}
    test_before = (project / "data/prepared/test.parquet").read_bytes()
    # A new split: preprocess re-runs alone here (the rest of the pipeline would re-run on it,
    # as `dvc status` says, at the cost of a whole run) and the frozen test split keeps its bytes.
    edit_params(project, "preprocess", "val_size", 0.2)
    assert ran(dvc(project, "repro", "preprocess")) == {"source", "preprocess"}
    assert (project / "data/prepared/test.parquet").read_bytes() == test_before
    stale = {line.rstrip(":") for line in dvc(project, "status").splitlines() if line[:1].isalpha()}
    # source is always changed; export reads the frozen test split and the hardened model,
    # which is stale only once harden has re-run.
    assert stale == ALL - {"ingest", "preprocess", "export"}


def test_failed_stage_keeps_previous_outputs(project: Path) -> None:
    before = (project / "data/raw.parquet").read_bytes()
    metrics_before = (project / "metrics/preprocess.json").read_bytes()
    edit_params(project, "data", "source", "missing.csv")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    edit_params(project, "data", "source", "digits")
    assert proc.returncode != 0
    assert "data.source: file 'missing.csv' not found" in proc.stdout + proc.stderr
    assert (project / "data/raw.parquet").read_bytes() == before
    # preprocess ran before the failure and failed too: its metrics are persisted, not deleted.
    edit_params(project, "preprocess", "test_size", 0.9)
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "preprocess"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    edit_params(project, "preprocess", "test_size", 0.2)
    assert proc.returncode != 0 and "preprocess.test_size" in proc.stdout + proc.stderr
    assert (project / "metrics/preprocess.json").read_bytes() == metrics_before


def test_two_fresh_runs_give_the_same_bytes_also_on_another_cpu(
    first_run: tuple, tmp_path: Path
) -> None:
    """The second fresh run plays another CPU (each library's dispatch forced lower, as
    tests/unit/test_kernels.py does), started as `make repro` starts it there (through
    `python -m pipeline.contracts.kernels`): every declared output has the same bytes."""
    from tests.unit.test_kernels import OTHER_CPU

    again = copy_project(tmp_path)
    launcher = ("-m", "pipeline.contracts.kernels", "--params", str(again / "params.yaml"))
    out = dvc(again, "repro", env=OTHER_CPU, launcher=launcher)
    assert ran(out) == ALL
    first, second = first_run[2], lock_hashes(again)
    assert first.keys() == second.keys()
    differ = {p for p in first if first[p] != second[p]}
    assert differ == set(), f"outputs that changed between two fresh runs: {sorted(differ)}"
    # The tracked outputs include the model, the graph and every metrics / plot file.
    assert {"models/model.pt", "models/hardened.pt", "models/model.onnx"} <= first.keys()


def test_a_killed_retrain_leaves_the_champion_and_the_next_retrain_runs(
    first_run: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The monitor's retrain (a real `dvc repro`) stopped by ``monitor.retrain_timeout_s`` part
    way through the pipeline: no stage outlives it, the champion and the registry are as they
    were, and the next retrain runs to the gate, from where the stopped one was."""
    from monitoring.retrain import retrain
    from pipeline import registry
    from pipeline.contracts import champion
    from pipeline.contracts.params import MonitorConfig, overlay, read_params, section
    from pipeline.contracts.prodlog import ProductionLog

    project = first_run[0].parent / "snapshot"  # version 1 promoted (copy_project's gate)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(project))
    base = section(read_params(project / "params.yaml"), "monitor", MonitorConfig)
    command = (sys.executable, "-m", "dvc", "repro")
    before = champion.read(project / "registry")
    log = ProductionLog(str(tmp_path / "production.db"))
    reports = project / base.reports
    stopped = overlay(base, "monitor", retrain_command=command, retrain_timeout_s=15.0)
    decision, reasons = retrain(stopped, log, before, project, reports)
    assert decision == "retrain_failed", reasons
    assert "timed out after 15.0 s" in reasons[-1] and "retrain/" in reasons[-1], reasons
    ran_before_the_kill = ran(Path(reasons[-1].split("log ")[-1]).read_text())
    print(f"killed after {sorted(ran_before_the_kill)}")
    assert not [pid for pid in _processes_in(project)], "a stage outlived its retrain"
    assert champion.read(project / "registry").version == before.version
    status = ["status", "--params", str(project / "params.yaml"), "--registry",
              str(project / "registry"), "--tracking-db", str(project / "mlflow.db")]  # fmt: skip
    assert registry.main(status) == 0
    again = overlay(base, "monitor", retrain_command=command, retrain_timeout_s=900.0)
    decision, reasons = retrain(again, log, before, project, reports)
    assert decision in ("retrain_promoted", "retrain_rejected"), reasons  # the gate decided
    assert dvc(project, "status").split() == ["source:", "always", "changed"]  # the rest is done
    log.close()


def _processes_in(folder: Path) -> list[int]:
    """Live processes whose working directory is ``folder``."""
    found = []
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        try:
            if cwd.resolve() == folder.resolve() and int(cwd.parent.name) != os.getpid():
                state = (cwd.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(cwd.parent.name))
        except OSError:
            continue
    return found
