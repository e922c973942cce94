"""The gate's decision as a record: what evaluate decided, what it publishes, what the card shows.

Built once by the evaluate stage (``python -m pipeline.evaluate``) from the task's verdicts
(:mod:`pipeline.release.gate`); :mod:`pipeline.release.publish` registers it and writes it as
``metrics/evaluate.json`` (and beside the registered model, where ``GET /model`` and the monitor
read it through :mod:`pipeline.contracts.champion`); :mod:`pipeline.release.card` shows it.
:meth:`Decision.as_json` is the file's layout (docs/design.md, "Registry and champion").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pipeline.release.gate import Verdict


@dataclasses.dataclass(frozen=True)
class Production:
    """Whether the champion fails in production (on the labelled holdout), and why; ``p``: the
    test's p-value where one ran."""

    champion_failing: bool
    why: str
    p: float | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"champion_failing": self.champion_failing}
        if self.p is not None:
            out["p"] = self.p
        return {**out, "why": self.why}


@dataclasses.dataclass(frozen=True)
class Decision:
    """One candidate's judgement. ``head``: the task's own keys (how robustness was measured,
    the interval); ``candidate`` / ``champion``: the figures each was measured at; ``version``:
    the registry's, once published."""

    model_name: str
    variant: str
    int8_latency_ratio: float | None
    eps: float
    head: Mapping[str, Any]
    rules: list[Verdict]
    hints: list[str]
    candidate: Mapping[str, Any]
    champion: Mapping[str, Any] | None
    champion_version_before: str | None
    production: Production
    estimate: Mapping[str, Any] | None = None
    # With data.sensitive: per-group figures (pipeline/learning/groups.py) of candidate and
    # champion on test and the production holdout.
    groups: Mapping[str, Any] | None = None
    # Each deployment target's graph and why (pipeline/release/deploy.py's Choice.as_json).
    deploy: Mapping[str, Any] | None = None
    version: str | None = None

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rules)

    promoted = passed  # the gate's verdict is the promotion

    @property
    def reasons(self) -> list[str]:
        """The failed rules, one line each."""
        return [r.reason() for r in self.rules if not r.passed]

    @property
    def failed_rules(self) -> list[str]:
        return [r.rule for r in self.rules if not r.passed]

    def as_json(self) -> dict[str, Any]:
        """metrics/evaluate.json."""
        out: dict[str, Any] = {
            "model_name": self.model_name,
            "variant": self.variant,
            "int8_latency_ratio": self.int8_latency_ratio,
            "eps": self.eps,
            **self.head,
            "passed": self.passed,
            "promoted": self.promoted,
            "reasons": self.reasons,
            "rules": [r.as_json() for r in self.rules],
            "hints": self.hints,
            "candidate": self.candidate,
            "champion": self.champion,
            "champion_version_before": self.champion_version_before,
            "production": self.production.as_json(),
        }
        if self.estimate is not None:
            out["estimate"] = self.estimate
        if self.groups is not None:
            out["groups"] = self.groups
        if self.deploy is not None:
            out["deploy"] = self.deploy
        if self.version is not None:
            out["version"] = self.version
        return out
