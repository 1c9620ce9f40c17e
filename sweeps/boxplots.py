"""Box plots of per-track scores, one box per row and one panel per metric (the weakly informed
paper's Figure 2, issue #14): a table-level result figure named ``boxplots`` under ``figures:``.

Each data point is one test track: its median over 1 s frames (SDR, SAR, SIR) or its PES/EPS
(means over the qualifying frames), read from the row's per-track museval JSON. Boxes span the
quartiles with the median line; whiskers cover the whole range (``whis=(0, 100)``, as the
paper: "The whiskers extend over the whole data range"). A row's published median, where the
paper prints one, is marked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = ("SDR", "SAR", "SIR", "PES", "EPS")


def track_values(run_dir: Path, target: str, metric: str) -> list[float]:
    """One finite value per test track of ``run_dir`` (NaN tracks left out)."""
    values = []
    for path in sorted((run_dir / "museval").glob("*.json")):
        for entry in json.loads(path.read_text())["targets"]:
            if entry["name"] == target:
                scores = entry if metric in ("PES", "EPS") else entry.get("median", {})
                value = scores.get(metric)
                if value is not None and math.isfinite(value):
                    values.append(float(value))
    return values


def boxplots_figure(
    rows: list[dict[str, Any]], path: Path, metrics: tuple[str, ...] = METRICS
) -> Path | None:
    """``rows``: [{"label", "run_dir", "target", "published": {metric: value or None}}] of the
    rows with a finished run. None when no row has any value."""
    data = {m: [track_values(r["run_dir"], r["target"], m) for r in rows] for m in metrics}
    if not any(any(values) for values in data.values()):
        return None
    labels = [r["label"] for r in rows]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 4.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        values = data[metric]
        positions = [i + 1 for i, v in enumerate(values) if v]
        if positions:
            ax.boxplot([v for v in values if v], positions=positions, whis=(0, 100))
        for i, row in enumerate(rows):
            published = row["published"].get(metric)
            if published is not None:
                ax.plot(i + 1, published, "r*", markersize=9, label="published median")
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{metric} (dB)")
        handles, names = ax.get_legend_handles_labels()
        if handles:
            ax.legend(handles[:1], names[:1], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def table_boxplots(
    spec: Any, plans: list[Any], measured: list[dict | None], path: Path
) -> Path | None:
    """``RESULT_FIGURES`` writer (``sweeps.render``): the rows of ``spec`` with a current
    finished run, each on its report target, their published numbers marked."""
    rows = [
        {
            "label": plan.row.label,
            "run_dir": plan.run_dir,
            "target": plan.row.report,
            "published": plan.row.published,
        }
        for plan, m in zip(plans, measured, strict=True)
        if m is not None
    ]
    metrics = tuple(m for m in METRICS if m in spec.columns) or METRICS
    return boxplots_figure(rows, path, metrics) if rows else None
