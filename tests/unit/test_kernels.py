"""compute.kernels: the libraries' CPU kernels pinned, so another CPU gives the same bytes.

Another CPU is played on this one by forcing each library's own dispatch lower (ATen's scalar
kernels, oneDNN at SSE4.1, MKL's compatible branch, OpenBLAS's Nehalem kernels, NumPy without its
AVX2 loops): the environment a pre-AVX2 CPU's defaults amount to.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.contracts import kernels
from tests.conftest import ROOT

# What an older CPU's defaults amount to, forced through each library's own switch.
OTHER_CPU = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "MKL_CBWR": "COMPATIBLE",
    "OPENBLAS_CORETYPE": "Nehalem",
    "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
}

# A training step of a small CNN (ATen, oneDNN, MKL), a NumPy product (OpenBLAS) and NumPy's
# exp (its own SIMD loops): a hash of the floats each gives.
PROBE = """
import hashlib, numpy as np, torch
torch.manual_seed(0)
x = torch.randn(256, 1, 8, 8)
net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.GELU(),
                          torch.nn.Flatten(), torch.nn.Linear(1024, 10))
loss = net(x).log_softmax(1).mean(); loss.backward()
rng = np.random.default_rng(0)
A, B = rng.standard_normal((300, 301)), rng.standard_normal((301, 299))
parts = [net[0].weight.grad.numpy(), (A @ B), np.exp(A)]
print(hashlib.md5(b"".join(p.tobytes() for p in parts)).hexdigest())
"""


def probe(tmp_path: Path, env: dict[str, str], level: str) -> str:
    params = tmp_path / f"params-{level}.yaml"
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc["compute"]["kernels"] = level
    params.write_text(yaml.safe_dump(doc))
    base = {k: v for k, v in os.environ.items() if k not in kernels.PINS["avx2"]}
    cmd = [sys.executable, "-m", "pipeline.contracts.kernels", "--params", str(params), "--"]
    done = subprocess.run(
        [*cmd, sys.executable, "-c", PROBE],
        env={**base, **env, "OMP_NUM_THREADS": "2"},
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def test_the_environment_pins_each_library_and_native_pins_nothing() -> None:
    assert kernels.environment("native") == {}
    pins = kernels.PINS["avx2"]
    assert set(pins) == set(OTHER_CPU)  # every switch an older CPU's defaults move is pinned
    if kernels.supported("avx2") is None:
        assert kernels.environment("avx2") == pins
        assert kernels.pinned("avx2", pins) and not kernels.pinned("avx2", {})


@pytest.mark.slow
@pytest.mark.skipif(kernels.supported("avx2") is not None, reason="needs an x86-64 AVX2 CPU")
def test_pinned_kernels_give_the_same_floats_on_another_cpu(tmp_path: Path) -> None:
    native = probe(tmp_path, {}, "native"), probe(tmp_path, OTHER_CPU, "native")
    assert native[0] != native[1]  # unpinned, the other CPU's kernels give other floats
    pinned = probe(tmp_path, {}, "avx2"), probe(tmp_path, OTHER_CPU, "avx2")
    assert pinned[0] == pinned[1]


@pytest.mark.skipif(kernels.supported("avx2") is not None, reason="needs an x86-64 AVX2 CPU")
@pytest.mark.slow  # 5 s: a stage process started twice
def test_a_stage_started_without_the_pins_restarts_once_with_them(tmp_path: Path) -> None:
    """A bare `dvc repro` starts stages without the environment: each restarts itself with it
    (once: the restarted process has it), then runs as usual (here: to its missing input)."""
    base = {k: v for k, v in os.environ.items() if k not in kernels.PINS["avx2"]}
    missing = [str(tmp_path / name) for name in ("raw.parquet", "schema.json", "out", "n", "m")]
    flags = ["--data", "--schema", "--out", "--noise-report", "--metrics"]
    args = [x for pair in zip(flags, missing, strict=True) for x in pair]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.preprocess", "--params", str(ROOT / "params.yaml"), *args],
        env=base, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr  # the stage's own error, after the restart
    assert done.stderr.count("restarting with compute.kernels avx2") == 1, done.stderr
    assert "schema.json' not found" in done.stderr
