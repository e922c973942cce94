"""A folder a device team takes as it is: the champion's device graph, its schema, a predictor.

    python -m pipeline.registry bundle --target device [--out bundle/device]

Built from the registry's champion (``registry/champion``, the version the service answers
with) in a temporary folder beside ``--out``, moved into place only once complete and checked:
a half-written or unchecked bundle is never at ``--out``. It holds:

- ``model.ort``: the device target's graph (``deploy.device``: the gate's choice within the
  device's budget, ``device.onnx`` in the version; the server's ``model.onnx`` in a version
  registered before targets) in onnxruntime's ORT format (``convert_onnx_models_to_ort``, its
  fixed optimisation style: fused for CPU at build time, no optimisation on the device),
  converted and checked when the version was registered (:func:`pipeline.release.publish.
  device_graph`: every version carries it beside ``model.onnx``, so the bundle of the champion
  is the version the service answers with), or here for a version registered before;
- ``required_operators.config``: the operators that graph uses, for a minimal onnxruntime
  build (``build.sh --minimal_build --include_ops_by_config required_operators.config``);
- ``schema.json``: the features in the graph's order, categories, classes;
- ``predict.py`` (:mod:`pipeline.release.device_predict`) and ``requirements.txt``
  (onnxruntime and numpy, pinned to the versions the bundle was built and checked with);
- ``bundle.json``: the model version, the target, the source graph and each file's sha256.

The converted graph is checked against the device's ONNX graph on the test rows the service
would get (``--check``: a parquet of encoded rows; by default the drift reference the champion
carries): the same labels (a regressor: predictions within 1e-5 of the target's range), or no
bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.contracts import champion
from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.schema import Schema

TARGETS = ("device",)
PREDICTOR = Path(__file__).with_name("device_predict.py")


def bundle(registry: Path, out: Path, target: str, rows: np.ndarray | None = None) -> dict:
    """Write the ``target`` bundle of the registry's champion to ``out``; its bundle.json."""
    if target not in TARGETS:
        raise MlcycleError(f"bundle --target {target!r}: expected one of {', '.join(TARGETS)}")
    champ = champion.read(registry)  # a clear error before the first promotion
    source, schema = champ.directory, champ.schema
    decision = json.loads((source / champion.DECISION).read_text())
    schema_text = (source / champion.SCHEMA).read_text()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        graph = champion.target_graph(source, target)  # deploy.device's choice
        if (source / champion.DEVICE).is_file():  # converted and checked at registration
            for name in (champion.DEVICE, champion.OPERATORS):
                shutil.copy(source / name, tmp / name)
        else:  # a version registered before the registry kept it
            convert(graph, tmp)
        (tmp / "schema.json").write_text(schema_text)
        shutil.copy(PREDICTOR, tmp / "predict.py")
        pins = [f"{name}=={metadata.version(name)}" for name in ("onnxruntime", "numpy")]
        (tmp / "requirements.txt").write_text("\n".join(pins) + "\n")
        if rows is None:
            rows = reference_rows(source, schema)
        checked = check(graph, tmp / champion.DEVICE, rows, schema)
        manifest: dict[str, Any] = {
            "target": target,
            "model_name": decision.get("model_name"),
            "version": champ.version,
            "source": graph.name,
            "variant": (decision.get("deploy") or {}).get(target, {}).get("variant", "served"),
            "task": schema.task,
            "checked": checked,
            "files": {
                p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)}
                for p in sorted(tmp.iterdir())
            },
        }
        (tmp / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.chmod(0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def convert(graph: Path, folder: Path) -> None:
    """``graph`` as ``folder/model.ort`` and its operators as ``folder/required_operators.config``
    (the converter's comment lines name the build machine's paths: the bundle's own names
    instead)."""
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    work = Path(tempfile.mkdtemp(prefix=".convert.", dir=folder))
    try:
        shutil.copy(graph, work / "model.onnx")
        with contextlib.redirect_stdout(sys.stderr):  # the converter prints its progress
            convert_onnx_models_to_ort(work / "model.onnx", work / "out", [OptimizationStyle.Fixed])
        os.replace(work / "out" / "model.ort", folder / champion.DEVICE)
        lines = (work / "out" / f"model.{champion.OPERATORS}").read_text().splitlines()
        ops = [line for line in lines if not line.startswith("#")]
        header = ["# Generated from model/s:", f"# - {champion.DEVICE}"]
        (folder / champion.OPERATORS).write_text("\n".join(header + ops) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def reference_rows(source: Path, schema: Schema) -> np.ndarray:
    """The encoded rows the champion carries as its drift reference (its train split)."""
    import pandas as pd

    frame = pd.read_parquet(source / champion.REFERENCE)
    return frame[schema.names].to_numpy(np.float32)


def check(onnx: Path, ort_graph: Path, X: np.ndarray, schema: Schema) -> dict[str, Any]:
    """The ORT graph answers ``X`` as the ONNX graph does, or a clear error."""
    import onnxruntime as ort

    ours, theirs = (
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"features": X})
        for p in (onnx, ort_graph)
    )
    if schema.task == "regression":
        span = max(float(schema.target_max or 0.0) - float(schema.target_min or 0.0), 1e-12)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True)) / span
        if diff > 1e-5:
            raise MlcycleError(f"the ORT graph differs from {onnx.name} by {diff:.2e} of the range")
        return {"rows": len(X), "max_abs_diff_share_of_range": diff}
    same = int((ours[1] == theirs[1]).sum())
    if same != len(X):
        raise MlcycleError(f"the ORT graph answers {len(X) - same} of {len(X)} rows differently")
    diff = float(np.abs(ours[0] - theirs[0]).max())
    return {"rows": len(X), "same_labels": same, "max_abs_probability_diff": diff}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
