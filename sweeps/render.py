"""Render a results table from the runs' own museval JSON, beside the thesis's numbers.

Writes ``results/table-<id>.md``, ``.csv`` and ``.json``. The CSV has one line per row:
``label``, then every column twice (``<col>`` ours, ``<col>_published``; with ``relative_to``
also ``<col>_delta`` and ``<col>_delta_published`` in percent), then provenance.
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

import torch
import yaml

from lightning_modules.dsp import mel_filterbank
from lightning_modules.evaluation import aggregate
from lightning_modules.figures import mel_filterbank_figure
from lightning_modules.stats import network_stats, trained_network_stats
from sweeps.plan import RowPlan
from sweeps.plots import epoch_metrics, threshold_figure, training_curves
from sweeps.runs import load_result
from sweeps.specs import REPO, TableSpec

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


# Figures drawn from the table's finished rows, named under ``figures:`` like the above.
RESULT_FIGURES = {
    "psp_threshold": (
        _psp_threshold_figure,
        "SDR and sparsity against the pruning threshold (thesis Fig. 5.7)",
    ),
}


def run_scores(run_dir: Path, target: str = "vocals") -> dict[str, dict[str, float]]:
    """Statistics over tracks, recomputed from the run's per-track museval JSON files."""
    files = sorted((run_dir / "museval").glob("*.json"))
    if not files:
        raise FileNotFoundError(f"{run_dir}/museval holds no per-track results")
    return aggregate([json.loads(f.read_text()) for f in files], target=target)


def efficiency_columns(
    resolved: dict[str, Any], frames: int, checkpoint: str | None = None
) -> dict[str, float]:
    """Parameters and MACs of the row's network, as ``make stats`` counts them, and its
    Sparsity in percent. A pruned (PSP) row's numbers depend on its training: they are
    counted on its trained network after ``remove_pruned_channels`` (``checkpoint``)."""
    if resolved["model"]["init_args"].get("net") is None:
        return {}
    if resolved["model"]["init_args"].get("pruning") is None:
        stats = network_stats(resolved, frames)
        return {"Parameters": stats["params"], "MACs": stats["macs"], "Sparsity": 0.0}
    if not checkpoint:
        raise ValueError("a pruned row is counted on its trained checkpoint; the run has none")
    stats = trained_network_stats(checkpoint, frames)
    return {
        "Parameters": stats["params"],
        "MACs": stats["macs"],
        "Sparsity": 100.0 * stats["sparsity"],
    }


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
    if set(EFFICIENCY) & set(spec.columns):
        # The network runs at the test context (Table 5.2: MACs per context size).
        test_context = resolved["model"]["init_args"].get("test_context_frames")
        frames = spec.stats_frames or test_context or resolved["data"]["context_frames"]
        efficiency = efficiency_columns(resolved, frames, result.get("checkpoint"))
        values.update({k: v for k, v in efficiency.items() if k in spec.columns})
    return {"values": values, "scores": scores, "result": result}


def _fmt(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "?"
    if column == "Parameters":
        return f"{value / 1e3:,.3f}K"
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


def relative_change(value: Any, reference: Any) -> float | None:
    """``100 * (value / reference - 1)``, the thesis's Delta in percent; None when either is
    unknown or the reference is not positive (a change relative to it means nothing)."""
    if value is None or reference is None or not reference > 0:
        return None
    if math.isnan(value) or math.isnan(reference):
        return None
    return 100.0 * (value / reference - 1.0)


def _fmt_delta(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}%"


def _rows_layout(spec, plans, measured) -> tuple[list[str], list[list]]:
    """One line per row; with ``relative_to``, every column is followed by its relative
    change (ours and the thesis's, each against its own reference row's value)."""
    whos = ("ours", "thesis")
    relative = spec.relative_to is not None
    header = ["Row"]
    csv_header = ["label"]
    for c in spec.columns:
        header += [f"{c} ({who})" for who in whos]
        csv_header += [c, f"{c}_published"]
        if relative:
            header += [f"Δ {c} ({who})" for who in whos]
            csv_header += [f"{c}_delta", f"{c}_delta_published"]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    csv_rows = [csv_header + list(PROVENANCE)]
    reference: tuple[dict, dict] = ({}, {})
    if relative:
        index = [p.row.label for p in plans].index(spec.relative_to)
        ref_measured = measured[index]
        reference = (ref_measured["values"] if ref_measured else {}, plans[index].row.published)
    for plan, m in zip(plans, measured, strict=True):
        row = plan.row
        cells, values = [row.label], []
        for column in spec.columns:
            ours = m["values"].get(column) if m else None
            published = row.published.get(column)
            cells += [_fmt(column, ours) if m else "not run", _fmt(column, published)]
            values += ["" if ours is None else ours, "" if published is None else published]
            if relative:
                deltas = [
                    relative_change(ours, reference[0].get(column)),
                    relative_change(published, reference[1].get(column)),
                ]
                cells += [_fmt_delta(d) for d in deltas]
                values += ["" if d is None else d for d in deltas]
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
