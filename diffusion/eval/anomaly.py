"""Detection metrics of anomaly scores (higher score = more anomalous).

    auroc(scores, is_anomaly)    # P(score of an anomaly > score of a normal); ties count 1/2
    auprc(scores, is_anomaly)    # average precision: the area under precision-recall
    threshold(val_scores, q)     # the score above which a fraction 1 - q of normal data lies

NumPy only; checked against scikit-learn and the closed form Phi(d / sqrt(2)) of two
unit Gaussians d apart in `tests/test_edit.py`.
"""
from __future__ import annotations

import numpy as np


def _check(scores, labels):
  s = np.asarray(scores, np.float64).reshape(-1)
  y = np.asarray(labels).reshape(-1).astype(bool)
  if len(s) != len(y):
    raise ValueError(f"{len(s)} scores but {len(y)} labels")
  if not y.any() or y.all():
    raise ValueError("AUROC / AUPRC need both normal (False) and anomalous (True) examples")
  if not np.all(np.isfinite(s)):
    raise ValueError("anomaly scores must be finite")
  return s, y


def _ranks(s):
  """Average ranks (1-based) with ties sharing their mean rank."""
  order = np.argsort(s, kind="mergesort")
  ranks = np.empty(len(s), np.float64)
  sorted_s = s[order]
  i = 0
  while i < len(s):
    j = i
    while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
      j += 1
    ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
    i = j + 1
  return ranks


def auroc(scores, labels) -> float:
  """The Mann-Whitney statistic: the probability that a random anomaly scores above a
  random normal example (ties 1/2), i.e. the area under the ROC curve."""
  s, y = _check(scores, labels)
  r = _ranks(s)
  n1, n0 = int(y.sum()), int((~y).sum())
  return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def roc_curve(scores, labels):
  """``(false positive rate, true positive rate)`` at every threshold, from (0, 0) to (1, 1)."""
  s, y = _check(scores, labels)
  order = np.argsort(-s, kind="mergesort")
  s, y = s[order], y[order]
  last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # The end of each run of equal scores.
  tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
  return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def auprc(scores, labels) -> float:
  """Average precision: sum over thresholds of (recall gained) x precision there."""
  s, y = _check(scores, labels)
  order = np.argsort(-s, kind="mergesort")
  s, y = s[order], y[order]
  last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
  tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
  precision, recall = tp / (tp + fp), tp / tp[-1]
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def threshold(normal_scores, quantile: float = 0.95) -> float:
  """The `quantile` of scores of normal validation data: flagging scores above it flags a
  fraction ``1 - quantile`` of normal data (the false-positive rate it is chosen for)."""
  if not 0.0 < quantile < 1.0:
    raise ValueError(f"threshold quantile {quantile} must lie in (0, 1)")
  return float(np.quantile(np.asarray(normal_scores, np.float64), quantile))
