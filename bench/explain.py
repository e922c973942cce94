"""How faithful /explain is on the champion: deletion areas and agreement with Integrated Gradients.

    python bench/explain.py [--registry registry] [--data data/prepared]   (after make repro)

The champion's graph explains every row of the frozen test split as the service does
(:mod:`pipeline.contracts.explain`: occlusion, each feature missing in turn); the same rows are
explained by captum's Integrated Gradients on the champion's PyTorch twin, from the graph's fill
values. Prints, for a classifier: the mean area under the deletion curve (the answered class's
probability as the most attributed features go missing) for occlusion's order, for Integrated
Gradients' order and for random orders (5 seeded permutations), lower is more faithful; the
Spearman rank correlation of the two attributions per row; and the graph's time per record to
answer and to explain, in process (one thread, 20 repeats, the best kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.contracts.explain import occlusion  # noqa: E402
from pipeline.contracts.runtime import session  # noqa: E402
from pipeline.contracts.schema import Schema  # noqa: E402
from pipeline.contracts.tasks import served_task  # noqa: E402
from pipeline.learning.checkpoint import load_checkpoint  # noqa: E402
from pipeline.learning.faithfulness import (  # noqa: E402
    deletion_areas,
    integrated_gradients,
    rank_agreement,
)
from pipeline.learning.model import build  # noqa: E402
from pipeline.learning.tasks import task_for  # noqa: E402


def best_ms(fn, repeats: int = 20) -> float:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default=str(ROOT / "registry"))
    parser.add_argument("--data", default=str(ROOT / "data/prepared"))
    args = parser.parse_args(argv)
    champion = Path(args.registry) / "champion"
    schema = Schema.from_dict(json.loads((champion / "schema.json").read_text()))
    if schema.classes is None or schema.n_classes == 0:
        raise SystemExit("bench/explain.py measures a classifier's deletion curves")
    X = pd.read_parquet(Path(args.data) / "test.parquet")[schema.names].to_numpy(np.float32)
    sess = session(champion / "model.onnx")

    def run(batch: np.ndarray) -> list[np.ndarray]:
        return sess.run(None, {"features": batch})

    task = served_task(schema)
    done = occlusion(run, X, task)
    ckpt = load_checkpoint(champion / "model.pt")
    model = build(ckpt)
    twin = task_for(schema).served(model, ckpt).eval()
    ig = integrated_gradients(twin, model.transform.fill.numpy(), X)
    occluded_area, random_area = deletion_areas(run, X, done.attributions)
    ig_area, _ = deletion_areas(run, X, ig, seeds=1)
    rho = rank_agreement(done.attributions, ig)
    one = X[:1]
    predict_ms = best_ms(lambda: run(one))
    explain_ms = best_ms(lambda: occlusion(run, one, task))
    version = champion.resolve().name
    print(f"{len(X)} test rows, {X.shape[1]} features, champion version {version}\n")
    print("| order | deletion area (probability) |")
    print("| --- | --- |")
    print(f"| occlusion (/explain) | {occluded_area:.3f} |")
    print(f"| Integrated Gradients (twin) | {ig_area:.3f} |")
    print(f"| random (5 permutations) | {random_area:.3f} |")
    print(
        f"\nSpearman rank correlation, occlusion vs Integrated Gradients: mean "
        f"{np.nanmean(rho):.3f}, median {np.nanmedian(rho):.3f} ({int(np.isnan(rho).sum())} "
        "rows with a constant attribution left out)"
    )
    print(
        f"graph per record, in process: answer {predict_ms:.3f} ms, explain {explain_ms:.3f} ms "
        f"({explain_ms / predict_ms:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
