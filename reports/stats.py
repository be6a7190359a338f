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
  among those where a and b differ; exactly equal cases are ties: dropped and counted).
* Headline metric (``headline_metric``): the relation judge's metric when one is present (the
  benchmark is about relations; see ``tables.judge_metrics``), else ``clip_t`` (the prompt
  including the relation), else the first metric. The report and ``compare`` warn when two
  configurations' CIs overlap on it: their order may be noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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

SUMMARY_COLUMNS: tuple[str, ...] = (*GROUP_COLUMNS, "metric", "mean", "ci_low", "ci_high", "n_cases", "n_values", "n_nan")
COMPARE_COLUMNS: tuple[str, ...] = (
    "metric", "higher_is_better", "n_cases", "mean_a", "mean_b", "mean_diff", "diff_ci_low", "diff_ci_high",
    "n_a_higher", "n_b_higher", "n_ties", "sign_test_p", "better",
)
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


def case_means(samples: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per configuration and case: the mean of ``metric`` over the seeds that have a value.

    Columns: GROUP_COLUMNS, ``case_id``, ``value``, ``n_seeds``; cases without any value are absent.
    """
    keys = [*GROUP_COLUMNS, "case_id"]
    values = samples.loc[samples[metric].notna(), [*keys, metric]]
    table = values.groupby(keys, dropna=False, sort=True).agg(value=(metric, "mean"), n_seeds=(metric, "size"))
    return table.reset_index()


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
    samples: pd.DataFrame, metrics: Sequence[str] | None = None, *, seed: int = SEED, n_resamples: int = N_RESAMPLES
) -> pd.DataFrame:
    """One row per (configuration, metric): mean over cases, bootstrap CI, counts (SUMMARY_COLUMNS).

    ``n_cases``: cases with a value; ``n_values``: images with a value; ``n_nan``: images scored by
    the metric that gave NaN/null (skipped). Rows are sorted by configuration, metrics in order.
    """
    metrics = metric_columns(samples) if metrics is None else list(metrics)
    rows: list[dict[str, Any]] = []
    if not samples.empty:
        for key, group in samples.groupby(list(GROUP_COLUMNS), dropna=False, sort=True):
            for metric in metrics:
                rows.append({**dict(zip(GROUP_COLUMNS, key)), **_summary_row(group, metric, seed, n_resamples)})
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def breakdown(samples: pd.DataFrame, by: str, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean of every metric per configuration and relation (``by="relation"``) or subject category
    (``by="category"``), over cases (seeds averaged first, NaN skipped).

    Columns: GROUP_COLUMNS, then ``relation``, ``relation_kind`` or ``category``, then ``n_cases``
    (cases generated in the group) and one column per metric. A case counts once towards each
    distinct category among its subjects (a person-and-animal case is in both groups).
    """
    if by not in ("relation", "category"):
        raise ValueError(f"breakdown: by must be 'relation' or 'category', got {by!r}")
    metrics = metric_columns(samples) if metrics is None else list(metrics)
    labels = ["relation", "relation_kind"] if by == "relation" else ["category"]
    columns = [*GROUP_COLUMNS, *labels, "n_cases", *metrics]
    if samples.empty:
        return pd.DataFrame(columns=columns)
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
        n_cases=("case_id", "size"), **{name: (name, "mean") for name in metrics}
    ).reset_index()
    table["n_cases"] = table["n_cases"].astype("int64")
    return table[columns]


def headline_metric(samples: pd.DataFrame) -> str | None:
    """The metric the CI-overlap warning looks at (see the module docstring); None without metrics."""
    judges = judge_metrics(samples)
    if judges:
        return judges[0]
    metrics = metric_columns(samples)
    if HEADLINE_FALLBACK in metrics:
        return HEADLINE_FALLBACK
    return metrics[0] if metrics else None


def cis_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals share a point; False when either is undefined (NaN)."""
    if any(math.isnan(v) for v in (*a, *b)):
        return False
    return a[0] <= b[1] and b[0] <= a[1]


def overlapping_pairs(summary: pd.DataFrame, metric: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of configurations (summary rows, in table order) whose CIs on ``metric`` overlap."""
    rows = summary.loc[summary["metric"] == metric].to_dict("records")
    return [
        (first, second)
        for i, first in enumerate(rows)
        for second in rows[i + 1:]
        if cis_overlap((first["ci_low"], first["ci_high"]), (second["ci_low"], second["ci_high"]))
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


def _better(diff: float, direction: bool | None) -> str:
    if direction is None or math.isnan(diff) or diff == 0:
        return ""
    return "a" if (diff > 0) == direction else "b"


def label(config: Config) -> str:
    return f"{config[0]}@{config[1]}"


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
    test's p-value, and which one is better by the mean (from ``directions``; empty when unknown).
    ``warning`` is set when, on the headline metric's common cases, the two CIs overlap or cannot
    be computed.
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
    headline = headline or headline_metric(pair)
    rows: list[dict[str, Any]] = []
    paired: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for metric in metrics:
        values_a, values_b = _paired_case_means(samples, config_a, metric), _paired_case_means(samples, config_b, metric)
        common = values_a.index.intersection(values_b.index)
        va, vb = values_a.loc[common].to_numpy(), values_b.loc[common].to_numpy()
        paired[metric] = (va, vb)
        diff = va - vb
        n_a, n_b = int((diff > 0).sum()), int((diff < 0).sum())
        low, high = bootstrap_ci(diff, seed=seed, n_resamples=n_resamples)
        mean_diff = float(diff.mean()) if diff.size else math.nan
        rows.append({
            "metric": metric,
            "higher_is_better": directions.get(metric),
            "n_cases": int(diff.size),
            "mean_a": float(va.mean()) if va.size else math.nan,
            "mean_b": float(vb.mean()) if vb.size else math.nan,
            "mean_diff": mean_diff,
            "diff_ci_low": low,
            "diff_ci_high": high,
            "n_a_higher": n_a,
            "n_b_higher": n_b,
            "n_ties": int(diff.size - n_a - n_b),
            "sign_test_p": float(scipy_stats.binomtest(n_a, n_a + n_b, 0.5).pvalue) if n_a + n_b else math.nan,
            "better": _better(mean_diff, directions.get(metric)),
        })
    ci_a = ci_b = (math.nan, math.nan)
    warning = None
    if headline is not None and headline in paired:
        va, vb = paired[headline]
        ci_a = bootstrap_ci(va, seed=seed, n_resamples=n_resamples)
        ci_b = bootstrap_ci(vb, seed=seed, n_resamples=n_resamples)
        if cis_overlap(ci_a, ci_b):
            warning = (f"the 95% CIs of {label(config_a)} and {label(config_b)} on the headline metric {headline} overlap "
                       f"([{ci_a[0]:.4g}, {ci_a[1]:.4g}] and [{ci_b[0]:.4g}, {ci_b[1]:.4g}]); their order may be noise")
        elif math.isnan(ci_a[0]) or math.isnan(ci_b[0]):
            warning = f"fewer than 2 common cases with {headline}: no confidence interval, the two cannot be told apart"
    return Comparison(config_a, config_b, pd.DataFrame(rows, columns=list(COMPARE_COLUMNS)), headline, ci_a, ci_b, warning)
