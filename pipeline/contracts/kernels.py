"""The CPU kernels the stages use: pinned to one instruction set, so outputs do not depend on
the machine's CPU (``compute.kernels`` in params.yaml).

    python -m pipeline.contracts.kernels [--params params.yaml] -- dvc repro   # what make runs

PyTorch (ATen), oneDNN, MKL, OpenBLAS and NumPy each pick their kernels from the CPU's
instruction set when they load: on an AVX-512 machine they take other code paths than on an
AVX2 one, which sum in another order and give other floats, so a fresh clone on another CPU
wrote other model bytes than the committed ``dvc.lock``. ``kernels: avx2`` tells each library to
use its AVX2 code on every x86-64 CPU that has AVX2 (nearly every one since 2013): ATen's CPU
capability, MKL's conditional numerical reproducibility branch, OpenBLAS's Haswell kernels,
NumPy without its AVX-512 loops, and oneDNN capped at AVX2. ``native`` leaves every library to
choose. Two residues: oneDNN also sizes its blocks by the CPU's caches (turning it off made the
CNN's training 2.2-2.8x slower here, so it stays on), and onnxruntime has no switch at all: what
it measures (the export's parity figure, latency) goes to side files that no stage declares.

The libraries read these variables when they load, so they must be in the environment before
the process starts: ``make repro`` and the monitor's retrain start ``dvc repro`` through
:func:`environment`, and a stage started without them (a bare ``dvc repro``) re-executes itself
with them once (:mod:`pipeline.learning.stage`).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

# kernels level -> the environment that pins each library.
PINS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_CBWR": "AVX2",
        "OPENBLAS_CORETYPE": "Haswell",
        # NumPy 2.4 dispatches X86_V3 (AVX2, FMA) and these above it.
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    },
}
# The CPU flags (as /proc/cpuinfo names them) a level needs.
NEEDS = {"native": (), "avx2": ("avx2", "fma")}


def supported(level: str) -> str | None:
    """None if this CPU can run ``level``'s kernels, else why not."""
    if not NEEDS[level]:
        return None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"{platform.machine()} is not x86-64"
    try:
        flags = next(
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return None  # not Linux: trust the libraries to refuse what the CPU lacks
    missing = [f for f in NEEDS[level] if f not in flags]
    return f"this CPU lacks {', '.join(missing)}" if missing else None


def environment(level: str) -> dict[str, str]:
    """The variables that pin ``level`` on this CPU (empty when it cannot run them)."""
    return {} if supported(level) else dict(PINS[level])


def pinned(level: str, env: os._Environ[str] | dict[str, str] = os.environ) -> bool:
    """True if ``env`` already carries ``level``'s pins (or there is nothing to pin here)."""
    return all(env.get(k) == v for k, v in environment(level).items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a command with compute.kernels pinned.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("command", nargs="+", help="the command, after --")
    args = parser.parse_args(argv)
    from pipeline.contracts.params import ComputeConfig, read_params, section

    level = section(read_params(args.params), "compute", ComputeConfig).kernels
    why = supported(level)
    if why:
        print(
            f"kernels: compute.kernels {level}: {why}; running the CPU's own kernels (outputs "
            "will not match a dvc.lock written on an x86-64 AVX2 machine)",
            file=sys.stderr,
        )
    os.execvpe(args.command[0], args.command, {**os.environ, **environment(level)})
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
