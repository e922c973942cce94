"""Where the stages compute: the ``compute`` section of params.yaml applied to a process.

Called at the start of every stage (through :mod:`pipeline.learning.stage`), never at import time.
``compute.threads`` caps BLAS / OpenMP pools (threadpoolctl) and PyTorch's intra-op threads, so
the same inputs give the same floats, hence the same output hashes, whatever the machine's core
count (``compute.kernels``, the same across CPUs, is an environment set before the process
starts: :mod:`pipeline.contracts.kernels`). ``compute.device``: ``auto`` takes CUDA when
present; tests pass ``cpu``.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import ComputeConfig

if TYPE_CHECKING:
    import torch


def apply_threads(threads: int) -> None:
    """Cap every thread pool this process uses (and its children inherit) at ``threads``."""
    from threadpoolctl import threadpool_limits

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    threadpool_limits(limits=threads)
    if "torch" in sys.modules:  # torch reads its own setting; do not import it just for this
        import torch

        torch.set_num_threads(threads)


def device(cfg: ComputeConfig) -> torch.device:
    """The torch device for ``cfg.device``; the local rank's GPU under torchrun."""
    import torch

    has_cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not has_cuda:
        raise MlcycleError("params.yaml: compute.device = 'cuda' but no CUDA device is visible")
    if cfg.device == "cpu" or not has_cuda:
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
