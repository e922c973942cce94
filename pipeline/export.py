"""Export stage: the whole raw-features-to-probabilities model as one ONNX graph, plus int8.

    python -m pipeline.export --params params.yaml --schema data/schema.json \
        --model models/hardened.pt --test data/prepared/test.parquet \
        --out models/model.onnx --out-int8 models/model.int8.onnx --metrics metrics/export.json \
        --timing metrics/export_time.json

Input ``features`` (batch, features) float32: raw values in schema order, categoricals as their
index in schema.json, NaN for missing. Outputs ``probabilities`` (batch, classes) and ``label``
(batch,) int64. The fitted feature transform and harden's temperature scaling are inside the
graph, so serving does nothing but encode categoricals and its probabilities are calibrated.
Checked with ``onnx.checker`` (full check), no external-data sidecar, and
compared with PyTorch on the whole test split. The int8 variant is dynamically quantized
(onnxruntime) after its pre-processing pass; the evaluate stage's gate picks which one ships.

A regressor's graph (schema.json's task regression) outputs ``prediction``, ``lower`` and
``upper`` (batch,) float32 in the target's units: the network, its target scaling and harden's
split conformal interval (at ``serving.interval_coverage``) inside. Parity: the largest
difference of the three from PyTorch, as a share of the target's observed range, within
``export.parity_atol``.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from pipeline.contracts.io import atomic_outputs, dump_json, load_json, read_parquet
from pipeline.contracts.params import ExportConfig
from pipeline.contracts.runtime import (
    REGRESSION_OUTPUTS,
    latency_ms,
    predict,
    predict_interval,
    session,
)
from pipeline.contracts.schema import LABEL, Schema
from pipeline.learning import stage
from pipeline.learning.checkpoint import load_checkpoint
from pipeline.learning.model import Classifier, Regressor, build


class Served(nn.Module):
    """What the ONNX graph computes: raw features -> (calibrated probabilities, label).

    ``temperature`` is harden's temperature scaling (the checkpoint's ``temperature``).
    """

    def __init__(self, model: Classifier, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("inv_temperature", torch.tensor(1.0 / temperature))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(features) * self.inv_temperature
        probabilities = torch.softmax(logits, dim=1)  # (batch, classes)
        return probabilities, probabilities.argmax(dim=1)  # (batch,)


class ServedRegressor(nn.Module):
    """A regressor's graph: raw features -> (prediction, lower, upper) in the target's units.

    ``half_width``: harden's split conformal quantile on the network's scale."""

    def __init__(self, model: Regressor, half_width: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("half_width", torch.tensor(float(half_width)))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.model.standardized(features)
        to_target = self.model.unstandardize
        return to_target(z), to_target(z - self.half_width), to_target(z + self.half_width)


def export_onnx(
    model: Classifier | Regressor,
    n_features: int,
    path: Path,
    opset: int,
    temperature: float = 1.0,
    half_width: float | None = None,
) -> None:
    """Dynamo export with a dynamic batch axis, weights inside the file, then a full check.
    ``half_width``: a regressor's interval (its graph then has the regression outputs)."""
    # The exporter warns once per torchvision op it cannot register; nothing here uses them.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    regression = isinstance(model, Regressor)
    served: nn.Module
    if regression:
        served = ServedRegressor(model.cpu(), half_width or 0.0).eval()  # type: ignore[arg-type]
    else:
        served = Served(model.cpu(), temperature).eval()  # type: ignore[arg-type]
    example = torch.zeros(2, n_features)
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        served,
        (example,),
        input_names=["features"],
        output_names=list(REGRESSION_OUTPUTS) if regression else ["probabilities", "label"],
        dynamic_shapes={"features": {0: batch}},
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    program.save(str(path), external_data=False)
    model = onnx.load(str(path))
    strip_debug_metadata(model.graph)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def strip_debug_metadata(graph: onnx.GraphProto) -> None:
    """Drop the exporter's per-node debug notes (stack traces with absolute source paths, FX
    names): the same model then gives the same bytes from any checkout."""
    for node in graph.node:
        del node.metadata_props[:]
        for attr in node.attribute:
            if attr.g.node:
                strip_debug_metadata(attr.g)
            for sub in attr.graphs:
                strip_debug_metadata(sub)


def torch_predict(
    model: Classifier, X: np.ndarray, temperature: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        served = Served(model.cpu().eval(), temperature)
        probs, labels = served(torch.as_tensor(X, dtype=torch.float32))
    return probs.numpy(), labels.numpy()


def quantize(fp32: Path, out: Path) -> None:
    """int8 dynamic quantization; dynamo graphs need onnxruntime's pre-processing first."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Symbolic shape inference: ONNX's own inference trips on the dynamo graph's value_info.
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
        quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8)


def compare(
    model: Classifier,
    fp32: Path,
    int8: Path | None,
    X: np.ndarray,
    y: np.ndarray,
    atol: float,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Parity of the fp32 graph with PyTorch, and the int8 variant's size and accuracy.

    Deterministic for the same graphs and rows on one CPU. The largest probability difference
    itself depends on onnxruntime's kernels, which follow the CPU (no switch pins them): it is
    returned apart, as ``max_abs_probability_diff``, for the side file; the report keeps only
    what it decides (within ``atol``, labels equal). Latencies are in :func:`latencies`.
    """
    t_probs, t_labels = torch_predict(model, X, temperature)
    o_probs, o_labels = predict(session(fp32), X)
    diff = float(np.abs(o_probs - t_probs).max())
    report: dict[str, Any] = {
        "max_abs_probability_diff": diff,  # popped into the side file by the stage
        "parity": {
            "rows": len(X),
            "labels_equal": bool(np.array_equal(o_labels, t_labels)),
            "atol": atol,
            "passed": bool(diff <= atol and np.array_equal(o_labels, t_labels)),
        },
        "fp32": {"accuracy": float((o_labels == y).mean()), "bytes": fp32.stat().st_size},
    }
    if int8 is not None:
        _, q_labels = predict(session(int8), X)
        report["int8"] = {
            "accuracy": float((q_labels == y).mean()),
            "bytes": int8.stat().st_size,
            "accuracy_delta": float((q_labels == y).mean() - (o_labels == y).mean()),
            "size_ratio": int8.stat().st_size / fp32.stat().st_size,
        }
    return report


def compare_regression(
    model: Regressor,
    half_width: float,
    fp32: Path,
    int8: Path | None,
    X: np.ndarray,
    y: np.ndarray,
    atol: float,
    target_range: float,
) -> dict[str, Any]:
    """A regressor's parity (largest |difference| of prediction, lower and upper from PyTorch,
    as a share of the target's range) and the int8 variant's size and R²."""
    from pipeline.learning.regression import r2

    with torch.no_grad():
        served = ServedRegressor(model.cpu().eval(), half_width)
        ours = [v.numpy() for v in served(torch.as_tensor(X, dtype=torch.float32))]
    theirs = predict_interval(session(fp32), X)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True))
    share = diff / max(target_range, 1e-12)
    report: dict[str, Any] = {
        "max_abs_probability_diff": share,  # popped into the side file by the stage
        "parity": {
            "rows": len(X),
            "measure": "max |prediction, lower, upper difference| / the target's range",
            "atol": atol,
            "passed": bool(share <= atol),
        },
        "fp32": {"r2": r2(y, theirs[0]), "bytes": fp32.stat().st_size},
    }
    if int8 is not None:
        q_pred = predict_interval(session(int8), X)[0]
        report["int8"] = {
            "r2": r2(y, q_pred),
            "bytes": int8.stat().st_size,
            "r2_delta": r2(y, q_pred) - r2(y, theirs[0]),
            "size_ratio": int8.stat().st_size / fp32.stat().st_size,
        }
    return report


def latencies(fp32: Path, int8: Path | None, X: np.ndarray) -> dict[str, Any]:
    """Single-row p50 / p99 of each graph in onnxruntime (one thread), and int8 / fp32."""
    out: dict[str, Any] = {"fp32_batch1": latency_ms(session(fp32), X)}
    if int8 is not None:
        out["int8_batch1"] = latency_ms(session(int8), X)
        out["int8_to_fp32_p50"] = out["int8_batch1"]["p50_ms"] / out["fp32_batch1"]["p50_ms"]
    return out


FLAGS = ("--schema", "--model", "--test", "--out", "--out-int8", "--metrics", "--timing")


def body(ctx: stage.Context) -> None:
    args = ctx.args
    cfg = ctx.section("export", ExportConfig)
    schema = Schema.from_dict(load_json(args.schema))
    checkpoint = load_checkpoint(args.model)
    model, temperature = build(checkpoint), float(checkpoint.get("temperature", 1.0))
    half_width = checkpoint["interval"]["half_width"] if schema.regression else None
    test = read_parquet(args.test)
    X, y = test[schema.names].to_numpy(np.float32), test[LABEL].to_numpy()
    outputs = (args.out, args.out_int8, args.metrics, args.timing)
    with atomic_outputs(*outputs) as (fp32, int8, metrics_tmp, timing_tmp):
        export_onnx(model, len(schema.names), fp32, cfg.opset, temperature, half_width)
        if cfg.quantize:
            quantize(fp32, int8)
        q8 = int8 if cfg.quantize else None
        if schema.regression:
            span = float(schema.target_max or 0.0) - float(schema.target_min or 0.0)
            report = compare_regression(
                model, half_width or 0.0, fp32, q8, X, y, cfg.parity_atol, span
            )
            head: dict[str, Any] = {"opset": cfg.opset, "task": "regression"}
            head["interval"] = checkpoint["interval"]
        else:
            report = compare(model, fp32, q8, X, y, cfg.parity_atol, temperature)
            head = {"opset": cfg.opset, "temperature": temperature}
        diff = report.pop("max_abs_probability_diff")
        dump_json({**head, **report}, metrics_tmp)
        # This machine's figures (onnxruntime's kernels follow the CPU): a side file.
        timing = latencies(fp32, int8 if cfg.quantize else None, X)
        dump_json({"parity_max_abs_probability_diff": diff, **timing}, timing_tmp)
        if not report["parity"]["passed"]:
            # The graph is kept (atomic_outputs still renames it) so the failure can be studied;
            # the gate refuses to promote a model whose parity failed.
            print(f"export: warning: parity failed: {report['parity']}", file=sys.stderr)
    p = report["parity"]
    if schema.regression:
        print(
            f"export: parity max |difference| / target range = {diff:.2e} on {p['rows']} rows"
            + (
                f"; int8 R² delta {report['int8']['r2_delta']:+.4f}, size x"
                f"{report['int8']['size_ratio']:.2f}"
                if "int8" in report
                else ""
            )
        )
        return
    print(
        f"export: parity max |dp| = {diff:.2e} on {p['rows']} rows, "
        f"labels equal: {p['labels_equal']}"
        + (
            f"; int8 accuracy delta {report['int8']['accuracy_delta']:+.4f}, size x"
            f"{report['int8']['size_ratio']:.2f}"
            if "int8" in report
            else ""
        )
    )


def main(argv: list[str] | None = None) -> int:
    return stage.run("export", __doc__, argv, FLAGS, body)


if __name__ == "__main__":
    sys.exit(main())
