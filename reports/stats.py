"""Statistics over samples tables: means with bootstrap CIs, breakdowns, paired comparisons.

Pure functions over the samples table of ``relbench.reports.tables`` (one row per image). The unit
of every statistic is the CASE, not the image: the seeds of a case are averaged first (their
images share prompt and subjects, so they are not independent draws), then cases are resampled.

* Mean: the mean over cases of the per-case mean over seeds. NaN values (a metric that ran and
  gave no value, e.g. a pose metric for a relation without reference poses) are skipped before
  averaging and counted apart (``n_nan``); a case with no value at all is left out (``n_cases``
  counts the cases that have one).
* Confidence interval: ``scipy.stats.bootstrap`` of the mean over the per-case values, percentile
  method, two-sided 95 %, ``N_RESAMPLES`` resamples, a fresh ``numpy.random.default_rng(SEED)``
  for every interval (so an interval does not depend on what was computed before it, and two
  configurations with the same number of cases are resampled with the same indices). Percentile
  rather than BCa: it is what a reader can recompute with ``numpy.percentile``, and it stays
  defined on degenerate data (constant values give ``[c, c]``; BCa gives NaN). Fewer than 2 cases:
  no interval (NaN, NaN).
* Paired comparison (``compare``): on the cases both configurations have a value for, the
  difference a - b per case (seed means), its mean with the same bootstrap CI, and a two-sided
  sign test (``scipy.stats.binomtest`` with p = 0.5 on the number of cases where a is higher
  among those where a and b differ; exactly equal cases are ties: dropped and counted). A winner
  (``better``) is named only when that CI excludes 0; otherwise no difference is detected.
* Case sets (``case_view``): configurations are compared only within one benchmark, version and
  profile (``COMPARISON_COLUMNS``). For each metric, the configurations that scored it (at least
  one value) may have scored different cases. The default view, ``common``, then restricts every
  configuration to the cases all of them scored for that metric (``case_set`` ``common``); the
  ``all`` view keeps each configuration's own cases (``case_set`` ``differ``: means over different
  cases, not comparable). ``same``: they all scored the same cases, both views agree.
* Best (``leaderboard.best_mask``): a mean is marked best in its column when it is the best (by the metric's
  direction) among the configurations of its comparison group scored on the same cases (``same``
  or ``common``; never ``differ``) that have at least ``MIN_CASES_FOR_BEST`` (2) cases and so a
  computable CI. Ties are all best; a metric without a direction has no best.
* Headline metric (``choose_headline``): ``--headline METRIC`` when given (it must have a value in
  the runs), else ``DEFAULT_HEADLINE`` (``relation_vqa``, the relation judge's VQAScore: the
  benchmark is about relations) when it has a value, else the fallback: the first other relation
  judge metric with a value (its details carry the verdict, e.g. ``relation_acc``, ``relation_mc``;
  see ``tables.judge_metrics``), else ``clip_t`` (the prompt including the relation), else none.
  The leaderboard is sorted by it (best first); the report and ``compare`` warn when two
  configurations' CIs overlap on it: their order may be noise. Two point intervals at the same
  value ([c, c] and [c, c]: every case scored the same constant) are a tie, not an overlap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from relbench.errors import RelbenchError
from relbench.reports.tables import judge_metrics, metric_columns, scored_mask

SEED = 0
N_RESAMPLES = 9999  # scipy's default
CONFIDENCE = 0.95
BOOTSTRAP_METHOD = "percentile"
# Resamples drawn per batch: bounds memory (batch x cases floats) without changing the draws.
_BATCH_VALUES = 2_000_000

# A method configuration: rows with equal values here are one leaderboard row.
GROUP_COLUMNS: tuple[str, ...] = ("method", "settings_hash", "benchmark", "benchmark_version", "profile")
# A case across configurations (the pairing key of ``compare``).
CASE_COLUMNS: tuple[str, ...] = ("benchmark", "benchmark_version", "case_id")
# Configurations are compared (common cases, best, CI overlap) only with those sharing these values.
COMPARISON_COLUMNS: tuple[str, ...] = ("benchmark", "benchmark_version", "profile")

# Case views and case sets (see the module docstring).
COMMON, ALL = "common", "all"
CASE_VIEWS: tuple[str, ...] = (COMMON, ALL)
SAME, DIFFER = "same", "differ"  # a case set is SAME, COMMON or DIFFER
MIN_CASES_FOR_BEST = 2  # fewer cases: no CI, so no claim to be best

SUMMARY_COLUMNS: tuple[str, ...] = (
    *GROUP_COLUMNS, "metric", "mean", "ci_low", "ci_high", "n_cases", "n_values", "n_nan", "case_set",
)
COMPARE_COLUMNS: tuple[str, ...] = (
    "metric", "higher_is_better", "n_cases", "mean_a", "mean_b", "mean_diff", "diff_ci_low", "diff_ci_high",
    "n_a_higher", "n_b_higher", "n_ties", "sign_test_p", "better",
)
DEFAULT_HEADLINE = "relation_vqa"
HEADLINE_FALLBACK = "clip_t"

Config = tuple[str, str]  # (method, settings_hash)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    seed: int = SEED,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (NaN skipped); (NaN, NaN) below 2 values."""
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size < 2:
        return math.nan, math.nan
    result = scipy_stats.bootstrap(
        (x,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method=BOOTSTRAP_METHOD,
        vectorized=True, batch=max(1, _BATCH_VALUES // x.size), rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def nan_free(values: Iterable[Any]) -> tuple[Any, ...]:
    """Group-key values with NaN as None: old files may lack a benchmark or profile, and NaN != NaN."""
    return tuple(None if isinstance(v, float) and math.isnan(v) else v for v in values)


def comparison_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """The comparison group (COMPARISON_COLUMNS) of a row of any table that has those columns."""
    return nan_free(record[c] for c in COMPARISON_COLUMNS)


@dataclass(frozen=True)
class CaseView:
    """Which rows count for each metric in a case view (``case_view``), and every case set."""

    view: str  # COMMON or ALL
    mask: pd.DataFrame  # one boolean column per metric, aligned with the samples: True = counted
    case_sets: dict[tuple[tuple[Any, ...], str], str]  # (comparison key, metric) -> SAME, COMMON or DIFFER


def check_case_view(cases: str) -> str:
    if cases not in CASE_VIEWS:
        raise RelbenchError(f"cases: expected {' or '.join(CASE_VIEWS)}, got {cases!r}")
    return cases


def case_view(samples: pd.DataFrame, metrics: Sequence[str] | None = None, cases: str = COMMON) -> CaseView:
    """Per comparison group and metric: the case set (see the module docstring) and, in the
    ``common`` view where the configurations scored different cases, the rows of the cases all
    of them scored. A configuration without any value for the metric does not take part."""
    cases = check_case_view(cases)
    metrics = metric_columns(samples) if metrics is None else list(metrics)
    mask = pd.DataFrame(True, index=samples.index, columns=metrics)
    case_sets: dict[tuple[tuple[Any, ...], str], str] = {}
    if samples.empty:
        return CaseView(cases, mask, case_sets)
    for key, group in samples.groupby(list(COMPARISON_COLUMNS), dropna=False, sort=False):
        comparison = nan_free(key)
        for metric in metrics:
            scored = group.loc[group[metric].notna()]
            sets = {frozenset(rows["case_id"]) for _, rows in scored.groupby(["method", "settings_hash"], sort=False)}
            if len(sets) <= 1:
                case_sets[(comparison, metric)] = SAME
            elif cases == ALL:
                case_sets[(comparison, metric)] = DIFFER
            else:
                case_sets[(comparison, metric)] = COMMON
                mask.loc[group.index, metric] = group["case_id"].isin(frozenset.intersection(*sets)).to_numpy()
    return CaseView(cases, mask, case_sets)


def _summary_row(group: pd.DataFrame, metric: str, seed: int, n_resamples: int) -> dict[str, Any]:
    per_case = group.loc[group[metric].notna()].groupby("case_id", sort=True)[metric].mean()
    low, high = bootstrap_ci(per_case.to_numpy(), seed=seed, n_resamples=n_resamples)
    return {
        "metric": metric,
        "mean": float(per_case.mean()) if len(per_case) else math.nan,
        "ci_low": low,
        "ci_high": high,
        "n_cases": int(len(per_case)),
        "n_values": int(group[metric].notna().sum()),
        "n_nan": int((scored_mask(group, metric) & group[metric].isna()).sum()),
    }


def metric_summary(
    samples: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    *,
    cases: str = COMMON,
    seed: int = SEED,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """One row per (configuration, metric): mean over cases, bootstrap CI, counts (SUMMARY_COLUMNS).

    Over the cases of the view ``cases`` (``common`` or ``all``, see ``case_view``): ``n_cases``:
    cases with a value; ``n_values``: images with a value; ``n_nan``: images scored by the metric
    that gave NaN/null (skipped); ``case_set``: SAME, COMMON or DIFFER. Rows are sorted by
    configuration, metrics in order.
    """
    metrics = metric_columns(samples) if metrics is None else list(metrics)
    view = case_view(samples, metrics, cases)
    rows: list[dict[str, Any]] = []
    if not samples.empty:
        for key, group in samples.groupby(list(GROUP_COLUMNS), dropna=False, sort=True):
            config = dict(zip(GROUP_COLUMNS, key))
            for metric in metrics:
                in_view = group.loc[view.mask.loc[group.index, metric]]
                rows.append({
                    **config, **_summary_row(in_view, metric, seed, n_resamples),
                    "case_set": view.case_sets[(comparison_key(config), metric)],
                })
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def breakdown(samples: pd.DataFrame, by: str, metrics: Sequence[str] | None = None, *, cases: str = COMMON) -> pd.DataFrame:
    """Mean of every metric per configuration and relation (``by="relation"``) or subject category
    (``by="category"``), over the cases of the view ``cases`` (seeds averaged first, NaN skipped).

    Columns: GROUP_COLUMNS, then ``relation``, ``relation_kind`` or ``category``, then ``n_cases``
    (cases generated in the group) and per metric its mean and ``<metric>_n`` (cases with a value
    in the view). A case counts once towards each distinct category among its subjects (a
    person-and-animal case is in both groups).
    """
    if by not in ("relation", "category"):
        raise ValueError(f"breakdown: by must be 'relation' or 'category', got {by!r}")
    metrics = metric_columns(samples) if metrics is None else list(metrics)
    labels = ["relation", "relation_kind"] if by == "relation" else ["category"]
    per_metric = [column for name in metrics for column in (name, f"{name}_n")]
    columns = [*GROUP_COLUMNS, *labels, "n_cases", *per_metric]
    if samples.empty:
        return pd.DataFrame(columns=columns)
    view = case_view(samples, metrics, cases)
    samples = samples.assign(**{name: samples[name].where(view.mask[name]) for name in metrics})
    keys = [*GROUP_COLUMNS, "case_id"]
    cases = samples.groupby(keys, dropna=False, sort=True).agg(
        relation=("relation", "first"),
        relation_kind=("relation_kind", "first"),
        subject_categories=("subject_categories", "first"),
        **{name: (name, "mean") for name in metrics},
    ).reset_index()
    if by == "category":
        cases["category"] = cases["subject_categories"].map(lambda c: list(dict.fromkeys(c or ())) or [None])
        cases = cases.explode("category", ignore_index=True)
    table = cases.groupby([*GROUP_COLUMNS, *labels], dropna=False, sort=True).agg(
        n_cases=("case_id", "size"),
        **{name: (name, "mean") for name in metrics},
        **{f"{name}_n": (name, "count") for name in metrics},
    ).reset_index()
    for column in ["n_cases", *(f"{name}_n" for name in metrics)]:
        table[column] = table[column].astype("int64")
    return table[columns]


def computed_metrics(samples: pd.DataFrame) -> list[str]:
    """The metrics with at least one value in ``samples``, in table order."""
    return [name for name in metric_columns(samples) if samples[name].notna().any()]


@dataclass(frozen=True)
class Headline:
    """The headline metric (None: there is none) and why it is that one, for people."""

    metric: str | None
    reason: str

    def line(self) -> str:
        return f"headline metric: {self.metric or 'none'} ({self.reason})"


def choose_headline(samples: pd.DataFrame, requested: str | None = None) -> Headline:
    """``requested`` (``--headline``), else the default, else the fallback (module docstring).

    Only a metric with a value in ``samples`` can be the headline; ``requested`` naming any other
    is a RelbenchError listing the ones there are.
    """
    available = computed_metrics(samples)
    listed = ", ".join(available) or "none"
    if requested is not None:
        if requested not in available:
            raise RelbenchError(f"--headline {requested!r}: not computed in these runs (metrics with values: {listed})")
        return Headline(requested, "chosen with --headline")
    if DEFAULT_HEADLINE in available:
        return Headline(DEFAULT_HEADLINE, "the default")
    for name in [*judge_metrics(samples), HEADLINE_FALLBACK]:
        if name in available:
            return Headline(name, f"fallback: the default {DEFAULT_HEADLINE} was not computed in these runs")
    return Headline(None, (
        f"the default {DEFAULT_HEADLINE} and its fallbacks (another relation judge metric, {HEADLINE_FALLBACK}) "
        f"were not computed in these runs; pick one with --headline from: {listed}"
    ))


def cis_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals share a point; False when either is undefined (NaN) and when both
    are points ([c, c]: every case scored the same constant; equal points are a tie, not noise)."""
    if any(math.isnan(v) for v in (*a, *b)):
        return False
    if a[0] == a[1] and b[0] == b[1]:
        return False
    return a[0] <= b[1] and b[0] <= a[1]


def overlapping_pairs(summary: pd.DataFrame, metric: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of configurations of one comparison group (summary rows, in table order) whose CIs on
    ``metric`` overlap."""
    rows = summary.loc[summary["metric"] == metric].to_dict("records")
    return [
        (first, second)
        for i, first in enumerate(rows)
        for second in rows[i + 1:]
        if comparison_key(first) == comparison_key(second)
        and cis_overlap((first["ci_low"], first["ci_high"]), (second["ci_low"], second["ci_high"]))
    ]


# --------------------------------------------------------------------------------------------
# Paired comparison


def configurations(samples: pd.DataFrame) -> list[Config]:
    """The (method, settings_hash) pairs of a samples table, sorted."""
    return sorted(set(zip(samples["method"], samples["settings_hash"])))


def resolve_config(samples: pd.DataFrame, selector: str) -> Config:
    """``METHOD`` or ``METHOD@HASH`` (a hash prefix is enough) -> the one configuration it names."""
    method, _, prefix = selector.partition("@")
    known = configurations(samples)
    of_method = [c for c in known if c[0] == method]
    if not of_method:
        names = ", ".join(dict.fromkeys(m for m, _ in known)) or "none"
        raise RelbenchError(f"{selector!r}: no method {method!r} in these runs (methods: {names})")
    matches = [c for c in of_method if c[1].startswith(prefix)]
    hashes = ", ".join(h for _, h in of_method)
    if not matches:
        raise RelbenchError(f"{selector!r}: method {method!r} has no settings hash starting with {prefix!r} (hashes: {hashes})")
    if len(matches) > 1:
        raise RelbenchError(f"{selector!r}: method {method!r} was run with {len(matches)} settings ({hashes}); pick one as {method}@HASH")
    return matches[0]


def _paired_case_means(samples: pd.DataFrame, config: Config, metric: str) -> pd.Series:
    rows = samples.loc[(samples["method"] == config[0]) & (samples["settings_hash"] == config[1]) & samples[metric].notna()]
    return rows.groupby(list(CASE_COLUMNS), dropna=False, sort=True)[metric].mean()


@dataclass(frozen=True)
class Comparison:
    """``compare``'s result: one row per metric (COMPARE_COLUMNS) and the headline check."""

    a: Config
    b: Config
    table: pd.DataFrame
    headline: str | None
    headline_ci_a: tuple[float, float]
    headline_ci_b: tuple[float, float]
    warning: str | None
    headline_reason: str = ""
    headline_row: dict[str, Any] | None = None  # the headline's COMPARE_COLUMNS, also when not in ``table``


def _better(low: float, high: float, direction: bool | None) -> str:
    """'a' or 'b' when the CI of a - b excludes 0 and the direction is known, else ''."""
    if direction is None or math.isnan(low) or math.isnan(high) or low <= 0 <= high:
        return ""
    return "a" if (low > 0) == direction else "b"


def label(config: Config) -> str:
    return f"{config[0]}@{config[1]}"


def _paired(
    samples: pd.DataFrame, config_a: Config, config_b: Config, metric: str, direction: bool | None, seed: int, n_resamples: int
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """One metric's COMPARE_COLUMNS row and the per-case values of a and b on their common cases."""
    values_a, values_b = _paired_case_means(samples, config_a, metric), _paired_case_means(samples, config_b, metric)
    common = values_a.index.intersection(values_b.index)
    va, vb = values_a.loc[common].to_numpy(), values_b.loc[common].to_numpy()
    diff = va - vb
    n_a, n_b = int((diff > 0).sum()), int((diff < 0).sum())
    low, high = bootstrap_ci(diff, seed=seed, n_resamples=n_resamples)
    row = {
        "metric": metric,
        "higher_is_better": direction,
        "n_cases": int(diff.size),
        "mean_a": float(va.mean()) if va.size else math.nan,
        "mean_b": float(vb.mean()) if vb.size else math.nan,
        "mean_diff": float(diff.mean()) if diff.size else math.nan,
        "diff_ci_low": low,
        "diff_ci_high": high,
        "n_a_higher": n_a,
        "n_b_higher": n_b,
        "n_ties": int(diff.size - n_a - n_b),
        "sign_test_p": float(scipy_stats.binomtest(n_a, n_a + n_b, 0.5).pvalue) if n_a + n_b else math.nan,
        "better": _better(low, high, direction),
    }
    return row, va, vb


def compare(
    samples: pd.DataFrame,
    a: str,
    b: str,
    *,
    metrics: Sequence[str] | None = None,
    directions: dict[str, bool | None] | None = None,
    headline: str | None = None,
    seed: int = SEED,
    n_resamples: int = N_RESAMPLES,
) -> Comparison:
    """Paired comparison of configurations ``a`` and ``b`` (selectors as in ``resolve_config``).

    Per metric, on the cases both have a value for (seeds averaged per case): the mean of each, the
    mean difference a - b with its bootstrap CI, how many cases a / b is higher and ties, the sign
    test's p-value, and which one is better (``better``: only when the CI of a - b excludes 0 and
    ``directions`` gives the metric's direction; empty otherwise: no difference detected).
    ``headline`` (``--headline``; default per ``choose_headline`` over a and b's rows) is checked
    even when not among ``metrics``: ``warning`` is set when, on its common cases, the two CIs
    overlap or cannot be computed.
    """
    config_a, config_b = resolve_config(samples, a), resolve_config(samples, b)
    if config_a == config_b:
        raise RelbenchError(f"{a!r} and {b!r} name the same configuration ({label(config_a)}); expected two different ones")
    metrics = metric_columns(samples) if metrics is None else list(metrics)
    unknown = [m for m in metrics if m not in samples.columns]
    if unknown:
        raise RelbenchError(f"metric {unknown[0]!r}: not in these runs (metrics: {', '.join(metric_columns(samples)) or 'none'})")
    directions = directions or {}
    keys = list(zip(samples["method"], samples["settings_hash"]))
    pair = samples.loc[[key in (config_a, config_b) for key in keys]]
    chosen = choose_headline(pair, headline)
    rows: list[dict[str, Any]] = []
    paired: dict[str, tuple[dict[str, Any], np.ndarray, np.ndarray]] = {}
    for metric in dict.fromkeys([*metrics, *([chosen.metric] if chosen.metric else [])]):
        paired[metric] = _paired(samples, config_a, config_b, metric, directions.get(metric), seed, n_resamples)
        if metric in metrics:
            rows.append(paired[metric][0])
    ci_a = ci_b = (math.nan, math.nan)
    warning = None
    headline_row = None
    if chosen.metric is not None:
        headline_row, va, vb = paired[chosen.metric]
        ci_a = bootstrap_ci(va, seed=seed, n_resamples=n_resamples)
        ci_b = bootstrap_ci(vb, seed=seed, n_resamples=n_resamples)
        if cis_overlap(ci_a, ci_b):
            warning = (f"the 95% CIs of {label(config_a)} and {label(config_b)} on the headline metric {chosen.metric} overlap "
                       f"([{ci_a[0]:.4g}, {ci_a[1]:.4g}] and [{ci_b[0]:.4g}, {ci_b[1]:.4g}]); their order may be noise")
        elif math.isnan(ci_a[0]) or math.isnan(ci_b[0]):
            warning = f"fewer than 2 common cases with {chosen.metric}: no confidence interval, the two cannot be told apart"
    return Comparison(
        config_a, config_b, pd.DataFrame(rows, columns=list(COMPARE_COLUMNS)), chosen.metric, ci_a, ci_b, warning,
        chosen.reason, headline_row,
    )
