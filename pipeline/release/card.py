"""The model card: a Markdown page of data, model, metrics, robustness, gate and limits.

Written by the evaluate stage (:mod:`pipeline.evaluate`) beside the candidate's files; the
registry keeps it with the version and the service shows it at ``GET /model``. The sections
every task shares are built here; a task (``pipeline.learning.tasks``) writes its own terms
between them. No I/O, no torch.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.contracts.schema import Schema
from pipeline.release.decision import Decision


def data_line(schema: Schema, target: str) -> str:
    n_cat = sum(f.kind == "categorical" for f in schema.features)
    return (
        f"- {len(schema.features)} features ({n_cat} categorical), target `{schema.target}`{target}"
    )


def model_lines(arch: str, robustness: dict[str, Any], graph: str) -> list[str]:
    return [
        "## Model",
        f"- {arch.upper()} behind the fitted feature transform, one ONNX "
        f"graph from raw features to {graph}",
        f"- hardened with `{robustness['method']}` at eps = {robustness['eps']} of each feature's "
        "range",
        "",
    ]


def metrics_table(decision: Decision, keys: list[str]) -> list[str]:
    """Candidate against champion, one row per figure (``-``: the champion has none)."""
    c, champ = decision.candidate, decision.champion or {}
    lines = ["## Test metrics", "| metric | candidate | champion |", "| --- | --- | --- |"]
    for key in keys:
        theirs = f"{champ[key]:.4f}" if key in champ else "-"
        lines.append(f"| {key} | {c[key]:.4f} | {theirs} |")
    return lines


def baselines_line(train: dict[str, Any]) -> list[str]:
    return ["", f"Baselines on the same features: {json.dumps(train.get('baselines', {}))}", ""]


def gate_lines(decision: Decision) -> list[str]:
    """The decision, every rule's verdict, why the champion fails (if it does), the hints."""
    lines = [f"## Gate: {'PROMOTED' if decision.promoted else 'REJECTED'}"]
    lines += [
        f"- {'waived' if r.waived else 'pass' if r.passed else 'FAIL'} {r.reason()} ({r.what})"
        for r in decision.rules
    ]
    if decision.production.champion_failing:
        lines.append(f"- the champion fails in production: {decision.production.why}")
    lines += [f"- hint: {h}" for h in decision.hints]
    return lines


def limits_lines(limits: list[str]) -> list[str]:
    """The limits every model has, with the task's own (``limits``) between them."""
    return [
        "",
        "## Limits",
        "- Robustness covers L-inf perturbations within eps of each feature's observed range "
        "only; other threat models (patches, rotations, poisoning) are untested.",
        *limits,
        "- Inputs outside the training data's range or categories are out of distribution.",
    ]


def closing(export: str, decision: Decision, limits: list[str]) -> list[str]:
    """The card's last sections: the export's parity (``export``, the task's line), the gate,
    the limits (the task's among them)."""
    return ["", "## Export", export, "", *gate_lines(decision), *limits_lines(limits)]


def join(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"
