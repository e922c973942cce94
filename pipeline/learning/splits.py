"""A prepared split as tensors: the one data record every part of the learning library reads.

Apart from the training loop so that the task libraries (classification's and regression's)
and the loop can all import it without importing each other.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from pipeline.contracts.io import read_parquet
from pipeline.contracts.schema import FEEDBACK, LABEL, WEIGHT, Schema


@dataclasses.dataclass
class Split:
    X: torch.Tensor  # (rows, features) raw encoded values, NaN for missing
    y: torch.Tensor  # (rows,) class index (int64), or a regressor's target (float32)
    w: torch.Tensor  # (rows,) sample weight
    production: torch.Tensor | None = None  # (rows,) bool: a labelled production row


def load_split(path: Path, schema: Schema) -> Split:
    df = read_parquet(path)
    return Split(
        torch.tensor(df[schema.names].to_numpy(np.float32)),
        torch.tensor(df[LABEL].to_numpy(schema.label_dtype)),
        torch.tensor(df[WEIGHT].to_numpy(np.float32)),
        torch.tensor(df[FEEDBACK].notna().to_numpy()) if FEEDBACK in df.columns else None,
    )
