"""Kill a promotion with SIGKILL at one of its steps, for the slow tier's kill -9 test.

    python -m tests.serving.promotion_killer <state> <step> [<step> ...]

``<state>/<step>/`` must hold a copy of a served state (``registry/``, ``mlflow.db``,
``mlartifacts/``). For each step a forked child registers a new version of the champion's files
in MLflow, as the evaluate stage does, and promotes it through :func:`pipeline.registry.promote`
with SIGKILL sent to itself right after that step; the parent prints ``<step> <wait status>``.
The imports happen once, in the parent: a child costs a fork, not a Python start.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import registry
from pipeline.contracts import champion
from pipeline.release.tracking import Tracker

NAME = "mlcycle"
STEPS = ("copying", "copied", "tagged", "swapped", "aliased")


def killing_after(fn: Callable[..., Any], calls: int = 1) -> Callable[..., Any]:
    """``fn``, then SIGKILL once it has been called ``calls`` times."""
    count = [0]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        count[0] += 1
        if count[0] == calls:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    return wrapper


def promote_and_die(state: Path, step: str) -> None:
    tracker = Tracker(state / "mlflow.db")
    source = champion.directory(state / "registry")
    assert source is not None
    files = {p.name: p for p in source.iterdir()}
    decision = json.loads(files[champion.DECISION].read_text())
    with tracker.run("evaluate") as run:
        for path in files.values():
            run.log_artifact(path, folder="model")
        version = tracker.register(NAME, run, "model", {"gate": "passed"}, "candidate")
    staged = state / "candidate"
    staged.mkdir()
    for name, path in files.items():
        shutil.copy2(path, staged / name)
    (staged / champion.DECISION).write_text(json.dumps({**decision, "version": version}))
    files = {name: staged / name for name in files}
    if step == "copying":  # part of the files copied into the temporary version directory
        shutil.copy2 = killing_after(shutil.copy2, calls=3)
    elif step == "copied":
        registry.stage_version_dir = killing_after(registry.stage_version_dir)
    elif step == "tagged":
        tracker.tag_version = killing_after(tracker.tag_version)  # type: ignore[method-assign]
    elif step == "swapped":
        registry.point_champion_at = killing_after(registry.point_champion_at)
    elif step == "aliased":
        tracker.set_champion = killing_after(tracker.set_champion)  # type: ignore[method-assign]
    registry.promote(tracker, NAME, version, state / "registry", files)
    raise AssertionError(f"{step}: the promotion finished without being killed")


def main(argv: list[str]) -> int:
    state, steps = Path(argv[0]), argv[1:]
    for step in steps:
        assert step in STEPS, step
        pid = os.fork()
        if pid == 0:
            try:
                promote_and_die(state / step, step)
            finally:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        print(step, status, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
