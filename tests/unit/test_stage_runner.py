"""Every stage goes through one runner: a missing input or bad params is exit 2 and one line."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT


def stage_commands() -> dict[str, list[str]]:
    """Each stage's argv from dvc.yaml, after ``-m pipeline.<stage>``."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, st in stages.items():
        words = st["cmd"].split()
        out[name] = words[words.index("-m") + 2 :]
    return out


def in_folder(argv: list[str], folder: Path, params: Path) -> list[str]:
    """The argv with every path moved under ``folder`` (which holds none of the inputs)."""
    out = []
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        out += [flag, str(params if flag == "--params" else folder / value)]
    return out


@pytest.mark.parametrize("name", sorted(stage_commands()))
def test_a_missing_input_is_named_without_a_traceback(
    name: str,
    tmp_path: Path,
    write_params: Callable[..., Path],
    capsys: pytest.CaptureFixture,
) -> None:
    if name in ("source", "ingest"):  # their input is data.source
        params = write_params({"data.source": str(tmp_path / "absent.csv")})
    elif name == "tune":  # tune reads its inputs only when it has trials to run
        params = write_params({"tune.n_trials": 1})
    else:
        params = write_params()
    stage = importlib.import_module(f"pipeline.{name}")
    work = tmp_path / "work"
    code = stage.main(in_folder(stage_commands()[name], work, params))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"{name}: error: ") and "not found" in err
    assert str(work) in err or "absent.csv" in err  # names the file
    assert "Traceback" not in err
    outputs = [p for p in work.rglob("*") if p.is_file()] if work.exists() else []
    assert outputs == []  # nothing half-written


@pytest.mark.parametrize("name", sorted(stage_commands()))
def test_bad_params_are_exit_2_before_any_work(
    name: str, tmp_path: Path, write_params: Callable[..., Path], capsys: pytest.CaptureFixture
) -> None:
    params = write_params({"compute.threads": 0, "data.max_missing_share": 2.0})
    stage = importlib.import_module(f"pipeline.{name}")
    code = stage.main(in_folder(stage_commands()[name], tmp_path / "work", params))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "params.yaml: compute.threads = 0" in err or "data.max_missing_share = 2.0" in err
