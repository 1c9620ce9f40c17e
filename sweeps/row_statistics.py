"""A table row over its seeds: one measured row, its intervals, its paired test and its claim.

``sweeps.render`` measures every seed's run (``measured_row``); this module combines them into
the row a table shows: BSS Eval cells become the median over tracks of the per-track values
averaged over the seeds, with a bootstrap interval over tracks and seeds; other numeric cells
(Loss, scores.json columns, efficiency) the mean over the seeds. See ``sweeps.statistics``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sweeps.plan import RowPlan
from sweeps.specs import TableSpec, claim_of
from sweeps.statistics import (
    Paired,
    bootstrap_interval,
    paired_test,
    per_track,
    point,
    seed_matrix,
    verdict,
)

BSS = ("SDR", "SIR", "SAR", "ISR")  # metrics with one median per track in the museval files
MEAN_TARGET = "mean"


def group_seeds(plans: list[RowPlan]) -> list[list[RowPlan]]:
    """The plans of each table row (its seeds, seed 1 first), in the table's order."""
    groups: dict[str, list[RowPlan]] = {}
    for plan in plans:
        groups.setdefault(plan.table_label, []).append(plan)
    return [sorted(group, key=lambda p: p.seed) for group in groups.values()]


def _interval_columns(spec: TableSpec) -> list[str]:
    out = []
    for column in spec.columns:
        target, _, metric = column.rpartition("/")
        if metric in BSS and target != MEAN_TARGET:
            out.append(column)
    return out


def track_matrix(
    plans: list[RowPlan], measured: list[dict | None], column: str
) -> tuple[list[str], np.ndarray] | None:
    """``(tracks, (seeds, tracks) values)`` of one BSS column over the measured seeds."""
    target, _, metric = column.rpartition("/")
    by_seed = [
        per_track(plan.run_dir, target or plan.row.report, metric)
        for plan, m in zip(plans, measured, strict=True)
        if m
    ]
    return seed_matrix(by_seed) if by_seed else None


def combine(spec: TableSpec, plans: list[RowPlan], measured: list[dict | None]) -> dict | None:
    """One table row from its seeds' measured rows (None when no seed has a current run).
    Adds ``seeds`` (measured, planned), ``intervals`` ``{column: (lo, hi)}`` and ``tracks``
    ``{column: (names, matrix)}`` to the first measured seed's row."""
    done = [m for m in measured if m]
    if not done:
        return None
    row = dict(done[0])
    values = dict(row["values"])
    for column in list(values):  # numbers that are not per track: mean over seeds
        numbers = [m["values"].get(column) for m in done]
        if len(done) > 1 and all(isinstance(v, int | float) for v in numbers):
            values[column] = float(np.mean(numbers))
    intervals, tracks = {}, {}
    for column in _interval_columns(spec):
        if column in plans[0].row.unavailable_columns or column not in values:
            continue
        found = track_matrix(plans, measured, column)
        if found is None:
            continue
        tracks[column] = found
        if len(done) > 1:
            values[column] = point(found[1])
        intervals[column] = bootstrap_interval(found[1])
    row.update(
        values=values,
        seeds=(len(done), len(plans)),
        intervals=intervals,
        tracks=tracks,
        runs=[p.run_dir.name for p, m in zip(plans, measured, strict=True) if m],
    )
    return row


@dataclass(frozen=True)
class Comparison:
    """A row's paired test against another row, and the verdict on its claim if it has one."""

    than: str
    column: str
    paired: Paired | None  # None: one of the two rows, or its column, was not measured
    direction: str | None = None
    quote: str | None = None

    @property
    def holds(self) -> str | None:
        if self.direction is None:
            return None
        return verdict(self.paired, self.direction) if self.paired else "not run"


def comparison(spec: TableSpec, label: str, by_label: dict[str, dict | None]) -> Comparison | None:
    """Row ``label`` against its claim's row, else against the table's reference row, on the
    claim's column, else on the first column with per-track values; None without either."""
    row = next(r for r in spec.rows if r.label == label)
    claim = claim_of(spec, row)
    columns = _interval_columns(spec)
    if claim is None and (spec.reference is None or label == spec.reference or not columns):
        return None
    than = claim["than"] if claim else spec.reference
    column = claim["column"] if claim else columns[0]
    ours, theirs = by_label.get(label), by_label.get(than)
    paired = None
    if ours and theirs and column in ours["tracks"] and column in theirs["tracks"]:
        (names_a, a), (names_b, b) = ours["tracks"][column], theirs["tracks"][column]
        common = sorted(set(names_a) & set(names_b))
        pick_a = [names_a.index(n) for n in common]
        pick_b = [names_b.index(n) for n in common]
        paired = paired_test(a[:, pick_a], b[:, pick_b])
    return Comparison(
        than,
        column,
        paired,
        claim["direction"] if claim else None,
        claim.get("quote") if claim else None,
    )


def fmt_interval(value: float, interval: tuple[float, float] | None, sign: bool = False) -> str:
    """``5.82 [5.61, 6.03]`` (``+0.36 [+0.12, +0.55]`` with ``sign``)."""
    form = "{:+.2f}" if sign else "{:.2f}"
    if interval is None or any(math.isnan(v) for v in interval):
        return form.format(value)
    return f"{form.format(value)} [{form.format(interval[0])}, {form.format(interval[1])}]"


def fmt_p(p: float) -> str:
    if math.isnan(p):
        return "–"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def comparison_payload(found: Comparison | None) -> dict[str, Any] | None:
    """The JSON of a row's comparison."""
    if found is None:
        return None
    out: dict[str, Any] = {"than": found.than, "column": found.column}
    if found.paired:
        paired = found.paired
        out.update(
            tracks=paired.tracks,
            difference=paired.difference,
            difference_lo=paired.lo,
            difference_hi=paired.hi,
            p=paired.p,
        )
    if found.direction:
        out.update(direction=found.direction, quote=found.quote, holds=found.holds)
    return out
