"""The device bundle (`python -m pipeline.registry bundle --target device`): what a device team
takes as it is answers as the service does, with nothing but onnxruntime and numpy.

The slow test builds the bundle from the served champion, installs only the bundle's
requirements.txt into a fresh virtual environment (pip, from the package registry), and runs
the bundle's predict.py there on the digits test split; the fast ones check the predictor's
encoding against the service's and the bundle's refusals.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.schema import Feature, Schema
from pipeline.release.bundle import bundle
from tests.conftest import ROOT
from tests.serving.conftest import NAMES, Server, post


@pytest.mark.slow
def test_the_device_bundle_answers_the_test_split_as_the_service_in_a_bare_venv(
    served_state: Path, server: Server, stage_inputs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bundle" / "device"
    command = [sys.executable, "-m", "pipeline.registry", "bundle", "--target", "device"]
    command += ["--registry", str(served_state / "registry"), "--out", str(out)]
    made = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    assert "bundled for device" in made.stdout
    files = {p.name for p in out.iterdir()}
    assert files == {
        "model.ort",
        "required_operators.config",
        "schema.json",
        "predict.py",
        "requirements.txt",
        "bundle.json",
    }
    manifest = json.loads((out / "bundle.json").read_text())
    assert (served_state / "registry/champion/model.ort").read_bytes() == (
        out / "model.ort"
    ).read_bytes()
    assert manifest["version"] == "1" and manifest["target"] == "device"
    assert "ai.onnx;" in (out / "required_operators.config").read_text()
    assert str(tmp_path) not in (out / "required_operators.config").read_text()

    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "-r", str(out / "requirements.txt")]
    done = subprocess.run(install, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True
    )
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"onnxruntime", "numpy"} <= installed
    assert not installed & {"torch", "pandas", "mlcycle", "scikit-learn", "bentoml"}

    test = pd.read_parquet(stage_inputs / "data/prepared/test.parquet")
    records = [dict(zip(NAMES, map(float, row), strict=True)) for row in test[NAMES].to_numpy()]
    (tmp_path / "records.json").write_text(json.dumps({"records": records}))
    ran = subprocess.run(
        [str(python), str(out / "predict.py"), str(tmp_path / "records.json")],
        cwd=tmp_path,  # nothing of the project on its path
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    device = json.loads(ran.stdout)["predictions"]
    served = post(f"{server.url}/predict", {"records": records}).json()["predictions"]
    assert len(device) == len(served) == len(test) == 360
    assert [d["label"] for d in device] == [s["label"] for s in served]
    np.testing.assert_allclose(
        [d["probabilities"] for d in device], [s["probabilities"] for s in served], atol=1e-5
    )


def table_schema() -> Schema:
    return Schema(
        features=(
            Feature("size", "numeric", "float64", 0.0, 100.0),
            Feature("region", "categorical", "object", 0.0, 2.0, ("north", "south", "east")),
            Feature("rooms", "numeric", "int64", 1.0, 9.0),
        ),
        target="price",
        classes=(),
        task="regression",
        target_min=1.0,
        target_max=9.0,
    )


def test_the_predictor_encodes_records_as_the_service_does(tmp_path: Path) -> None:
    """Numbers as they are, a category as its index, null as NaN, out-of-range numbers kept
    (the service flags them, the graph answers them); what it cannot encode names the record
    and the feature."""
    from pipeline.release.device_predict import Predictor, categories
    from serving.requests import RecordEncoder

    schema = table_schema()
    (tmp_path / "schema.json").write_text(json.dumps(schema.to_dict()))
    predictor = Predictor.__new__(Predictor)
    predictor.schema = json.loads((tmp_path / "schema.json").read_text())
    predictor.features = predictor.schema["features"]
    predictor.categories = categories(predictor.features)
    records = [
        {"size": 12.5, "region": "south", "rooms": 3},
        {"size": None, "region": None, "rooms": 120},
        {"size": 0, "region": "east", "rooms": None},
    ]
    ours = predictor.encode(records)
    theirs, _ = RecordEncoder(schema, 1024).encode({"records": records})
    np.testing.assert_array_equal(ours, theirs)
    assert math.isnan(ours[1, 0]) and ours[0, 1] == 1.0
    with pytest.raises(ValueError, match=r"records\[0\].region: unknown category 'west'"):
        predictor.encode([{"size": 1.0, "region": "west", "rooms": 2}])
    with pytest.raises(ValueError, match=r"records\[0\].rooms: True is not a finite number"):
        predictor.encode([{"size": 1.0, "region": "north", "rooms": True}])
    with pytest.raises(ValueError, match=r"records\[0\].size: '3' is not a finite number"):
        predictor.encode([{"size": "3", "region": "north", "rooms": 2}])
    with pytest.raises(ValueError, match=r"records\[1\]: missing feature 'rooms'"):
        predictor.encode([records[0], {"size": 1.0, "region": "north"}])


def test_a_bundle_needs_a_champion_and_a_known_target(tmp_path: Path) -> None:
    with pytest.raises(MlcycleError, match="no champion has been promoted yet"):
        bundle(tmp_path / "registry", tmp_path / "out", "device")
    with pytest.raises(MlcycleError, match="--target 'phone': expected one of device"):
        bundle(tmp_path / "registry", tmp_path / "out", "phone")
    assert not (tmp_path / "out").exists()


def test_every_version_carries_its_device_graph_and_the_bundle_ships_that_one(
    served_state: Path, tmp_path: Path
) -> None:
    """The evaluate stage converted and checked the champion's graph when it registered it;
    the bundle copies that file (and checks it again) instead of converting."""
    champ = (served_state / "registry" / "champion").resolve()
    assert (champ / "model.ort").is_file() and (champ / "required_operators.config").is_file()
    made = bundle(served_state / "registry", tmp_path / "device", "device")
    shipped = (tmp_path / "device" / "model.ort").read_bytes()
    assert shipped == (champ / "model.ort").read_bytes()
    assert made["version"] == champ.name and made["checked"]["same_labels"] > 0
