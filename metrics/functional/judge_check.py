"""Pure math of ``relbench judge check``: how well a judge's yes/no answers agree with labels.

No models, no files, numpy only. Inputs are per question: the label (True = the right answer is
"yes"), the judge's normalised P(yes) in [0, 1] and its answer (``P(yes) > 0.5``, the threshold of
``relbench.metrics.functional.judge``). Failed answers (API errors, unparseable text) are not
passed here; the caller counts them apart. Conventions:

* **Undefined is NaN**, never a made-up number: balanced accuracy and AUROC need both labels
  among the answered questions, Cohen's kappa needs a chance agreement below 1.
* **Balanced accuracy** = (true-positive rate + true-negative rate) / 2. A judge that always
  answers the same thing scores exactly 0.5 whatever the label mix (plain accuracy then only
  repeats the share of that label).
* **AUROC** of P(yes): the probability that a random "yes" question gets a higher P(yes) than a
  random "no" question, ties counted one half (Mann-Whitney U / (n_yes x n_no)). A judge whose
  P(yes) is the same for every question scores exactly 0.5 by ties: it ranks nothing.
* **Reliability bins**: ``n_bins`` equal-width bins of P(yes); bin k holds (k/n, (k+1)/n], bin 0
  also holds 0, so a bin never mixes "yes" answers (> 0.5) with "no" answers when n is even.
  Per bin: count, mean P(yes) and the share of "yes" labels. **ECE** = sum over bins of
  (count / total) x |share of yes labels - mean P(yes)|.
* **Cohen's kappa** between two judges' yes/no answers on the questions both answered:
  (p_o - p_e) / (1 - p_e), p_o the observed agreement, p_e the agreement expected from each
  judge's own rate of "yes".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 10


def _bools(values: Sequence[bool] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=bool)
    if array.ndim != 1:
        raise ValueError(f"{what}: expected one value per question")
    return array


def _probabilities(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError("p_yes: expected one value per question")
    if array.size and (not np.isfinite(array).all() or array.min() < 0 or array.max() > 1):
        raise ValueError("p_yes: expected probabilities in [0, 1]")
    return array


def _same_length(*arrays: np.ndarray) -> None:
    if len({array.shape[0] for array in arrays}) > 1:
        raise ValueError(f"expected as many answers as labels, got lengths {[a.shape[0] for a in arrays]}")


@dataclass(frozen=True)
class Confusion:
    """Counts of (label, answer) pairs: tp = yes/yes, fn = yes label answered no, ..."""

    tp: int
    fn: int
    tn: int
    fp: int

    @property
    def n(self) -> int:
        return self.tp + self.fn + self.tn + self.fp


def confusion(labels: Sequence[bool] | np.ndarray, answers: Sequence[bool] | np.ndarray) -> Confusion:
    y, a = _bools(labels, "labels"), _bools(answers, "answers")
    _same_length(y, a)
    return Confusion(tp=int((y & a).sum()), fn=int((y & ~a).sum()), tn=int((~y & ~a).sum()), fp=int((~y & a).sum()))


def accuracy(labels: Sequence[bool] | np.ndarray, answers: Sequence[bool] | np.ndarray) -> float:
    """Share of answers equal to the label; NaN with no answer."""
    counts = confusion(labels, answers)
    return (counts.tp + counts.tn) / counts.n if counts.n else math.nan


def balanced_accuracy(labels: Sequence[bool] | np.ndarray, answers: Sequence[bool] | np.ndarray) -> float:
    """(TPR + TNR) / 2; NaN unless both labels occur."""
    counts = confusion(labels, answers)
    positives, negatives = counts.tp + counts.fn, counts.tn + counts.fp
    if not positives or not negatives:
        return math.nan
    return 0.5 * (counts.tp / positives + counts.tn / negatives)


def auroc(labels: Sequence[bool] | np.ndarray, p_yes: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of P(yes) (ties one half); NaN unless both labels occur.

    Computed by pair counting over sorted scores: for each "no" score, the "yes" scores above it
    count 1 and those equal to it count 1/2.
    """
    y, p = _bools(labels, "labels"), _probabilities(p_yes)
    _same_length(y, p)
    yes, no = np.sort(p[y]), p[~y]
    if not yes.size or not no.size:
        return math.nan
    below = np.searchsorted(yes, no, side="left")  # yes scores < each no score
    at_most = np.searchsorted(yes, no, side="right")  # yes scores <= each no score
    above = yes.size - at_most
    ties = at_most - below
    return float((above.sum() + 0.5 * ties.sum()) / (yes.size * no.size))


@dataclass(frozen=True)
class ReliabilityBin:
    low: float
    high: float
    n: int
    mean_p_yes: float  # NaN for an empty bin
    yes_rate: float  # share of "yes" labels; NaN for an empty bin


def bin_index(p_yes: Sequence[float] | np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """The reliability bin of each probability: k with k/n < p <= (k+1)/n (0 for p = 0)."""
    if n_bins < 1:
        raise ValueError("n_bins: expected at least 1")
    p = _probabilities(p_yes)
    # Against the edges themselves, not ceil(p x n): 0.3 x 10 is 3.0000000000000004 in floats.
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    return np.searchsorted(inner_edges, p, side="left").astype(np.int64)


def reliability_bins(labels: Sequence[bool] | np.ndarray, p_yes: Sequence[float] | np.ndarray,
                     n_bins: int = DEFAULT_BINS) -> list[ReliabilityBin]:
    y, p = _bools(labels, "labels"), _probabilities(p_yes)
    _same_length(y, p)
    index = bin_index(p, n_bins)
    bins = []
    for k in range(n_bins):
        inside = index == k
        n = int(inside.sum())
        bins.append(ReliabilityBin(
            low=k / n_bins, high=(k + 1) / n_bins, n=n,
            mean_p_yes=float(p[inside].mean()) if n else math.nan,
            yes_rate=float(y[inside].mean()) if n else math.nan,
        ))
    return bins


def expected_calibration_error(bins: Sequence[ReliabilityBin]) -> float:
    """ECE over reliability bins; NaN when every bin is empty."""
    total = sum(b.n for b in bins)
    if not total:
        return math.nan
    return float(sum(b.n / total * abs(b.yes_rate - b.mean_p_yes) for b in bins if b.n))


def cohen_kappa(answers_a: Sequence[bool] | np.ndarray, answers_b: Sequence[bool] | np.ndarray) -> float:
    """Cohen's kappa of two raters' yes/no answers to the same questions; NaN with no question or
    when chance agreement is 1 (both raters gave one and the same answer throughout)."""
    a, b = _bools(answers_a, "answers_a"), _bools(answers_b, "answers_b")
    _same_length(a, b)
    if not a.size:
        return math.nan
    observed = float((a == b).mean())
    rate_a, rate_b = float(a.mean()), float(b.mean())
    chance = rate_a * rate_b + (1 - rate_a) * (1 - rate_b)
    if chance >= 1:
        return math.nan
    return (observed - chance) / (1 - chance)
