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

The head and the parity check are the task's (:mod:`pipeline.learning.tasks`): a regressor's
graph outputs ``prediction``, ``lower`` and
``upper`` (batch,) float32 in the target's units: the network, its target scaling and harden's
split conformal interval (at ``serving.interval_coverage``) inside. Parity: the largest
difference of the three from PyTorch, as a share of the target's observed range, within
``export.parity_atol``.
"""

from __future__ import annotations

import json
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
from pipeline.contracts.runtime import latency_ms, session
from pipeline.contracts.schema import LABEL, Schema
from pipeline.learning import stage
from pipeline.learning.checkpoint import load_checkpoint
from pipeline.learning.model import build
from pipeline.learning.tasks import Exported, Task, task_for
from pipeline.learning.tasks.classification import Served, torch_predict
from pipeline.learning.tasks.regression import ServedRegressor

# Where the graphs' modules were defined before the task type; tests and bench import them here.
__all__ = ["Served", "ServedRegressor", "export_onnx", "quantize", "torch_predict"]


def export_onnx(served: nn.Module, n_features: int, path: Path, opset: int, task: Task) -> None:
    """Dynamo export of ``served`` (the task's head around the model) with a dynamic batch axis,
    weights inside the file, then a full check."""
    # The exporter warns once per torchvision op it cannot register; nothing here uses them.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    example = torch.zeros(2, n_features)
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        served.eval(),
        (example,),
        input_names=["features"],
        output_names=list(task.outputs),
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


def quantize(fp32: Path, out: Path) -> None:
    """int8 dynamic quantization; dynamo graphs need onnxruntime's pre-processing first."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Symbolic shape inference: ONNX's own inference trips on the dynamo graph's value_info.
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
        quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8)


def quantize_static(fp32: Path, out: Path, rows: np.ndarray) -> None:
    """int8 static quantization (QDQ: weights and activations, per tensor, int8), the
    activations' ranges calibrated on ``rows`` (MinMax; the validation split's in the compress
    stage). The ranges come from onnxruntime, whose kernels no switch pins to one instruction
    set (:mod:`pipeline.contracts.kernels`): each is widened to three significant digits before
    it sets a scale, so the graph's bytes do not move with the last bits another CPU's sums
    give."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
    )
    from onnxruntime.quantization import quantize_static as ort_quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Rows(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"features": rows[i : i + 64]} for i in range(0, len(rows), 64)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    settings = {
        "quant_format": QuantFormat.QDQ,
        "activation_type": QuantType.QInt8,
        "weight_type": QuantType.QInt8,
    }
    with tempfile.TemporaryDirectory() as tmp:
        pre, cache = Path(tmp) / "pre.onnx", Path(tmp) / "ranges.json"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
        # First pass: the ranges onnxruntime measures, into its calibration cache.
        ort_quantize_static(
            str(pre), str(Path(tmp) / "first.onnx"), Rows(), calibration_cache_path=cache,
            **settings,
        )  # fmt: skip
        ranges = json.loads(cache.read_text())
        for tensor in ranges["data"].values():
            for key, widen in (("lowest", np.floor), ("highest", np.ceil)):
                if isinstance(tensor.get(key), dict):
                    tensor[key]["data"] = coarse(tensor[key]["data"], widen)
        cache.write_text(json.dumps(ranges))
        ort_quantize_static(str(pre), str(out), None, calibration_cache_path=cache, **settings)


def coarse(values: Any, widen: Any) -> Any:
    """``values`` (a number or nested lists) rounded outward (``widen``: floor for a lower
    bound, ceil for an upper one) to three significant digits."""
    if isinstance(values, list):
        return [coarse(v, widen) for v in values]
    x = float(values)
    if x == 0.0 or not np.isfinite(x):
        return x
    step = 10.0 ** (np.floor(np.log10(abs(x))) - 2)
    return float(widen(x / step) * step)


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
    task = task_for(schema)
    checkpoint = load_checkpoint(args.model)
    model = build(checkpoint)
    test = read_parquet(args.test)
    X, y = test[schema.names].to_numpy(np.float32), test[LABEL].to_numpy()
    outputs = (args.out, args.out_int8, args.metrics, args.timing)
    with atomic_outputs(*outputs) as (fp32, int8, metrics_tmp, timing_tmp):
        served = task.served(model.cpu(), checkpoint)
        export_onnx(served, len(schema.names), fp32, cfg.opset, task)
        if cfg.quantize:
            quantize(fp32, int8)
        q8 = int8 if cfg.quantize else None
        exported = Exported(model, checkpoint, fp32, q8, schema)
        report, diff = task.parity(exported, X, y, cfg.parity_atol)
        dump_json({"opset": cfg.opset, **report}, metrics_tmp)
        # This machine's figures (onnxruntime's kernels follow the CPU): a side file.
        timing = latencies(fp32, q8, X)
        dump_json({"parity_max_abs_probability_diff": diff, **timing}, timing_tmp)
        if not report["parity"]["passed"]:
            # The graph is kept (atomic_outputs still renames it) so the failure can be studied;
            # the gate refuses to promote a model whose parity failed.
            print(f"export: warning: parity failed: {report['parity']}", file=sys.stderr)
    print(f"export: {task.export_summary(report, diff)}")


def main(argv: list[str] | None = None) -> int:
    return stage.run("export", __doc__, argv, FLAGS, body)


if __name__ == "__main__":
    sys.exit(main())
