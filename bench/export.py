"""Benchmark: onnxruntime fp32 and int8 against PyTorch eager, same model, batch 1 and 256.

    python bench/export.py [--inputs DIR] [--repeats 300]

Reads ``models/hardened.pt``, ``models/model.onnx`` and ``models/model.int8.onnx`` from ``dvc
repro`` (``--inputs``, default this repo) and times one forward pass of each on test rows, one
thread each, in one run. Prints p50 / p99 milliseconds and the speed-up over PyTorch eager.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.contracts.io import load_json  # noqa: E402
from pipeline.contracts.runtime import latency_ms, session  # noqa: E402
from pipeline.export import Served  # noqa: E402
from pipeline.learning.checkpoint import load_checkpoint  # noqa: E402
from pipeline.learning.model import build  # noqa: E402


def torch_latency_ms(
    model: torch.nn.Module, X: np.ndarray, batch: int, repeats: int, warmup: int = 20
) -> dict[str, float]:
    x = torch.as_tensor(np.resize(X, (batch, X.shape[1])), dtype=torch.float32)
    times = np.empty(repeats)
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for i in range(repeats):
            start = time.perf_counter()
            model(x)
            times[i] = time.perf_counter() - start
    return {
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=Path, default=ROOT)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    schema = load_json(args.inputs / "data/schema.json")
    names = [f["name"] for f in schema["features"]]
    X = pd.read_parquet(args.inputs / "data/prepared/test.parquet")[names].to_numpy(np.float32)
    torch.set_num_threads(1)
    ckpt = load_checkpoint(args.inputs / "models/hardened.pt")
    eager = Served(build(ckpt), ckpt.temperature or 1.0).eval()
    fp32 = session(args.inputs / "models/model.onnx")
    int8 = session(args.inputs / "models/model.int8.onnx")
    print(f"{'batch':>5}  {'runtime':<22}{'p50 ms':>9}{'p99 ms':>9}{'vs eager (p50)':>16}")
    for batch in (1, 256):
        base = torch_latency_ms(eager, X, batch, args.repeats)
        rows = [
            ("PyTorch eager", base),
            ("onnxruntime fp32", latency_ms(fp32, X, batch, args.repeats)),
            ("onnxruntime int8", latency_ms(int8, X, batch, args.repeats)),
        ]
        for name, lat in rows:
            print(
                f"{batch:>5}  {name:<22}{lat['p50_ms']:>9.3f}{lat['p99_ms']:>9.3f}"
                f"{base['p50_ms'] / lat['p50_ms']:>15.2f}x"
            )


if __name__ == "__main__":
    main()
