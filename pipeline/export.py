"""Export stage: the whole raw-features-to-probabilities model as one ONNX graph, plus int8.

    python -m pipeline.export --params params.yaml --schema data/schema.json \
        --model models/hardened.pt --test data/prepared/test.parquet \
        --out models/model.onnx --out-int8 models/model.int8.onnx --metrics metrics/export.json

Input ``features`` (batch, features) float32: raw values in schema order, categoricals as their
index in schema.json, NaN for missing. Outputs ``probabilities`` (batch, classes) and ``label``
(batch,) int64. The fitted feature transform is inside the graph, so serving does nothing but
encode categoricals. Checked with ``onnx.checker`` (full check), no external-data sidecar, and
compared with PyTorch on the whole test split. The int8 variant is dynamically quantized
(onnxruntime) after its pre-processing pass; the evaluate stage's gate picks which one ships.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import torch
from torch import nn

from pipeline.config import read_params, require, section
from pipeline.errors import MlcycleError
from pipeline.io import atomic_outputs, dump_json, load_json
from pipeline.model import Classifier, build
from pipeline.runtime import latency_ms, predict, session
from pipeline.schema import LABEL, Schema


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """``export`` in params.yaml."""

    opset: int
    parity_atol: float
    quantize: bool

    def check(self, where: str) -> None:
        require(self.opset >= 17, f"{where}.opset", self.opset, ">= 17")
        require(self.parity_atol > 0, f"{where}.parity_atol", self.parity_atol, "> 0")


class Served(nn.Module):
    """What the ONNX graph computes: raw features -> (probabilities, label)."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = torch.softmax(self.model(features), dim=1)  # (batch, classes)
        return probabilities, probabilities.argmax(dim=1)  # (batch,)


def export_onnx(model: Classifier, n_features: int, path: Path, opset: int) -> None:
    """Dynamo export with a dynamic batch axis, weights inside the file, then a full check."""
    # The exporter warns once per torchvision op it cannot register; nothing here uses them.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    served = Served(model.cpu()).eval()
    example = torch.zeros(2, n_features)
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        served,
        (example,),
        input_names=["features"],
        output_names=["probabilities", "label"],
        dynamic_shapes={"features": {0: batch}},
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path), full_check=True)


def torch_predict(model: Classifier, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        probs, labels = Served(model.cpu().eval())(torch.as_tensor(X, dtype=torch.float32))
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
    model: Classifier, fp32: Path, int8: Path | None, X: np.ndarray, y: np.ndarray, atol: float
) -> dict[str, Any]:
    """Parity of the fp32 graph with PyTorch, and the int8 variant's cost and benefit."""
    t_probs, t_labels = torch_predict(model, X)
    fp_sess = session(fp32)
    o_probs, o_labels = predict(fp_sess, X)
    diff = float(np.abs(o_probs - t_probs).max())
    report: dict[str, Any] = {
        "parity": {
            "rows": len(X),
            "max_abs_probability_diff": diff,
            "labels_equal": bool(np.array_equal(o_labels, t_labels)),
            "atol": atol,
            "passed": bool(diff <= atol and np.array_equal(o_labels, t_labels)),
        },
        "fp32": {
            "accuracy": float((o_labels == y).mean()),
            "bytes": fp32.stat().st_size,
            "latency_batch1": latency_ms(fp_sess, X),
        },
    }
    if int8 is not None:
        q_sess = session(int8)
        _, q_labels = predict(q_sess, X)
        q_lat = latency_ms(q_sess, X)
        report["int8"] = {
            "accuracy": float((q_labels == y).mean()),
            "bytes": int8.stat().st_size,
            "latency_batch1": q_lat,
            "accuracy_delta": float((q_labels == y).mean() - (o_labels == y).mean()),
            "size_ratio": int8.stat().st_size / fp32.stat().st_size,
            "latency_ratio": q_lat["p50_ms"] / report["fp32"]["latency_batch1"]["p50_ms"],
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--schema", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--out-int8", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)
    try:
        cfg = section(read_params(args.params), "export", ExportConfig)
    except MlcycleError as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        return 2
    schema = Schema.from_dict(load_json(args.schema))
    model = build(torch.load(args.model, map_location="cpu", weights_only=True))
    test = pd.read_parquet(args.test)
    X, y = test[schema.names].to_numpy(np.float32), test[LABEL].to_numpy()
    with atomic_outputs(args.out, args.out_int8, args.metrics) as (fp32, int8, metrics_tmp):
        export_onnx(model, len(schema.names), fp32, cfg.opset)
        if cfg.quantize:
            quantize(fp32, int8)
        report = compare(model, fp32, int8 if cfg.quantize else None, X, y, cfg.parity_atol)
        dump_json({"opset": cfg.opset, **report}, metrics_tmp)
        if not report["parity"]["passed"]:
            # The graph is kept (atomic_outputs still renames it) so the failure can be studied;
            # the gate refuses to promote a model whose parity failed.
            print(f"export: warning: parity failed: {report['parity']}", file=sys.stderr)
    p = report["parity"]
    print(
        f"export: parity max |dp| = {p['max_abs_probability_diff']:.2e} on {p['rows']} rows, "
        f"labels equal: {p['labels_equal']}"
        + (
            f"; int8 accuracy delta {report['int8']['accuracy_delta']:+.4f}, size x"
            f"{report['int8']['size_ratio']:.2f}, latency x{report['int8']['latency_ratio']:.2f}"
            if "int8" in report
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
