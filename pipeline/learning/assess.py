"""The gate's figures for one model: its task's measures on test and on the production holdout,
keyed so a champion's robust figures are reused while nothing they depend on changed.

Used by the evaluate stage (:mod:`pipeline.evaluate`); the rules that read the figures are
:mod:`pipeline.release.gate`'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.contracts.io import load_json
from pipeline.contracts.params import GateConfig
from pipeline.contracts.runtime import compute_ms, session
from pipeline.contracts.schema import Schema
from pipeline.learning.checkpoint import load_checkpoint
from pipeline.learning.model import build
from pipeline.learning.tasks import Attack, Measured, Task
from pipeline.release.deploy import Variant
from pipeline.release.gate import GateContext, GroupGap

# The operators a quantized graph (onnxruntime's static QDQ or dynamic int8) is made of.
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearMatMul",
        "QLinearConv",
        "DynamicQuantizeMatMul",
    }
)


def quantized(graph: Path) -> bool:
    """Whether ``graph`` computes in int8 anywhere (then it is not its twin's exact copy, and
    the gate's adversarial points are judged by the graph itself)."""
    import onnx

    return any(node.op_type in QUANTIZED_OPS for node in onnx.load(str(graph)).graph.node)


def int8_latency_ratio(fp32: Path, int8: Path, X: np.ndarray) -> float:
    return compute_ms(session(int8), X)["p50_ms"] / compute_ms(session(fp32), X)["p50_ms"]


def gate_key(
    onnx_path: Path, twin_path: Path, X: np.ndarray, y: np.ndarray, eps: float, cfg: GateConfig
) -> str:
    """What the gate's robust figures on the test split are a function of: the graph and its
    twin (their bytes), the rows, ``eps``, the attacks' settings and the torch version that
    runs them (kernels differ between versions)."""
    digest = hashlib.sha256()
    for part in (onnx_path.read_bytes(), twin_path.read_bytes(), X.tobytes(), y.tobytes()):
        digest.update(hashlib.sha256(part).digest())
    attacks = {
        "torch": torch.__version__,
        "eps": eps,
        **{k: getattr(cfg, k) for k in ("robust_steps", "apgd_iter", "robust_restarts")},
        **{k: getattr(cfg, k) for k in ("seed", "square_queries")},
    }
    digest.update(json.dumps(attacks, sort_keys=True).encode())
    return digest.hexdigest()


def group_figures(
    task: Task,
    column: str,
    schema: Schema,
    frames: tuple[Any, Any],
    rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    graphs: dict[str, Path | None],
) -> tuple[dict[str, Any], dict[str, GroupGap | None]]:
    """Per-group figures (``data.sensitive``: ``column``) of each graph in ``graphs``
    (candidate, champion) on test and, where it has rows, the production holdout; and each
    one's largest gap on test, which the gate judges."""
    from pipeline.learning.groups import labels

    X, y, Xh, yh = rows
    groups = [labels(frame, schema, column) for frame in frames]
    out: dict[str, Any] = {"column": column}
    gaps: dict[str, GroupGap | None] = {}
    for who, graph in graphs.items():
        if graph is None:
            continue
        entry = {}
        for split, (Xs, ys, gs) in zip(
            ("test", "holdout"), ((X, y, groups[0]), (Xh, yh, groups[1])), strict=True
        ):
            if not len(ys):
                continue
            figs, gap = task.by_group(graph, Xs, ys, gs, column)
            entry[split] = {**figs, **({"gap": gap.as_json()} if gap else {})}
            if split == "test":
                gaps[who] = gap
        out[who] = entry
    return out, gaps


def figures(
    task: Task,
    graph: Path,
    twin_path: Path,
    rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    schema: Schema,
    eps: float,
    cfg: GateConfig,
    record: Path | None = None,
    measured: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One model's figures on test and, where it has rows, the production holdout. ``record``:
    the model's promotion record (a champion's), whose robust figures are reused when its
    :func:`gate_key` is unchanged (the frozen test split makes that the rule); ``measured``:
    figures the compress stage took of the same graphs (a candidate's), reused the same way."""
    X, y, Xh, yh = rows
    model = Measured(graph, build(load_checkpoint(twin_path)), judged=quantized(graph))
    attack = Attack(schema, eps, cfg)
    key = gate_key(graph, twin_path, X, y, eps, cfg)
    known = load_json(record).get("candidate") if record is not None and record.is_file() else None
    known = known or next((m for m in measured or [] if m and m.get("gate_key") == key), None)
    out = task.measure(model, X, y, attack, key, known)
    if len(yh):
        out.update(task.on_holdout(model, Xh, yh, attack))
    return out


def deploy_variants(
    task: Task,
    compressed: dict[str, Any],
    folder: Path,
    rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    cfg: GateConfig,
    ctx: GateContext,
    export: dict[str, Any],
    replaces: float,
    max_clean_drop: float,
) -> list[Variant]:
    """The compress stage's graphs (metrics/compress.json, files in ``folder``) as the gate
    sees them: their figures from the stage (the gate's own measures, robustness judged by each
    graph), their p99 single-row time measured here as the candidate's is, and the floors each
    fails when judged as a candidate of its own (no champion; an int8 graph with
    ``gate.max_int8_accuracy_drop`` more clean budget, as the served int8 graph gets; with
    production holdout rows, the holdout figures those floors read).

    The clean budget of a variant is ``max_clean_drop`` (harden's) against ``replaces``, the
    main figure of the graph the gate judged, which the variant would replace on its target
    (``ctx``'s reference and budget are the judged graph's own). The compress stage
    fine-tunes each pruned network within ``harden.max_clean_drop`` of that graph's network
    (:func:`pipeline.learning.adversarial.harden`'s ``reference``), so the gate reads the
    budget the variant was made to hold. Against the model before hardening, whose budget the
    judged graph may already have spent, a retrain's pruned int8 graph sat on the edge (digits
    under blur: 354 of 360 test rows against the trained model's 359, one row from failing)
    and a CI run refused a candidate that recovered a failing champion for its device graph
    alone."""
    X, y, Xh, yh = rows
    out = []
    for v in compressed["variants"]:
        if v["figures"] is None:  # a retrain measured only what a target can take
            continue
        path = folder / v["file"]
        figs = {**v["figures"], "p99_latency_ms": compute_ms(session(path), X)["p99_ms"]}
        if len(yh):
            figs.update(task.holdout_floors(path, Xh, yh))
        allowance = cfg.max_int8_accuracy_drop if v["quantization"] != "none" else 0.0
        alone = dataclasses.replace(
            ctx,
            trained_clean=replaces,
            max_clean_drop=max_clean_drop + allowance,
            champion_failing=None,
            group_gap=None,
            champion_group_gap=None,
        )
        rules, _ = task.gate(cfg, figs, None, bool(v["parity_passed"]), alone, export, y)
        failed = tuple(r.rule for r in rules if not r.passed and r.rule != "parity")
        out.append(
            Variant(
                name=v["name"],
                path=path,
                bytes=int(v["bytes"]),
                p99_ms=figs["p99_latency_ms"],
                main=float(figs[task.main]),
                robust=float(figs[task.robust]),
                failed=failed,
                parity_passed=bool(v["parity_passed"]),
            )
        )
    return out
