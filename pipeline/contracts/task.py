"""The served task's base: what every task gives the service and the monitor.

docs/design.md, "The task is a type". The learning library has the network's side
(:mod:`pipeline.learning.tasks`); this is what the service and the monitor need, chosen once
from schema.json like it: how the graph's outputs become a response and a production-log row,
what a feedback label must be, how the OpenAPI description names the answer, the champion's
test figures, a window's figures from its labels and when they are harm. A new task
subclasses :class:`ServedTask` in a module of :mod:`pipeline.contracts.tasks`, registered in
that package's ``SERVED``.

    from pipeline.contracts.tasks import served_task
    task = served_task(schema)      # ServedClassification() or ServedRegression()
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pipeline.contracts.params import MonitorConfig, SimulateConfig
from pipeline.contracts.prodlog import Window
from pipeline.contracts.schema import Schema


@dataclasses.dataclass(frozen=True)
class Answer:
    """The graph's answer to a batch, as the service logs and returns it.

    ``labels``: the log row's label (a class index; 0 for a regressor); ``values``: (rows, k)
    float32, the log row's probabilities (a regressor's: k = 0); ``named``: each log row's
    cells in :data:`~pipeline.contracts.prodlog.NAMED_ANSWER` (a regressor's prediction, lower,
    upper; a classifier's NULL); ``records``: the response's predictions (without
    ``out_of_range``); ``counts``: how many answers each of the task's counter series gets (by
    position in :meth:`ServedTask.series`).
    """

    labels: list[int]
    values: np.ndarray
    named: list[tuple[float | None, ...]]
    records: list[dict[str, Any]]
    counts: dict[int, int]


@dataclasses.dataclass(frozen=True)
class GroupWindow:
    """One group's labelled rows in a window: the task's group figure (feedback accuracy, a
    regressor's interval coverage) against the champion's on test, and the one-sided binomial
    test's p-value where the group has ``monitor.min_labels`` labels."""

    labelled: int
    figure: float | None
    expected: float | None
    p: float | None = None
    dropped: bool = False


@dataclasses.dataclass(frozen=True)
class GroupsWindow:
    """A window's figures per group of ``data.sensitive`` (``column``, a feature the log
    keeps); ``alpha``: the level each group is tested at (``monitor.alpha`` over the groups)."""

    column: str
    alpha: float
    by_group: dict[str, GroupWindow]

    @property
    def dropped(self) -> list[str]:
        return [name for name, g in self.by_group.items() if g.dropped]


@dataclasses.dataclass(frozen=True)
class WindowQuality:
    """A window's figures from its labels (and a label-free estimate where the task has one):
    each task's record adds its own fields. ``accuracy_dropped`` / ``estimate_dropped``: the
    harm rule's verdicts (from labels; without them)."""

    labelled: int

    @property
    def harm(self) -> bool:
        return bool(self.accuracy_dropped or self.estimate_dropped)  # type: ignore[attr-defined]

    def line(self) -> str:
        """The labelled figure for ``python -m monitoring check``'s line ("" without labels)."""
        return ""

    def as_json(self) -> dict[str, Any]:
        """The decision row's figures: every field, a test's p-value only where one ran."""
        out = dataclasses.asdict(self)
        return {k: v for k, v in out.items() if not (k.endswith("_p") and v is None)}


@dataclasses.dataclass(frozen=True)
class GroupFigures:
    """The champion's group figure on test per group of ``data.sensitive`` (``column``), from
    the decision that promoted it."""

    column: str
    expected: dict[str, float]

    @classmethod
    def of(cls, decision: dict[str, Any], figure: str) -> GroupFigures | None:
        """``figure`` (accuracy, coverage) per group of the promoted candidate's test split; None
        without ``data.sensitive`` (or a champion promoted before groups were measured)."""
        groups = decision.get("groups") or {}
        rows = groups.get("candidate", {}).get("test", {}).get("by_group")
        if not rows:
            return None
        return cls(groups["column"], {g: float(v[figure]) for g, v in rows.items()})


@dataclasses.dataclass(frozen=True)
class ChampionFigures:
    """The champion's test figures the monitor compares windows with."""

    test_accuracy: float | None = None  # a classifier's
    test_mae: float | None = None  # a regressor's ...
    interval_coverage: float | None = None  # ... and its interval's nominal coverage
    groups: GroupFigures | None = None  # with data.sensitive: per group


class ServedTask(abc.ABC):
    name: ClassVar[str]
    outputs: ClassVar[tuple[str, ...]]  # the ONNX graph's outputs, in order
    what: ClassVar[str]  # what /predict answers per record, in words
    explained: ClassVar[str]  # what an explanation attributes, in words (POST /explain)
    window_keys: ClassVar[tuple[str, ...]]  # the window figures the index page plots

    # ---- ingest ----

    @abc.abstractmethod
    def describe_target(self, schema: Schema) -> str:
        """The target in one phrase (the ingest stage's summary)."""

    def feedback_target(self, values: pd.Series) -> pd.Series:
        """Labelled production rows' target values as the source's (numbers stay numbers)."""
        return values

    # ---- the graph and the service ----

    @abc.abstractmethod
    def probe_problem(self, outputs: list[np.ndarray], schema: Schema) -> str | None:
        """Why a probe batch's outputs are not this task's answers, or None."""

    @abc.abstractmethod
    def answer(self, outputs: list[np.ndarray], schema: Schema) -> Answer:
        """The graph's ``outputs`` for a batch as the service logs and returns them."""

    @abc.abstractmethod
    def explained_figure(self, outputs: list[np.ndarray], block: int) -> np.ndarray:
        """(records, block): the figure an explanation attributes (:mod:`pipeline.contracts.
        explain`) for each row of the graph's ``outputs`` over records' blocks of ``block``
        rows, each block's first row the record itself: a classifier's log-odds of the class
        the record was answered against the runner-up, a regressor's prediction."""

    def answered_class(self, outputs: list[np.ndarray]) -> np.ndarray | None:
        """Each row's answered class index (a classifier's label output; a regressor: None)."""
        return None

    @abc.abstractmethod
    def response_head(self, schema: Schema, export: dict[str, Any]) -> dict[str, Any]:
        """What /predict's body says beside the predictions (the classes; the coverage)."""

    @abc.abstractmethod
    def series(self, schema: Schema) -> tuple[str, ...]:
        """The predictions counter's label values (one per class; one for a regressor)."""

    @abc.abstractmethod
    def feedback_label(self, label: Any, schema: Schema) -> Any:
        """A feedback label as the log stores it; ``ValueError`` with the reason if it is not
        one of this task's."""

    feedback_column: ClassVar[str]  # the log's feedback column the label goes to

    @abc.abstractmethod
    def openapi(self, schema: Schema) -> tuple[dict[str, Any], dict[str, Any]]:
        """(a feedback label's JSON schema, /predict's answer's JSON schema)."""

    # ---- the monitor ----

    @abc.abstractmethod
    def champion_figures(self, decision: dict[str, Any]) -> ChampionFigures:
        """The champion's test figures, from the decision that promoted it."""

    @abc.abstractmethod
    def quality(
        self,
        window: Window,
        champion: ChampionFigures,
        cfg: MonitorConfig,
        estimator: Any,
        drifted: Sequence[int] = (),
    ) -> WindowQuality:
        """A window's figures from its labels (and a label-free estimate where the task has
        one, told which columns the drift test flagged: ``drifted``, schema indices), with
        ``accuracy_dropped`` / ``estimate_dropped``: the harm rule."""

    group_figure: ClassVar[str]  # the figure a window's groups are tested on, in words

    @abc.abstractmethod
    def hits(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """(labelled, hit): which rows have a label, and which of those the answer got right (a
        regressor's: its interval held the truth): the group figure is the hits' share."""

    def group_quality(
        self, window: Window, champion: ChampionFigures, cfg: MonitorConfig, schema: Schema
    ) -> GroupsWindow | None:
        """The group figure per group of ``data.sensitive`` against the champion's on test, each
        group on its latest ``monitor.window`` labelled rows up to this window's end
        (``window``: the champion's labelled rows, oldest first), so a minority group is judged
        once it has labels, not only when one window holds ``monitor.min_labels`` of them. A
        group with ``min_labels`` labels is tested (one-sided binomial, below its test figure -
        ``monitor.accuracy_drop``) at ``monitor.alpha`` over the number of groups (Bonferroni:
        one group's significant fall is harm, and the false-alarm budget stays ``alpha``).
        None without groups, or when the column is not a feature."""
        expected = champion.groups
        if expected is None or expected.column not in schema.names:
            return None
        from scipy import stats  # the monitor's: the service's image has no scipy

        alpha = cfg.alpha / max(len(expected.expected), 1)
        if len(window) == 0:  # no labelled row yet
            return GroupsWindow(expected.column, alpha, {})
        j = schema.names.index(expected.column)
        names = schema.features[j].groups(window.X[:, j])
        labelled, hit = self.hits(window)
        out = {}
        for name in sorted(set(names[labelled].tolist())):
            mine = labelled & (names == name)
            mine[np.flatnonzero(mine)[: -cfg.window]] = False  # its latest monitor.window rows
            n, k = int(mine.sum()), int(hit[mine].sum())
            exp = expected.expected.get(name)
            p = None
            if exp is not None and n >= cfg.min_labels:
                p = float(stats.binom.cdf(k, n, max(exp - cfg.accuracy_drop, 0.0)))
            out[name] = GroupWindow(n, k / n, exp, p, bool(p is not None and p < alpha))
        return GroupsWindow(expected.column, alpha, out)

    def group_harm(self, groups: GroupsWindow | None, cfg: MonitorConfig) -> list[str]:
        """Why one group's labels say the champion is hurt there, in words (empty: they do
        not), naming the group."""
        if groups is None:
            return []
        return [
            f"group {name!r} of {groups.column}: {self.group_figure} {g.figure:.3f} on "
            f"{g.labelled} labels is below its test figure {g.expected:.3f} - "
            f"{cfg.accuracy_drop} (binomial p {g.p:.2g} < {groups.alpha:.3g}, alpha over "
            f"{len(groups.by_group)} groups)"
            for name, g in groups.by_group.items()
            if g.dropped
        ]

    @abc.abstractmethod
    def mix(self, window: Window, schema: Schema) -> dict[str, Any]:
        """What the index page plots of the answers (the class mix; the mean prediction)."""

    @abc.abstractmethod
    def harm_reason(self, f: Any, cfg: MonitorConfig) -> list[str]:
        """Why the labels say the champion is hurt, in words (empty: they do not)."""

    def no_harm_reason(self, f: Any, cfg: MonitorConfig) -> str:
        """Why a drifted window is no harm, in words: too few labels to test the task's figure,
        or the figure not significantly below the champion's."""
        if f.labelled < cfg.min_labels:
            return (
                f"not retraining: {f.labelled} labels in the window, min_labels "
                f"{cfg.min_labels} to test its {self.too_few_labels(f)}"
            )
        return f"not retraining: {self.not_significant(f, cfg)}"

    @abc.abstractmethod
    def too_few_labels(self, f: Any) -> str:
        """What a window with too few labels cannot test (and what it says without them)."""

    @abc.abstractmethod
    def not_significant(self, f: Any, cfg: MonitorConfig) -> str:
        """The labelled figure that is not significantly below the champion's, in words."""

    @abc.abstractmethod
    def label_cell(self, f: dict[str, Any]) -> str:
        """The index page's cell for a window's labelled figure."""

    @abc.abstractmethod
    def true_values(self, window: Window, schema: Schema) -> Any:
        """A window's true labels as the source writes them (the feedback export)."""

    def check_prior(self) -> None:
        """A clear error if ``simulate.scenario: prior`` (a class subset) cannot apply."""
        return None

    @abc.abstractmethod
    def concept(self, y: np.ndarray, cfg: SimulateConfig, schema: Schema) -> np.ndarray:
        """The labels the world gives back under ``simulate.scenario: concept``."""

    @abc.abstractmethod
    def feedback_value(self, truth: Any, schema: Schema) -> Any:
        """A true label (a class index, a value) as /feedback takes it."""

    @abc.abstractmethod
    def tally(self, record: dict[str, Any], truth: Any, schema: Schema) -> tuple[float, int]:
        """(score, covered) of one served record against its truth: a classifier's score is 1
        when right; a regressor's the absolute error, and 1 when its interval held the truth."""

    @abc.abstractmethod
    def summary(self, score: float, rows: int, covered: int) -> dict[str, Any]:
        """Served figures over ``rows`` records from their summed tallies."""
