"""The trigger policy on a real SQLite production log: each rule decides, and says why.

The retrain command is a stand-in that records its calls and writes the gate's side file as the
evaluate stage does, so these are tests of the policy's mechanics, not of a training run (the
slow loop test in test_loop.py runs the real `dvc repro`).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from monitoring import monitor as monitor_module
from monitoring.monitor import Monitor
from monitoring.reports import report_name
from monitoring.retrain import export_feedback
from monitoring.shifts import shift_inputs
from pipeline.contracts.prodlog import NO_ANSWER, ProductionLog, Window
from pipeline.contracts.schema import FEEDBACK
from tests.monitoring.conftest import (
    Digits,
    Traffic,
    fake_retrain,
    make_champion,
    monitor_config,
    simulate_config,
)


def monitor(tmp_path: Path, traffic: Traffic, **cfg: object) -> Monitor:
    make_champion(tmp_path / "registry", traffic.d)
    defaults = {"debounce": 2, "min_feedback": 100, "cooldown_s": 3600.0, "window": 50}
    return Monitor(
        monitor_config(**{**defaults, **cfg}), traffic.log, tmp_path / "registry", tmp_path
    )


def blurred(d: Digits, rows: slice) -> np.ndarray:
    cfg = simulate_config(scenario="blur")
    return shift_inputs(d.X_held[rows], d.schema, cfg, np.random.default_rng(0))


def calls(tmp_path: Path) -> int:
    path = tmp_path / "retrain_calls"
    return len(path.read_text()) if path.exists() else 0


def test_an_unshifted_stream_never_retrains(tmp_path: Path, traffic: Traffic) -> None:
    # A lone false drift alarm (alpha = 5 % a window) is recorded as drift, with labels that
    # show no harm, and retrains nothing.
    m = monitor(tmp_path, traffic, retrain_command=fake_retrain(tmp_path, True), debounce=3)
    d = traffic.d
    traffic.serve(d.X_held[:500], d.y_held[:500])
    refused = ("r", 0, 1.0, "1", b"\0" * 4, 0, b"\0" * 4, 0.1, "", None, None, None)
    traffic.log.set_aside(refused, "IntegrityError: a policy", 2.0)  # the service set it aside
    decisions = m.step()
    assert len(decisions) == 10 and decisions[-1].figures.log_rejected_rows == 1
    assert {x.decision for x in decisions} <= {"ok", "drift"}
    assert sum(x.decision == "drift" for x in decisions) <= 2
    assert not any(x.figures.harm for x in decisions)
    assert calls(tmp_path) == 0
    assert m.step() == []  # nothing new: no window is checked twice
    assert len(traffic.log.decisions()) == 10


def test_drift_without_evidence_of_harm_is_recorded_and_never_retrains(
    tmp_path: Path, traffic: Traffic
) -> None:
    """Input drift alone (15 labels a window, fewer than min_labels to test accuracy, and a
    champion without a label-free estimator) is reported and recorded, never retrained on."""
    m = monitor(tmp_path, traffic, retrain_command=fake_retrain(tmp_path, True))
    d = traffic.d
    traffic.serve(blurred(d, slice(0, 150)), d.y_held[:150], feedback=0.3)
    decisions = m.step()
    assert [x.decision for x in decisions] == ["drift"] * 3
    last = traffic.log.decisions()[-1]
    assert any(
        "not retraining: 15 labels in the window, min_labels 30" in r for r in last["reasons"]
    )
    assert last["figures"]["drifted"] and not last["figures"]["harm"] and calls(tmp_path) == 0


def test_a_concept_shift_is_caught_by_feedback_accuracy_alone(
    tmp_path: Path, traffic: Traffic
) -> None:
    m = monitor(tmp_path, traffic, retrain_command=fake_retrain(tmp_path, True), min_feedback=10**6)
    d = traffic.d
    remapped = (d.y_held[100:200] + 1) % d.schema.n_classes  # same inputs, other labels
    traffic.serve(d.X_held[100:200], remapped)
    first, second = m.step()
    for x in (first, second):
        assert not x.figures.drifted, x.figures.drift.features
        assert x.figures.quality.accuracy_dropped and x.figures.quality.accuracy < 0.2
    assert (first.decision, second.decision) == ("alarm", "waiting_for_labels")
    assert "feedback accuracy" in first.reasons[0]


def test_drift_with_labels_exports_feedback_retrains_then_cools_down(
    tmp_path: Path, traffic: Traffic
) -> None:
    m = monitor(tmp_path, traffic, retrain_command=fake_retrain(tmp_path, True))
    d = traffic.d
    traffic.serve(blurred(d, slice(0, 200)), d.y_held[:200])
    decisions = m.step()
    # After a retrain the debounce starts again; then the cooldown holds the next one back.
    assert [x.decision for x in decisions] == ["alarm", "retrain_promoted", "alarm", "cooldown"]
    assert calls(tmp_path) == 1
    assert any("promoted version 2" in r for r in decisions[1].reasons)
    exported = pd.read_parquet(tmp_path / "data/feedback.parquet")
    # Every label that existed when the retrain ran: the first two windows' 100 rows and the
    # rest of the batch (feedback is stored with the predictions here).
    assert len(exported) == 200 and exported[FEEDBACK].is_unique
    assert set(exported[d.schema.target]) <= set(d.schema.classes)
    np.testing.assert_allclose(
        exported[d.schema.names].to_numpy(), blurred(d, slice(0, 200)), atol=1e-6
    )
    assert exported[d.schema.target].tolist() == [d.schema.classes[c] for c in d.y_held[:200]]
    # The retrain starts from the champion's weights, copied where train and harden read them.
    assert (tmp_path / "data/warm_start.pt").read_bytes() == b"weights of version 1"
    assert any("starts from version 1's weights" in r for r in decisions[1].reasons)


@pytest.mark.parametrize(
    ("promoted", "decision", "says"),
    [
        # The gate's reasons are passed on, with the version that keeps serving (read from the
        # registry by the monitor).
        (False, "retrain_rejected", "rejected version 2: min_accuracy: 0.5 vs 0.95; version 1"),
        # A failed command: its exit status and the tail of its own output, from the log file.
        (None, "retrain_failed", "exit 1; the champion keeps serving;"),
    ],
)
def test_a_rejected_or_failed_retrain_leaves_the_champion_and_says_why(
    tmp_path: Path, traffic: Traffic, promoted: bool | None, decision: str, says: str
) -> None:
    command = fake_retrain(tmp_path, promoted, ["min_accuracy: 0.5 vs 0.95"])
    m = monitor(tmp_path, traffic, retrain_command=command, cooldown_s=0.0)
    d = traffic.d
    traffic.serve(blurred(d, slice(0, 100)), d.y_held[:100])
    *_, last = m.step()
    assert last.decision == decision
    assert any(says in r for r in last.reasons), last.reasons
    # The retrain ran once, on every labelled row exported for it.
    assert (tmp_path / "retrain_calls").read_text() == "x"
    assert "exported 100 labelled production rows" in last.reasons[-2]
    assert len(pd.read_parquet(tmp_path / "data/feedback.parquet")) == 100
    (log,) = (tmp_path / "reports/drift/retrain").glob("*.log")
    if promoted is None:
        assert "stage train failed: boom" in log.read_text()
        assert str(log) in last.reasons[-1] and "stage train failed: boom" in last.reasons[-1]


def test_dry_run_and_a_held_lock_record_but_never_retrain(tmp_path: Path, traffic: Traffic) -> None:
    m = monitor(tmp_path, traffic, retrain_command=fake_retrain(tmp_path, True), debounce=1)
    d = traffic.d
    traffic.serve(blurred(d, slice(0, 150)), d.y_held[:150])
    window = traffic.log.window(last=50)
    assert m.decide(window, dry_run=True).decision == "dry_run"
    lock = tmp_path / "reports/drift/retrain.lock"
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        assert m.decide(window).decision == "busy"
    other_machine = ProductionLog(traffic.log.url)  # another watch sharing the log
    with other_machine.lease("retrain") as held:
        assert held
        busy = m.decide(window)
    other_machine.close()
    assert busy.decision == "busy" and "sharing this production log" in busy.reasons[-1]
    assert calls(tmp_path) == 0
    decisions = traffic.log.decisions()
    assert [x["decision"] for x in decisions] == ["dry_run", "busy", "busy"]
    index = (tmp_path / "reports/drift/index.html").read_text()
    assert "dry_run" in index and "busy" in index


@pytest.mark.slow  # a 2 s timeout and its process group's grace period
def test_a_retrain_past_its_timeout_is_stopped_with_every_process_it_started(
    tmp_path: Path, traffic: Traffic
) -> None:
    """As `dvc repro` and the stage it runs: a child that starts a grandchild, both hanging."""
    script = tmp_path / "hanging_retrain.py"
    script.write_text(
        "import pathlib, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "pathlib.Path(sys.argv[1]).write_text(str(child.pid))\n"
        "print('stage train: epoch 1', flush=True)\n"
        "time.sleep(600)\n"
    )
    pid_file = tmp_path / "stage.pid"
    command = (sys.executable, str(script), str(pid_file))
    m = monitor(tmp_path, traffic, retrain_command=command, cooldown_s=0.0, retrain_timeout_s=2.0)
    d = traffic.d
    traffic.serve(blurred(d, slice(0, 100)), d.y_held[:100])
    *_, last = m.step()
    assert last.decision == "retrain_failed"
    (log,) = (tmp_path / "reports/drift/retrain").glob("*.log")
    assert "timed out after 2.0 s" in last.reasons[-1] and str(log) in last.reasons[-1]
    assert "stage train: epoch 1" in log.read_text()
    # The decision comes once the group is gone, not while a killed stage is still exiting.
    assert not _running(int(pid_file.read_text())), "the stage outlived its retrain"
    # Nothing is left that blocks the next retrain: the locks are free again.
    with monitor_module.retrain_lock(tmp_path / "reports/drift/retrain.lock") as free:
        assert free
    with traffic.log.lease("retrain") as leased:
        assert leased


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_watch_waits_out_a_production_log_outage_and_resumes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from sqlalchemy.exc import OperationalError

    from monitoring.__main__ import _watch

    class Flaky:
        """A monitor whose log is away for its second and third steps."""

        cfg = monitor_config(interval_s=0.01)

        def __init__(self) -> None:
            self.steps = 0

        def step(self, dry_run: bool, stop: Any) -> list[dict]:
            self.steps += 1
            if self.steps in (2, 3):
                raise OperationalError("SELECT", {}, ConnectionRefusedError("connection refused"))
            if self.steps == 5:
                stop.__self__.set()  # the loop's stop event, as SIGTERM sets it
            return []

    flaky = Flaky()
    assert _watch(flaky, max_seconds=None, dry_run=False) == 0  # type: ignore[arg-type]
    assert flaky.steps == 5  # it went on deciding after the outage, until stopped
    err = capsys.readouterr().err
    assert err.count("the production log is unreachable") == 1, err  # once per outage
    assert "connection refused" in err and err.count("the production log is back") == 1


def test_the_reference_is_computed_once_per_model_version(tmp_path: Path, traffic: Traffic) -> None:
    m = monitor(tmp_path, traffic)
    traffic.serve(traffic.d.X_held[:50])
    m.step()
    cached = list((tmp_path / "reports/drift/cache").glob("reference-v1-*.npz"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    fresh = Monitor(m.cfg, traffic.log, tmp_path / "registry", tmp_path)  # a new process
    traffic.serve(traffic.d.X_held[50:100])
    assert [x.decision for x in fresh.step()] == ["ok"]
    assert cached[0].stat().st_mtime_ns == stamp  # loaded, not recomputed


def test_export_feedback_writes_the_labelled_rows_with_their_classes(
    tmp_path: Path, traffic: Traffic
) -> None:
    d = traffic.d
    traffic.serve(d.X_held[:30], d.y_held[:30], feedback=0.5)
    n = export_feedback(traffic.log, d.schema, tmp_path / "fb.parquet")
    df = pd.read_parquet(tmp_path / "fb.parquet")
    assert n == len(df) == 15
    assert json.loads(json.dumps(df[d.schema.target].tolist())) == df[d.schema.target].tolist()


def test_the_label_free_estimate_is_evidence_of_harm_before_labels_arrive(
    tmp_path: Path, traffic: Traffic
) -> None:
    """With the champion's estimator (ATC, the nearest-neighbour vote once the drift test flags
    a column), blurred traffic without a single label is judged harmful, and the policy then
    waits for the labels a retrain needs; unshifted traffic is not. The estimate is what the
    index page plots."""
    # 0.93: what this logistic-regression champion scores on held-out digits.
    make_champion(tmp_path / "registry", traffic.d, accuracy=0.93, estimator=True)
    cfg = monitor_config(debounce=2, min_feedback=100, window=50)
    m = Monitor(cfg, traffic.log, tmp_path / "registry", tmp_path)
    d = traffic.d
    traffic.serve(d.X_held[:100], d.y_held[:100], feedback=0.0)
    calm = m.step()
    assert all(not x.figures.harm for x in calm)
    assert all(x.figures.quality.estimate_method == "atc_knn" for x in calm)
    accuracy = float((d.model.predict(d.X_held[:100] / 16) == d.y_held[:100]).mean())
    assert abs(np.mean([x.figures.quality.estimated_accuracy for x in calm]) - accuracy) < 0.05
    traffic.serve(blurred(d, slice(100, 200)), d.y_held[100:200], feedback=0.0)
    shifted = m.step()
    assert [x.decision for x in shifted] == ["alarm", "waiting_for_labels"]
    assert all(
        x.figures.quality.estimate_dropped and x.figures.quality.labelled == 0 for x in shifted
    )
    assert any("estimated accuracy" in r and "atc_knn" in r for r in shifted[-1].reasons)


def test_windows_answered_before_a_promotion_never_count_against_the_new_champion(
    tmp_path: Path, traffic: Traffic
) -> None:
    """The backlog a promoted retrain leaves (windows the old version answered, badly) is recorded
    as ``superseded``: its drift is kept, its harm is the old version's, and no retrain follows;
    the new champion's own windows are judged as usual."""
    m = monitor(tmp_path, traffic, retrain_command=fake_retrain(tmp_path, True), cooldown_s=0.0)
    d = traffic.d
    traffic.serve(blurred(d, slice(0, 150)), d.y_held[:150])  # harmful, answered by version 1
    make_champion(tmp_path / "registry", d, version="2")  # then version 2 is promoted
    decisions = m.step()
    assert [x.decision for x in decisions] == ["superseded"] * 3
    assert all(x.figures.as_json()["harm_of_served"] and not x.figures.harm for x in decisions)
    assert all(x.figures.drifted for x in decisions)
    assert "answered by version 1 before version 2 became champion" in decisions[0].reasons[0]
    assert calls(tmp_path) == 0
    traffic.serve(blurred(d, slice(150, 250)), d.y_held[150:250], version="2")
    judged = m.step()  # version 2's own windows: judged again, no longer superseded
    assert judged and {x.decision for x in judged} <= {"alarm", "retrain_promoted"}


def test_watch_writes_drift_reports_in_the_background(
    tmp_path: Path, traffic: Traffic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With background reports (``watch``) a drift onset's report is written by a worker while
    the windows after it are decided: the decisions name the report before it exists, close()
    waits for it."""
    release, started, drifted = threading.Event(), threading.Event(), []
    niceness: list[int] = []

    def slow_report(
        window: Window, champ: object, out_dir: Path, features: list, missing: list
    ) -> str:
        niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        started.set()
        assert release.wait(30)
        drifted.append(features)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / report_name(window)).write_text("<html>report</html>")
        return report_name(window)

    monkeypatch.setattr(monitor_module, "drift_report", slow_report)
    make_champion(tmp_path / "registry", traffic.d)
    m = Monitor(
        monitor_config(window=50, report_on_drift=True),
        traffic.log,
        tmp_path / "registry",
        tmp_path,
        background_reports=True,
    )
    d = traffic.d
    traffic.serve(blurred(d, slice(0, 150)), d.y_held[:150], feedback=0.0)
    decisions = m.step()  # returns while the onset's report is still being written
    assert [x.decision for x in decisions] == ["drift"] * 3
    name = decisions[0].figures.report
    assert started.wait(30) and not (tmp_path / "reports/drift" / name).exists()
    assert decisions[1].figures.report is None  # one report per drift episode
    release.set()
    m.close()
    assert (tmp_path / "reports/drift" / name).is_file()
    assert drifted == [decisions[0].figures.drift.features[:10]]  # the ten the row keeps
    # The worker yields the CPU to a retrain; the watch loop's own thread keeps its priority.
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert niceness == [min(own + monitor_module.REPORT_NICE, 19)]


def test_export_feedback_without_labels_writes_an_empty_table_with_the_columns(
    tmp_path: Path, traffic: Traffic
) -> None:
    """A retrain on the label-free estimate alone (monitor.min_feedback 0) has no labelled rows."""
    d = traffic.d
    traffic.serve(d.X_held[:20], None)
    path = tmp_path / "feedback.parquet"
    assert export_feedback(traffic.log, d.schema, path) == 0
    df = pd.read_parquet(path)
    assert len(df) == 0 and list(df.columns) == [*d.schema.names, d.schema.target, FEEDBACK]


def test_one_groups_harm_is_harm_that_names_the_group_while_the_average_holds(
    tmp_path: Path,
) -> None:
    """A champion promoted with data.sensitive (region): the south's answers fall from 0.85 to
    0.60 while the north's hold, the rows interleaved as traffic comes. A 50-row window (the
    default) holds about 10 southern labels, too few to test, and its overall accuracy stays
    above the floor; the south is judged on its latest 50 labelled rows across windows, and its
    fall is significant at alpha over the two groups: the window is harm, its reason names the
    group, and the decision row keeps the groups."""
    from pipeline.contracts.schema import Schema

    schema = Schema.from_dict(
        {
            "features": [
                {"name": "x", "kind": "numeric", "dtype": "float64", "min": 0.0, "max": 1.0},
                {"name": "region", "kind": "categorical", "dtype": "object",
                 "categories": ["north", "south"]},
            ],
            "target": {"name": "y", "classes": [0, 1]},
        }
    )  # fmt: skip
    directory = tmp_path / "registry/versions/1"
    directory.mkdir(parents=True)
    (directory / "schema.json").write_text(json.dumps(schema.to_dict()))
    by_group = {"north": {"rows": 80, "accuracy": 0.92}, "south": {"rows": 40, "accuracy": 0.85}}
    decision = {
        "candidate": {"accuracy": 0.9},
        "groups": {"column": "region", "candidate": {"test": {"by_group": by_group}}},
    }
    (directory / "evaluate.json").write_text(json.dumps(decision))
    rng = np.random.default_rng(0)
    reference = np.stack([rng.uniform(0, 1, 400), rng.integers(0, 2, 400)], axis=1)
    pd.DataFrame(reference.astype(np.float32), columns=schema.names).to_parquet(
        directory / "reference.parquet"
    )
    (tmp_path / "registry/champion").symlink_to(directory.resolve())
    log = ProductionLog(str(tmp_path / "production.db"))
    north, south = 240, 60
    region = np.r_[np.zeros(north), np.ones(south)]
    right = np.r_[rng.permutation(np.arange(north) < 228), rng.permutation(np.arange(south) < 36)]
    order = rng.permutation(north + south)  # the two regions' requests interleaved
    region, right = region[order], right[order]
    X = np.stack([rng.uniform(0, 1, north + south), region], axis=1).astype(np.float32)
    truth = rng.integers(0, 2, north + south)
    label = np.where(right, truth, 1 - truth)
    rows = [
        (f"r{i}", 0, 100.0 + i, "1", X[i].tobytes(), int(label[i]),
         np.float32([0.5, 0.5]).tobytes(), 1.0, "", *NO_ANSWER)
        for i in range(len(X))
    ]  # fmt: skip
    log.write_predictions(rows)
    log.add_feedback([(f"r{i}", 0, int(truth[i])) for i in range(len(X))], now=500.0)
    cfg = monitor_config(min_feedback=10**6)
    assert cfg.window == 50 and cfg.min_labels == 30  # the defaults
    m = Monitor(cfg, log, tmp_path / "registry", tmp_path)
    window = log.window(last=50)
    in_window = int((X[-50:, 1] == 1).sum())
    assert in_window < cfg.min_labels  # one window alone could not test the south
    decided = m.decide(window)
    f = decided.figures
    assert f.quality.labelled == 50 and not f.quality.accuracy_dropped
    assert f.groups is not None and f.groups.dropped == ["south"]
    south_rows = f.groups.by_group["south"]
    assert south_rows.labelled == 50 and south_rows.figure == pytest.approx(
        right[region == 1][-50:].mean()
    )
    assert not f.groups.by_group["north"].dropped and f.harm
    assert decided.decision == "alarm"
    said = next(r for r in decided.reasons if r.startswith("group 'south' of region"))
    assert "on 50 labels" in said and "over 2 groups" in said
    row = log.decisions()[-1]["figures"]
    assert row["groups"]["by_group"]["south"]["dropped"] and row["harm"]
    m.close()
    log.close()
