"""Start the service on the champion `make repro` promoted, or say why not.

    python -m serving [--host 127.0.0.1] [--port 3000] [--workers 1]    (what `make serve` runs)

Checks first that ``<serving.registry>/champion`` holds a model the service can load, then
replaces itself with ``bentoml serve serving.service:Mlcycle``. Exit 2 with a message otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.contracts import champion
from pipeline.contracts.errors import MlcycleError
from serving.model import ModelLoadError, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=1, help="processes (each one core)")
    args = parser.parse_args(argv)
    from serving.service import settings

    try:
        cfg = settings()
    except MlcycleError as exc:
        print(f"serving: error: {exc}", file=sys.stderr)
        return 2
    link = champion.link(cfg.registry)
    if not link.exists():
        print(
            f"serving: error: no champion to serve: {link} does not exist. Run `make repro`: the "
            "evaluate stage promotes the first model that passes the gate.",
            file=sys.stderr,
        )
        return 2
    try:
        model = load(link)
    except ModelLoadError as exc:
        print(f"serving: error: the champion cannot be served: {exc}", file=sys.stderr)
        return 2
    print(f"serving: version {model.version} from {model.directory} on {args.host}:{args.port}")
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:Mlcycle", "--host", args.host]
    cmd += ["--port", str(args.port), "--working-dir", str(Path.cwd())]
    if args.workers != 1:
        os.environ["MLCYCLE_WORKERS"] = str(args.workers)
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
