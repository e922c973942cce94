"""Shared fixtures: the repo's params with overrides, stage runners, the digits frame."""

from __future__ import annotations

import copy
import functools
import gc
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from pipeline.contracts.schema import Schema
from pipeline.ingest import load_source
from pipeline.learning.infer_schema import infer_schema

ROOT = Path(__file__).resolve().parents[1]


def pinned_env() -> dict[str, str]:
    """The repo's ``compute.kernels`` environment, for the ``dvc repro`` processes tests start
    (as ``make repro`` gives it; without it each stage re-executes itself once to pick it up).
    The test process itself keeps its own kernels."""
    from pipeline.contracts import kernels
    from pipeline.contracts.params import ComputeConfig, read_params, section

    level = section(read_params(ROOT / "params.yaml"), "compute", ComputeConfig).kernels
    return kernels.environment(level)


def pytest_unconfigure(config: pytest.Config) -> None:
    """After the summary, the session's objects move to the collector's permanent generation,
    so the interpreter's collections at exit skip them: over torch's, onnxscript's and MLflow's
    heap those took 4-6 s after the last line (py-spy: gc_collect_main in finalization)."""
    gc.freeze()


@pytest.fixture(autouse=True)
def _no_user_tracking_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages under test log to their own SQLite files, never to a server the shell names."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


# Tests force the CPU (the GPU tier sets compute.device itself), so the default run behaves the
# same on a machine with CUDA.
CPU = {"compute.device": "cpu"}

# Mechanics tests (records, resume, parity, gate rules, registry, tune) run on this profile: a
# few epochs, one transform candidate, short attacks. What they assert does not depend on how
# well the model learns; the quality floors use the repo's params in the slow tier.
TINY = {
    **CPU,
    "features.candidates": ["standardize"],
    # An MLP: the CNN's batch-norm statistics need more than three epochs to settle (its val
    # accuracy stays at chance); it is trained with the repo's params in the slow tier.
    "train.model": "mlp",
    "train.epochs": 3,
    "train.hidden": 64,
    "train.lr": 0.01,
    "train.schedule": "none",
    "train.baselines": ["logreg"],
    "harden.epochs": 2,
    "harden.steps": 2,
    "harden.eval_eps": [0.1],
    "harden.eval_steps": 3,
    "harden.eval_apgd_iter": 4,
    "harden.eval_restarts": 1,
    "harden.art_check": False,
    "gate.robust_steps": 3,
    "gate.apgd_iter": 3,
    "gate.square_queries": 5,
    "compress.epochs": 1,
}


def repo_params(profile: dict[str, Any] | None = None) -> dict[str, Any]:
    """The repo's params.yaml with ``profile`` applied (CPU only by default)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return with_overrides(params, CPU if profile is None else profile)


def with_overrides(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Copy of ``params`` with dotted keys set, e.g. ``{"data.source": "x.csv"}``."""
    out = copy.deepcopy(params)
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return out


@pytest.fixture
def write_params(tmp_path: Path) -> Callable[..., Path]:
    """Write the tiny-profile params with overrides to a temp file and return its path."""

    def write(
        overrides: dict[str, Any] | None = None,
        name: str = "params.yaml",
        profile: dict[str, Any] = TINY,
    ) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(with_overrides(repo_params(profile), overrides or {})))
        return path

    return write


EMPTY_FEEDBACK = ROOT / "data/feedback.parquet"
NO_WARM_START = ROOT / "data/warm_start.pt"  # empty: train and harden start from scratch
# What the service and the monitor must never load: torch, MLflow, the learning layer and the
# stages that use it.
TRAINING_MODULES = (
    "torch",
    "mlflow",
    "pipeline.learning",
    "pipeline.train",
    "pipeline.tune",
    "pipeline.harden",
    "pipeline.export",
    "pipeline.evaluate",
)


def assert_imports_no_torch(*modules: str) -> None:
    """docs/design.md's layers at run time: importing ``modules`` (in a fresh process) loads no
    torch, no MLflow and no module of the learning layer."""
    import subprocess
    import sys

    code = (
        f"import sys, {', '.join(modules)}; "
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {TRAINING_MODULES!r} or "
        f"any(m == t or m.startswith(t + '.') for t in {TRAINING_MODULES!r})); "
        "print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def digits() -> tuple[pd.DataFrame, Schema]:
    """The validated digits frame and its schema, as ingest produces them."""
    src = load_source("digits")
    return infer_schema(src.frame, "target", None, 0.3, 50, src.image_shape)


def prepare_inputs(root: Path, params: dict[str, Any]) -> Path:
    """ingest -> preprocess -> features on digits into ``root``.

    The folder then holds params.yaml, data/, models/features.* and an empty params/tuned.json.
    """
    from pipeline import features, ingest, preprocess

    (root / "params.yaml").write_text(yaml.safe_dump(params))
    p = str(root / "params.yaml")
    data = ["--data", f"{root}/data/raw.parquet", "--schema", f"{root}/data/schema.json"]
    assert ingest.main(["--params", p, "--feedback", str(EMPTY_FEEDBACK), *data]) == 0
    prep = ["--out", f"{root}/data/prepared", "--noise-report", f"{root}/reports/noise.csv"]
    assert preprocess.main(["--params", p, *data, *prep, "--metrics", f"{root}/m/prep.json"]) == 0
    feats = [
        "--params",
        p,
        "--schema",
        f"{root}/data/schema.json",
        "--train",
        f"{root}/data/prepared/train.parquet",
        "--out-arrays",
        f"{root}/models/features.npz",
        "--out-spec",
        f"{root}/models/features.json",
        "--metrics",
        f"{root}/metrics/features.json",
        "--plot",
        f"{root}/plots/features.csv",
        "--warm-start",
        str(NO_WARM_START),
    ]
    assert features.main(feats) == 0
    (root / "params").mkdir()
    (root / "params/tuned.json").write_text("{}\n")
    return root


@pytest.fixture(scope="session")
def stage_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first three stages on digits with the tiny profile, once per session."""
    return prepare_inputs(tmp_path_factory.mktemp("stages"), repo_params(TINY))


@functools.cache
def _empty_tracking_db() -> bytes:
    """An MLflow SQLite database with its schema and no experiment of ours (created once)."""
    from pipeline.release.tracking import Tracker

    with tempfile.TemporaryDirectory() as tmp:
        Tracker(Path(tmp) / "mlflow.db").client.search_experiments()  # runs the migrations
        return (Path(tmp) / "mlflow.db").read_bytes()


def tracking_db(path: Path) -> Path:
    """``path``, holding an empty MLflow database unless one is there: MLflow's schema
    migrations cost 1.5 s a database, paid once per test session instead. The tests of the store
    itself (tests/unit/test_tracking.py) let MLflow create theirs."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_empty_tracking_db())
    return path


def train_args(
    inputs: Path,
    out: Path,
    params: Path | None = None,
    tuned: Path | None = None,
    warm: Path = NO_WARM_START,
) -> list[str]:
    """Arguments of ``pipeline.train`` reading ``inputs`` and writing under ``out``."""
    return [
        "--params",
        str(params or inputs / "params.yaml"),
        "--schema",
        f"{inputs}/data/schema.json",
        "--features",
        f"{inputs}/models/features",
        "--data",
        f"{inputs}/data/prepared",
        "--tuned",
        str(tuned or inputs / "params/tuned.json"),
        "--model",
        f"{out}/model.pt",
        "--checkpoint",
        f"{out}/checkpoints/train.pt",
        "--metrics",
        f"{out}/train.json",
        "--history",
        f"{out}/history.csv",
        "--confusion",
        f"{out}/confusion.png",
        "--timing",
        f"{out}/train_time.json",
        "--warm-start",
        str(warm),
        "--tracking-db",
        str(tracking_db(out / "mlflow.db")),
    ]


def run_train(inputs: Path, out: Path) -> Path:
    from pipeline import train

    assert train.main(train_args(inputs, out)) == 0
    return out


def run_harden(inputs: Path, trained: Path, out: Path, warm: Path = NO_WARM_START) -> Path:
    from pipeline import harden

    args = [
        "--params",
        str(inputs / "params.yaml"),
        "--schema",
        f"{inputs}/data/schema.json",
        "--data",
        f"{inputs}/data/prepared",
        "--model",
        f"{trained}/model.pt",
        "--train-metrics",
        f"{trained}/train.json",
        "--out",
        f"{out}/hardened.pt",
        "--metrics",
        f"{out}/robustness.json",
        "--plot",
        f"{out}/robustness.csv",
        "--figure",
        f"{out}/robustness.png",
        "--reliability",
        f"{out}/reliability.png",
        "--timing",
        f"{out}/harden_time.json",
        "--warm-start",
        str(warm),
        "--tracking-db",
        str(tracking_db(out / "mlflow.db")),
    ]
    assert harden.main(args) == 0
    return out


@pytest.fixture(scope="session")
def trained(stage_inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The train stage, tiny profile (an MLP, three epochs)."""
    return run_train(stage_inputs, tmp_path_factory.mktemp("train"))


@pytest.fixture(scope="session")
def hardened(stage_inputs: Path, trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The harden stage, tiny profile, on the tiny trained model."""
    return run_harden(stage_inputs, trained, tmp_path_factory.mktemp("harden"))


@pytest.fixture(scope="session")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh copy of the project after one `dvc repro` with the repo's params.yaml as it is
    (slow tier): the quality floors read its metrics; the loop test serves a copy of it as
    version 1. Read-only: a test that changes it works on a copy."""
    from tests.e2e.test_dvc_pipeline import copy_pristine, dvc

    project = copy_pristine(tmp_path_factory.mktemp("default_run") / "project")
    dvc(project, "repro", timeout=1800)
    return project


def export_args(inputs: Path, model: Path, out: Path) -> list[str]:
    return [
        "--params",
        str(inputs / "params.yaml"),
        "--schema",
        f"{inputs}/data/schema.json",
        "--model",
        str(model),
        "--test",
        f"{inputs}/data/prepared/test.parquet",
        "--out",
        f"{out}/model.onnx",
        "--out-int8",
        f"{out}/model.int8.onnx",
        "--metrics",
        f"{out}/export.json",
        "--timing",
        f"{out}/export_time.json",
    ]


def compress_args(inputs: Path, model: Path, out: Path) -> list[str]:
    return [
        "--params",
        str(inputs / "params.yaml"),
        "--schema",
        f"{inputs}/data/schema.json",
        "--data",
        f"{inputs}/data/prepared",
        "--model",
        str(model),
        "--onnx",
        f"{out}/model.onnx",
        "--out",
        f"{out}/compressed",
        "--metrics",
        f"{out}/compress.json",
        "--plot",
        f"{out}/compress.csv",
        "--figure",
        f"{out}/frontier.png",
        "--timing",
        f"{out}/compress_time.json",
        "--warm-start",
        str(NO_WARM_START),
    ]


def without_compression(out: Path) -> Path:
    """``out`` as a compress stage that made no variant leaves it (for a candidate exported by
    hand: every deployment target then gets the graph the gate judges, if it fits)."""
    (out / "compressed").mkdir(exist_ok=True)
    (out / "compress.json").write_text(json.dumps({"variants": []}))
    return out


@pytest.fixture(scope="session")
def exported(stage_inputs: Path, hardened: Path) -> Path:
    """The export and compress stages on the hardened model; write beside it."""
    from pipeline import compress, export

    assert export.main(export_args(stage_inputs, hardened / "hardened.pt", hardened)) == 0
    assert compress.main(compress_args(stage_inputs, hardened / "hardened.pt", hardened)) == 0
    return hardened


def evaluate_args(
    inputs: Path,
    candidate: Path,
    model_pt: Path,
    robustness: Path,
    train_metrics: Path,
    params: Path,
    state: Path,
) -> list[str]:
    """Arguments of ``pipeline.evaluate`` for ``candidate``'s graphs and ``state``'s registry."""
    return [
        "--params",
        str(params),
        "--schema",
        f"{inputs}/data/schema.json",
        "--test",
        f"{inputs}/data/prepared/test.parquet",
        "--holdout",
        f"{inputs}/data/prepared/holdout.parquet",
        "--val",
        f"{inputs}/data/prepared/val.parquet",
        "--train",
        f"{inputs}/data/prepared/train.parquet",
        "--model",
        str(model_pt),
        "--onnx",
        f"{candidate}/model.onnx",
        "--onnx-int8",
        f"{candidate}/model.int8.onnx",
        "--export-metrics",
        f"{candidate}/export.json",
        "--robustness",
        str(robustness),
        "--train-metrics",
        str(train_metrics),
        "--compress-metrics",
        f"{candidate}/compress.json",
        "--compressed",
        f"{candidate}/compressed",
        "--registry",
        f"{state}/registry",
        "--tracking-db",
        str(tracking_db(state / "mlflow.db")),
        "--metrics",
        f"{state}/evaluate.json",
    ]


def churn_table(rows: int, seed: int = 0) -> pd.DataFrame:
    """A typical tabular export: 30 numeric columns, two categoricals, 3 % missing cells, a few
    duplicated rows and a yes/no string label (make_classification underneath)."""
    import numpy as np
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=rows,
        n_features=30,
        n_informative=10,
        n_redundant=6,
        class_sep=1.5,
        flip_y=0.0,
        random_state=seed,
    )
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(X, columns=[f"x{i:02d}" for i in range(30)])
    df["region"] = rng.choice(["north", "south", "east", "west"], rows)
    df["plan"] = np.where(
        y == 1,
        rng.choice(["basic", "pro"], rows, p=[0.3, 0.7]),
        rng.choice(["basic", "pro"], rows, p=[0.7, 0.3]),
    )
    df = df.mask(rng.random(df.shape) < 0.03)
    df["churn"] = np.where(y == 1, "yes", "no")
    return pd.concat([df, df.sample(10, random_state=seed)], ignore_index=True)


def group_table(rows: int, seed: int = 0) -> pd.DataFrame:
    """A table with a known group effect (``data.sensitive: group``): 8 numeric columns and a
    two-valued ``group``, 30 % of rows in group "b", whose features are measured with three
    times the noise (0.6 against 0.2 of the signal's standard deviation) and whose label base
    rate is 0.25 against group "a"'s 0.55. The label is a logistic function of the clean
    signal: a model serves "b" worse (a logistic regression on 5,000 rows, seeds 0-2: accuracy
    0.90-0.91 for "a", 0.82-0.84 for "b"), and the reweighing (group x class) changes how often
    it says yes to each group."""
    import numpy as np

    rng = np.random.default_rng(seed)
    group = np.where(rng.random(rows) < 0.3, "b", "a")
    signal = rng.normal(size=(rows, 8))
    weights = np.array([1.5, -1.2, 1.0, 0.8, -0.6, 0.0, 0.0, 0.0])
    base = np.where(group == "b", np.log(0.25 / 0.75), np.log(0.55 / 0.45))
    logit = 8.0 * (signal @ weights) / np.linalg.norm(weights) + base
    y = rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))
    noise = np.where(group == "b", 0.6, 0.2)[:, None] * rng.normal(size=(rows, 8))
    df = pd.DataFrame(signal + noise, columns=[f"x{i}" for i in range(8)])
    df["group"] = group
    df["approved"] = np.where(y, "yes", "no")
    return df


def group_price_table(rows: int, seed: int = 0) -> pd.DataFrame:
    """A regression table with a known group effect (``data.sensitive: group``): Friedman #1's
    signal on five informative and three noise columns, a two-valued ``group`` (30 % of rows
    "b") whose price carries three times the noise (a standard deviation of 3 against 1 on
    the signal's scale, about 4.8): one pooled interval is too narrow for "b" and too wide
    for "a"."""
    import numpy as np
    from sklearn.datasets import make_friedman1

    X, signal = make_friedman1(n_samples=rows, n_features=8, noise=0.0, random_state=seed)
    rng = np.random.default_rng(seed)
    group = np.where(rng.random(rows) < 0.3, "b", "a")
    noise = np.where(group == "b", 3.0, 1.0) * rng.normal(size=rows)
    df = pd.DataFrame(np.round(X * 100.0, 3), columns=[f"x{i}" for i in range(8)])
    df["group"] = group
    df["price"] = np.round(10.0 * (signal + noise) + 100.0, 2)
    return df


def friedman_table(rows: int, seed: int = 0) -> pd.DataFrame:
    """A regression table as users bring them: Friedman #1's five informative columns and three
    noise columns (make_friedman1), a categorical that shifts the target, 3 % missing numeric
    cells, a few duplicated rows and a skewed positive target (a price: exp of the signal)."""
    import numpy as np
    from sklearn.datasets import make_friedman1

    X, y = make_friedman1(n_samples=rows, n_features=8, noise=1.0, random_state=seed)
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(X * 100.0, columns=[f"x{i}" for i in range(8)])
    region = rng.choice(["north", "south", "east", "west"], rows)
    offset = pd.Series({"north": 0.0, "south": 2.0, "east": -1.0, "west": 1.0})
    df = df.mask(rng.random(df.shape) < 0.03)
    df["region"] = region
    df["price"] = np.round(20.0 * np.exp((y + offset[region].to_numpy()) / 8.0), 2)
    return pd.concat([df, df.sample(10, random_state=seed)], ignore_index=True)
