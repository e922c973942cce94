"""The model card: a Markdown page of data, model, metrics, robustness, gate and limits.

Written by the evaluate stage (:mod:`pipeline.evaluate`) beside the candidate's files; the
registry keeps it with the version and the service shows it at ``GET /model``. The sections
every task shares are built here; a task (``pipeline.learning.tasks``) writes its own terms
between them. No I/O, no torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.contracts.schema import Schema
from pipeline.release.decision import Decision


def data_line(schema: Schema, target: str) -> str:
    n_cat = sum(f.kind == "categorical" for f in schema.features)
    return (
        f"- {len(schema.features)} features ({n_cat} categorical), target `{schema.target}`{target}"
    )


def network_name(model_config: dict[str, Any]) -> str:
    """How the card names the network of a checkpoint's ``model_config``."""
    arch = model_config["arch"]
    if arch == "tabm":
        return f"TabM (an efficient ensemble of {model_config['members']} members)"
    return str(arch).upper()


def model_lines(model_config: dict[str, Any], robustness: dict[str, Any], graph: str) -> list[str]:
    return [
        "## Model",
        f"- {network_name(model_config)} behind the fitted feature transform, one ONNX "
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


def baselines_line(train: dict[str, Any], key: str, network: float, name: str) -> list[str]:
    """Each scikit-learn baseline's test figure (``key`` of train.json's ``baselines``) and how
    far the network is above (+) or below (-) it: by how much a table still favours trees."""
    base = train.get("baselines", {})
    if not base:
        return ["", "Baselines: none (train.baselines is empty)", ""]
    parts = [f"{kind} {b[key]:.4f} (network {network - b[key]:+.4f})" for kind, b in base.items()]
    return ["", f"Baselines on the same features and splits, test {name}: {'; '.join(parts)}", ""]


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


def group_lines(decision: Decision) -> list[str]:
    """With ``data.sensitive``: the candidate's figures per group on test (the scalar ones), its
    parity differences and largest gap, the champion's gap, and a chart of the gap's figure per
    group for both (an embedded PNG: the card is one file)."""
    groups = decision.groups
    if not groups or "test" not in groups.get("candidate", {}):
        return []
    test = groups["candidate"]["test"]
    rows = test["by_group"]
    keys = [k for k, v in next(iter(rows.values())).items() if not isinstance(v, list)]
    lines = [
        f"## Groups of `{groups['column']}` (test split)",
        "| group | " + " | ".join(keys) + " |",
        "| --- |" + " --- |" * len(keys),
    ]
    for name, figs in rows.items():
        cells = [f"{figs[k]}" if k == "rows" else f"{figs[k]:.4f}" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for key in ("demographic_parity_difference", "equalized_odds_difference"):
        if key in test:
            lines.append(f"- {key.replace('_', ' ')}: {test[key]:.4f} (largest over the classes)")
    gap = test.get("gap")
    if gap:
        lines.append(
            f"- largest {gap['figure']} gap: {gap['value']:.4f}, {gap['best']} over {gap['worst']}"
            f" (permutation p {gap['p']:.2g})"
        )
        theirs = groups.get("champion", {}).get("test", {}).get("gap")
        if theirs:
            lines.append(f"- the champion's: {theirs['value']:.4f} ({theirs['worst']} worst)")
        lines += ["", f"![{gap['figure']} per group](data:image/png;base64,{_chart(groups, gap)})"]
    return [*lines, ""]


def _chart(groups: Any, gap: dict[str, Any]) -> str:
    """The gap's figure per group, candidate beside champion, as a base64 PNG."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = gap["figure"]
    names = list(groups["candidate"]["test"]["by_group"])
    fig, ax = plt.subplots(figsize=(6, 2.5))
    width = 0.4
    for k, who in enumerate(("candidate", "champion")):
        rows = groups.get(who, {}).get("test", {}).get("by_group")
        if rows:
            values = [rows.get(n, {}).get(figure, float("nan")) for n in names]
            ax.bar([i + (k - 0.5) * width for i in range(len(names))], values, width, label=who)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(figure)
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.12, right=0.98, top=0.95, bottom=0.15)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def explanation_lines(schema: Schema, explained: Any) -> list[str]:
    """What the answers rest on (``explained``: /explain's attributions on test rows and each
    row's answered class, None for a regressor): for image-shaped data, the mean attribution
    map of each answered class; for a table, the features by mean absolute attribution."""
    if explained is None:
        return []
    attributions, answered = explained
    lines = [
        "## What the answers rest on (test split, as POST /explain attributes them)",
        f"Occlusion through the shipped graph on {len(attributions)} test rows: how much the "
        "answer falls when each feature is missing.",
        "",
    ]
    if schema.image_shape is not None and len(schema.image_shape) == 2 and answered is not None:
        png = _class_maps(attributions, answered, schema)
        return [*lines, f"![mean attribution per answered class](data:image/png;base64,{png})", ""]
    weight = np.abs(attributions).mean(axis=0)
    order = np.argsort(-weight)[:15]
    lines += ["| feature | mean absolute attribution |", "| --- | --- |"]
    lines += [f"| {schema.names[j]} | {weight[j]:.4g} |" for j in order]
    return [*lines, ""]


def _class_maps(attributions: np.ndarray, answered: np.ndarray, schema: Schema) -> str:
    """Each answered class's mean attribution map, side by side, as a base64 PNG."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(schema.classes)
    h, w = schema.image_shape  # type: ignore[misc]
    fig, axes = plt.subplots(1, len(classes), figsize=(1.3 * len(classes), 1.6))
    scale = float(np.abs(attributions).max()) or 1.0
    for k, ax in enumerate(np.atleast_1d(axes)):
        mine = attributions[answered == k]
        image = mine.mean(axis=0).reshape(h, w) if len(mine) else np.zeros((h, w))
        ax.imshow(image, cmap="RdBu_r", vmin=-scale / 4, vmax=scale / 4)
        ax.set_title(f"{classes[k]} ({len(mine)})", fontsize=8)
        ax.axis("off")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.8, bottom=0.02, wspace=0.1)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def deploy_lines(decision: Decision) -> list[str]:
    """Each deployment target's graph (``deploy`` in params.yaml) and why the gate chose it."""
    if not decision.deploy:
        return []
    lines = [
        "## Deployment targets",
        "",
        "| target | graph | bytes | p99 ms | main figure | robust figure | why |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for target, c in decision.deploy.items():
        if c["variant"] is None:
            lines.append(f"| {target} | none | | | | | {c['why']} |")
            continue
        lines.append(
            f"| {target} | {c['variant']} | {c['bytes']:,} | {c['p99_ms']:.3f} | "
            f"{c['main']:.4f} | {c['robust']:.4f} | {c['why']} |"
        )
    return [*lines, ""]


def closing(
    export: str,
    decision: Decision,
    limits: list[str],
    schema: Schema | None = None,
    explained: Any = None,
) -> list[str]:
    """The card's last sections: the export's parity (``export``, the task's line), the groups
    (with ``data.sensitive``), what the answers rest on, the gate, the limits (the task's among
    them)."""
    return [
        "",
        "## Export",
        export,
        "",
        *deploy_lines(decision),
        *group_lines(decision),
        *(explanation_lines(schema, explained) if schema is not None else []),
        *gate_lines(decision),
        *limits_lines(limits),
    ]


def join(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"
