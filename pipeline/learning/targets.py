"""The data side of a task: how its target stratifies, scores a transform and is checked for
noise and leaks, for the preprocess and features stages.

Apart from :mod:`pipeline.learning.tasks` (the network's side) so that the data stages load
scikit-learn alone, not the training code: a task's target is either class labels
(:class:`Classes`) or numbers (:class:`Values`), and a stage asks it instead of the schema's
task. A new task whose labels are neither is a new class here.

    target = target_for(schema)
    strata = target.strata(y_source, y)  # the class, or a number's quantile bin
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC, SVR
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from pipeline.contracts.errors import MlcycleError
from pipeline.contracts.params import NoiseConfig, PreprocessConfig
from pipeline.contracts.schema import Schema
from pipeline.learning.noise import find_noisy, find_noisy_values
from pipeline.learning.sampling import target_bins


def columns(schema: Schema) -> ColumnTransformer:
    """The noise model's own preprocessing: numeric columns imputed and scaled, categoricals
    imputed and one-hot."""
    num = [j for j, f in enumerate(schema.features) if f.kind == "numeric"]
    cat = [j for j, f in enumerate(schema.features) if f.kind == "categorical"]
    return ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), num),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")
                ),
                cat,
            ),
        ]
    )


@dataclasses.dataclass(frozen=True)
class Pool:
    """The rows the label-noise filter looks at: encoded features, labels and their strata."""

    X: np.ndarray
    y: np.ndarray
    strata: np.ndarray


Found = tuple[np.ndarray, pd.DataFrame]  # flagged rows, most suspicious first, and their table


class Target(abc.ABC):
    cv_key: ClassVar[str]  # metrics/features.json's cross-validated figure
    leak_key: ClassVar[str]  # a leak's figure: the column alone
    # val is cut before the label-noise filter (and never filtered)
    val_before_noise: ClassVar[bool]
    balances: ClassVar[bool]  # preprocess.class_weights: balanced applies

    @abc.abstractmethod
    def strata(self, y_source: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Every split's strata for the labels ``y`` (bins cut on ``y_source``)."""

    def n_strata(self, strata: np.ndarray, schema: Schema) -> int:
        return int(strata.max()) + 1

    def check_counts(self, y: np.ndarray, schema: Schema, cfg: PreprocessConfig) -> None:
        """A clear error for labels the splits cannot hold (numbers: any will do)."""
        return None

    @abc.abstractmethod
    def noise_models(self, seed: int) -> dict[str, Any]:
        """The cheap models (``preprocess.noise.model``) whose out-of-fold answers drive
        confident learning."""

    def noise_model(self, kind: str, schema: Schema, seed: int) -> Pipeline:
        return Pipeline([("columns", columns(schema)), ("model", self.noise_models(seed)[kind])])

    @abc.abstractmethod
    def find_noisy(self, pool: Pool, schema: Schema, cfg: NoiseConfig, seed: int) -> Found:
        """Likely mislabelled rows, most suspicious first, and a table of them (given,
        suggested, self_confidence)."""

    @abc.abstractmethod
    def cv_model(self) -> Any:
        """The cheap model a transform candidate is scored with."""

    @abc.abstractmethod
    def cv_score(self, y: np.ndarray, pred: np.ndarray) -> float: ...

    @abc.abstractmethod
    def leak_tree(self, seed: int) -> Any:
        """A depth-4 tree on one column: the leak check's model."""

    @abc.abstractmethod
    def leak_floor(self, ys: np.ndarray, leak: float) -> float:
        """The score above which a column alone is a likely leak."""

    @abc.abstractmethod
    def leak_text(self, leak: dict[str, Any]) -> str: ...


class Classes(Target):
    cv_key: ClassVar[str] = "cv_accuracy"
    leak_key: ClassVar[str] = "cv_accuracy_alone"
    val_before_noise: ClassVar[bool] = False
    balances: ClassVar[bool] = True

    def strata(self, y_source: np.ndarray, y: np.ndarray) -> np.ndarray:
        return y

    def n_strata(self, strata: np.ndarray, schema: Schema) -> int:
        return schema.n_classes

    def check_counts(self, y: np.ndarray, schema: Schema, cfg: PreprocessConfig) -> None:
        class_counts = np.bincount(y, minlength=schema.n_classes)
        rare = np.flatnonzero((class_counts > 0) & (class_counts < 3))
        if len(rare):
            c = rare[0]
            raise MlcycleError(
                f"target column {schema.target!r}: class {schema.classes[c]!r} has "
                f"{class_counts[c]} row(s) left after cleaning (duplicates"
                f"{', rows with missing values' if cfg.missing == 'drop' else ''} dropped); "
                "every class needs at least 3: one each for train, val and test"
            )

    def noise_models(self, seed: int) -> dict[str, Any]:
        svm = SVC(C=10.0, gamma="scale", random_state=seed)
        return {
            "logreg": LogisticRegression(max_iter=2000, C=1.0),
            "svm": CalibratedClassifierCV(svm, ensemble=False),
            "knn": KNeighborsClassifier(n_neighbors=10, weights="distance"),
        }

    def find_noisy(self, pool: Pool, schema: Schema, cfg: NoiseConfig, seed: int) -> Found:
        model, y = self.noise_model(cfg.model, schema, seed), pool.y
        found, proba = find_noisy(model, pool.X, y, schema.n_classes, cfg, seed)
        table = pd.DataFrame(
            {
                "given": [schema.classes[c] for c in y[found]],
                "suggested": [schema.classes[c] for c in proba[found].argmax(axis=1)],
                "self_confidence": proba[found, y[found]],
            }
        )
        return found, table

    def cv_model(self) -> Any:
        return LogisticRegression(max_iter=2000)

    def cv_score(self, y: np.ndarray, pred: np.ndarray) -> float:
        return float((pred == y).mean())

    def leak_tree(self, seed: int) -> Any:
        return DecisionTreeClassifier(max_depth=4, random_state=seed)

    def leak_floor(self, ys: np.ndarray, leak: float) -> float:
        """A column alone at ``leak`` accuracy, and clearly above the majority class."""
        majority = float(np.bincount(ys).max() / len(ys))
        return max(leak, float(np.nextafter(majority + 0.05, np.inf)))

    def leak_text(self, leak: dict[str, Any]) -> str:
        return f"{leak[self.leak_key]:.1%} accuracy"


class Values(Target):
    cv_key: ClassVar[str] = "cv_r2"
    leak_key: ClassVar[str] = "cv_r2_alone"
    # The interval is calibrated on val, so it must be drawn like the test split, large
    # residuals included.
    val_before_noise: ClassVar[bool] = True
    balances: ClassVar[bool] = False

    def strata(self, y_source: np.ndarray, y: np.ndarray) -> np.ndarray:
        return target_bins(y_source, y)

    def noise_models(self, seed: int) -> dict[str, Any]:
        """Regressors under the classifiers' names (``logreg``: ridge, ``svm``: SVR)."""
        return {
            "logreg": Ridge(alpha=1.0),
            "svm": SVR(C=10.0, gamma="scale"),
            "knn": KNeighborsRegressor(n_neighbors=10, weights="distance"),
        }

    def find_noisy(self, pool: Pool, schema: Schema, cfg: NoiseConfig, seed: int) -> Found:
        model = self.noise_model(cfg.model, schema, seed)
        return find_noisy_values(model, pool.X, pool.y, pool.strata, cfg, seed)

    def cv_model(self) -> Any:
        return Ridge(alpha=1.0)

    def cv_score(self, y: np.ndarray, pred: np.ndarray) -> float:
        return float(r2_score(y, pred))

    def leak_tree(self, seed: int) -> Any:
        return DecisionTreeRegressor(max_depth=4, random_state=seed)

    def leak_floor(self, ys: np.ndarray, leak: float) -> float:
        return leak

    def leak_text(self, leak: dict[str, Any]) -> str:
        return f"R² {leak[self.leak_key]:.3f}"


def target_for(schema: Schema) -> Target:
    """Class labels for a classifier, numbers for a regressor (schema.json's task)."""
    kinds: dict[str, type[Target]] = {"classification": Classes, "regression": Values}
    return kinds[schema.task]()
