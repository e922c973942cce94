"""The evaluate gate and the registry: reject a bad candidate, promote a good one, roll back."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pipeline import evaluate, export, registry
from pipeline.config import section
from pipeline.model import ModelConfig, build_net
from pipeline.train import TrainConfig, fit, load_inputs
from tests.conftest import export_args, repo_params


@pytest.fixture(scope="module")
def shuffled(stage_inputs: Path, trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A deliberately bad candidate: the same architecture trained on shuffled labels."""
    out = tmp_path_factory.mktemp("shuffled")
    inputs = load_inputs(
        f"{stage_inputs}/data/schema.json",
        f"{stage_inputs}/models/features",
        f"{stage_inputs}/data/prepared",
    )
    ckpt = torch.load(trained / "model.pt", weights_only=True)
    cfg = dataclasses.replace(section(repo_params(), "train", TrainConfig), epochs=3)
    torch.manual_seed(0)
    model = build_net(ModelConfig(**ckpt["model_config"]))
    from pipeline.model import Classifier

    clf = Classifier(inputs.transform.module(), model)
    inputs.train.y = inputs.train.y[torch.randperm(len(inputs.train.y))]
    fit(clf, inputs.train, inputs.val, cfg, torch.device("cpu"), progress=False)
    torch.save({**ckpt, "net": clf.net.state_dict()}, out / "model.pt")
    assert export.main(export_args(stage_inputs, out / "model.pt", out)) == 0
    return out


def run_evaluate(
    inputs: Path,
    candidate: Path,
    model_pt: Path,
    hardened: Path,
    trained: Path,
    params: Path,
    state: Path,
) -> dict:
    code = evaluate.main(
        [
            "--params",
            str(params),
            "--schema",
            f"{inputs}/data/schema.json",
            "--test",
            f"{inputs}/data/prepared/test.parquet",
            "--model",
            str(model_pt),
            "--onnx",
            f"{candidate}/model.onnx",
            "--onnx-int8",
            f"{candidate}/model.int8.onnx",
            "--export-metrics",
            f"{candidate}/export.json",
            "--robustness",
            f"{hardened}/robustness.json",
            "--train-metrics",
            f"{trained}/train.json",
            "--registry",
            f"{state}/registry",
            "--tracking-db",
            f"{state}/mlflow.db",
            "--metrics",
            f"{state}/evaluate.json",
        ]
    )
    assert code == 0
    return json.loads((state / "evaluate.json").read_text())


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_gate_rejects_worse_promotes_better_and_rolls_back(
    stage_inputs: Path,
    trained: Path,
    exported: Path,
    shuffled: Path,
    tmp_path: Path,
    write_params: Callable[..., Path],
    capsys: pytest.CaptureFixture,
) -> None:
    # The unhardened model may be the first champion: no robustness floor, and its ECE (0.058,
    # label smoothing) is above the default ceiling.
    params = write_params(
        {"gate.min_robust_accuracy": 0.0, "gate.max_ece": 0.1, "gate.robust_steps": 10}
    )
    first = tmp_path / "first"
    assert export.main(export_args(stage_inputs, trained / "model.pt", first)) == 0

    def run(candidate: Path, model_pt: Path) -> dict:
        return run_evaluate(stage_inputs, candidate, model_pt, exported, trained, params, tmp_path)

    link = tmp_path / "registry/champion"
    client = registry.client(tmp_path / "mlflow.db")

    d1 = run(first, trained / "model.pt")
    assert d1["promoted"] and d1["champion"] is None and d1["version"] == "1"
    assert link.resolve() == (tmp_path / "registry/versions/1").resolve()
    before = digest(link)

    d2 = run(shuffled, shuffled / "model.pt")
    assert not d2["promoted"] and d2["version"] == "2"
    failed = {r["rule"] for r in d2["rules"] if not r["passed"]}
    assert {"min_accuracy", "vs_champion_accuracy"} <= failed
    assert any(reason.startswith("min_accuracy: 0.") for reason in d2["reasons"])
    assert d2["candidate"]["accuracy"] < 0.3
    assert link.resolve() == (tmp_path / "registry/versions/1").resolve()
    assert digest(link) == before  # the service's directory is untouched
    assert registry.champion_version(client, "mlcycle") == "1"
    assert client.get_model_version("mlcycle", "2").tags["gate"] == "failed"
    assert not (tmp_path / "registry/versions/2").exists()

    d3 = run(exported, exported / "hardened.pt")
    assert d3["promoted"] and d3["version"] == "3"
    assert d3["champion"]["accuracy"] == pytest.approx(d1["candidate"]["accuracy"])
    assert d3["candidate"]["robust_accuracy"] > d3["champion"]["robust_accuracy"] + 0.5
    assert link.resolve() == (tmp_path / "registry/versions/3").resolve()
    assert registry.champion_version(client, "mlcycle") == "3"
    card = (link / "model_card.md").read_text()
    assert "## Gate: PROMOTED" in card and "| robust_accuracy |" in card

    reg = ["--registry", f"{tmp_path}/registry", "--tracking-db", f"{tmp_path}/mlflow.db"]
    assert registry.main(["rollback", *reg]) == 0
    assert link.resolve() == (tmp_path / "registry/versions/1").resolve()
    assert digest(link) == before
    assert registry.champion_version(client, "mlcycle") == "1"
    assert registry.main(["rollback", *reg]) == 2  # version 1 had no champion before it
    assert "has no previous champion" in capsys.readouterr().err


def test_bad_gate_params_are_named(
    stage_inputs: Path,
    exported: Path,
    trained: Path,
    tmp_path: Path,
    write_params: Callable[..., Path],
    capsys: pytest.CaptureFixture,
) -> None:
    params = write_params({"gate.min_acuracy": 0.9})
    code = evaluate.main(
        [
            "--params",
            str(params),
            "--schema",
            f"{stage_inputs}/data/schema.json",
            "--test",
            f"{stage_inputs}/data/prepared/test.parquet",
            "--model",
            f"{exported}/hardened.pt",
            "--onnx",
            f"{exported}/model.onnx",
            "--onnx-int8",
            f"{exported}/model.int8.onnx",
            "--export-metrics",
            f"{exported}/export.json",
            "--robustness",
            f"{exported}/robustness.json",
            "--train-metrics",
            f"{trained}/train.json",
            "--registry",
            f"{tmp_path}/registry",
            "--tracking-db",
            f"{tmp_path}/mlflow.db",
            "--metrics",
            f"{tmp_path}/evaluate.json",
        ]
    )
    assert code == 2
    assert "unknown key 'gate.min_acuracy'" in capsys.readouterr().err
    assert not (tmp_path / "evaluate.json").exists() and not (tmp_path / "registry").exists()


def test_variant_choice() -> None:
    cfg = section(repo_params(), "gate", evaluate.GateConfig)
    slower = {"int8": {"accuracy_delta": 0.0, "latency_ratio": 1.5}}
    faster = {"int8": {"accuracy_delta": -0.002, "latency_ratio": 0.5}}
    worse = {"int8": {"accuracy_delta": -0.05, "latency_ratio": 0.5}}
    assert evaluate.choose_variant(cfg, slower) == "fp32"
    assert evaluate.choose_variant(cfg, faster) == "int8"
    assert evaluate.choose_variant(cfg, worse) == "fp32"
    assert evaluate.choose_variant(dataclasses.replace(cfg, variant="int8"), slower) == "int8"


def test_rules_compare_in_the_right_direction() -> None:
    cfg = section(repo_params(), "gate", evaluate.GateConfig)
    good = {"accuracy": 0.99, "robust_accuracy": 0.8, "ece": 0.02, "p99_latency_ms": 1.0}
    assert all(r["passed"] for r in evaluate.gate(cfg, good, None, True))
    slow_and_miscalibrated = {**good, "ece": 0.2, "p99_latency_ms": 1e3}
    failed = {
        r["rule"] for r in evaluate.gate(cfg, slow_and_miscalibrated, good, True) if not r["passed"]
    }
    assert failed == {"max_ece", "max_p99_latency_ms"}
    slightly_worse = {**good, "accuracy": 0.99 - cfg.max_accuracy_drop / 2}
    assert all(r["passed"] for r in evaluate.gate(cfg, slightly_worse, good, True))
    assert [r["rule"] for r in evaluate.gate(cfg, good, None, False) if not r["passed"]] == [
        "parity"
    ]
