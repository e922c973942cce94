"""dvc.yaml declares every project module a stage imports and every file its command names.

A missing dependency means `dvc repro` skips a stage whose code or input changed (an edited
transforms.py left the shipped ONNX graph with the old transform); these checks fail on the next
one instead.
"""

from __future__ import annotations

import ast
import itertools
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

# Paths a command names that are neither inputs nor outputs of the stage, and why.
STATE = {
    "params.yaml": "read by section: the stage's `params:` entries",
    "mlflow.db": "the tracking store: a side effect, not an input",
    "registry": "the registry evaluate reads and promotes into: state, not an input",
    "models/checkpoints/train.pt": "train's resume checkpoint, deleted once training finishes",
}


def dvc_file() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def paths(entries: list[Any] | None) -> set[str]:
    """Paths of a deps / outs / metrics / plots list (plain strings or {path: options})."""
    out = set()
    for entry in entries or []:
        out.update([entry] if isinstance(entry, str) else entry.keys())
    return out


def module_file(name: str) -> Path | None:
    """The module's file: ``a/b.py``, or a package's ``a/b/__init__.py`` where it holds code (a
    package whose ``__init__`` is a docstring alone is no dependency of anything)."""
    base = ROOT / Path(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    init = base / "__init__.py"
    if init.is_file() and any(
        not isinstance(node, ast.Expr) for node in ast.parse(init.read_text()).body
    ):
        return init
    return None


def project_imports(module: str) -> set[str]:
    """Files of every ``pipeline`` module that ``module`` imports, transitively, at any depth
    (imports inside functions included), as paths relative to the repo root."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        path = module_file(todo.pop())
        if path is None or str(path.relative_to(ROOT)) in seen:
            continue
        seen.add(str(path.relative_to(ROOT)))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("pipeline.")]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
                todo.append(node.module)
                todo += [f"{node.module}.{a.name}" for a in node.names]  # from pipeline import x
    return seen


def stage_module(cmd: str) -> str:
    words = shlex.split(cmd)
    return words[words.index("-m") + 1]


def command_paths(cmd: str) -> list[str]:
    """The values of the command's ``--flag value`` options."""
    words = shlex.split(cmd)
    return [v for k, v in itertools.pairwise(words) if k.startswith("--")]


def missing_imports(dvc: dict[str, Any]) -> dict[str, set[str]]:
    out = {}
    for name, st in dvc["stages"].items():
        needed = project_imports(stage_module(st["cmd"]))
        missing = needed - paths(st.get("deps"))
        if missing:
            out[name] = missing
    return out


def undeclared_files(dvc: dict[str, Any]) -> dict[str, set[str]]:
    side = paths(dvc.get("metrics"))
    out = {}
    for name, st in dvc["stages"].items():
        deps = paths(st.get("deps"))
        declared = deps | paths(st.get("outs")) | paths(st.get("metrics")) | paths(st.get("plots"))
        bad = {
            value
            for value in command_paths(st["cmd"])
            if value not in declared | side | set(STATE)
            # A prefix such as models/features names its .npz and .json, both deps.
            and not {f"{value}.npz", f"{value}.json"} <= deps
        }
        if bad:
            out[name] = bad
    return out


def test_every_stage_lists_the_modules_it_imports() -> None:
    assert missing_imports(dvc_file()) == {}


def test_no_stage_lists_a_module_it_does_not_import() -> None:
    for name, st in dvc_file()["stages"].items():
        listed = {d for d in paths(st["deps"]) if d.startswith("pipeline/")}
        stale = listed - project_imports(stage_module(st["cmd"]))
        assert not stale, f"stage {name!r} lists modules it does not import: {stale}"


def test_every_file_a_command_names_is_declared() -> None:
    assert undeclared_files(dvc_file()) == {}


def test_side_files_are_no_stage_output() -> None:
    dvc = dvc_file()
    declared = set().union(
        *(
            paths(st.get(key))
            for st in dvc["stages"].values()
            for key in ("deps", "outs", "metrics", "plots")
        )
    )
    assert paths(dvc["metrics"]) and not paths(dvc["metrics"]) & declared


def test_package_init_holds_no_code() -> None:
    # The walk leaves pipeline/__init__.py out of every stage's deps; that is safe while it
    # holds nothing but its docstring.
    tree = ast.parse((ROOT / "pipeline/__init__.py").read_text())
    assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in tree.body)


@pytest.mark.parametrize(
    ("stage", "dep", "check"),
    [
        # Traces every stage's imports again (2.3 s); test_every_stage_lists_the_modules_it_imports
        # runs the same check on the real dvc.yaml in the fast tier.
        pytest.param(
            "features", "pipeline/learning/transforms.py", missing_imports, marks=pytest.mark.slow
        ),
        ("evaluate", "data/schema.json", undeclared_files),
    ],
)
def test_the_checks_catch_a_removed_dependency(stage: str, dep: str, check: Any) -> None:
    dvc = dvc_file()
    dvc["stages"][stage]["deps"].remove(dep)
    assert dep in check(dvc)[stage]


def test_each_plot_is_declared_once_with_a_title_and_is_a_stage_output() -> None:
    """`dvc plots show` draws every declaration: a file both in the top-level ``plots:`` and in
    a stage's ``plots:`` would be drawn twice."""
    dvc = dvc_file()
    assert not [name for name, st in dvc["stages"].items() if "plots" in st]
    files: list[str] = []
    for entry in dvc["plots"]:
        if isinstance(entry, str):  # an image, drawn as it is
            files.append(entry)
            continue
        ((title, spec),) = entry.items()
        assert spec.get("x_label") and spec.get("y_label"), title
        files += list(spec["y"])
    outs = set().union(*(paths(st.get("outs")) for st in dvc["stages"].values()))
    images = [f for f in files if f.endswith(".png")]
    assert len(images) == len(set(images)) and set(files) <= outs


def test_the_paths_params_yaml_repeats_are_the_ones_dvc_yaml_declares() -> None:
    """The monitor writes the feedback a retrain ingests and the weights it starts from, and
    reads the decision the gate writes; the service serves the registry evaluate promotes to.
    params.yaml names them for those two (they run outside dvc), dvc.yaml for the stages: each
    must be the path the stage's command uses."""
    from pipeline.contracts.params import MonitorConfig, ServingConfig, read_params, section

    params = read_params(ROOT / "params.yaml")
    monitor, serving = (
        section(params, "monitor", MonitorConfig),
        section(params, "serving", ServingConfig),
    )

    def flag(stage: str, name: str) -> set[str]:
        words = dvc_file()["stages"][stage]["cmd"].split()
        return {v for k, v in itertools.pairwise(words) if k == name}

    assert flag("ingest", "--feedback") == {monitor.feedback_path}
    for stage in ("features", "train", "harden"):
        assert flag(stage, "--warm-start") == {monitor.warm_start_path}, stage
    assert flag("evaluate", "--metrics") == {monitor.gate_metrics}
    assert flag("evaluate", "--registry") == {serving.registry}
