"""The task as a type, torch-free side: how an answer is served, logged, judged in production.

docs/design.md, "The task is a type". The learning library has the network's side
(:mod:`pipeline.learning.tasks`); this is what the service and the monitor need, chosen once
from schema.json like it: how the graph's outputs become a response and a production-log row,
what a feedback label must be, how the OpenAPI description names the answer, the champion's
test figures, a window's figures from its labels and when they are harm. The base class is in
:mod:`pipeline.contracts.task`; a new task is a new module here, registered in
:data:`SERVED`.

    task = served_task(schema)      # ServedClassification() or ServedRegression()
"""

from __future__ import annotations

from pipeline.contracts.schema import Schema
from pipeline.contracts.task import Answer, ChampionFigures, ServedTask
from pipeline.contracts.tasks.classification import ServedClassification
from pipeline.contracts.tasks.regression import ServedRegression

SERVED: dict[str, type[ServedTask]] = {
    "classification": ServedClassification,
    "regression": ServedRegression,
}

__all__ = ["SERVED", "Answer", "ChampionFigures", "ServedTask", "served_task"]


def served_task(schema: Schema) -> ServedTask:
    """The task schema.json names."""
    return SERVED[schema.task]()
