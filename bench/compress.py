"""Compression frontier: structured pruning (Torch-Pruning) x fp32 / int8, against the fp32 graph.

The compress stage (``python -m pipeline.compress``) makes one point of this frontier on every
run (``compress.*``); this benchmark walks several levels, gradually, with both int8 kinds, and
adds a compute-bound network.

    python bench/compress.py [--inputs DIR] [--levels 0.5 0.55 0.6] [--epochs 30]
                             [--wide 512] [--repeats 200]

On the champion of ``dvc repro`` (``--inputs``, default this repo; a classifier): each pruning
level removes that share of every prunable layer's channels and units for real (Torch-Pruning's
dependency graph, L2 magnitude per group; the output layer kept; gradually: each level starts
from the previous level's fine-tuned network), then fine-tunes with the harden
stage's own loop (:func:`pipeline.learning.adversarial.harden`: ``harden.*`` of params.yaml,
``--epochs`` epochs) against the unpruned model's clean budget, keeping the most robust epoch
within it; then temperature scaling on val and the export stage's graph. Every graph, the
unpruned one included, is also quantized to int8: statically (QDQ, weights and activations,
calibrated on val) and dynamically (what the export stage makes today). Printed per variant, in
one run: file bytes and gzip bytes, parameters and MACs of the network, onnxruntime p50 ms at
batch 1 and rows/s at batch 256 (one thread), each as a ratio to the unpruned fp32 graph; test
accuracy, ECE, and the robust accuracy at ``harden.eps``: the gate's per-row worst case (PGD,
APGD-CE, APGD-DLR, ``gate.*`` settings) crafted on the variant's PyTorch twin and judged by the
graph itself (for fp32 the same as on the twin; for int8 the twin's adversarial points scored by
the quantized graph). ``ok`` marks a variant within ``harden.max_clean_drop`` of the unpruned
fp32 graph's test accuracy and at or above ``gate.min_robust_accuracy``.

``--wide N`` adds the compute-bound case: an MLP with three hidden layers of N units trained on
the same splits (the train stage's loop, clean), pruned at the same levels and fine-tuned with
that loop, speed and accuracy only.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gzip
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.contracts.io import load_json  # noqa: E402
from pipeline.contracts.params import (  # noqa: E402
    GateConfig,
    HardenConfig,
    TrainConfig,
    overlay,
    read_params,
    section,
)
from pipeline.contracts.runtime import latency_ms, session  # noqa: E402
from pipeline.contracts.schema import Schema  # noqa: E402
from pipeline.export import Served, export_onnx, quantize, quantize_static  # noqa: E402
from pipeline.learning import adversarial  # noqa: E402
from pipeline.learning.attacks import Box, worst_case  # noqa: E402
from pipeline.learning.calibration import fit_temperature, logits_of  # noqa: E402
from pipeline.learning.checkpoint import load_checkpoint  # noqa: E402
from pipeline.learning.metrics import expected_calibration_error  # noqa: E402
from pipeline.learning.model import MLP, Classifier, ModelConfig, build  # noqa: E402
from pipeline.learning.prune import network_input, prune, size  # noqa: E402
from pipeline.learning.splits import load_split  # noqa: E402
from pipeline.learning.tasks import task_for  # noqa: E402
from pipeline.learning.tasks.classification import Classification, graph_judge  # noqa: E402
from pipeline.learning.training import fit  # noqa: E402


@dataclasses.dataclass
class Graph:
    name: str
    path: Path
    model: Classifier
    level: float


def measure(
    g: Graph,
    base: dict[str, Any] | None,
    X: np.ndarray,
    y: np.ndarray,
    box: Box | None,
    gate: GateConfig | None,
    repeats: int,
) -> dict[str, Any]:
    body = g.path.read_bytes()
    macs, params = size(g.model, X.shape[1])
    sess = session(g.path, 1)
    proba, label = sess.run(None, {"features": X})
    one = latency_ms(sess, X, 1, repeats)["p50_ms"]
    batch = latency_ms(sess, X, 256, max(20, repeats // 10))["p50_ms"]
    row = {
        "variant": g.name,
        "bytes": len(body),
        "gzip": len(gzip.compress(body, 9)),
        "params": params,
        "macs": macs,
        "p50_ms_1": one,
        "rows_s_256": 256e3 / batch,
        "accuracy": float((label == y).mean()),
        "ece": expected_calibration_error(y, proba),
    }
    if box is not None and gate is not None:
        # The gate's worst case, crafted on the twin and judged by the graph itself.
        row["robust"] = worst_case(
            g.model,
            torch.as_tensor(X),
            torch.as_tensor(y),
            box,
            n_iter=gate.apgd_iter,
            restarts=gate.robust_restarts,
            pgd_steps=gate.robust_steps,
            seed=gate.seed,
            judge=graph_judge(sess),
        )["worst_case"]
    if base is not None:
        for key in ("bytes", "gzip", "params", "macs", "p50_ms_1", "rows_s_256"):
            row[f"{key}_x"] = row[key] / base[key]
    return row


def graphs_of(
    model: Classifier, level: float, temperature: float, folder: Path, n_raw: int, val: np.ndarray
) -> list[Graph]:
    """The fp32 graph of ``model`` and its static and dynamic int8 twins."""
    task = Classification()
    tag = f"pruned {level:.0%}" if level else "unpruned"
    fp32 = folder / f"{level}.onnx"
    export_onnx(Served(copy.deepcopy(model), temperature), n_raw, fp32, 18, task)
    static, dynamic = folder / f"{level}.static.onnx", folder / f"{level}.dynamic.onnx"
    quantize_static(fp32, static, val)
    quantize(fp32, dynamic)
    return [
        Graph(f"{tag} fp32", fp32, model, level),
        Graph(f"{tag} int8 static", static, model, level),
        Graph(f"{tag} int8 dynamic", dynamic, model, level),
    ]


def table(rows: list[dict[str, Any]], robust: bool, floor: float, budget: float | None) -> None:
    head = f"{'variant':<24}{'bytes':>9}{'x':>6}{'gzip x':>7}{'params':>8}{'MACs':>10}"
    head += f"{'b1 ms':>7}{'x':>6}{'b256 rows/s':>12}{'x':>6}{'acc':>7}{'ECE':>7}"
    print(head + (f"{'robust':>8}  ok" if robust else ""))
    for r in rows:
        line = (
            f"{r['variant']:<24}{r['bytes']:>9}{r['bytes_x']:>6.2f}{r['gzip_x']:>7.2f}"
            f"{r['params']:>8}{r['macs']:>10}{r['p50_ms_1']:>7.3f}{r['p50_ms_1_x']:>6.2f}"
            f"{r['rows_s_256']:>12,.0f}{r['rows_s_256_x']:>6.2f}{r['accuracy']:>7.4f}"
            f"{r['ece']:>7.4f}"
        )
        if robust:
            ok = r["accuracy"] >= rows[0]["accuracy"] - budget and r["robust"] >= floor
            line += f"{r['robust']:>8.4f}  {'yes' if ok else 'no'}"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=Path, default=ROOT)
    ap.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.55, 0.6])
    ap.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs per level")
    ap.add_argument("--wide", type=int, default=0, help="also a 3 x N MLP (compute-bound)")
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = read_params(args.inputs / "params.yaml")
    hcfg = overlay(section(params, "harden", HardenConfig), "harden", epochs=args.epochs)
    gate = section(params, "gate", GateConfig)
    schema = Schema.from_dict(load_json(args.inputs / "data/schema.json"))
    if task_for(schema).name != "classification":
        raise SystemExit("bench/compress.py measures a classifier (the digits)")
    splits = {s: load_split(args.inputs / f"data/prepared/{s}.parquet", schema) for s in
              ("train", "val", "test")}  # fmt: skip
    train, val, test = splits["train"], splits["val"], splits["test"]
    X, y = test.X.numpy(), test.y.numpy()
    ckpt = load_checkpoint(args.inputs / "models/hardened.pt")
    reference = build(ckpt)
    box = Box.from_schema(schema, hcfg.eps)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        graphs = graphs_of(reference, 0.0, ckpt.temperature or 1.0, Path(tmp), X.shape[1],
                           val.X.numpy())  # fmt: skip
        # Gradual pruning: each level starts from the previous level's fine-tuned network and
        # removes the share of its channels that brings it to ``level`` of the original's.
        model, kept = build(ckpt), 1.0
        for level in sorted(args.levels):
            prune(model, 1 - (1 - level) / kept, X.shape[1])
            kept = 1 - level
            model.train()
            adversarial.harden(model, train, val, schema, hcfg, cpu, reference=reference)
            model.eval()
            temperature = fit_temperature(logits_of(model, val.X), val.y.numpy())
            graphs += graphs_of(
                copy.deepcopy(model), level, temperature, Path(tmp), X.shape[1], val.X.numpy()
            )
        rows: list[dict[str, Any]] = []
        for g in graphs:
            rows.append(measure(g, rows[0] if rows else None, X, y, box, gate, args.repeats))
            if len(rows) == 1:
                rows[0].update({f"{k}_x": 1.0 for k in ("bytes", "gzip", "params", "macs",
                                                         "p50_ms_1", "rows_s_256")})  # fmt: skip
        print(f"\ndigits champion, {len(y)} test rows, robust at eps {hcfg.eps}: ratios to the "
              "unpruned fp32 graph")  # fmt: skip
        table(rows, True, gate.min_robust_accuracy, hcfg.max_clean_drop)
        if args.wide:
            wide_frontier(args, params, train, val, X, y, Path(tmp), ckpt)


def wide_frontier(
    args: argparse.Namespace,
    params: dict[str, Any],
    train: Any,
    val: Any,
    X: np.ndarray,
    y: np.ndarray,
    tmp: Path,
    ckpt: Any,
) -> None:
    """A 3 x N MLP on the same transformed features, trained clean; pruned and fine-tuned."""
    tcfg = section(params, "train", TrainConfig)
    objective = Classification().objective
    base = build(ckpt)
    width = int(network_input(base, X.shape[1]).shape[1])
    cfg = ModelConfig("mlp", width, int(y.max()) + 1, args.wide, 3, 0.1, 1, None)
    wide = Classifier(base.transform, MLP(cfg))
    cpu = torch.device("cpu")
    fit(wide, train, val, overlay(tcfg, "train", model="mlp"), cpu, objective=objective)
    wide.eval()
    models = [(0.0, wide)]
    short = overlay(tcfg, "train", model="mlp", epochs=args.epochs)
    m, kept = copy.deepcopy(wide), 1.0
    for level in sorted(args.levels):  # gradual, as for the champion
        prune(m, 1 - (1 - level) / kept, X.shape[1])
        kept = 1 - level
        m.train()
        fit(m, train, val, short, cpu, objective=objective)
        m.eval()
        models.append((level, copy.deepcopy(m)))
    rows: list[dict[str, Any]] = []
    (tmp / "wide").mkdir()
    for level, m in models:
        temperature = fit_temperature(logits_of(m, val.X), val.y.numpy())
        fp32 = graphs_of(m, level, temperature, tmp / "wide", X.shape[1], val.X.numpy())
        for g in fp32:
            g.name = f"3x{args.wide} " + g.name
            rows.append(measure(g, rows[0] if rows else None, X, y, None, None, args.repeats))
            if len(rows) == 1:
                rows[0].update({f"{k}_x": 1.0 for k in ("bytes", "gzip", "params", "macs",
                                                         "p50_ms_1", "rows_s_256")})  # fmt: skip
    print(f"\ncompute-bound: an MLP of 3 x {args.wide} units on the same features, clean")
    table(rows, False, 0.0, None)


if __name__ == "__main__":
    main()
