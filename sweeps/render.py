"""Render a results table from the runs' own museval JSON, beside the thesis's numbers.

Writes ``results/table-<id>.md``, ``.csv`` and ``.json``. The CSV has one line per row:
``label``, then every column twice (``<col>`` ours, ``<col>_published``), then provenance.
Rows without a finished run are shown as "not run", never filled in.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

from lightning_modules.evaluation import aggregate
from lightning_modules.stats import network_stats
from sweeps.plan import RowPlan
from sweeps.plots import training_curves
from sweeps.runs import load_result
from sweeps.specs import REPO, TableSpec

RESULTS = REPO / "results"
PROVENANCE = ("commit", "data", "profile", "device", "date")
STATISTICS = ("median", "mad", "mean", "std")
STATISTIC_NAMES = {"median": "median", "mad": "MAD", "mean": "mean", "std": "std"}
BSS_METRICS = ("SDR", "SIR", "SAR", "ISR", "PES", "EPS")


def run_scores(run_dir: Path, target: str = "vocals") -> dict[str, dict[str, float]]:
    """Statistics over tracks, recomputed from the run's per-track museval JSON files."""
    files = sorted((run_dir / "museval").glob("*.json"))
    if not files:
        raise FileNotFoundError(f"{run_dir}/museval holds no per-track results")
    return aggregate([json.loads(f.read_text()) for f in files], target=target)


def efficiency_columns(resolved: dict[str, Any], frames: int) -> dict[str, int]:
    """Parameters and MACs of the row's network, as ``make stats`` counts them."""
    if resolved["model"]["init_args"].get("net") is None:
        return {}
    stats = network_stats(resolved, frames)
    return {"Parameters": stats["params"], "MACs": stats["macs"]}


def measured_row(spec: TableSpec, plan: RowPlan) -> dict[str, Any] | None:
    """Our numbers for one row, or None when its run has not finished (or cannot run yet)."""
    if not plan.runnable or (result := load_result(plan.run_dir)) is None:
        return None
    resolved, run_dir = plan.resolved, plan.run_dir
    scores = run_scores(run_dir, plan.row.report)
    values: dict[str, Any] = {}
    for column in spec.columns:
        if column in BSS_METRICS:
            values[column] = scores[column]["median"]
        elif column == "Loss":
            values[column] = result["test_metrics"].get("test/loss")
    if {"Parameters", "MACs"} & set(spec.columns):
        frames = spec.stats_frames or resolved["data"]["context_frames"]
        values.update(efficiency_columns(resolved, frames))
    return {"values": values, "scores": scores, "result": result}


def _fmt(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "?"
    if column == "Parameters":
        return f"{value / 1e3:,.3f}K"
    if column == "MACs":
        return f"{value / 1e9:.3f}G"
    return f"{value:.3f}" if column == "Loss" else f"{value:.2f}"


def _provenance_lines(measured: list[dict | None]) -> list[str]:
    seen = [m["result"]["provenance"] for m in measured if m]
    if not seen:
        return ["No row has a finished run yet: run `make table-<id>`."]
    lines = []
    for key in PROVENANCE:
        values = sorted({str(p.get(key, "?")) for p in seen})
        if key == "date" and len(values) > 1:
            values = [f"{values[0]} to {values[-1]}"]
        lines.append(f"- {key}: {', '.join(values)}")
    return lines


def _smoke_warning(measured: list[dict | None]) -> list[str]:
    provenances = [m["result"]["provenance"] for m in measured if m]
    reduced = [p for p in provenances if p["profile"] != "thesis"]
    if not reduced:
        return []
    profiles = ", ".join(sorted({p["profile"] for p in reduced}))
    data = "; ".join(sorted({p["data"] for p in reduced}))
    devices = "; ".join(sorted({p["device"] for p in reduced}))
    return [
        "",
        f"> **Smoke run ({profiles} profile)**: our numbers come from a reduced scale (few or "
        f"short tracks, a fraction of the epochs) on {data}, on {devices}. They show that the "
        "pipeline works end to end; they are not comparable to the thesis's MUSDB18 numbers. "
        "Parameters and MACs are exact (profiles never change an architecture).",
    ]


def render(spec: TableSpec, plans: list[RowPlan], out_dir: Path = RESULTS) -> dict[str, Path]:
    """Write the table's .md/.csv/.json from the finished runs of ``plans``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    measured = [measured_row(spec, plan) for plan in plans]
    if spec.layout == "statistics":
        lines_md, rows_csv = _statistics_layout(spec, plans, measured)
    else:
        lines_md, rows_csv = _rows_layout(spec, plans, measured)
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
    md = [
        f"# Table {spec.id}: {spec.title}",
        "",
        f"Thesis caption: {spec.caption}".strip(),
        "",
        "Produced by:",
        *_provenance_lines(measured),
        *_smoke_warning(measured),
        "",
        *lines_md,
        "",
        "Ours: medians over tracks of the per-track medians over 1 s frames (museval BSS Eval v4) "
        "for the vocals (unless a note says otherwise). '?' under thesis: not legible in the "
        "thesis text (see notes). 'not run': no finished run. '–': does not apply.",
    ]
    if notes:
        md += ["", "Notes:", *notes]
    if curves:
        md += ["", f"Training curves of the rows: ![curves]({curves.name})"]
    for plan, m in zip(plans, measured, strict=True):
        figure = plan.run_dir / "embeddings_pca.png" if m else None
        if figure and figure.exists():  # thesis Fig. 4.10, written by the chimera models
            slug = re.sub(r"[^A-Za-z0-9]+", "-", plan.row.label).strip("-").lower()
            copy = out_dir / f"table-{spec.id}-{slug}-embeddings.png"
            shutil.copyfile(figure, copy)
            md += ["", f"Embeddings of '{plan.row.label}' (PCA): ![embeddings]({copy.name})"]
    paths = {"md": out_dir / f"table-{spec.id}.md", "csv": out_dir / f"table-{spec.id}.csv"}
    paths["md"].write_text("\n".join(md) + "\n")
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows(rows_csv)
    payload = {
        "table": spec.id,
        "rows": [
            {
                "label": plan.row.label,
                "run": str(plan.run_dir) if plan.run_dir else None,
                "stages": [str(stage.run_dir) for stage in plan.stages],
                "published": plan.row.published,
                "measured": m["values"] if m else None,
                "scores": m["scores"] if m else None,
                "provenance": m["result"]["provenance"] if m else None,
            }
            for plan, m in zip(plans, measured, strict=True)
        ],
    }
    paths["json"] = out_dir / f"table-{spec.id}.json"
    paths["json"].write_text(json.dumps(payload, indent=1, default=float))
    return paths


def _csv_provenance(m: dict | None) -> list[str]:
    provenance = m["result"]["provenance"] if m else {}
    return [str(provenance.get(key, "")) for key in PROVENANCE]


def _rows_layout(spec, plans, measured) -> tuple[list[str], list[list]]:
    header = ["Row"] + [f"{c} ({who})" for c in spec.columns for who in ("ours", "thesis")]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    csv_rows = [
        ["label"] + [f"{c}{s}" for c in spec.columns for s in ("", "_published")] + list(PROVENANCE)
    ]
    for plan, m in zip(plans, measured, strict=True):
        row = plan.row
        cells, values = [row.label], []
        for column in spec.columns:
            ours = m["values"].get(column) if m else None
            published = row.published.get(column)
            cells += [_fmt(column, ours) if m else "not run", _fmt(column, published)]
            values += ["" if ours is None else ours, "" if published is None else published]
        md.append("| " + " | ".join(cells) + " |")
        csv_rows.append([row.label] + values + _csv_provenance(m))
    return md, csv_rows


def _statistics_layout(spec, plans, measured) -> tuple[list[str], list[list]]:
    """One run, metrics as rows and median/MAD/mean/std as columns (thesis Table 4.3)."""
    row, m = plans[0].row, measured[0]
    stats = [STATISTIC_NAMES[s] for s in STATISTICS]
    header = ["Metric"] + [f"{s} ({who})" for s in stats for who in ("ours", "thesis")]
    md = [f"Row: {row.label}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    csv_rows = [
        ["label"] + [f"{s}{x}" for s in stats for x in ("", "_published")] + list(PROVENANCE)
    ]
    for metric in spec.columns:
        published = row.published.get(metric) or {}
        cells, values = [metric], []
        for statistic, name in zip(STATISTICS, stats, strict=True):
            if metric == "Loss" and statistic != "mean":  # one loss value per run: the mean
                cells += ["–", "–"]
                values += ["", ""]
                continue
            if metric == "Loss":
                ours = m["values"].get("Loss") if m else None
            else:
                ours = m["scores"][metric][statistic] if m else None
            pub = published.get(name)
            cells += [("not run" if not m else _fmt(metric, ours)), _fmt(metric, pub)]
            values += ["" if ours is None else ours, "" if pub is None else pub]
        md.append("| " + " | ".join(cells) + " |")
        csv_rows.append([metric] + values + _csv_provenance(m))
    return md, csv_rows
