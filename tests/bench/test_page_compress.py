"""The benchmarks the manual documents for the browser page and compression, run as a user runs
them (``python bench/...``) on the tiny pipeline's champion (bench tier): they finish and print
the figures they promise. The figures themselves are the bench's business, not a test's."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.contracts.io import load_json
from tests.bench.test_scripts import bench
from tests.conftest import repo_params, with_overrides
from tests.serving.conftest import LENIENT, promote

pytestmark = pytest.mark.bench


def test_bench_page_measures_both_visits_and_agrees_with_python(
    stage_inputs: Path, trained: Path, exported: Path, tmp_path: Path
) -> None:
    """On a champion whose browser graph is the pruned int8 one (a browser budget only it
    meets): the browser gives the same labels as onnxruntime in Python on every test row."""
    variants = {v["name"]: v for v in load_json(exported / "compress.json")["variants"]}
    budget = {"deploy.browser.max_bytes": variants["p55.int8"]["bytes"]}
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(with_overrides(repo_params(LENIENT), budget))
    )
    decision = promote(stage_inputs, exported, exported / "hardened.pt", trained, tmp_path)
    assert decision["deploy"]["browser"]["variant"] == "p55.int8"
    out = bench(
        "bench/page.py",
        *("--registry", str(tmp_path / "registry")),
        *("--data", str(stage_inputs / "data/prepared")),
        timeout=900,
    )
    assert "browser graph: browser.onnx" in out and "int8: True" in out, out
    rows = len(pd.read_parquet(stage_inputs / "data/prepared/test.parquet"))
    assert f"labels, browser vs python: {rows} of {rows} the same" in out, out
    visits = re.search(r"first visit ([\d,]+) bytes, second visit ([\d,]+)", out).groups()
    first, second = (int(v.replace(",", "")) for v in visits)
    assert second < first / 20, out
    assert re.search(r"one record, ms \(median\)\s+[\d.]+\s+[\d.]+\s+[\d.]+", out), out


def test_bench_compress_prunes_for_real_and_quantizes(
    stage_inputs: Path, hardened: Path, tmp_path: Path
) -> None:
    """bench/compress.py on the tiny champion (an MLP): every pruned level has fewer parameters
    and MACs than the unpruned network, every int8 graph fewer bytes than its fp32 one."""
    inputs = tmp_path / "project"
    (inputs / "models").mkdir(parents=True)
    (inputs / "data").symlink_to(stage_inputs / "data")
    (inputs / "params.yaml").symlink_to(stage_inputs / "params.yaml")
    (inputs / "models/hardened.pt").symlink_to(hardened / "hardened.pt")
    out = bench(
        "bench/compress.py",
        *("--inputs", str(inputs), "--levels", "0.5", "--epochs", "1", "--repeats", "5"),
        timeout=900,
    )
    rows = {}
    for line in out.splitlines():
        m = re.match(r"((?:un)?pruned(?: \d+%)? (?:fp32|int8 static|int8 dynamic))\s+(\d+)\s+"
                     r"[\d.]+\s+[\d.]+\s+(\d+)\s+(\d+)", line)  # fmt: skip
        if m:
            rows[m.group(1)] = tuple(int(v) for v in m.groups()[1:])  # bytes, params, MACs
    assert set(rows) == {
        f"{level} {kind}"
        for level in ("unpruned", "pruned 50%")
        for kind in ("fp32", "int8 static", "int8 dynamic")
    }, out
    assert rows["pruned 50% fp32"][1] < rows["unpruned fp32"][1] / 2, out  # params: a real cut
    assert rows["pruned 50% fp32"][2] < rows["unpruned fp32"][2] / 2, out  # MACs
    for level in ("unpruned", "pruned 50%"):
        assert rows[f"{level} int8 static"][0] < rows[f"{level} fp32"][0], out
