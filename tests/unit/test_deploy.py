"""Deployment targets: which graph each target gets (pipeline/release/deploy.py)."""

from __future__ import annotations

from pathlib import Path

from pipeline.contracts.params import Budget, DeployConfig
from pipeline.release.deploy import Unmet, Variant, choose, choose_all


def graph(name: str, size: int, main: float, robust: float, **kw: object) -> Variant:
    return Variant(name, Path(f"{name}.onnx"), size, kw.pop("p99", 0.05), main, robust, **kw)  # type: ignore[arg-type]


SERVED = graph("served (fp32)", 400_000, 0.99, 0.86)
VARIANTS = [
    graph("dense.fp32", 400_000, 0.99, 0.86),
    graph("dense.int8", 120_000, 0.99, 0.86),
    graph("p55.fp32", 90_000, 0.983, 0.80),
    graph("p55.int8", 37_000, 0.983, 0.81),
    graph("p70.int8", 20_000, 0.95, 0.60, failed=("min_robust_accuracy", "clean_budget")),
]


def test_the_judged_graph_is_kept_where_it_fits() -> None:
    c = choose("server", Budget(max_bytes=None, max_p99_ms=None), SERVED, VARIANTS, False)
    assert c.variant is SERVED and "within the budget" in c.why


def test_over_budget_the_best_variant_within_it_and_every_floor() -> None:
    # p70.int8 is the smallest but fails two floors; of the two within 100 KB the better
    # robust figure wins the tie on accuracy.
    c = choose("device", Budget(max_bytes=100_000, max_p99_ms=None), SERVED, VARIANTS, False)
    assert c.variant.name == "p55.int8"
    assert "min_robust_accuracy" in c.why and "400,000 bytes > max_bytes 100,000" in c.why
    # A budget on time: the slow variant is out even though it is the better one.
    slow = [graph("dense.int8", 120_000, 0.99, 0.86, p99=2.0), *VARIANTS[2:]]
    c = choose("device", Budget(max_bytes=None, max_p99_ms=1.0), graph("s", 1, 0.99, 0.86, p99=3.0),
               slow, False)  # fmt: skip
    assert c.variant.name == "p55.int8"


def test_a_variant_whose_parity_failed_never_ships() -> None:
    broken = [graph("p55.int8", 37_000, 0.99, 0.9, parity_passed=False), *VARIANTS[2:3]]
    c = choose("browser", Budget(max_bytes=100_000, max_p99_ms=None), SERVED, broken, False)
    assert c.variant.name == "p55.fp32"


def test_a_regressor_prefers_the_smaller_robust_error() -> None:
    tied = [graph("a", 10, 0.8, 2.0), graph("b", 20, 0.8, 1.0)]
    assert (
        choose("device", Budget(max_bytes=50, max_p99_ms=None), SERVED, tied, True).variant.name
        == "b"
    )
    assert (
        choose("device", Budget(max_bytes=50, max_p99_ms=None), SERVED, tied, False).variant.name
        == "a"
    )


def test_no_graph_meets_the_budget_fails_a_rule_naming_it_and_the_closest() -> None:
    unmet = choose("device", Budget(max_bytes=30_000, max_p99_ms=None), SERVED, VARIANTS, False)
    assert isinstance(unmet, Unmet)
    message = unmet.message
    assert "deploy.device" in message and "max_bytes 30000" in message
    # p70.int8 is within the bytes but fails floors: the closest sound variant is named.
    assert "p55.int8 (37,000 bytes > max_bytes 30,000)" in message
    verdict = unmet.verdict()
    assert verdict.rule == "deploy_device" and not verdict.passed and verdict.what == message
    assert (verdict.value, verdict.threshold) == (37_000.0, 30_000.0)
    only_unsound = choose("device", Budget(max_bytes=30_000, max_p99_ms=None), SERVED,
                          VARIANTS[-1:], False)  # fmt: skip
    assert isinstance(only_unsound, Unmet)
    assert "closest is p70.int8 (fails min_robust_accuracy" in only_unsound.message


def test_every_target_gets_a_choice() -> None:
    cfg = DeployConfig(
        server=Budget(max_bytes=None, max_p99_ms=None),
        device=Budget(max_bytes=65_536, max_p99_ms=1.0),
        browser=Budget(max_bytes=200_000, max_p99_ms=None),
    )
    got = {t: c.variant.name for t, c in choose_all(cfg, SERVED, VARIANTS, False).items()}  # type: ignore[union-attr]
    assert got == {"server": "served (fp32)", "device": "p55.int8", "browser": "dense.int8"}
