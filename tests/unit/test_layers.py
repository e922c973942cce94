"""docs/design.md's layers, read from the source: who may import whom, and what the service ships.

- ``pipeline/contracts/`` (torch-free) imports no other project module outside itself;
- ``serving/`` and ``monitoring/`` import ``pipeline`` only through ``pipeline.contracts``;
- ``pipeline/`` imports nothing from ``serving/`` or ``monitoring/``;
- the Bento (``bentofile.yaml``) and the image (``Dockerfile``) ship only what serving imports.

The walk is static (every ``import`` in a file, inside functions too), so a lazy import of the
learning layer fails here even if no test runs it; the last test checks the same at run time (a
fresh process that imports the service and the monitor loads no torch).
"""

from __future__ import annotations

import ast
import fnmatch
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, assert_imports_no_torch

CONTRACTS = "pipeline.contracts"


def imported_modules(source: str, package: str) -> set[str]:
    """Every module ``source`` imports (absolute names; ``package`` resolves relative ones)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # from pipeline import x
    return out


def project_files(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = ROOT / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations(
    files: list[Path], allowed: tuple[str, ...], forbidden_roots: tuple[str, ...]
) -> list[tuple[str, str]]:
    """(file, module) for each project import under ``forbidden_roots`` outside ``allowed``."""
    return [
        bad
        for path in files
        for bad in source_violations(
            str(path.relative_to(ROOT)),
            path.read_text(),
            module_name(path),
            allowed,
            forbidden_roots,
        )
    ]


def source_violations(
    label: str,
    source: str,
    package: str,
    allowed: tuple[str, ...],
    forbidden_roots: tuple[str, ...],
) -> list[tuple[str, str]]:
    bad = []
    for name in imported_modules(source, package):
        root = name.split(".")[0]
        if root not in forbidden_roots or not is_module(name) or name == root:
            continue
        if not any(name == a or name.startswith(a + ".") for a in allowed):
            bad.append((label, name))
    return bad


def test_serving_and_monitoring_import_pipeline_only_through_its_contracts() -> None:
    files = project_files("serving") + project_files("monitoring")
    allowed = (CONTRACTS, "serving", "monitoring")
    assert violations(files, allowed, ("pipeline",)) == []
    # They do import it (the check is not vacuous).
    used = {
        n for p in files for n in imported_modules(p.read_text(), module_name(p)) if is_module(n)
    }
    assert {f"{CONTRACTS}.schema", f"{CONTRACTS}.prodlog", f"{CONTRACTS}.champion"} <= used


def test_the_contracts_import_only_each_other_and_no_learning_stack() -> None:
    files = project_files("pipeline/contracts")
    assert violations(files, (CONTRACTS,), ("pipeline", "serving", "monitoring")) == []
    heavy = ("torch", "sklearn", "mlflow", "optuna", "cleanlab", "art", "dvc", "matplotlib")
    third = {
        (str(p.relative_to(ROOT)), n)
        for p in files
        for n in imported_modules(p.read_text(), module_name(p))
        if n.split(".")[0] in heavy
    }
    assert third == set()


def test_the_release_layer_imports_no_learning_library_and_no_torch() -> None:
    """The gate, the card, MLflow and publishing read what the learning library measured; they
    never import it (nor torch), so the rules can be read and tested without the network."""
    files = project_files("pipeline/release")
    allowed = (CONTRACTS, "pipeline.release", "pipeline.registry")
    assert violations(files, allowed, ("pipeline", "serving", "monitoring")) == []
    heavy = {
        (str(p.relative_to(ROOT)), n)
        for p in files
        for n in imported_modules(p.read_text(), module_name(p))
        if n.split(".")[0] in ("torch", "sklearn", "optuna", "cleanlab", "art")
    }
    assert heavy == set()
    assert len(files) >= 4  # gate, card, tracking, publish: the check is not vacuous


def test_pipeline_knows_nothing_of_serving_or_monitoring() -> None:
    assert violations(project_files("pipeline"), (), ("serving", "monitoring")) == []


def test_the_check_catches_an_import_of_the_learning_layer() -> None:
    """A lazy import inside a function is still an import of the learning layer; so is a stage."""
    source = "def later():\n    from pipeline.learning import model\n    import pipeline.export\n"
    bad = source_violations("probe", source, "serving.probe", (CONTRACTS, "serving"), ("pipeline",))
    assert set(bad) == {
        ("probe", "pipeline.learning"),
        ("probe", "pipeline.learning.model"),
        ("probe", "pipeline.export"),
    }
    fine = "from pipeline.contracts.schema import Schema\n"
    assert source_violations("ok", fine, "serving.ok", (CONTRACTS,), ("pipeline",)) == []


def tracked(pattern: str) -> list[str]:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [f for f in files if fnmatch.fnmatch(f, pattern)]


def serving_closure() -> set[str]:
    """Files of every project module the service imports, transitively."""
    todo, seen = ["serving.service", "serving.__main__"], set()
    while todo:
        name = todo.pop()
        for candidate in (
            Path(*name.split(".")).with_suffix(".py"),
            Path(*name.split("."), "__init__.py"),
        ):
            if (ROOT / candidate).is_file() and str(candidate) not in seen:
                seen.add(str(candidate))
                source = (ROOT / candidate).read_text()
                todo += [
                    n
                    for n in imported_modules(source, name)
                    if n.split(".")[0] in ("pipeline", "serving")
                ]
    return seen


def test_the_bento_includes_what_serving_imports_and_no_learning_code() -> None:
    include = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["include"]
    shipped = {f for pattern in include for f in tracked(pattern)}
    assert not [
        f
        for f in shipped
        if f.startswith("pipeline/") and "/contracts/" not in f and f != "pipeline/__init__.py"
    ]
    assert serving_closure() <= shipped
    packages = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]["packages"]
    assert not {"torch", "mlflow", "dvc", "scikit-learn"} & {
        re.split(r"[\[<>=]", p)[0] for p in packages
    }


def test_the_image_copies_only_the_contracts_of_pipeline() -> None:
    text = re.sub(r"#.*", "", (ROOT / "Dockerfile").read_text())
    copied = re.findall(r"^COPY (?:--\S+ )*(\S+) ", text, flags=re.M)
    pipeline = {c for c in copied if c.startswith("pipeline")}
    assert pipeline and all(c in ("pipeline/__init__.py", "pipeline/contracts/") for c in pipeline)
    assert {"pipeline/__init__.py", "pipeline/contracts/"} <= pipeline


@pytest.mark.parametrize("folder", ["pipeline/contracts", "pipeline/learning"])
def test_each_layer_is_a_package_that_says_what_it_holds(folder: str) -> None:
    init = ROOT / folder / "__init__.py"
    assert init.is_file() and ast.get_docstring(ast.parse(init.read_text()))


@pytest.mark.slow  # a fresh interpreter importing the service and the monitor: 3.5 s
def test_the_service_and_the_monitor_load_no_torch_at_run_time() -> None:
    assert_imports_no_torch(
        "serving.service",
        "serving.__main__",
        "monitoring.__main__",
        "monitoring.monitor",
        "monitoring.reports",
        "monitoring.simulate",
    )


@pytest.mark.slow  # a fresh interpreter importing the service: 3 s
def test_the_service_loads_only_what_its_image_installs() -> None:
    """The image installs bentoml, numpy, pandas, pyyaml, pydantic, orjson, SQLAlchemy, psycopg
    and onnxruntime (the Dockerfile): importing the service loads none of the training or
    monitoring stack (a task's window statistics import scipy only when the monitor runs them)."""
    import subprocess
    import sys

    absent = ("scipy", "sklearn", "evidently", "matplotlib", "mlflow", "torch", "dvc", "optuna")
    code = (
        "import sys, serving.service, serving.__main__; "
        "import pipeline.contracts.tasks.classification, pipeline.contracts.tasks.regression; "
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({absent!r})); "
        "print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_project_module_imports_itself_back() -> None:
    """No import cycle among the project's modules (importing ``a.b.c`` runs package ``a.b``
    too, so a package's ``__init__`` counts): each layer can be read bottom up."""
    files = project_files("pipeline") + project_files("serving") + project_files("monitoring")
    names = {module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        deps = set()
        for imported in imported_modules(path.read_text(), name):
            parts = imported.split(".")
            deps |= {".".join(parts[:k]) for k in range(1, len(parts) + 1)} & names.keys()
        graph[name] = deps - {name}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo += graph[node]
        return False

    cycles = sorted(n for n in graph if reaches(n, n))
    assert cycles == [], cycles
    assert len(graph) > 50  # the walk saw the project
