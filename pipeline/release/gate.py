"""The gate's rules: what a candidate must show to replace the champion, and what to change.

One judge for every task (docs/design.md, "The task is a type"): a task names its figures in
:class:`Terms` (its main figure, its robust figure and its floor, its calibration rule, its
hints) and :func:`judge` adds the rules every task shares (parity, latency, the baseline, the
clean budget, the champion on test and on the production holdout) and applies the two waivers.
Pure functions over the figures the evaluate stage measured; no I/O, no torch; tests call them
directly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import GateConfig

Figures = Mapping[str, Any]  # one model's measured figures (metrics/evaluate.json "candidate")


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule before judging: ``value`` must be at least (else at most) ``threshold``;
    ``subject``: whom it is about, where the reason should name it (a group)."""

    rule: str
    value: float
    threshold: float
    at_least: bool
    what: str
    subject: str | None = None

    def judged(self) -> Verdict:
        passed = self.value >= self.threshold if self.at_least else self.value <= self.threshold
        return Verdict(
            self.rule, self.value, self.threshold, bool(passed), self.what, subject=self.subject
        )


@dataclasses.dataclass(frozen=True)
class GroupGap:
    """The main figure's largest between-group difference on test (``data.sensitive``):
    ``best`` minus ``worst`` group, and a permutation test's p-value for it."""

    column: str
    figure: str
    value: float
    worst: str
    best: str
    worst_value: float
    best_value: float
    worst_rows: int
    best_rows: int
    p: float

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Verdict:
    """One rule after judging, as the decision records it (``waived``: passed by a waiver,
    ``what`` says which)."""

    rule: str
    value: float
    threshold: float
    passed: bool
    what: str
    waived: bool = False
    subject: str | None = None  # whom the rule is about (a group), named in the reason

    def waive(self, why: str) -> None:
        self.passed, self.waived = True, True
        self.what += why

    def reason(self) -> str:
        """How the decision's ``reasons`` name a failed rule."""
        about = f" ({self.subject})" if self.subject else ""
        return f"{self.rule}: {self.value:.4f} vs {self.threshold:.4f}{about}"

    def as_json(self) -> dict[str, Any]:
        """metrics/evaluate.json's ``rules`` entry (``waived`` only where a waiver passed it;
        ``subject`` only where the rule has one)."""
        out = dataclasses.asdict(self)
        if not self.waived:
            del out["waived"]
        if self.subject is None:
            del out["subject"]
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Verdict:
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class GateContext:
    """What the earlier stages say about the candidate, for the data-relative rules."""

    baseline: tuple[str, float] | None = None  # the best scikit-learn baseline's main test figure
    trained_clean: float | None = None  # the model before hardening, main test figure
    max_clean_drop: float = 1.0  # harden.max_clean_drop (plus the int8 allowance if int8 ships)
    budget_limited: bool = False  # harden: robustness at eps costs more than the budget allows
    # Why the champion counts as failing in production (see the task's production rule), or
    # None: then the rules relative to it on the test split do not bind (the holdout rule and
    # every absolute floor still do).
    champion_failing: str | None = None
    # With data.sensitive: the candidate's and the champion's largest group gap on test.
    group_gap: GroupGap | None = None
    champion_group_gap: GroupGap | None = None


@dataclasses.dataclass(frozen=True)
class Terms:
    """How one task's gate reads its figures.

    ``floors``: the task's absolute rules after parity (its main floor, its robust floor, its
    calibration rule), in the order the decision lists them; ``robust_floor`` names the one the
    budget waiver may pass. ``vs_champion_robust`` builds the robust rule against a champion.
    ``note(cand, champ)`` adds a figure to the main figure's texts (a regressor's RMSE).
    """

    main: str  # the figure's key: accuracy, r2
    main_name: str  # how the texts name it: accuracy, R²
    robust: str  # robust_accuracy, robust_mae
    robust_name: str  # robust, robust MAE
    robust_format: str  # .4f, .4g
    floors: tuple[Rule, ...]
    robust_floor: str
    vs_champion_robust: Callable[[Figures, Figures], Rule]
    hints: Mapping[str, str]
    waived_robust_hint: Callable[[Verdict, float, float], str]
    note: Callable[[Figures, Figures | None], str] = lambda cand, champ: ""

    @property
    def holdout(self) -> str:
        return f"holdout_{self.main}"

    @property
    def relative_on_test(self) -> tuple[str, str]:
        return (f"vs_champion_{self.main}", f"vs_champion_{self.robust}")


def choose_variant(
    cfg: GateConfig, export: dict[str, Any], latency_ratio: float | None, delta_key: str
) -> str:
    """fp32 or int8: ``auto`` ships int8 only if it is faster and loses at most the allowed.

    ``latency_ratio``: int8 / fp32 single-row p50, measured here (None without an int8 graph);
    ``delta_key``: the task's int8-minus-fp32 figure in metrics/export.json.
    """
    if cfg.variant != "auto":
        if cfg.variant == "int8" and "int8" not in export:
            raise MlcycleError("gate.variant = 'int8' but export.quantize is false")
        return cfg.variant
    q = export.get("int8")
    ok = (
        q is not None
        and latency_ratio is not None
        and q.get(delta_key, -1.0) >= -cfg.max_int8_accuracy_drop
        and latency_ratio < 1.0
    )
    return "int8" if ok else "fp32"


def champion_failing(
    test_accuracy: float, holdout_correct: int, holdout_rows: int, cfg: GateConfig
) -> tuple[bool, float]:
    """Whether the champion's production-holdout accuracy is significantly (one-sided binomial
    test at ``gate.production_alpha``) below its test accuracy - ``gate.max_accuracy_drop``;
    returns (failing, p)."""
    from scipy import stats

    if holdout_rows == 0:
        return False, 1.0
    floor = max(test_accuracy - cfg.max_accuracy_drop, 0.0)
    p = float(stats.binom.cdf(holdout_correct, holdout_rows, floor))
    return bool(p < cfg.production_alpha), p


def coverage_ok(coverage: float, rows: int, nominal: float, cfg: GateConfig) -> tuple[bool, float]:
    """Whether an interval's coverage on ``rows`` rows is within ``gate.max_coverage_gap`` of
    ``nominal``, or a two-sided binomial test at ``gate.production_alpha`` cannot tell it from
    nominal (a small test split); returns (ok, p)."""
    from scipy import stats

    if rows == 0:
        return True, 1.0
    p = float(stats.binomtest(round(coverage * rows), rows, nominal).pvalue)
    return bool(abs(coverage - nominal) <= cfg.max_coverage_gap or p >= cfg.production_alpha), p


def coverage_failing(coverage: float, rows: int, nominal: float, cfg: GateConfig) -> bool:
    """A champion's interval fails in production: its coverage on the production holdout is
    significantly below nominal (one-sided binomial test at ``gate.production_alpha``): the
    concept moved under it."""
    from scipy import stats

    if rows == 0:
        return False
    p = float(stats.binom.cdf(round(coverage * rows), rows, nominal))
    return bool(p < cfg.production_alpha and coverage < nominal - cfg.max_coverage_gap)


LATENCY_HINT = (
    "too slow: set gate.variant: int8, a smaller train.hidden, or raise gate.max_p99_latency_ms"
)
GROUP_HINT = (
    "one group of data.sensitive is served worse than another: more labelled rows of it, "
    "features that describe it as well as the others, or (an accepted gap) a higher "
    "gate.max_group_gap"
)
GROUP_RULES = ("max_group_gap", "vs_champion_group_gap")


def judge(
    cfg: GateConfig,
    terms: Terms,
    cand: Figures,
    champ: Figures | None,
    parity_passed: bool,
    ctx: GateContext | None = None,
) -> list[Verdict]:
    """Every rule with its value, threshold and verdict.

    The robust floor is waived (passed, marked ``waived``) when ``gate.robust_floor`` is
    ``budget`` and harden reports that robustness at eps costs more than its clean budget
    allows: the model ships, and the hints say which parameter trades accuracy for robustness.
    ``strict`` always enforces the floor, and so does a champion that meets it: the waiver is
    for data whose robustness the budget cannot buy (a first run, or a champion that was waived
    too), never for a retrain that would replace a robust champion with a model below the floor
    (say, harden's fallback to the unhardened weights). The rules relative to the champion on
    test are waived only for a candidate that does better than a champion failing in
    production where it fails: on the production holdout.
    """
    ctx = ctx or GateContext()
    main, name = terms.main, terms.main_name
    rules = [
        Rule(
            "parity",
            float(parity_passed),
            1.0,
            True,
            "onnxruntime matches PyTorch on the test split",
        ),
        *terms.floors,
        Rule(
            "max_p99_latency_ms",
            cand["p99_latency_ms"],
            cfg.max_p99_latency_ms,
            False,
            "p99 single-row compute time (one thread's CPU time) <= budget",
        ),
    ]
    if ctx.baseline is not None and cfg.max_baseline_gap is not None:
        base, best = ctx.baseline
        rules.append(
            Rule(
                "vs_baseline",
                cand[main],
                best - cfg.max_baseline_gap,
                True,
                f"{name} >= the {base} baseline's {best:.4f} - {cfg.max_baseline_gap}"
                + terms.note(cand, None),
            )
        )
    if ctx.trained_clean is not None:
        rules.append(
            Rule(
                "clean_budget",
                cand[main],
                ctx.trained_clean - ctx.max_clean_drop,
                True,
                f"{name} >= the model before hardening's {ctx.trained_clean:.4f} - "
                f"{ctx.max_clean_drop:g} (harden.max_clean_drop)",
            )
        )
    held = terms.holdout
    if champ is not None and held in cand and held in champ:
        rules.append(
            Rule(
                f"vs_champion_{held}",
                cand[held],
                champ[held] - cfg.max_accuracy_drop,
                True,
                f"production holdout {name} >= champion's {champ[held]:.4f} - "
                f"{cfg.max_accuracy_drop}",
            )
        )
    if champ is not None:
        rules += [
            Rule(
                f"vs_champion_{main}",
                cand[main],
                champ[main] - cfg.max_accuracy_drop,
                True,
                f"{name} >= champion's {champ[main]:.4f} - {cfg.max_accuracy_drop}"
                + terms.note(cand, champ),
            ),
            terms.vs_champion_robust(cand, champ),
        ]
    rules += group_rules(cfg, ctx, name)
    out = [r.judged() for r in rules]
    fixes = (
        ctx.champion_failing is not None
        and champ is not None
        and cand.get(held, -math.inf) > champ.get(held, math.inf) + cfg.max_accuracy_drop
    )
    floor = next(r for r in terms.floors if r.rule == terms.robust_floor)
    champion_meets = champ is not None and (
        champ[terms.robust] >= floor.threshold
        if floor.at_least
        else champ[terms.robust] <= floor.threshold
    )
    over_budget = cfg.robust_floor == "budget" and ctx.budget_limited
    baseline_rule = next((r for r in out if r.rule == "vs_baseline"), None)
    if baseline_rule is not None and not baseline_rule.passed:
        waive_baseline(baseline_rule, ctx, champ, main, name)
    for r in out:
        if r.rule == terms.robust_floor and not r.passed and over_budget:
            if champion_meets:
                assert champ is not None
                r.what += (
                    f" (not waived: the champion meets it, {terms.robust_name} "
                    f"{champ[terms.robust]:{terms.robust_format}}; gate.robust_floor: budget "
                    "waives it only where no model has)"
                )
                continue
            r.waive(" (waived: robustness at harden.eps costs more than the budget)")
        if r.rule in terms.relative_on_test and fixes and not r.passed:
            r.waive(f" (waived: the champion fails in production: {ctx.champion_failing})")
        gap = ctx.group_gap
        if r.rule in GROUP_RULES and not r.passed and gap and gap.p >= cfg.production_alpha:
            r.waive(
                f" (waived: not significant, permutation p {gap.p:.2g} >= "
                f"gate.production_alpha {cfg.production_alpha}: groups of {gap.worst_rows} and "
                f"{gap.best_rows} rows cannot tell this gap from chance)"
            )
    return out


def waive_baseline(
    rule: Verdict, ctx: GateContext, champ: Figures | None, main: str, name: str
) -> None:
    """A network that trails the best baseline by more than ``gate.max_baseline_gap`` still
    ships where no model has met the rule (a first run, or a champion that trailed too: a table
    that favours trees must still end with a champion), saying by how much; a retrain that
    would replace a champion meeting it is refused."""
    assert ctx.baseline is not None
    base, best = ctx.baseline
    by = f"the network trails the {base} baseline by {best - rule.value:.4f} {name}"
    if champ is not None and champ[main] >= rule.threshold:
        rule.what += f" (not waived: {by}, the champion meets it, {champ[main]:.4f})"
        return
    rule.waive(f" (waived: {by}; no model has met it yet)")


def group_rules(cfg: GateConfig, ctx: GateContext, name: str) -> list[Rule]:
    """``gate.max_group_gap`` as a ceiling on the candidate's largest group gap, and against
    the champion's gap (it may grow by at most ``gate.max_accuracy_drop``)."""
    gap = ctx.group_gap
    if gap is None or cfg.max_group_gap is None:
        return []
    subject = f"group {gap.worst!r} of {gap.column}"
    between = (
        f"{name} gap between {gap.column} groups: {gap.best} {gap.best_value:.4f} "
        f"({gap.best_rows} rows) - {gap.worst} {gap.worst_value:.4f} ({gap.worst_rows} rows)"
    )
    out = [Rule("max_group_gap", gap.value, cfg.max_group_gap, False, f"{between} <= "
                f"{cfg.max_group_gap} (gate.max_group_gap)", subject)]  # fmt: skip
    theirs = ctx.champion_group_gap
    if theirs is not None:
        out.append(
            Rule(
                "vs_champion_group_gap",
                gap.value,
                theirs.value + cfg.max_accuracy_drop,
                False,
                f"{between} <= the champion's {theirs.value:.4f} + {cfg.max_accuracy_drop}",
                subject,
            )
        )
    return out


def hints(terms: Terms, rules: list[Verdict], eps: float, max_clean_drop: float) -> list[str]:
    """What to change, for each failed or waived rule."""
    out = []
    for r in rules:
        if r.waived and r.rule == terms.robust_floor:
            out.append(
                terms.waived_robust_hint(r, eps, max_clean_drop)
                + " allows: raise harden.max_clean_drop to trade accuracy for robustness, lower "
                "harden.eps, or set gate.robust_floor: strict to refuse such a model"
            )
        elif r.waived:
            out.append(f"{r.reason()} waived; {r.what}")
        elif not r.passed and r.rule == "max_p99_latency_ms":
            out.append(f"{r.rule}: {LATENCY_HINT}")
        elif not r.passed and r.rule in GROUP_RULES:
            out.append(f"{r.rule}: {r.subject}: {GROUP_HINT}")
        elif not r.passed and r.rule.startswith("deploy_"):  # pipeline/release/deploy.py
            out.append(r.what)
        elif not r.passed and r.rule in terms.hints:
            out.append(f"{r.rule}: {terms.hints[r.rule]}")
    return out
