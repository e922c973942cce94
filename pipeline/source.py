"""Source stage: a fingerprint of ``data.source``, so an edited file re-runs ingest.

    python -m pipeline.source --params params.yaml --out data/source.json

``data.source`` is a path named in params.yaml (or ``digits``), so dvc.yaml cannot list it as a
dependency of ingest. This stage is ``always_changed``: every ``dvc repro`` runs it (a hash of the
file, well under a second for 100 MB) and writes the file's size and SHA-256; ingest depends on
that file, so it re-runs exactly when the source's bytes changed.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

from pipeline.contracts.io import atomic_outputs, dump_json, source_file
from pipeline.contracts.params import DataConfig
from pipeline.learning import stage


def fingerprint(source: str) -> dict[str, Any]:
    """What identifies the source's content: scikit-learn's version for its bundled data sets
    (digits, diabetes), else size and SHA-256 of the file."""
    if source in ("digits", "diabetes"):  # the version, read without importing scikit-learn (2 s)
        from importlib.metadata import version

        return {"source": source, "scikit-learn": version("scikit-learn")}
    path = source_file(source)
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return {"source": source, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def body(ctx: stage.Context) -> None:
    cfg = ctx.section("data", DataConfig)
    facts = fingerprint(cfg.source)
    with atomic_outputs(ctx.args.out) as (tmp,):
        dump_json(facts, tmp)
    print(f"source: {facts}")


def main(argv: list[str] | None = None) -> int:
    return stage.run("source", __doc__, argv, ("--out",), body, compute=False)


if __name__ == "__main__":
    sys.exit(main())
