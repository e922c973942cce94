"""A table with a known group effect through `dvc repro`, only ``data.*`` set (``data.sensitive:
group``): per-group figures in metrics/evaluate.json and the model card, and a gap over
``gate.max_group_gap`` refused with a reason that names the group. Slow tier.

The table (tests.conftest.group_table): group "b" (30 % of rows) is measured with three times
the noise and has a lower base rate, so the model serves it worse. Measured with the table of
seed 0 (5,000 rows; 1,000 test rows, 310 of group "b"): test accuracy 0.886 for "a" and 0.819
for "b", a gap of 0.066 (permutation p 0.006), under the default ceiling of 0.1: the first run
was promoted (overall accuracy 0.865, ECE 0.042). (8,000 rows, as bench/fairness.py takes,
gave a gap of 0.0998, one row from the ceiling; the module took 302 s in CI then, 264 s now
on this 2-core machine without coverage.) The assertions do not depend on where the gap lands
against the ceiling: the card is read from the version's MLflow artifacts (every evaluated
version has one), and the refusal halves the ceiling with a test level
(``gate.production_alpha: 0.5``) that any real gap of a few hundred rows a group passes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import group_table
from tests.e2e.test_dvc_pipeline import copy_pristine, dvc, edit_params, ran
from tests.e2e.test_regression_table import loop_on_loopback

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loans_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The group table through `dvc repro` with the repo's params but ``data.*``; read-only (a
    test that changes it works on a copy)."""
    project = copy_pristine(tmp_path_factory.mktemp("loans") / "project")
    group_table(5000, seed=0).to_csv(project / "data/loans.csv", index=False)
    edit_params(project, "data", "source", "data/loans.csv")
    edit_params(project, "data", "target", "approved")
    edit_params(project, "data", "sensitive", "group")
    dvc(project, "repro")
    return project


def test_group_figures_reach_the_decision_and_the_card_and_a_wide_gap_is_refused(
    loans_run: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    shutil.copytree(loans_run, project, symlinks=True)
    decision = json.loads((project / "metrics/evaluate.json").read_text())
    groups = decision["groups"]
    test = groups["candidate"]["test"]
    a, b = test["by_group"]["a"], test["by_group"]["b"]
    print(json.dumps({"a": a, "b": b, "gap": test["gap"]}, indent=1))
    assert a["rows"] + b["rows"] == 1000 and b["rows"] > 250
    assert len(a["selection_rate"]) == len(a["tpr"]) == len(a["fpr"]) == 2
    assert 0 <= test["demographic_parity_difference"] <= 1
    gap = test["gap"]
    assert (gap["worst"], gap["best"]) == ("b", "a") and gap["value"] > 0
    assert gap["value"] == pytest.approx(a["accuracy"] - b["accuracy"])
    (card_path,) = project.glob("mlartifacts/*/artifacts/model/model_card.md")
    card = card_path.read_text()
    assert "## Groups of `group` (test split)" in card and "data:image/png;base64," in card
    assert "| feature | mean absolute attribution |" in card  # a table's global importance
    rule = {r["rule"]: r for r in decision["rules"]}["max_group_gap"]
    assert rule["value"] == gap["value"] and rule["subject"] == "group 'b' of group"

    # A ceiling below the gap: only evaluate runs again, and the candidate is refused, naming b.
    edit_params(project, "gate", "max_group_gap", round(gap["value"] / 2, 4))
    edit_params(project, "gate", "production_alpha", 0.5)
    output = dvc(project, "repro")
    assert "evaluate" in ran(output) and "train" not in ran(output)
    refused = json.loads((project / "metrics/evaluate.json").read_text())
    assert not refused["promoted"]
    assert any(r.startswith("max_group_gap") and "group 'b'" in r for r in refused["reasons"])
    assert any("group 'b' of group" in h for h in refused["hints"])


def test_one_groups_shift_is_named_as_its_harm_and_retrained_on_loopback(
    loans_run: Path, tmp_path: Path
) -> None:
    """Traffic in which group "b"'s inputs alone gain sensor noise (simulate.noise_sigma, the
    repo's 2.0, on its numeric columns; group "a" as served in training) -> `monitoring watch`
    finds group b's feedback accuracy significantly below its test figure and names the group
    in the decision (its latest labelled rows, Bonferroni over the two groups) -> `dvc repro`
    retrains -> the gate decides. Mechanics: whether the gate promotes is not asserted.

    The decision rows keep each window's per-group figures, and the index page lists the
    reasons and plots the groups."""
    loop = loop_on_loopback(loans_run, tmp_path, {"scenario": "noise", "shift_group": "group=b"})
    first = loop.decisions.index(loop.retrain)
    upto = loop.decisions[: first + 1]
    named = [d for d in upto if any("group 'b' of group" in r for r in d["reasons"])]
    assert named, [d["reasons"] for d in upto]
    assert not any("group 'a' of group" in r for d in loop.decisions for r in d["reasons"])
    harmed = named[-1]["figures"]["groups"]
    assert harmed["column"] == "group" and harmed["by_group"]["b"]["dropped"]
    b, a = harmed["by_group"]["b"], harmed["by_group"]["a"]
    assert b["figure"] < b["expected"] and not a["dropped"]
    assert loop.retrain in loop.decisions and loop.gate["version"] == "2"
    index = (loop.project / "reports/drift/index.html").read_text()
    assert "group &#x27;b&#x27; of group" in index or "group 'b' of group" in index
    print(
        f"group loop: {len(named)} window(s) named group b; b {b['figure']:.3f} on "
        f"{b['labelled']} labels vs test {b['expected']:.3f}, a {a['figure']:.3f}; version 2 "
        f"{loop.retrain['decision']}"
    )
