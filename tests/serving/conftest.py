"""Serving fixtures: a promoted champion from the tiny pipeline, and a real `bentoml serve`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pipeline import evaluate, export
from tests.conftest import (
    ROOT,
    TINY,
    evaluate_args,
    export_args,
    repo_params,
    with_overrides,
    without_compression,
)

# A gate every tiny model passes: these tests are about serving, not about model quality.
LENIENT = {
    **TINY,
    "gate.variant": "fp32",
    "gate.min_accuracy": 0.0,
    "gate.min_robust_accuracy": 0.0,
    "gate.max_ece": 1.0,
    "gate.max_p99_latency_ms": 1000.0,
    "gate.max_accuracy_drop": 1.0,
    "gate.max_robust_drop": 1.0,
    "gate.max_baseline_gap": None,
    "harden.max_clean_drop": 1.0,
}


def promote(inputs: Path, candidate: Path, model_pt: Path, trained: Path, state: Path) -> dict:
    """Run the evaluate stage on ``candidate`` against the registry under ``state``."""
    params = state / "params.yaml"
    if not params.exists():
        params.write_text(yaml.safe_dump(with_overrides(repo_params(LENIENT), {})))
    code = evaluate.main(
        evaluate_args(
            inputs,
            candidate,
            model_pt,
            candidate / "robustness.json",
            trained / "train.json",
            params,
            state,
        )
    )
    assert code == 0
    return json.loads((state / "evaluate.json").read_text())


@pytest.fixture(scope="session")
def second_candidate(
    stage_inputs: Path, trained: Path, hardened: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The trained (unhardened) model exported: a second, different champion for reloads."""
    out = tmp_path_factory.mktemp("second")
    assert export.main(export_args(stage_inputs, trained / "model.pt", out)) == 0
    without_compression(out)
    (out / "robustness.json").write_bytes((hardened / "robustness.json").read_bytes())
    return out


@pytest.fixture(scope="session")
def served_state(
    stage_inputs: Path, trained: Path, exported: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A folder with params.yaml and registry/ whose champion is the tiny hardened model."""
    state = tmp_path_factory.mktemp("served")
    decision = promote(stage_inputs, exported, exported / "hardened.pt", trained, state)
    assert decision["promoted"] and decision["version"] == "1"
    return state


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m serving` (so `bentoml serve`) as a subprocess on loopback."""

    def __init__(
        self,
        state: Path,
        log_url: str,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.state = state
        self.args = args  # more of `python -m serving`'s flags, e.g. ("--workers", "2")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = state / f"server-{self.port}.log"
        self.env = {
            **os.environ,
            "MLCYCLE_PARAMS": str(state / "params.yaml"),
            "MLCYCLE_REGISTRY": str(state / "registry"),
            "MLCYCLE_LOG_URL": log_url,
            "MLCYCLE_SPILL_DIR": str(state / "spill"),
            "PYTHONUNBUFFERED": "1",
            "BENTOML_HOME": str(state / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "true",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> Server:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving", "--port", str(self.port), *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # signals reach bentoml's whole process group
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.2)
        raise AssertionError(f"server not ready in {timeout}s: {self.output()}")

    def output(self) -> str:
        return self.log_path.read_text()[-5000:] if self.log_path.exists() else ""

    def send(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.send(sig)
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            return self.proc.wait(10)


def post(url: str, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(url, json=body, timeout=30, **kw)


@pytest.fixture(scope="session")
def server(served_state: Path) -> Iterator[Server]:
    """One service for the read-mostly tests, with feedback enabled."""
    srv = Server(
        served_state,
        str(served_state / "production.db"),
        env={"MLCYCLE_FEEDBACK_TOKEN": "s3cret"},
    ).start()
    yield srv
    srv.stop()


NAMES = [f"pixel_{i}_{j}" for i in range(8) for j in range(8)]


def digit(value: float = 4.0) -> dict[str, float]:
    return dict.fromkeys(NAMES, value)


def state_copy(served_state: Path, dest: Path, **serving: Any) -> Path:
    """A private copy of the served state (registry, params) with serving overrides."""
    shutil.copytree(served_state / "registry", dest / "registry", symlinks=True)
    params = yaml.safe_load((served_state / "params.yaml").read_text())
    params["serving"].update(serving)
    (dest / "params.yaml").write_text(yaml.safe_dump(params))
    return dest


def promotable_copy(served_state: Path, dest: Path, **serving: Any) -> Path:
    """A private copy of the served state with its MLflow database and artifacts, so a test can
    promote a second candidate into it (:func:`promote`)."""
    state = state_copy(served_state, dest, **serving)
    shutil.copy(served_state / "mlflow.db", state / "mlflow.db")
    shutil.copytree(served_state / "mlartifacts", state / "mlartifacts")
    return state


class Load:
    """A client thread sending one-record requests until stopped; records every answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[float, int, str, str]] = []  # (time, status, request id, version)
        self.errors: list[str] = []
        self.refusals: list[tuple[int, str | None, str]] = []  # (status, Retry-After, error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(f"{self.url}/predict", json={"records": [digit()]})
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    if self._stop.wait(0.01):
                        return
                    continue
                body = r.json()
                if r.status_code != 200:
                    self.refusals.append(
                        (r.status_code, r.headers.get("retry-after"), body.get("error", ""))
                    )
                self.answers.append(
                    (time.time(), r.status_code, body.get("request_id", ""),
                     body.get("model_version", ""))
                )  # fmt: skip

    def ok(self) -> list[tuple[float, int, str, str]]:
        return [a for a in self.answers if a[1] == 200]
