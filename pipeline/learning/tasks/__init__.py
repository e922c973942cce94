"""The task as a type: one object per task, chosen once from schema.json.

docs/design.md, "The task is a type": every stage has one body and asks its task what differs
(the network's outputs and loss, the quality figures and baselines, the hardening objective and
the calibration head, the export head and its parity check, the gate's measures and terms, the
model card's sections). The base class and the records a stage hands its task are in
:mod:`pipeline.learning.task`; a new task is a new module here, registered in
:data:`TASKS`, not a branch in every stage.

    from pipeline.learning.tasks import task_for
    task = task_for(schema)      # Classification() or Regression()
"""

from __future__ import annotations

from pipeline.contracts.schema import Schema
from pipeline.learning.task import (
    Attack,
    Exported,
    Hardened,
    HardenRun,
    Measured,
    Quality,
    Record,
    Task,
)
from pipeline.learning.tasks.classification import Classification
from pipeline.learning.tasks.regression import Regression

TASKS: dict[str, type[Task]] = {"classification": Classification, "regression": Regression}

__all__ = [
    "TASKS",
    "Attack",
    "Exported",
    "HardenRun",
    "Hardened",
    "Measured",
    "Quality",
    "Record",
    "Task",
    "task_for",
]


def task_for(schema: Schema) -> Task:
    """The task schema.json names."""
    return TASKS[schema.task]()
