"""Render a results table from the runs' own museval JSON, beside the thesis's numbers.

Writes ``results/<profile>/table-<id>.md``, ``.csv`` and ``.json`` (atomically), so tables of
different profiles live side by side. The CSV has one line per row: ``label``, then every
column twice (``<col>`` ours, ``<col>_published``; with ``relative_to`` also ``<col>_delta``
and ``<col>_delta_published`` in percent), then the excluded counts, the run's status and its
provenance. Rows without a current finished run are shown as "not run" or "stale", never
filled in; a render never replaces measured rows by rows it cannot find (:class:`WouldDestroy`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from datamodules.files import write_atomic
from lightning_modules.dsp.spectral import mel_filterbank
from lightning_modules.evaluation.bss import aggregate
from lightning_modules.evaluation.figures import mel_filterbank_figure
from lightning_modules.evaluation.kernel_pca import assignment_weight, kernel_pca_figure
from lightning_modules.inference.stats import network_stats, trained_network_stats
from sweeps.boxplots import table_boxplots
from sweeps.plan import RowPlan
from sweeps.plots import epoch_metrics, threshold_figure, training_curves
from sweeps.row_statistics import (
    Comparison,
    combine,
    comparison,
    comparison_payload,
    fmt_interval,
    fmt_p,
    group_seeds,
)
from sweeps.runs import RESULT, checkpoint_path, load_result
from sweeps.specs import FULL, REPO, SpecError, TableSpec, canonical_profile, papers

RESULTS = REPO / "results"
PROVENANCE = ("commit", "data", "profile", "device", "date")
STATISTICS = ("median", "mad", "mean", "std")
STATISTIC_NAMES = {"median": "median", "mad": "MAD", "mean": "mean", "std": "std"}
BSS_METRICS = ("SDR", "SIR", "SAR", "ISR", "PES", "EPS")
EFFICIENCY = ("Parameters", "MACs", "Sparsity")
# Figures a run writes about itself during test -> (file suffix next to the table, caption).
RUN_FIGURES = {
    "embeddings_pca.png": ("embeddings", "Embeddings of '{label}' (PCA)"),
    "oracle_masks.png": (
        "spectrograms",
        "Oracle vocals of '{label}': linear mask (a) vs Mel mask (b), thesis Fig. 5.3",
    ),
    "attention.png": ("attention", "Attention weights of '{label}' (weakly informed, Fig. 3)"),
}


def _mel_filterbank_figure(spec: TableSpec, path: Path) -> Path:
    """Thesis Fig. 5.2: the 128 Mel filters at the table's sample rate."""
    rate = int(yaml.safe_load(spec.base.read_text())["data"]["rate"])
    return mel_filterbank_figure(mel_filterbank(rate, 128, dtype=torch.float64), rate, path)


# Table-level figures a spec names under ``figures:`` (they need no run): (writer, caption).
TABLE_FIGURES = {
    "mel_filterbank": (_mel_filterbank_figure, "The 128 Mel filters (thesis Fig. 5.2)"),
}


def _psp_threshold_figure(
    spec: TableSpec, plans: list[RowPlan], measured: list[dict | None], path: Path
) -> Path | None:
    """Thesis Fig. 5.7 from the rows: SDR and sparsity per pruning threshold (0 without PSP),
    ours beside the thesis's, and the validation ramps of the finished PSP runs."""
    rows, ramps = [], []
    for plan, m in zip(plans, measured, strict=True):
        if not plan.runnable:
            continue
        pruning = plan.resolved["model"]["init_args"].get("pruning")
        values = m["values"] if m else {}
        rows.append(
            {
                "epsilon": pruning["threshold"] if pruning else 0.0,
                "sdr": values.get("SDR"),
                "sparsity": values.get("Sparsity"),
                "sdr_thesis": plan.row.published.get("SDR"),
                "sparsity_thesis": plan.row.published.get("Sparsity"),
            }
        )
        if m and pruning:
            ramps.append(epoch_metrics(plan.run_dir))
    return threshold_figure(rows, ramps, path)


def _mbc_kernel_pca_figure(
    spec: TableSpec, plans: list[RowPlan], measured: list[dict | None], path: Path
) -> Path | None:
    """Thesis Fig. 4.8 from the table's finished MBC row (the first row whose network is a
    ``BandChannelDenseNet``); None while that row has not finished."""
    for plan, m in zip(plans, measured, strict=True):
        if not plan.runnable:
            continue
        net = (plan.resolved["model"].get("init_args") or {}).get("net") or {}
        if not str(net.get("class_path", "")).endswith("BandChannelDenseNet") or not m:
            continue
        checkpoint = checkpoint_path(plan.run_dir, m["result"])
        if checkpoint is None or not checkpoint.exists():
            return None
        return kernel_pca_figure(assignment_weight(checkpoint), path)[0]
    return None


# Figures drawn from the table's finished rows, named under ``figures:`` like the above.
RESULT_FIGURES = {
    "mbc_kernel_pca": (
        _mbc_kernel_pca_figure,
        "PCA of the l2 norms of the MBC assignment kernels per input map (thesis Fig. 4.8)",
    ),
    "psp_threshold": (
        _psp_threshold_figure,
        "SDR and sparsity against the pruning threshold (thesis Fig. 5.7)",
    ),
    "boxplots": (table_boxplots, "Per-track scores of the rows (weakly informed paper, Fig. 2)"),
}


def run_scores(run_dir: Path, target: str = "vocals") -> dict[str, dict[str, float]]:
    """Statistics over tracks, recomputed from the run's per-track museval JSON files."""
    files = sorted((run_dir / "museval").glob("*.json"))
    if not files:
        raise FileNotFoundError(f"{run_dir}/museval holds no per-track results")
    return aggregate([json.loads(f.read_text()) for f in files], target=target)


def efficiency_columns(
    resolved: dict[str, Any], frames: int, checkpoint: str | None = None, macs: bool = True
) -> dict[str, float]:
    """Parameters and MACs of the row's network, as ``make stats`` counts them, and its
    Sparsity in percent. A pruned (PSP) row's numbers depend on its training: they are
    counted on its trained network after ``remove_pruned_channels`` (``checkpoint``).
    ``macs=False``: no forward pass (a table without a MACs column)."""
    if resolved["model"]["init_args"].get("net") is None:
        return {}
    if resolved["model"]["init_args"].get("pruning") is None:
        stats = network_stats(resolved, frames, macs=macs)
        return {"Parameters": stats["params"], "MACs": stats.get("macs"), "Sparsity": 0.0}
    if not checkpoint:
        raise ValueError("a pruned row is counted on its trained checkpoint; the run has none")
    stats = trained_network_stats(checkpoint, frames, macs=macs)
    return {
        "Parameters": stats["params"],
        "MACs": stats.get("macs"),
        "Sparsity": 100.0 * stats["sparsity"],
    }


def finished_runs_by_key(runs_root: Path) -> dict[str, dict[str, Any]]:
    """Every finished run under ``runs_root`` by its row key, the newest where several share
    one (read once per render)."""
    runs: dict[str, dict[str, Any]] = {}
    for path in runs_root.glob(f"*/{RESULT}"):
        result = load_result(path.parent)
        key = result.get("row_key") if result else None
        newer = key not in runs or result["provenance"]["date"] >= runs[key]["provenance"]["date"]
        if key and newer:
            runs[key] = {"run": path.parent.name, **result}
    return runs


def stale_run(plan: RowPlan, finished: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """A finished run of this row made by code of another results version (same row key), or
    None. Its numbers are never shown as current; the table names it so the user knows."""
    found = finished.get(plan.stages[-1].key)
    return found if found and found["run"] != plan.run_dir.name else None


MEAN = "mean"  # ``mean/SDR``: the papers' "Average", the mean of the row's per-target medians
SCORES = "scores.json"  # metrics a model writes that are not museval's (see run_records)


def split_column(column: str) -> tuple[str | None, str]:
    """``vocals/SDR`` -> ("vocals", "SDR"); ``SDR`` -> (None, "SDR"): the row's report target."""
    target, _, metric = column.rpartition("/")
    return target or None, metric


def run_records(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run's ``scores.json``, for metrics that are not museval medians (SDR
    improvement, TOD-R, ...): ``{"records": [{"track", "target", "length" (s), <metric>: value,
    ...}, ...]}``, one record per track or per segment, as the model's paper evaluates."""
    path = run_dir / SCORES
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the run wrote no scores of its own")
    return json.loads(path.read_text())["records"]


def aggregate_records(
    records: list[dict[str, Any]], target: str, metric: str, how: str
) -> dict[str, float]:
    """``value`` (and ``std`` for mean_std) of one target's metric over the records."""
    rows = [r for r in records if r.get("target") == target and r.get(metric) is not None]
    values = np.array([float(r[metric]) for r in rows])
    if not values.size:
        return {"value": math.nan}
    if how == "median":
        return {"value": float(np.median(values))}
    if how == "length_weighted_mean":
        weights = np.array([float(r["length"]) for r in rows])
        return {"value": float(np.sum(weights * values) / np.sum(weights))}
    std = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
    return {"value": float(np.mean(values)), **({"std": std} if how == "mean_std" else {})}


def measured_row(spec: TableSpec, plan: RowPlan) -> dict[str, Any] | None:
    """Our numbers for one row, or None when it has no current finished run (or cannot run
    yet). Columns: museval metrics of the row's report target (``SDR``) or of a named one
    (``vocals/SDR``), their mean over the row's per-target columns (``mean/SDR``), metrics of
    the run's own ``scores.json`` (aggregated as the table's ``aggregates`` says), ``Loss``,
    and the efficiency columns."""
    if not plan.runnable or (result := load_result(plan.run_dir)) is None:
        return None
    resolved, run_dir = plan.resolved, plan.run_dir
    scores = run_scores(run_dir, plan.row.report)
    by_target = {plan.row.report: scores}
    values: dict[str, Any] = {}
    spread: dict[str, float] = {}  # std of mean_std columns
    for column in spec.columns:
        target, metric = split_column(column)
        if column in plan.row.unavailable_columns or target == MEAN:
            continue
        if column == "Loss":
            values[column] = result["test_metrics"].get("test/loss")
        elif metric in BSS_METRICS:
            target = target or plan.row.report
            if target not in by_target:
                by_target[target] = run_scores(run_dir, target)
            values[column] = by_target[target][metric]["median"]
        elif metric not in EFFICIENCY:
            how = spec.aggregates.get(metric, "mean")
            summary = aggregate_records(
                run_records(run_dir), target or plan.row.report, metric, how
            )
            values[column] = summary["value"]
            if "std" in summary:
                spread[column] = summary["std"]
    for column in spec.columns:  # the Average: over this table's per-target columns
        target, metric = split_column(column)
        if target == MEAN:
            parts = [
                values.get(c)
                for c in spec.columns
                if split_column(c)[0] not in (None, MEAN) and split_column(c)[1] == metric
            ]
            # Every target or none: a mean over the targets we happen to have is not the
            # papers' Average (an unavailable target leaves it n/a).
            complete = parts and all(v is not None for v in parts)
            values[column] = float(np.mean(parts)) if complete else None
    if set(EFFICIENCY) & set(spec.columns):
        # The network runs at the test context (Table 5.2: MACs per context size).
        test_context = resolved["model"]["init_args"].get("test_context_frames")
        frames = spec.stats_frames or test_context or resolved["data"]["context_frames"]
        checkpoint = checkpoint_path(run_dir, result)
        efficiency = efficiency_columns(
            resolved, frames, checkpoint and str(checkpoint), macs="MACs" in spec.columns
        )
        values.update({k: v for k, v in efficiency.items() if k in spec.columns})
    return {
        "values": values,
        "spread": spread,
        "scores": scores,
        "targets": by_target,
        "result": result,
    }


def row_status(plan: RowPlan, m: dict | None, finished: dict[str, dict]) -> dict[str, Any]:
    """What the table says about a row's run: status, run folder, commit that made it.
    ``finished``: the runs folder's finished runs by row key (``finished_runs_by_key``)."""
    if m:
        provenance = m["result"]["provenance"]
        return {"status": "current", "run": plan.run_dir.name, "commit": provenance["commit"]}
    if not plan.runnable:
        return {"status": "not run", "run": None, "commit": None}
    if stale := stale_run(plan, finished):
        return {"status": "stale", "run": stale["run"], "commit": stale["provenance"]["commit"]}
    return {"status": "not run", "run": plan.run_dir.name, "commit": None}


def excluded(m: dict | None, metric: str = "SDR") -> str:
    """Tracks and frames that BSS Eval left undefined (an all-zero frame of a reference or of
    the estimate) and the medians therefore skip: '0/4 tracks, 2/80 frames'."""
    if not m or metric not in m["scores"]:
        return "–"
    scores = m["scores"][metric]
    tracks = f"{scores['n_excluded']}/{scores['n_tracks'] + scores['n_excluded']} tracks"
    if "n_frames" not in scores:
        return tracks
    return f"{tracks}, {scores['n_frames_excluded']}/{scores['n_frames']} frames"


# Marks of cells without a number. "?" is the paper's own: a number its text garbles.
ILLEGIBLE = "?"
NOT_PRINTED = "–"  # the paper prints no such number (a row note "not printed ..." says so)
NO_VALUE = "n/a"  # ours: the metric is undefined (e.g. every frame excluded by BSS Eval)
UNAVAILABLE = "unavailable"  # ours: this cell cannot be computed here (see the row's notes)


def legend(paper: str) -> str:
    return (
        f"'?' under {paper}: not legible in the {paper} text (see notes). 'n/a' under ours: no "
        "value (every frame of every track excluded by BSS Eval, or no test loss). "
        f"'{UNAVAILABLE}': cannot be measured here (see notes). 'not run': no finished run. "
        "'stale': only a run made by older code (another results version) exists; it runs "
        "again with `make table-<id>`. '–': does not apply (under the paper: not printed there)."
    )


def _evaluator_text(measured: list[dict | None]) -> str:
    """Which BSS Eval v4 produced the rows (runs from before the option existed: museval)."""
    used = sorted(
        {
            ((m.get("result") or {}).get("scores") or {}).get("evaluator", "museval")
            for m in measured
            if m
        }
    )
    if used == ["fast"]:
        return "BSS Eval v4 by the fast evaluator, lightning_modules/evaluation/fast_bss.py"
    if len(used) > 1:
        return "BSS Eval v4, mixed evaluators: rows by museval and by the fast evaluator"
    return "museval BSS Eval v4"


def _whose_scores(spec: TableSpec) -> str:
    if not any("/" in column for column in spec.columns):
        return "the vocals (unless a note says otherwise)"
    return (
        "the target a column names (`<target>/<metric>`; `mean/<metric>`: the mean of the "
        "targets' medians, the papers' Average), the vocals otherwise"
    )


def paper_label(spec: TableSpec) -> str:
    """How headers and captions name the table's paper: "thesis", "Sams-Net", "paper"."""
    return papers()[spec.paper]["short"]


def results_dir(profile: str, root: Path = RESULTS) -> Path:
    """Where a profile's tables go: smoke and thesis numbers never share a file."""
    return root / profile


def _fmt(column: str, value: Any, missing: str = NO_VALUE) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if column == "Parameters":  # the papers print millions ("3.70M"), the thesis thousands
        return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:,.3f}K"
    if column == "MACs":
        return f"{value / 1e9:.3f}G" if value >= 1e9 else f"{value / 1e6:.3f}M"
    if column == "Sparsity":
        return f"{value:.2f}%"
    return f"{value:.3f}" if column == "Loss" else f"{value:.2f}"


def _provenance_lines(measured: list[dict | None]) -> list[str]:
    seen = [m["result"]["provenance"] for m in measured if m]
    if not seen:
        return ["No row has a finished run yet: run `make table-<id>`."]
    lines = []
    for key in PROVENANCE:
        values = sorted({str(p.get(key, "unknown")) for p in seen})
        if key == "date" and len(values) > 1:
            values = [f"{values[0]} to {values[-1]}"]
        if key == "commit" and len(values) > 1:
            values = [f"{', '.join(values)} (rows from several commits: see Runs below)"]
        lines.append(f"- {key}: {', '.join(values)}")
    return lines


def _overrides_line(spec: TableSpec, measured: list[dict | None]) -> list[str]:
    """The table's own profile overrides, for the profiles its rows ran with."""
    profiles = sorted({m["result"]["provenance"]["profile"] for m in measured if m})
    return [
        f"- profile overrides of this table ({profile}): "
        + ", ".join(f"{k}={v}" for k, v in spec.profile_overrides[profile].items())
        for profile in profiles
        if spec.profile_overrides.get(profile)
    ]


def _smoke_warning(measured: list[dict | None]) -> list[str]:
    provenances = [m["result"]["provenance"] for m in measured if m]
    reduced = [p for p in provenances if canonical_profile(p["profile"]) != FULL]
    if not reduced:
        return []
    profiles = ", ".join(sorted({p["profile"] for p in reduced}))
    data = "; ".join(sorted({p["data"] for p in reduced}))
    devices = "; ".join(sorted({p["device"] for p in reduced}))
    return [
        "",
        f"> **Smoke run ({profiles} profile)**: our numbers come from a reduced scale (few or "
        f"short tracks, a fraction of the epochs) on {data}, on {devices}. They show that the "
        f"pipeline works end to end; they are not comparable to the published MUSDB18 numbers. "
        "Parameters and MACs are exact (profiles never change an architecture).",
    ]


def _runs_lines(
    plans: list[RowPlan], statuses: list[dict], groups: list[list[RowPlan]] | None = None
) -> list[str]:
    """Per row: its run folder, the commit that made it and whether it is current."""
    lines = ["Runs (folder under the runs directory, commit, status):"]
    for plan, status in zip(plans, statuses, strict=True):
        if status["status"] == "current":
            text = f"`{status['run']}`, commit {status['commit']}, current"
        elif status["status"] == "stale":
            text = (
                f"stale: only `{status['run']}` (commit {status['commit']}, an older results "
                f"version) exists; the current run would be `{plan.run_dir.name}`"
            )
        elif plan.runnable:
            text = f"not run (would be `{status['run']}`)"
        else:
            text = f"not run ({plan.row.unavailable})"
        seeds = [p for p in (groups[plans.index(plan)] if groups else [])[1:] if p.runnable]
        if seeds:
            text += "; seeds " + ", ".join(
                f"{p.seed}: `{p.run_dir.name}`"
                + ("" if (p.run_dir / RESULT).exists() else " (not run)")
                for p in seeds
            )
        lines.append(f"- {plan.row.label}: {text}")
    return lines


def _seeds_line(groups: list[list[RowPlan]], measured: list[dict | None]) -> str:
    """How many seeds each row has (run of planned)."""
    counts = [
        f"{m['seeds'][0] if m else 0}/{len(g)}" if m and m["seeds"][0] < len(g) else str(len(g))
        for g, m in zip(groups, measured, strict=True)
    ]
    if len(set(counts)) == 1:
        return f"Seeds per row: {counts[0]}."
    parts = [f"{g[0].row.label}: {c}" for g, c in zip(groups, counts, strict=True)]
    return "Seeds per row (run/planned where not all ran): " + "; ".join(parts) + "."


def _uncertainty_text(spec: TableSpec, comparisons: list, paper: str) -> list[str]:
    if spec.layout == "statistics":  # one run's statistics, no intervals
        return []
    text = (
        "Brackets: 95 % bootstrap interval of the median over test tracks (tracks, and seeds "
        "where a row has several, resampled with replacement; seeds averaged per track)."
    )
    if any(comparisons):
        text += (
            " Paired Δ: median over tracks of this row minus the named row (seeds averaged per "
            "track), with its bootstrap interval; p: two-sided Wilcoxon signed-rank test over "
            f"those tracks. Claim holds?: the {paper}'s stated ordering (Notes) against ours: "
            "'yes' (p < 0.05, same sign), 'no' (p < 0.05, opposite sign), 'not significant'. "
            "Over n tracks the smallest possible p is 2/2^n (0.5 for 2 tracks, 0.125 for 4): "
            "a claim needs at least 6 test tracks to be decided at all."
        )
    return ["", text]


def _interval_payload(m: dict | None) -> dict[str, float]:
    """``{<col>_lo: .., <col>_hi: ..}`` of the row's intervals."""
    out: dict[str, float] = {}
    for column, (lo, hi) in (m or {}).get("intervals", {}).items():
        out[f"{column}_lo"], out[f"{column}_hi"] = lo, hi
    return out


class WouldDestroy(SpecError):
    """A render would replace measured rows of an existing table by rows it cannot find."""


def _check_nothing_lost(path: Path, rows: list[dict]) -> None:
    """Refuse to overwrite a rendered table whose measured rows this render does not have
    (another runs folder, an empty one, other data): results are never destroyed. Rows that
    became stale are not lost (their runs still exist), so they do not count."""
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # not a table of ours: nothing to protect
    new = {row["label"]: row for row in rows}
    lost = [
        row["label"]
        for row in old.get("rows", [])
        if row.get("measured") and new.get(row["label"], {}).get("status") == "not run"
    ]
    data = {row["provenance"]["data"] for row in old.get("rows", []) if row.get("provenance")}
    now = {row["provenance"]["data"] for row in rows if row.get("provenance")}
    if lost or (data and now and data != now):
        why = f"rows {lost} have no run here" if lost else f"its data were {sorted(data)}"
        raise WouldDestroy(
            f"{path} holds measured results that this render would replace ({why}); nothing "
            "was written. Render from the runs folder that made them (RUNS=...), write "
            "elsewhere (--results-dir), or move the old table away first."
        )


def render(spec: TableSpec, plans: list[RowPlan], out_dir: Path) -> dict[str, Path]:
    """Write the table's .md/.csv/.json into ``out_dir`` (``results_dir(profile)``) from the
    current finished runs of ``plans``; refuses (:class:`WouldDestroy`) to replace measured
    rows it cannot find. A row with several seeds (``sweeps.plan``) is one line, combined
    over its seeds' runs (``sweeps.row_statistics``)."""
    groups = group_seeds(plans)
    plans = [group[0] for group in groups]  # seed 1 of each row: its label, its report
    measured = [combine(spec, g, [measured_row(spec, p) for p in g]) for g in groups]
    by_label = {plan.row.label: m for plan, m in zip(plans, measured, strict=True)}
    comparisons = [comparison(spec, plan.row.label, by_label) for plan in plans]
    roots = {plan.run_dir.parent for plan in plans if plan.runnable}
    finished = {k: v for root in roots for k, v in finished_runs_by_key(root).items()}
    statuses = [row_status(plan, m, finished) for plan, m in zip(plans, measured, strict=True)]
    payload = {
        "table": spec.id,
        "rows": [
            {
                "label": plan.row.label,
                **status,
                "stages": [stage.run_dir.name for stage in plan.stages],
                "published": plan.row.published,
                "measured": m["values"] if m else None,
                "excluded": excluded(m, "SDR") if m else None,
                "scores": m["scores"] if m else None,
                "provenance": m["result"]["provenance"] if m else None,
                "results_version": m["result"].get("results_version") if m else None,
                "seeds": len(group),
                "seeds_run": m["seeds"][0] if m else 0,
                "seed_runs": [p.run_dir.name for p in group if p.runnable],
                "intervals": _interval_payload(m),
                "comparison": comparison_payload(found),
            }
            for plan, group, m, status, found in zip(
                plans, groups, measured, statuses, comparisons, strict=True
            )
        ],
    }
    paths = {kind: out_dir / f"table-{spec.id}.{kind}" for kind in ("md", "csv", "json")}
    _check_nothing_lost(paths["json"], payload["rows"])
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.layout == "statistics":
        lines_md, rows_csv = _statistics_layout(spec, plans, measured, statuses)
    else:
        lines_md, rows_csv = _rows_layout(spec, plans, measured, statuses, comparisons)
    curves = training_curves(
        [(p.row.label, p.run_dir) for p, m in zip(plans, measured, strict=True) if m],
        out_dir / f"table-{spec.id}-curves.png",
    )
    reported = [
        f"- {p.row.label}: {p.row.report} metrics" for p in plans if p.row.report != "vocals"
    ]
    notes = reported + [
        f"- {p.row.label}, {col}: {text}" for p in plans for col, text in p.row.notes.items()
    ]
    notes += [
        f"- {p.row.label}, {col}: {UNAVAILABLE}: {why}"
        for p in plans
        for col, why in p.row.unavailable_columns.items()
    ]
    notes += [f"- {metric}: {AGGREGATION_TEXT[how]}" for metric, how in spec.aggregates.items()]
    paper = paper_label(spec)
    notes += [
        f"- {p.row.label}: the {paper} claims {c.column} {c.direction} than '{c.than}': "
        f'"{c.quote}"'
        for p, c in zip(plans, comparisons, strict=True)
        if c and c.direction
    ]
    md = [
        f"# Table {spec.id}: {spec.title}",
        "",
        f"{paper[0].upper()}{paper[1:]} caption: {spec.caption}".strip(),
        *([] if spec.paper == "thesis" else ["", f"Paper: {papers()[spec.paper]['citation']}"]),
        "",
        "Produced by:",
        *_provenance_lines(measured),
        *_overrides_line(spec, measured),
        *_smoke_warning(measured),
        "",
        _seeds_line(groups, measured),
        "",
        *lines_md,
        "",
        "Ours: medians over tracks of the per-track medians over 1 s frames "
        f"({_evaluator_text(measured)}) for {_whose_scores(spec)}. Excluded: test tracks and "
        "1 s frames whose SDR BSS Eval leaves undefined (an all-zero reference or estimate "
        "frame); the medians skip them, as museval does, so a model that outputs silence where "
        f"it fails is not penalised there: look at this count (and at PES/EPS). {legend(paper)}",
        *_uncertainty_text(spec, comparisons, paper),
    ]
    if notes:
        md += ["", "Notes:", *notes]
    md += ["", *_runs_lines(plans, statuses, groups)]
    if curves:
        md += ["", f"Training curves of the rows: ![curves]({curves.name})"]
    for name in spec.figures:
        path = out_dir / f"table-{spec.id}-{name}.png"
        if name in RESULT_FIGURES:
            write_from_rows, caption = RESULT_FIGURES[name]
            figure = write_from_rows(spec, plans, measured, path)
        elif name in TABLE_FIGURES:
            write, caption = TABLE_FIGURES[name]
            figure = write(spec, path)
        else:
            known = sorted([*TABLE_FIGURES, *RESULT_FIGURES])
            raise ValueError(f"{spec.path}: unknown figure '{name}' ({known})")
        if figure is not None:
            md += ["", f"{caption}: ![{name}]({figure.name})"]
    for plan, m in zip(plans, measured, strict=True):
        for filename, (suffix, caption) in RUN_FIGURES.items():
            # thesis Fig. 4.10 (chimera models) and 5.3 (Mel oracle), written during test
            figure = plan.run_dir / filename if m else None
            if figure and figure.exists():
                slug = re.sub(r"[^A-Za-z0-9]+", "-", plan.row.label).strip("-").lower()
                copy = out_dir / f"table-{spec.id}-{slug}-{suffix}.png"
                shutil.copyfile(figure, copy)
                text = caption.format(label=plan.row.label)
                md += ["", f"{text}: ![{suffix}]({copy.name})"]
    table_csv = io.StringIO(newline="")
    csv.writer(table_csv).writerows(rows_csv)
    write_atomic(paths["csv"], table_csv.getvalue())
    write_atomic(paths["json"], json.dumps(payload, indent=1, default=float))
    write_atomic(paths["md"], "\n".join(md) + "\n")  # last: the file users open
    return paths


ROW_STATUS = ("excluded", "status", "run")
AGGREGATION_TEXT = {
    "median": "median over the records of the runs' scores.json",
    "mean": "mean over the records of the runs' scores.json",
    "mean_std": "mean (standard deviation) over the records (segments) of the runs' scores.json",
    "length_weighted_mean": "mean over the runs' scores.json records weighted by their length",
}


def _csv_provenance(m: dict | None, status: dict) -> list[str]:
    """The row's excluded counts, status and run folder, then its provenance."""
    provenance = m["result"]["provenance"] if m else {}
    own = [excluded(m) if m else "", status["status"], status["run"] or ""]
    return own + [str(provenance.get(key, "")) for key in PROVENANCE]


def relative_change(value: Any, reference: Any) -> float | None:
    """``100 * (value / reference - 1)``, the thesis's Delta in percent; None when either is
    unknown or the reference is not positive (a change relative to it means nothing)."""
    if value is None or reference is None or not reference > 0:
        return None
    if math.isnan(value) or math.isnan(reference):
        return None
    return 100.0 * (value / reference - 1.0)


def _fmt_published(column: str, value: Any, notes: dict[str, str] | None = None) -> str:
    if value is None and str((notes or {}).get(column, "")).startswith("not printed"):
        return NOT_PRINTED
    return _fmt(column, value, missing=ILLEGIBLE)


def _fmt_delta(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}%"


def _missing(status: dict) -> str:
    """The cell of a row without current numbers: 'not run' or 'stale'."""
    return status["status"]


def _rows_layout(
    spec, plans, measured, statuses, comparisons: list[Comparison | None] | None = None
) -> tuple[list[str], list[list]]:
    """One line per row; with ``relative_to``, every column is followed by its relative
    change (ours and the thesis's, each against its own reference row's value). The last
    column counts what BSS Eval excluded from the row's medians."""
    whos = ("ours", paper_label(spec))
    relative = spec.relative_to is not None
    header = ["Row"]
    csv_header = ["label"]
    spread = {c for c in spec.columns if spec.aggregates.get(split_column(c)[1]) == "mean_std"}
    comparisons = comparisons or [None] * len(plans)
    intervals = {c for m in measured if m for c in m.get("intervals", {})}
    for c in spec.columns:
        header += [f"{c} ({who})" for who in whos]
        csv_header += [c, f"{c}_published"] + ([f"{c}_std"] if c in spread else [])
        csv_header += [f"{c}_lo", f"{c}_hi"] if c in intervals else []
        if relative:
            header += [f"Δ {c} ({who})" for who in whos]
            csv_header += [f"{c}_delta", f"{c}_delta_published"]
    bss = any(split_column(c)[1] in BSS_METRICS for c in spec.columns)
    header += ["Excluded (SDR)"] if bss else []
    compared = any(comparisons)
    claims = any(c and c.direction for c in comparisons)
    if compared:
        header += ["Paired Δ [95 %] (ours)", "p (Wilcoxon)"]
        csv_header += ["paired_than", "paired_column", "paired_delta", "paired_delta_lo"]
        csv_header += ["paired_delta_hi", "paired_p", "paired_tracks"]
    if claims:
        header += [f"{paper_label(spec)}'s claim holds?"]
        csv_header += ["claim_direction", "claim_holds"]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    csv_rows = [csv_header + list(ROW_STATUS) + list(PROVENANCE)]
    reference: tuple[dict, dict] = ({}, {})
    if relative:
        index = [p.row.label for p in plans].index(spec.relative_to)
        ref_measured = measured[index]
        reference = (ref_measured["values"] if ref_measured else {}, plans[index].row.published)
    for plan, m, status in zip(plans, measured, statuses, strict=True):
        row = plan.row
        cells, values = [row.label], []
        for column in spec.columns:
            ours = m["values"].get(column) if m else None
            published = row.published.get(column)
            if column in row.unavailable_columns:
                cells += [UNAVAILABLE]
            elif m and column in m["spread"]:
                cells += [f"{_fmt(column, ours)} ({_fmt(column, m['spread'][column])})"]
            elif m and ours is not None and column in m.get("intervals", {}):
                cells += [fmt_interval(ours, m["intervals"][column])]
            else:
                cells += [_fmt(column, ours) if m else _missing(status)]
            cells += [_fmt_published(column, published, row.notes)]
            values += ["" if ours is None else ours, "" if published is None else published]
            if column in spread:
                values += [m["spread"].get(column, "") if m else ""]
            if column in intervals:
                lo, hi = (m or {}).get("intervals", {}).get(column, ("", ""))
                values += [lo, hi]
            if relative:
                deltas = [
                    relative_change(ours, reference[0].get(column)),
                    relative_change(published, reference[1].get(column)),
                ]
                cells += [_fmt_delta(d) for d in deltas]
                values += ["" if d is None else d for d in deltas]
        cells += [excluded(m)] if bss else []
        found = comparisons[plans.index(plan)]
        extra_cells, extra_values = _comparison_cells(found, compared, claims)
        cells += extra_cells
        md.append("| " + " | ".join(cells) + " |")
        csv_rows.append([row.label] + values + extra_values + _csv_provenance(m, status))
    return md, csv_rows


def _comparison_cells(
    found: Comparison | None, compared: bool, claims: bool
) -> tuple[list[str], list[Any]]:
    """The paired-test and claim cells (.md) and values (.csv) of a row."""
    cells: list[str] = []
    values: list[Any] = []
    if compared:
        paired = found.paired if found else None
        if found is None:
            cells += ["–", "–"]
            values += [""] * 7
        elif paired is None or paired.tracks == 0:
            cells += [f"not run (vs {found.than})", "–"]
            values += [found.than, found.column] + [""] * 5
        else:
            delta = fmt_interval(paired.difference, (paired.lo, paired.hi), sign=True)
            cells += [f"{delta} {found.column} vs {found.than}", fmt_p(paired.p)]
            values += [found.than, found.column, paired.difference, paired.lo, paired.hi]
            values += [paired.p, paired.tracks]
    if claims:
        holds = found.holds if found else None
        cells += [holds or "–"]
        values += [found.direction if found and found.direction else "", holds or ""]
    return cells, values


def _statistics_layout(spec, plans, measured, statuses) -> tuple[list[str], list[list]]:
    """One run, metrics as rows and median/MAD/mean/std as columns (thesis Table 4.3).

    The thesis's mean (0.26 dB) and std (19.41 dB) beside a median of 5.46 dB are only
    possible over the 1 s frames of all tracks pooled, not over per-track medians: the first
    block computes MAD, mean and std that way (the median is the usual median over tracks of
    the per-track medians) and stands beside the thesis; the second block gives all four over
    the per-track medians."""
    row, m, status = plans[0].row, measured[0], statuses[0]
    stats = [STATISTIC_NAMES[s] for s in STATISTICS]
    whos = ("ours", paper_label(spec))
    header = ["Metric"] + [f"{s} ({who})" for s in stats for who in whos]
    header += ["Excluded"]
    by_track = ["Metric"] + [f"{s} over tracks" for s in stats]
    md = [
        f"Row: {row.label}",
        "",
        "As the thesis evidently computed them: median over test tracks of the per-track "
        "medians; MAD, mean and std over all 1 s frames of all test tracks, pooled.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    md_tracks = [
        "Over tracks: all four statistics over the per-track medians (one value per track).",
        "",
        "| " + " | ".join(by_track) + " |",
        "|" + "---|" * len(by_track),
    ]
    csv_rows = [
        ["label"]
        + [f"{s}{x}" for s in stats for x in ("", "_published")]
        + [f"{s}_tracks" for s in stats]
        + list(ROW_STATUS)
        + list(PROVENANCE)
    ]
    for metric in spec.columns:
        published = row.published.get(metric) or {}
        cells, values, track_cells, track_values = [metric], [], [metric], []
        for statistic, name in zip(STATISTICS, stats, strict=True):
            if metric == "Loss" and statistic != "mean":  # one loss value per run: the mean
                cells += ["–", "–"]
                values += ["", ""]
                track_cells += ["–"]
                track_values += [""]
                continue
            if metric == "Loss":
                ours = tracks = m["values"].get("Loss") if m else None
            else:
                scores = m["scores"][metric] if m else {}
                # the median over tracks; MAD, mean, std over the pooled frames
                pooled = "median" if statistic == "median" else f"frames_{statistic}"
                ours, tracks = scores.get(pooled), scores.get(statistic)
            pub = published.get(name)
            cells += [_fmt(metric, ours) if m else _missing(status), _fmt_published(metric, pub)]
            values += ["" if ours is None else ours, "" if pub is None else pub]
            track_cells += [_fmt(metric, tracks) if m else _missing(status)]
            track_values += ["" if tracks is None else tracks]
        cells += ["–" if metric == "Loss" else excluded(m, metric)]
        md.append("| " + " | ".join(cells) + " |")
        md_tracks.append("| " + " | ".join(track_cells) + " |")
        csv_rows.append([metric] + values + track_values + _csv_provenance(m, status))
    return md + ["", *md_tracks], csv_rows
