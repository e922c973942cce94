"""Per-group figures and the group-gap rules, on answers whose figures are known by design."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.contracts.params import GateConfig, overlay, section
from pipeline.learning import groups as by
from pipeline.learning.tasks.classification import Classification
from pipeline.release.gate import GateContext, GroupGap, group_rules, hints, judge
from tests.conftest import repo_params


def answers(rows: dict[str, tuple[int, float]], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(groups, right): each group's rows, right at exactly its share."""
    rng = np.random.default_rng(seed)
    groups, right = [], []
    for name, (n, share) in rows.items():
        groups += [name] * n
        right += rng.permutation(np.arange(n) < round(share * n)).tolist()
    return np.array(groups, dtype=object), np.array(right)


def test_a_real_gap_is_significant_and_a_gap_of_a_few_rows_is_not() -> None:
    groups, right = answers({"a": (300, 0.95), "b": (300, 0.80), "c": (300, 0.90)})
    gap = by.gap("region", "accuracy", lambda rows: float(right[rows].mean()), groups)
    assert gap is not None and (gap.worst, gap.best) == ("b", "a")
    assert gap.value == pytest.approx(0.15) and gap.p < 0.001
    assert (gap.worst_rows, gap.best_rows) == (300, 300)
    small_groups, small_right = answers({"a": (10, 0.9), "b": (10, 0.7)})
    small = by.gap("region", "accuracy", lambda r: float(small_right[r].mean()), small_groups)
    assert small is not None and small.value == pytest.approx(0.2) and small.p > 0.2
    # A group of fewer than MIN_ROWS rows is not compared; one group alone has no gap.
    tiny_groups, tiny_right = answers({"a": (50, 0.9), "b": (by.MIN_ROWS - 1, 0.0)})
    assert by.gap("g", "accuracy", lambda r: float(tiny_right[r].mean()), tiny_groups) is None


def test_per_group_classification_figures_and_parity_differences() -> None:
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0, 0, 0])
    pred = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])
    groups = np.array(["a"] * 4 + ["b"] * 6, dtype=object)
    out = by.classes(y, pred, groups, 2)
    a, b = out["by_group"]["a"], out["by_group"]["b"]
    assert (a["rows"], b["rows"]) == (4, 6)
    assert a["accuracy"] == 0.75 and b["accuracy"] == pytest.approx(5 / 6)
    assert a["selection_rate"][1] == 0.75 and b["selection_rate"][1] == pytest.approx(1 / 6)
    assert a["tpr"][1] == 1.0 and b["tpr"][1] == 0.5 and a["fpr"][1] == 0.5 and b["fpr"][1] == 0
    # Class 1 selection: 0.75 vs 1/6; class 0 the complement: the same difference.
    assert out["demographic_parity_difference"] == pytest.approx(0.75 - 1 / 6)
    assert out["equalized_odds_difference"] == pytest.approx(0.5)


def test_per_group_regression_figures() -> None:
    y = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    pred = np.array([1.0, 2.0, 3.5, 10.0, 25.0, 30.0])
    groups = np.array(["a"] * 3 + ["b"] * 3, dtype=object)
    out = by.values(y, pred, pred - 1, pred + 1, groups)["by_group"]
    assert out["a"]["mae"] == pytest.approx(0.5 / 3) and out["b"]["mae"] == pytest.approx(5 / 3)
    assert out["a"]["coverage"] == 1.0 and out["b"]["coverage"] == pytest.approx(2 / 3)
    assert out["a"]["mean_width"] == 2.0 and out["a"]["rows"] == 3


def gate_cfg(**changes: object) -> GateConfig:
    return overlay(section(repo_params(), "gate", GateConfig), "gate", **changes)


def gap(value: float, p: float) -> GroupGap:
    return GroupGap("region", "accuracy", value, "south", "north", 0.9 - value, 0.9, 200, 400, p)


def test_the_gate_refuses_a_significant_gap_and_names_the_group() -> None:
    cfg = gate_cfg()
    rules = group_rules(cfg, GateContext(group_gap=gap(0.2, 0.0005)), "accuracy")
    (rule,) = [r.judged() for r in rules]
    assert not rule.passed and rule.subject == "group 'south' of region"
    assert "south" in rule.reason() and "north 0.9000 (400 rows)" in rule.what
    assert rule.as_json()["subject"] == "group 'south' of region"
    # Within the ceiling: passes.
    assert group_rules(cfg, GateContext(group_gap=gap(0.05, 0.0005)), "a")[0].judged().passed
    # Off, or no data.sensitive: no rule.
    assert group_rules(gate_cfg(max_group_gap=None), GateContext(group_gap=gap(0.2, 0)), "a") == []
    assert group_rules(cfg, GateContext(), "a") == []


def test_a_gap_the_test_cannot_tell_from_noise_is_waived_and_a_grown_gap_is_refused() -> None:
    cfg = gate_cfg()
    task = Classification()
    cand = {"accuracy": 0.95, "robust_accuracy": 0.9, "ece": 0.01, "p99_latency_ms": 0.1}
    terms = task.terms(cfg, cand, {}, np.zeros(1))
    noisy = judge(cfg, terms, cand, None, True, GateContext(group_gap=gap(0.3, 0.2)))
    rule = next(r for r in noisy if r.rule == "max_group_gap")
    assert rule.passed and rule.waived and "not significant, permutation p 0.2" in rule.what
    assert any("max_group_gap" in h and "waived" in h for h in hints(terms, noisy, 0.1, 0.01))
    # Against a champion: the gap may grow by at most max_accuracy_drop.
    ctx = GateContext(group_gap=gap(0.08, 0.001), champion_group_gap=gap(0.02, 0.3))
    rules = {r.rule: r for r in judge(cfg, terms, cand, {**cand}, True, ctx)}
    assert rules["max_group_gap"].passed and not rules["vs_champion_group_gap"].passed
    assert rules["vs_champion_group_gap"].threshold == pytest.approx(0.02 + cfg.max_accuracy_drop)
    advice = hints(terms, list(rules.values()), 0.1, 0.01)
    assert any(h.startswith("vs_champion_group_gap: group 'south' of region") for h in advice)
