"""The one runner behind every stage's ``main``: arguments, params, compute set-up, exit codes.

A stage module declares its flags and a body; :func:`run` parses ``argv``, reads params.yaml,
applies the ``compute`` section (thread caps, pinned CPU kernels) and calls the body. Started
from the command line without ``compute.kernels``' environment (a bare ``dvc repro``; ``make
repro`` and the monitor set it), a stage re-executes itself once with it, since the libraries
read it when they load. Every :class:`MlcycleError`
(bad params, bad data, a missing or unreadable input file) becomes one line on stderr and exit
status 2, with no traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pipeline.contracts import kernels
from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import ComputeConfig, read_params, section
from pipeline.learning.compute import apply_threads
from pipeline.learning.compute import device as compute_device

T = TypeVar("T")


@dataclasses.dataclass
class Context:
    """What a stage body gets: its parsed arguments and the whole params file."""

    name: str
    args: argparse.Namespace
    params: dict[str, Any]

    def section(self, key: str, cls: type[T]) -> T:
        return section(self.params, key, cls)

    def device(self):  # -> torch.device
        return compute_device(self.section("compute", ComputeConfig))


def run(
    name: str,
    doc: str | None,
    argv: Sequence[str] | None,
    flags: Sequence[str],
    body: Callable[[Context], None],
    *,
    compute: bool = True,
) -> int:
    """Run stage ``name``: ``flags`` are its required options (``--params`` is always there)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m pipeline.{name}", description=(doc or name).splitlines()[0]
    )
    parser.add_argument("--params", default="params.yaml")
    for flag in flags:
        parser.add_argument(flag, required=True)
    args = parser.parse_args(argv)
    try:
        ctx = Context(name, args, read_params(args.params))
        if compute:
            cfg = ctx.section("compute", ComputeConfig)
            if argv is None and not kernels.pinned(cfg.kernels):  # before any library loads
                print(
                    f"{name}: restarting with compute.kernels {cfg.kernels}'s CPU pins (`make "
                    "repro` starts dvc with them and skips this)",
                    file=sys.stderr,
                    flush=True,
                )
                sys.stdout.flush()
                os.execve(
                    sys.executable,
                    [sys.executable, "-m", f"pipeline.{name}", *sys.argv[1:]],
                    {**os.environ, **kernels.environment(cfg.kernels)},
                )
            apply_threads(cfg.threads)
        body(ctx)
    except MlcycleError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    return 0
