"""Distribution shifts a production stream meets, applied to encoded rows (``simulate``, bench).

    python -m monitoring simulate     # params.yaml: simulate.scenario picks one

Covariate shifts change the inputs (stroke intensity, sensor noise, a one-pixel translation, blur:
the image ones need schema.json's ``image_shape``; ``stuck`` and ``dead``: ``simulate.columns``
numeric columns, the same ones in every window, read their training maximum or null, as broken
sensors do); a prior shift changes the class mix; a concept
shift keeps the inputs and remaps the true labels (a regressor's: scales the target by
``concept_scale`` and adds ``concept_offset``). Shifted values are rounded where the column is
integer and clipped to the schema's bounds, so every shifted row is a valid request.
"""

from __future__ import annotations

import numpy as np

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import SimulateConfig
from pipeline.contracts.schema import Schema
from pipeline.contracts.tasks import served_task

COVARIATE = ("intensity", "noise", "translate", "blur", "stuck", "dead")


def shift_inputs(
    X: np.ndarray, schema: Schema, cfg: SimulateConfig, rng: np.random.Generator
) -> np.ndarray:
    """Apply ``cfg.scenario``'s covariate shift to encoded rows ``X`` (a copy; others: as is),
    to the rows of ``simulate.shift_group`` (``column=value``) alone when it is set."""
    if cfg.scenario not in COVARIATE:
        return X.copy()
    if cfg.shift_group is not None:
        mine = in_group(X, schema, cfg.shift_group)
        shifted = _shift(X, schema, cfg, rng)
        return np.where(mine[:, None], shifted, X.astype(np.float64))
    return _shift(X, schema, cfg, rng)


def in_group(X: np.ndarray, schema: Schema, spec: str) -> np.ndarray:
    """(rows,) whether each row is in ``spec``'s group: ``column=value``, the value as
    evaluate names groups (a category, a number as written)."""
    column, _, value = spec.partition("=")
    if column not in schema.names or not value:
        raise MlcycleError(
            f"simulate.shift_group = {spec!r}: expected column=value with a feature's name "
            f"(one of {', '.join(schema.names[:5])}{', ...' if len(schema.names) > 5 else ''})"
        )
    j = schema.names.index(column)
    return schema.features[j].groups(X[:, j]) == value


def _shift(
    X: np.ndarray, schema: Schema, cfg: SimulateConfig, rng: np.random.Generator
) -> np.ndarray:
    numeric = np.array([f.kind == "numeric" for f in schema.features])
    out = X.astype(np.float64).copy()
    if cfg.scenario == "intensity":
        out[:, numeric] *= cfg.intensity
    elif cfg.scenario == "noise":
        out[:, numeric] += rng.normal(0.0, cfg.noise_sigma, size=out[:, numeric].shape)
    elif cfg.scenario in ("stuck", "dead"):
        cols = broken_columns(schema, cfg.columns)
        out[:, cols] = schema.bounds[1][cols] if cfg.scenario == "stuck" else np.nan
    else:
        if schema.image_shape is None:
            raise MlcycleError(
                f"simulate.scenario = {cfg.scenario!r} needs image data (schema.json has no "
                "image_shape); use intensity, noise, prior or concept"
            )
        from scipy import ndimage

        images = out.reshape(len(out), *schema.image_shape)
        if cfg.scenario == "translate":
            k = cfg.translate
            images = ndimage.shift(images, (0, k, k), order=0, mode="constant", cval=0.0)
        else:
            images = ndimage.gaussian_filter(images, sigma=(0, cfg.blur_sigma, cfg.blur_sigma))
        out = images.reshape(len(out), -1)
    return clip_to_schema(out, schema)


def broken_columns(schema: Schema, k: int) -> np.ndarray:
    """The ``k`` numeric columns the ``stuck`` and ``dead`` scenarios break: drawn once from
    those that vary in training (a fixed seed: the same sensors in every window)."""
    low, high = schema.bounds
    varying = np.flatnonzero(
        np.array([f.kind == "numeric" for f in schema.features]) & (np.asarray(high) > low)
    )
    if k > len(varying):
        raise MlcycleError(
            f"simulate.columns = {k}, but the data has {len(varying)} numeric columns that vary"
        )
    return np.sort(np.random.default_rng(0).choice(varying, k, replace=False))


def clip_to_schema(X: np.ndarray, schema: Schema) -> np.ndarray:
    """Round integer columns, clip every column to its observed bounds (NaN stays NaN)."""
    low, high = schema.bounds
    integer = np.array([f.dtype.startswith(("int", "uint")) for f in schema.features])
    out = X.copy()
    out[:, integer] = np.round(out[:, integer])
    return np.clip(out, low, high)


def draw_rows(
    y: np.ndarray, n: int, cfg: SimulateConfig, schema: Schema, rng: np.random.Generator
) -> np.ndarray:
    """Indices of ``n`` rows to replay, in shuffled passes over the pool (every row once per
    pass, as production sends each input once): all rows, or ``prior_classes``' only (prior
    shift)."""
    pool = np.arange(len(y))
    if cfg.scenario == "prior":
        served_task(schema).check_prior()
        bad = [c for c in cfg.prior_classes if not 0 <= c < schema.n_classes]
        if bad:
            raise MlcycleError(f"simulate.prior_classes: {bad[0]} is not a class index")
        pool = pool[np.isin(y, cfg.prior_classes)]
        if len(pool) == 0:
            raise MlcycleError("simulate.prior_classes: no held-out rows of these classes")
    passes = -(-n // len(pool))
    return np.concatenate([rng.permutation(pool) for _ in range(passes)])[:n]


def true_labels(y: np.ndarray, cfg: SimulateConfig, schema: Schema) -> np.ndarray:
    """The labels the world gives back: remapped under a concept shift (the task's: classes
    rotated, a regressor's target scaled and offset)."""
    if cfg.scenario == "concept":
        return served_task(schema).concept(y, cfg, schema)
    return y
