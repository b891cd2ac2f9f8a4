"""Rank statistics shared by table validation, predictor training and the benchmarks.

Implemented with numpy alone (scipy is not a dependency); tests check them against scipy where
it is installed.
"""

from __future__ import annotations

import numpy as np


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (as scipy.stats.rankdata)."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = rankdata(a), rankdata(b)
    if np.std(ra) == 0 or np.std(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def kendall_tau_b(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b (ties in either variable handled), O(n^2) memory-light rows."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = len(a)
    concordant_minus_discordant = 0.0
    ties_a = ties_b = pairs = 0
    for i in range(n - 1):
        da = np.sign(a[i + 1 :] - a[i])
        db = np.sign(b[i + 1 :] - b[i])
        concordant_minus_discordant += float(np.sum(da * db))
        ties_a += int(np.sum(da == 0))
        ties_b += int(np.sum(db == 0))
        pairs += n - 1 - i
    denom = np.sqrt(float(pairs - ties_a) * float(pairs - ties_b))
    return float(concordant_minus_discordant / denom) if denom > 0 else float("nan")
