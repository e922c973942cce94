"""Benchmark: training samples/s of the train stage's loop against a bare PyTorch loop.

    python bench/train.py [--epochs 10] [--inputs DIR] [--kernels native|avx2]
    python bench/train.py --compare-kernels      # compute.kernels avx2 against native, one run

Both train the same model (feature transform + the configured network) on the same digits train
split in one run; the ratio says what the stage's extras (weighted loss, augmentation, per-epoch
validation, checkpoint every epoch) cost. ``--inputs`` is a folder holding data/ and models/
from ``dvc repro`` (default: this repo). With CUDA present it also times the network on a large
synthetic set on GPU against CPU. ``--kernels`` runs under that ``compute.kernels`` level
(default: params.yaml's); ``--compare-kernels`` runs the benchmark under ``native`` and ``avx2``
in turn (each in its own process: the libraries read the pins as they load) and prints what the
pinning costs.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.contracts import kernels  # noqa: E402
from pipeline.contracts.params import (  # noqa: E402
    ComputeConfig,
    TrainConfig,
    overlay,
    read_params,
    section,
)
from pipeline.learning.model import Classifier, ModelConfig, build_net  # noqa: E402
from pipeline.learning.splits import Split  # noqa: E402
from pipeline.learning.tasks import task_for  # noqa: E402
from pipeline.learning.tasks.classification import Classification  # noqa: E402
from pipeline.learning.training import fit, load_inputs  # noqa: E402


def bare_loop(
    model: torch.nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    epochs: int,
    device: torch.device,
) -> float:
    """The textbook loop: shuffle, forward, cross-entropy, backward, step. Returns samples/s."""
    model.to(device).train()
    X, y = X.to(device), y.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=device).manual_seed(0)
    sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen, device=device)
        for i in range(0, len(y), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    sync(device)
    return epochs * len(y) / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def stage_loop(
    model: Classifier,
    train: Split,
    val: Split,
    cfg: TrainConfig,
    image_shape: tuple[int, int] | None,
    device: torch.device,
    checkpoint: Path | None,
) -> float:
    result = fit(
        model,
        train,
        val,
        cfg,
        device,
        objective=Classification().objective,
        image_shape=image_shape,
        checkpoint=checkpoint,
        progress=False,
    )
    return result.samples_seen / result.train_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--inputs", type=Path, default=ROOT)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--synthetic-rows", type=int, default=200_000)
    parser.add_argument("--kernels", choices=sorted(kernels.PINS), default=None)
    parser.add_argument("--compare-kernels", action="store_true")
    args = parser.parse_args()
    if args.compare_kernels:
        return compare_kernels(args)
    params = read_params(ROOT / "params.yaml")
    level = args.kernels or section(params, "compute", ComputeConfig).kernels
    if not kernels.pinned(level):  # the libraries read the pins as they load
        env = {**os.environ, **kernels.environment(level)}
        os.execve(sys.executable, [sys.executable, *sys.argv, "--kernels", level], env)
    cfg = section(params, "train", TrainConfig)
    cfg = overlay(cfg, "train", epochs=args.epochs, patience=10**6)
    inputs = load_inputs(
        str(args.inputs / "data/schema.json"),
        str(args.inputs / "models/features"),
        str(args.inputs / "data/prepared"),
    )
    mcfg = task_for(inputs.schema).model_config(
        cfg, inputs.transform, inputs.schema, inputs.image_shape
    )
    cpu = torch.device("cpu")

    def fresh() -> Classifier:
        torch.manual_seed(0)
        return Classifier(inputs.transform.module(), build_net(mcfg))

    print(
        f"model {mcfg.arch}, {len(inputs.train.y)} train rows, batch {cfg.batch_size}, "
        f"{args.epochs} epochs, {torch.get_num_threads()} CPU threads, best of {args.trials}, "
        f"kernels {level} (ATen {torch.backends.cpu.get_cpu_capability()}, oneDNN "
        f"{'on' if torch.backends.mkldnn.enabled else 'off'})"
    )
    plain_cfg = overlay(cfg, "train", augment_shift=0)
    rates: dict[str, list[float]] = {"bare": [], "plain": [], "full": []}
    for _ in range(args.trials):  # alternate, so warm-up and noise hit every loop alike
        rates["bare"].append(
            bare_loop(fresh(), inputs.train.X, inputs.train.y, cfg, args.epochs, cpu)
        )
        rates["plain"].append(
            stage_loop(fresh(), inputs.train, inputs.val, plain_cfg, inputs.image_shape, cpu, None)
        )
        with tempfile.TemporaryDirectory() as tmp:
            rates["full"].append(
                stage_loop(
                    fresh(),
                    inputs.train,
                    inputs.val,
                    cfg,
                    inputs.image_shape,
                    cpu,
                    Path(tmp) / "ckpt.pt",
                )
            )
    bare = max(rates["bare"])
    print(f"{'loop':<58}{'samples/s':>12}{'vs bare':>10}")
    for name, key in (
        ("bare PyTorch loop", "bare"),
        ("stage fit(): weighted loss + per-epoch validation", "plain"),
        ("stage fit(): + augmentation + checkpoint every epoch", "full"),
    ):
        rate = max(rates[key])
        print(f"{name:<58}{rate:>12.0f}{rate / bare:>9.2f}x")

    if torch.cuda.is_available():
        gpu_vs_cpu(mcfg, cfg, args.synthetic_rows)
    else:
        print("no CUDA device: GPU vs CPU comparison skipped")


def compare_kernels(args: argparse.Namespace) -> None:
    """The benchmark under compute.kernels native, then avx2; samples/s of each loop, ratio."""
    rates: dict[str, dict[str, float]] = {}
    clean = {k: v for k, v in os.environ.items() if k not in kernels.PINS["avx2"]}
    for level in ("native", "avx2"):
        cmd = [sys.executable, __file__, "--epochs", str(args.epochs), "--trials"]
        cmd += [str(args.trials), "--inputs", str(args.inputs), "--kernels", level]
        out = subprocess.run(cmd, env=clean, capture_output=True, text=True, check=True).stdout
        print(out.splitlines()[0])
        rates[level] = {
            m.group(1).strip(): float(m.group(2))
            for m in re.finditer(r"^(.{58})\s*(\d+)\s+[\d.]+x$", out, re.M)
        }
    print(f"{'loop':<58}{'native':>10}{'avx2':>10}{'avx2/native':>13}")
    for name, native in rates["native"].items():
        pinned = rates["avx2"][name]
        print(f"{name:<58}{native:>10.0f}{pinned:>10.0f}{pinned / native:>12.2f}x")


def gpu_vs_cpu(mcfg: ModelConfig, cfg: TrainConfig, rows: int) -> None:
    """Network alone on a large synthetic image set: GPU (bf16 autocast) vs CPU samples/s."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(rows, mcfg.n_in, generator=gen)
    y = torch.randint(0, mcfg.n_classes, (rows,), generator=gen)
    big = overlay(cfg, "train", batch_size=1024)
    torch.manual_seed(0)
    cpu_rows = min(rows, 20_000)  # the CPU side gets a slice, or it takes minutes
    cpu_rate = bare_loop(build_net(mcfg), X[:cpu_rows], y[:cpu_rows], big, 1, torch.device("cpu"))
    gpu = torch.device("cuda")
    bare_loop(build_net(mcfg), X[:10_000], y[:10_000], big, 1, gpu)  # warm-up
    with torch.autocast("cuda", dtype=torch.bfloat16):
        gpu_rate = bare_loop(build_net(mcfg), X, y, big, 3, gpu)
    print(
        f"synthetic {rows} rows, batch 1024: GPU {gpu_rate:.0f} samples/s, "
        f"CPU {cpu_rate:.0f} samples/s, GPU/CPU {gpu_rate / cpu_rate:.1f}x "
        f"({torch.cuda.get_device_name()})"
    )


if __name__ == "__main__":
    main()
