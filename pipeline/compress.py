"""Compress stage: smaller graphs of the hardened model, each measured as the gate measures.

    python -m pipeline.compress --params params.yaml --schema data/schema.json \
        --data data/prepared --model models/hardened.pt --onnx models/model.onnx \
        --out models/compressed \
        --metrics metrics/compress.json --plot plots/compress.csv --figure plots/frontier.png \
        --timing metrics/compress_time.json --warm-start data/warm_start.pt

docs/pipeline.md, "Compress". Each ``compress.levels`` share of the network's channels and hidden
units is removed for real (:mod:`pipeline.learning.prune`, Torch-Pruning: a smaller dense
network), and the pruned network is fine-tuned ``compress.epochs`` epochs by the harden stage's
own loop and settings (``harden.*``) against the unpruned model's clean budget, then gets its
own calibration head (temperature, or a regressor's conformal interval) on val. Every network,
the unpruned one included, is exported as the export stage exports (fp32) and quantized to int8
(``compress.quantize``: static QDQ calibrated on val, dynamic, or both). Every graph is measured
on the test split by the gate's own measures (:meth:`~pipeline.learning.task.Task.measure`):
quality, ECE, and the gate's per-row worst case at ``harden.eps`` crafted on the graph's PyTorch
twin and judged by the graph itself; an fp32 graph must pass the export stage's parity check
against its twin, and an int8 graph inherits its fp32 parent's.

``--metrics`` (compress.json): per variant its file, bytes and gzip bytes, parameters and MACs
of the network, parity and the gate's figures; ``--plot`` and ``--figure``: the frontier (the
main figure and the robust figure against bytes and MACs). Latency (onnxruntime, one thread:
p50 at batch 1, rows/s at batch 256) is this machine's and goes to the side file ``--timing``;
the gate measures each variant's p99 itself when it picks a graph for each ``deploy`` target.

A retrain (``--warm-start`` non-empty, as the monitor leaves it) is the loop's hot path: each
level is fine-tuned ``compress.warm_start_epochs`` epochs (its train split holds the production
rows too), and only the graphs a ``deploy`` target can take are measured (within some target's
``max_bytes`` where the judged graph is not, or any graph for a target with a time budget; the
unpruned fp32 graph always, whose figures the gate reuses); the others keep their sizes and
``"figures": null``.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contracts.io import (
    atomic_directory,
    atomic_outputs,
    dump_json,
    load_json,
    read_parquet,
)
from pipeline.contracts.params import (
    CompressConfig,
    DeployConfig,
    ExportConfig,
    GateConfig,
    HardenConfig,
    overlay,
)
from pipeline.contracts.runtime import latency_ms, session
from pipeline.contracts.schema import Schema
from pipeline.export import export_onnx, quantize, quantize_static
from pipeline.learning import stage
from pipeline.learning.assess import gate_key
from pipeline.learning.checkpoint import Checkpoint, load_checkpoint
from pipeline.learning.model import build
from pipeline.learning.prune import prune, size
from pipeline.learning.splits import load_split
from pipeline.learning.tasks import Attack, Exported, HardenRun, Measured, Task, task_for
from pipeline.release.deploy import TARGETS

FLAGS = (
    "--schema",
    "--data",
    "--model",
    "--onnx",  # the export stage's graph of the same model: the unpruned fp32 variant
    "--out",
    "--metrics",
    "--plot",
    "--figure",
    "--timing",
    "--warm-start",  # non-empty on a retrain (the champion's checkpoint): the loop's hot path
)
# What task.measure reports that is this machine's, not the graph's (the side file's).
TIMED = ("p99_latency_ms", "robust_cached")


@dataclasses.dataclass(frozen=True)
class Network:
    """One network of the frontier: the unpruned model (``level`` 0) or a pruned one."""

    level: float
    model: Any
    checkpoint: Checkpoint  # its calibration head (temperature, interval)

    @property
    def tag(self) -> str:
        return f"p{round(self.level * 100):02d}" if self.level else "dense"


def retrain(args: Any) -> bool:
    """A retrain: the monitor left the champion's checkpoint in ``--warm-start``."""
    path = Path(args.warm_start)
    return path.is_file() and path.stat().st_size > 0


def wanted(size: int, judged: int, deploy: DeployConfig) -> bool:
    """Whether some deploy target may take a graph of ``size`` bytes (``judged``: the graph
    the gate judges, which a target within whose bytes it fits takes unless it has a time
    budget)."""
    for target in TARGETS:
        budget = getattr(deploy, target)
        if budget.max_bytes is not None and size > budget.max_bytes:
            continue
        if budget.max_p99_ms is not None or (
            budget.max_bytes is not None and judged > budget.max_bytes
        ):
            return True
    return False


def networks(
    ctx: stage.Context, task: Task, schema: Schema, data: Path, hot: bool
) -> list[Network]:
    """The unpruned hardened model and one pruned, fine-tuned network per level (``hot``: a
    retrain's fewer epochs)."""
    args, cfg = ctx.args, ctx.section("compress", CompressConfig)
    checkpoint = load_checkpoint(args.model)
    reference = build(checkpoint).cpu().eval()
    out = [Network(0.0, reference, checkpoint)]
    if not cfg.levels:
        return out
    splits = {s: load_split(data / f"{s}.parquet", schema) for s in ("train", "val", "test")}
    epochs = cfg.warm_start_epochs if hot else cfg.epochs
    hcfg = overlay(ctx.section("harden", HardenConfig), "harden", epochs=epochs)
    for level in sorted(cfg.levels):
        model = build(checkpoint)
        prune(model, level, len(schema.names))
        model.train()
        print(f"compress: pruned {level:.0%} of the channels and units, fine-tuning")
        fields = task.fine_tune(
            HardenRun(
                trained=reference,
                hardened=model,
                train=splits["train"],
                val=splits["val"],
                test=splits["test"],
                schema=schema,
                cfg=hcfg,
                device=ctx.device(),
                first_run=False,
                train_epochs=0,
                section=ctx.section,
            )
        )
        out.append(Network(level, model.cpu().eval(), dataclasses.replace(checkpoint, **fields)))
    return out


def graphs(
    net: Network,
    task: Task,
    schema: Schema,
    folder: Path,
    kinds: tuple[str, ...],
    val: np.ndarray,
    opset: int,
    exported: Path,
) -> list[tuple[str, Path, str]]:
    """(name, path, quantization) of the network's fp32 graph and its int8 twins (``kinds``:
    static, dynamic). The unpruned network's fp32 graph is the export stage's (``exported``),
    byte for byte."""
    fp32 = folder / f"{net.tag}.fp32.onnx"
    if net.level:
        export_onnx(task.served(copy.deepcopy(net.model), net.checkpoint), len(schema.names),
                    fp32, opset, task)  # fmt: skip
    else:
        shutil.copyfile(exported, fp32)
    out = [(f"{net.tag}.fp32", fp32, "none")]
    for kind in kinds:
        name = f"{net.tag}.int8" + ("" if kind == "static" else "-dynamic")
        int8 = folder / f"{name}.onnx"
        if kind == "static":
            quantize_static(fp32, int8, val)
        else:
            quantize(fp32, int8)
        out.append((name, int8, kind))
    return out


def body(ctx: stage.Context) -> None:
    start = time.perf_counter()
    args = ctx.args
    cfg = ctx.section("compress", CompressConfig)
    gate = ctx.section("gate", GateConfig)
    eps = ctx.section("harden", HardenConfig).eps
    export_cfg = ctx.section("export", ExportConfig)
    schema = Schema.from_dict(load_json(args.schema))
    task = task_for(schema)
    data = Path(args.data)
    test, val = read_parquet(data / "test.parquet"), read_parquet(data / "val.parquet")
    X, y = test[schema.names].to_numpy(np.float32), task.target(test)
    X_val = val[schema.names].to_numpy(np.float32)
    hot = retrain(args)
    nets = networks(ctx, task, schema, data, hot)
    deploy, judged = ctx.section("deploy", DeployConfig), Path(args.onnx).stat().st_size
    variants, timing = [], {}
    outputs = (args.metrics, args.plot, args.figure, args.timing)
    with (
        atomic_directory(args.out) as folder,
        atomic_outputs(*outputs) as (metrics_tmp, plot_tmp, figure_tmp, timing_tmp),
    ):
        base = None
        for net in nets:
            parent_parity = True
            macs, params = size(net.model, len(schema.names))  # one network, its graphs
            for name, path, quantization in graphs(
                net, task, schema, folder, cfg.quantize, X_val, export_cfg.opset, Path(args.onnx)
            ):
                int8 = quantization != "none"
                if not int8:  # the export stage's parity check, on the graph's own twin
                    exported = Exported(net.model, net.checkpoint, path, None, schema)
                    report, _ = task.parity(exported, X, y, export_cfg.parity_atol)
                    parent_parity = bool(report["parity"]["passed"])
                body_bytes = path.read_bytes()
                figs = None
                if (
                    not hot
                    or (net.level == 0 and not int8)
                    or wanted(len(body_bytes), judged, deploy)
                ):
                    # The unpruned graphs' key is the gate's (their twin is --model), so evaluate
                    # reuses their robust figures instead of attacking the same graph again.
                    key = gate_key(path, Path(args.model), X, y, eps, gate) if not net.level else ""
                    measured = task.measure(
                        Measured(path, net.model, judged=int8), X, y, Attack(schema, eps, gate),
                        key, None,
                    )  # fmt: skip
                    figs = {k: stable(v) for k, v in measured.items() if k not in TIMED}
                variant = {
                    "name": name,
                    "file": path.name,
                    "level": net.level,
                    "quantization": quantization,
                    "bytes": len(body_bytes),
                    "gzip_bytes": len(gzip.compress(body_bytes, 9, mtime=0)),
                    "params": params,
                    "macs": macs,
                    "parity_passed": parent_parity,
                    "figures": figs,  # None: a retrain's graph no deploy target can take
                }
                variants.append(variant)
                timing[name] = speed(path, X)
                base = base or variant
                print(f"compress: {line(task, variant, base, timing[name])}")
        record = {"task": task.name, "main": task.main, "reference": base["name"],
                  "variants": variants}  # fmt: skip
        dump_json(record, metrics_tmp)
        table = frontier_table(task, variants)
        table.to_csv(plot_tmp, index=False)
        plot_frontier(task, table, figure_tmp)
        seconds = time.perf_counter() - start
        dump_json({"seconds": seconds, "retrain": hot, "variants": timing}, timing_tmp)
    print(f"compress: {len(variants)} graphs in {seconds:.1f} s" + (" (a retrain)" if hot else ""))


def stable(value: Any) -> Any:
    """A figure as compress.json keeps it: floats to six decimals. Some come from onnxruntime
    (an int8 graph's ECE), whose kernels no switch pins: the declared file must not move with
    the last bits another CPU's sums give."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items()}
    return value


def speed(graph: Path, X: np.ndarray) -> dict[str, float]:
    """onnxruntime on one thread: p50 ms at batch 1, rows/s at batch 256 (this machine's)."""
    sess = session(graph, 1)
    one = latency_ms(sess, X, 1, 200)["p50_ms"]
    batch = latency_ms(sess, X, 256, 20)["p50_ms"]
    return {"p50_ms_batch1": one, "rows_per_s_batch256": 256e3 / batch}


def line(task: Task, v: dict[str, Any], base: dict[str, Any], t: dict[str, float]) -> str:
    f = v["figures"]
    figures = (
        f"{task.main_name} {f[task.main]:.4f}, {task.robust} {f[task.robust]:.4f}"
        if f is not None
        else "not measured (no deploy target can take it)"
    )
    return (
        f"{v['name']}: {v['bytes']:,} bytes ({v['bytes'] / base['bytes']:.2f}x), "
        f"{v['params']:,} parameters, {figures}, parity "
        f"{'passed' if v['parity_passed'] else 'FAILED'}, {t['p50_ms_batch1']:.3f} ms at "
        f"batch 1, {t['rows_per_s_batch256']:,.0f} rows/s at batch 256"
    )


def frontier_table(task: Task, variants: list[dict[str, Any]]) -> pd.DataFrame:
    variants = [v for v in variants if v["figures"] is not None]
    return pd.DataFrame(
        {
            "variant": [v["name"] for v in variants],
            "bytes": [v["bytes"] for v in variants],
            "gzip_bytes": [v["gzip_bytes"] for v in variants],
            "macs": [v["macs"] for v in variants],
            task.main: [v["figures"][task.main] for v in variants],
            task.robust: [v["figures"][task.robust] for v in variants],
        }
    )


def plot_frontier(task: Task, table: pd.DataFrame, path: Path) -> None:
    """The main figure and the robust figure of every variant against bytes and MACs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    # MACs: the compute a row costs (latency is this machine's: the side file and the log).
    for ax, cost, label in ((axes[0], "bytes", "graph bytes"), (axes[1], "macs", "MACs per row")):
        for key, marker in ((task.main, "o"), (task.robust, "s")):
            ax.scatter(table[cost], table[key], marker=marker, label=key, alpha=0.7)
            for _, row in table.iterrows():
                name = row["variant"] if cost == "bytes" else row["variant"].split(".")[0]
                ax.annotate(name, (row[cost], row[key]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test figure")
    axes[0].legend()
    fig.suptitle("Compression frontier (test split; robust: the gate's worst case)")
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    return stage.run("compress", __doc__, argv, FLAGS, body)


if __name__ == "__main__":
    sys.exit(main())
