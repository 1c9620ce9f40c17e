"""How much a table's numbers would move with other test tracks or another seed.

Every BSS Eval cell of a table is the median over test tracks of the per-track medians over
1 s frames. This module gives it

* a 95 % **bootstrap interval**: test tracks resampled with replacement (and, where a row has
  several seeds, its seeds too, independently), the median over the resampled tracks of the
  per-track values averaged over the resampled seeds, percentiles of 10 000 resamples;
* a **paired test** of a row against its reference row: the per-track values of each row
  averaged over its seeds, the differences track by track, the Wilcoxon signed-rank test's
  two-sided p-value (``scipy.stats.wilcoxon``; exact for few tracks) and the median
  difference with its bootstrap interval over tracks;
* a **claim verdict**: the paper states that a row is better (higher) or worse (lower) than
  another; "yes" when our paired difference has that sign and p < 0.05, "no" when it has the
  other sign and p < 0.05, "not significant" otherwise.

Resampling uses a fixed generator seed, so a table renders to the same numbers every time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from lightning_modules.evaluation.bss import aggregate

CONFIDENCE = 0.95
RESAMPLES = 10_000
ALPHA = 0.05  # the p-value under which a claim's verdict is "yes" or "no"
DIRECTIONS = ("higher", "lower")
HOLDS, FAILS, UNCLEAR = "yes", "no", "not significant"


def per_track(run_dir: Path, target: str, metric: str) -> dict[str, float]:
    """``{track name: median over its frames}`` of one target's metric in a run's museval
    folder (NaN where BSS Eval left every frame undefined), as the table's median uses them."""
    values = {}
    for path in sorted((run_dir / "museval").glob("*.json")):
        track = json.loads(path.read_text())
        values[track.get("name", path.stem)] = aggregate([track], target, (metric,))[metric][
            "median"
        ]
    if not values:
        raise FileNotFoundError(f"{run_dir}/museval holds no per-track results")
    return values


def seed_matrix(tracks_by_seed: Sequence[dict[str, float]]) -> tuple[list[str], np.ndarray]:
    """The tracks every seed has and a ``(seeds, tracks)`` array of their values."""
    if not tracks_by_seed:
        raise ValueError("no seed to tabulate")
    names = sorted(set.intersection(*(set(t) for t in tracks_by_seed)))
    return names, np.array([[t[name] for name in names] for t in tracks_by_seed], dtype=float)


def _as_matrix(values: np.ndarray | Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[None, :] if array.ndim == 1 else array


def point(values: np.ndarray | Sequence[float]) -> float:
    """The cell: median over tracks of the per-track values averaged over seeds (NaN tracks,
    undefined for BSS Eval, skipped as museval skips them)."""
    per_track_mean = _nanmean(_as_matrix(values), axis=0)
    finite = per_track_mean[~np.isnan(per_track_mean)]
    return float(np.median(finite)) if finite.size else math.nan


def _nanmean(array: np.ndarray, axis: int) -> np.ndarray:
    counts = np.sum(~np.isnan(array), axis=axis)
    sums = np.nansum(array, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def bootstrap_interval(
    values: np.ndarray | Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`point`: ``values`` is one value per track, or a
    ``(seeds, tracks)`` array; tracks and seeds are resampled with replacement, independently.
    ``(nan, nan)`` with fewer than two finite tracks (one track has no spread to resample)."""
    matrix = _as_matrix(values)
    matrix = matrix[:, ~np.all(np.isnan(matrix), axis=0)]
    n_seeds, n_tracks = matrix.shape
    if n_tracks < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    tracks = rng.integers(0, n_tracks, size=(resamples, n_tracks))
    if n_seeds > 1:
        seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds))
        # resampled[r, s, t] = matrix[seeds[r, s], tracks[r, t]]
        resampled = matrix[seeds[:, :, None], tracks[:, None, :]]
        per_track_mean = _nanmean(resampled, axis=1)
    else:
        per_track_mean = matrix[0][tracks]
    statistics = np.nanmedian(per_track_mean, axis=1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.nanpercentile(statistics, [tail, 100.0 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Paired:
    """A row against its reference, track by track (seeds averaged per track first)."""

    tracks: int  # tracks both rows have a finite value for
    difference: float  # median over tracks of row - reference
    lo: float
    hi: float
    p: float  # two-sided Wilcoxon signed-rank p-value (NaN: no non-zero difference)


def paired_test(
    row: np.ndarray | Sequence[float],
    reference: np.ndarray | Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
) -> Paired:
    """Wilcoxon signed-rank test of ``row - reference`` over the tracks both have; each is one
    value per track or ``(seeds, tracks)`` over the same tracks in the same order."""
    a = _nanmean(_as_matrix(row), axis=0)
    b = _nanmean(_as_matrix(reference), axis=0)
    if a.shape != b.shape:
        raise ValueError(f"paired rows differ in tracks: {a.shape} vs {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    diff = a[keep] - b[keep]
    if not diff.size:
        return Paired(0, math.nan, math.nan, math.nan, math.nan)
    lo, hi = bootstrap_interval(diff, confidence, resamples)
    p = math.nan
    if np.any(diff != 0):
        p = float(stats.wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)
    return Paired(int(diff.size), float(np.median(diff)), lo, hi, p)


def verdict(paired: Paired, direction: str, alpha: float = ALPHA) -> str:
    """Does our paired difference support the paper's ordering (``higher`` or ``lower`` than
    the reference)? "yes", "no" or "not significant"."""
    if direction not in DIRECTIONS:
        raise ValueError(f"a claim's direction is one of {DIRECTIONS}, not {direction!r}")
    if not paired.p < alpha or paired.difference == 0 or math.isnan(paired.difference):
        return UNCLEAR
    higher = paired.difference > 0
    return HOLDS if higher == (direction == "higher") else FAILS
