"""Every benchmark the manual documents, run as a person runs it (``python bench/...``), at a
small size: it finishes and prints the figures it promises, so no documented command rots.

The bench tier (``-m bench``, ``make test-bench``; CI runs it after ``make test-all``). The
figures are each bench's business, not a test's: these tests read the printed rows and check
what must hold whatever the figures (every row present, a ratio that is a ratio, a rate within
0..1). The benchmarks that read "a project after ``make repro``" read the session's default run
(the repo's params on the digits, ``tests.conftest.default_run``); the ones that build their own
projects run one table, seed or scenario. ``bench/page.py`` and ``bench/compress.py`` run on the
tiny champion (``tests/bench/test_page_compress.py``).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.bench

NUMBER = r"-?[\d.]+"


def bench(*args: str, timeout: float = 1500) -> str:
    """``python bench/<args>`` from the repo root; its stdout (stderr too on failure)."""
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def table_rows(out: str, first: str) -> list[list[str]]:
    """The cells of the Markdown table rows of ``out`` whose first cell is ``first``."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in out.splitlines()]
    return [r for r in rows if r and r[0] == first]


def test_bench_train_and_its_kernel_comparison(default_run: Path) -> None:
    """``bench/train.py --compare-kernels`` runs the benchmark under both pins, each in its own
    process: both loops' samples/s under each, and the pinning's ratio."""
    out = bench(
        "bench/train.py",
        *("--inputs", str(default_run), "--epochs", "1", "--trials", "1", "--compare-kernels"),
    )
    rows = re.findall(rf"^(.+?)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})x$", out, flags=re.M)
    assert len(rows) == 3, out  # the bare loop and the stage loop, plain and full
    for _, native, pinned, ratio in rows:
        assert float(native) > 0 and float(pinned) > 0, out
        assert float(ratio) == pytest.approx(float(pinned) / float(native), abs=0.01), out


def test_bench_export_times_every_graph(default_run: Path) -> None:
    out = bench("bench/export.py", "--inputs", str(default_run), "--repeats", "5")
    sizes = re.findall(r"onnxruntime (fp32|int8 dynamic|int8 static) (?:QDQ)?\s+(\d+) bytes", out)
    assert {name for name, _ in sizes} == {"fp32", "int8 dynamic", "int8 static"}, out
    size = {name: int(b) for name, b in sizes}
    assert size["int8 static"] < size["fp32"] and size["int8 dynamic"] < size["fp32"], out
    for batch in ("1", "256"):  # eager and the three graphs at each batch size
        lines = [line for line in out.splitlines() if re.match(rf"\s*{batch}\s+\S", line)]
        assert len(lines) == 4, out


def test_bench_harden_scores_a_candidate(default_run: Path) -> None:
    """One candidate (the shipped method at a third of its epochs): its clean and worst-case
    accuracies are rates and the worst case at eps 0.2 is no better than at 0.1."""
    out = bench("bench/harden.py", "--inputs", str(default_run), "--only", "pgd-5 x15")
    row = re.search(rf"^pgd-5 x15\s+({NUMBER})%?\s+({NUMBER})%?\s+({NUMBER})%?", out, flags=re.M)
    assert row, out
    clean, eps1, eps2 = (float(v) for v in row.groups())
    assert 0 <= eps2 <= eps1 <= clean <= 100, out


def test_bench_estimate_compares_every_method(default_run: Path) -> None:
    out = bench(
        "bench/estimate.py",
        *("--windows", "2", "--registry", f"{default_run}/registry"),
        *("--data", f"{default_run}/data/prepared", "--params", f"{default_run}/params.yaml"),
    )
    rows = [r for r in table_rows(out, "blur") if r[1] in ("50", "200")]
    assert len(rows) == 2, out
    header = next(line for line in out.splitlines() if line.startswith("| scenario"))
    methods = header.count(" error")
    assert methods >= 4 and "| atc_cott error | knn error | atc_knn error |" in header, out
    for r in rows:
        assert 0 <= float(r[2]) <= 1, out  # realized accuracy
        assert 0 <= int(r[3]) <= 64, out  # columns the drift test flagged
        assert len(r) == 4 + methods and all(float(e) >= 0 for e in r[4:]), out


def test_bench_explain_orders_deletion_curves(default_run: Path) -> None:
    out = bench(
        "bench/explain.py",
        *("--registry", f"{default_run}/registry", "--data", f"{default_run}/data/prepared"),
    )
    areas = {
        name: float(table_rows(out, name)[0][1])
        for name in (
            "occlusion (/explain)",
            "Integrated Gradients (twin)",
            "random (5 permutations)",
        )
    }
    assert all(0 <= a <= 1 for a in areas.values()), out
    assert areas["occlusion (/explain)"] < areas["random (5 permutations)"], out


def test_bench_serve_against_the_bare_app(default_run: Path) -> None:
    """The service, the bare app and the batching app under wrk, one short round each."""
    if shutil.which("wrk") is None:
        pytest.fail("bench/serve.py needs Debian's wrk: apt-get install wrk (.ci/run does)")
    out = bench(
        "bench/serve.py",
        *("--seconds", "1", "--rounds", "1", "--registry", f"{default_run}/registry"),
    )
    assert "against bare" in out, out
    ratios = re.findall(r"\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|", out)
    assert [n for n, *_ in ratios] == ["1", "32"], out  # /explain against /predict
    for _, predict, explain, ratio in ratios:
        assert float(ratio) == pytest.approx(float(explain) / float(predict), rel=0.1), out
    # A BentoML worker runs in a session of its own: the bench must stop it too.
    left = [cmd for cmd in command_lines() if b"bench.batched_app" in cmd or b"bare_app:app" in cmd]
    assert not left, left


def command_lines() -> list[bytes]:
    out = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            out.append(path.read_bytes())
    return out


def test_bench_loop_one_quiet_scenario(default_run: Path) -> None:
    """The loop from a copy of the default run: a prior shift (no harm) is served, fed back and
    watched for two windows; the table row names the scenario and the versions."""
    out = bench(
        "bench/loop.py",
        *("--from", str(default_run), "--scenarios", "prior"),
        *("--requests", "300", "--quiet-windows", "2"),
    )
    rows = table_rows(out, "prior")
    assert len(rows) == 1 and rows[0][1].startswith("v1 -> v"), out
    before, after = (float(v) for v in rows[0][2].split(" -> "))
    assert 0 <= before <= 1 and 0 <= after <= 1, out


def test_bench_drift_against_evidently() -> None:
    out = bench(
        "bench/drift.py",
        *("--windows", "3", "--evidently-windows", "1", "--scale-rows", "2000"),
    )
    rates = re.findall(r"^(\w+)\s+(\d+) \|\s+(\d+)%", out, flags=re.M)
    assert len(rates) >= 4, out
    assert all(0 <= int(rate) <= 100 for *_, rate in rates), out
    assert "2,000" in out or "2000" in out, out  # the scale check ran on its window


def test_bench_prep_with_its_baseline() -> None:
    out = bench("bench/prep.py", "--rows", "3000", "--columns", "8", "--baseline")
    assert "3,000 rows x 8 columns" in out, out
    ratio = re.search(r"^\s+ratio((?:\s+[\d.]+)+)$", out, flags=re.M)
    assert ratio, out
    assert all(float(r) > 0 for r in ratio.group(1).split()), out


def test_bench_tabular_one_table() -> None:
    out = bench("bench/tabular.py", "--tables", "wine", "--seeds", "0")
    (row,) = table_rows(out, "wine")
    network, hgb, linear = (float(v) for v in row[3:6])
    assert all(0 <= v <= 1 for v in (network, hgb, linear)), out
    assert float(row[6]) == pytest.approx(network - hgb, abs=1e-4), out
    assert re.search(r"network at or above HistGradientBoosting on [01] of 1 tables", out), out


def test_bench_fairness_with_and_without_reweighing() -> None:
    out = bench("bench/fairness.py", "--seeds", "0", "--rows", "1500")
    rows = table_rows(out, "0")
    assert sorted(r[1] for r in rows) == ["group", "null"], out
    assert "means over seeds:" in out and "change" in out, out


def test_bench_group_intervals_one_seed() -> None:
    out = bench("bench/group_intervals.py", "--seeds", "0", "--rows", "1500")
    rows = table_rows(out, "0")
    assert {r[1] for r in rows} >= {"a", "b"}, out
    for r in rows:
        assert all(0 <= float(c) <= 1 for c in r[3:5]), out  # coverage pooled, per group


def test_bench_intervals_on_a_regression_project(tmp_path: Path) -> None:
    """``--inputs`` a project after `dvc repro` on a regression source (the bundled diabetes)."""
    from tests.e2e.test_dvc_pipeline import copy_pristine, dvc, edit_params

    project = copy_pristine(tmp_path / "project")
    edit_params(project, "data", "source", "diabetes")
    edit_params(project, "data", "target", "target")
    dvc(project, "repro", timeout=1200)
    out = bench("bench/intervals.py", "--inputs", str(project), "--seeds", "42")
    methods = re.findall(rf"^(split|cqr-mlp|cqr-hgb)\s+(?:42|-)\s+{NUMBER}\s+({NUMBER})", out, re.M)
    assert {m for m, _ in methods} == {"split", "cqr-mlp", "cqr-hgb"}, out
    assert all(0 <= float(c) <= 1 for _, c in methods), out
