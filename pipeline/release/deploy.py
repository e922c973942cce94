"""Deployment targets: which graph each target (``server``, ``device``, ``browser``) gets.

docs/design.md, "Deployment targets". The evaluate stage (``python -m pipeline.evaluate``) hands
:func:`choose_all` the graph the gate judged (the server's: ``gate.variant``) and the compress
stage's variants (metrics/compress.json), each with the gate's figures, its p99 single-row time
measured there and the floors it fails when judged by the gate as a candidate of its own (the
clean budget against the judged graph, :func:`pipeline.learning.assess.deploy_variants`). Per
target (``deploy.<target>``: ``max_bytes``, ``max_p99_ms``):

1. the judged graph, when it is within the budget (the graph the gate promotes is the best the
   run made);
2. else the best variant within the budget that fails no floor and whose parity held: the
   highest main figure (accuracy, R²), then the best robust figure, then the fewest bytes;
3. else the target is unmet: a gate rule (``deploy_<target>``) that fails, so the candidate is
   not promoted, whose text and hint name the budget and the closest variant (the smallest
   among those that fail no floor, else the smallest of all) and what it misses.

Torch-free; the choices go to ``metrics/evaluate.json`` (``deploy``), the model card and the
registry (one graph per target, :mod:`pipeline.release.publish`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipeline.contracts.params import Budget, DeployConfig
from pipeline.release.gate import Verdict

TARGETS = ("server", "device", "browser")
SERVED = "served"  # the name of the graph the gate judged


@dataclasses.dataclass(frozen=True)
class Variant:
    """One graph a target may get, as the gate measured it."""

    name: str
    path: Path
    bytes: int
    p99_ms: float
    main: float  # the task's main figure (higher is better)
    robust: float  # the task's robust figure
    failed: tuple[str, ...] = ()  # the gate's floors it fails as a candidate of its own
    parity_passed: bool = True

    def over(self, budget: Budget) -> list[str]:
        """What of ``budget`` this graph exceeds, in words (empty: within it)."""
        out = []
        if budget.max_bytes is not None and self.bytes > budget.max_bytes:
            out.append(f"{self.bytes:,} bytes > max_bytes {budget.max_bytes:,}")
        if budget.max_p99_ms is not None and self.p99_ms > budget.max_p99_ms:
            out.append(f"p99 {self.p99_ms:.3f} ms > max_p99_ms {budget.max_p99_ms:g}")
        return out

    def misses(self) -> list[str]:
        """The floors it fails, parity included."""
        return [*([] if self.parity_passed else ["parity"]), *self.failed]


@dataclasses.dataclass(frozen=True)
class Choice:
    """One target's graph and why."""

    target: str
    variant: Variant
    why: str

    def as_json(self) -> dict[str, Any]:
        v = self.variant
        return {
            "variant": v.name,
            "bytes": v.bytes,
            "p99_ms": v.p99_ms,
            "main": v.main,
            "robust": v.robust,
            "why": self.why,
        }


@dataclasses.dataclass(frozen=True)
class Unmet:
    """A target no graph meets: its budget, the closest graph and why it is not enough."""

    target: str
    budget: Budget
    closest: Variant
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"variant": None, "closest": self.closest.name, "why": self.message}

    def verdict(self) -> Verdict:
        """The failed gate rule (``deploy_<target>``): the closest graph's bytes against the
        budget's, the message in full."""
        return Verdict(
            rule=f"deploy_{self.target}",
            value=float(self.closest.bytes),
            threshold=float(self.budget.max_bytes or 0),
            passed=False,
            what=self.message,
            subject=self.closest.name,
        )


def choose(
    target: str, budget: Budget, served: Variant, variants: list[Variant], lower_robust: bool
) -> Choice | Unmet:
    """``target``'s graph under ``budget`` (the module docstring's order). ``lower_robust``: the
    robust figure is an error (a regressor's robust MAE), lower is better."""
    if not served.over(budget):
        return Choice(target, served, "the graph the gate judged is within the budget")
    fits = [v for v in variants if not v.over(budget) and not v.misses()]
    if fits:
        sign = 1.0 if lower_robust else -1.0
        best = min(fits, key=lambda v: (-v.main, sign * v.robust, v.bytes))
        over = sum(1 for v in variants if v.over(budget))
        failing = sorted({m for v in variants if not v.over(budget) for m in v.misses()})
        why = (
            f"the best main figure of the {len(fits)} variant(s) within the budget and every "
            f"floor ({over} over the budget"
            + (f"; failing {', '.join(failing)}" if failing else "")
            + f"); the judged graph: {'; '.join(served.over(budget))}"
        )
        return Choice(target, best, why)
    sound = [v for v in variants if not v.misses()]
    closest = min(sound or variants or [served], key=lambda v: (v.bytes, v.p99_ms))
    missing = closest.over(budget) + [f"fails {m}" for m in closest.misses()]
    limits = ", ".join(
        f"{k} {getattr(budget, k)}" for k in ("max_bytes", "max_p99_ms") if getattr(budget, k)
    )
    return Unmet(
        target,
        budget,
        closest,
        f"deploy.{target}: no graph meets its budget ({limits}) and every floor; the closest is "
        f"{closest.name} ({'; '.join(missing)}): raise deploy.{target}'s budget, or add a "
        "higher compress.levels share or compress.quantize",
    )


def choose_all(
    cfg: DeployConfig, served: Variant, variants: list[Variant], lower_robust: bool
) -> dict[str, Choice | Unmet]:
    """Every target's :class:`Choice`, or :class:`Unmet`."""
    return {t: choose(t, getattr(cfg, t), served, variants, lower_robust) for t in TARGETS}
