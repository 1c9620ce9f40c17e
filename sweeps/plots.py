"""Figures next to the tables: training and validation curves of each row (thesis Fig. 4.1)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: compute nodes and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def epoch_metrics(run_dir: Path) -> dict[str, dict[int, float]]:
    """Per-epoch values of every logged metric, over all CSV log versions of a run (a resumed
    run writes a new version; later versions win)."""
    metrics: dict[str, dict[int, float]] = {}
    paths = (run_dir / "logs").glob("version_*/metrics.csv")
    for path in sorted(paths, key=lambda p: int(p.parent.name.removeprefix("version_"))):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                if not row.get("epoch"):
                    continue
                for name, value in row.items():
                    if name not in ("epoch", "step") and value:
                        metrics.setdefault(name, {})[int(row["epoch"])] = float(value)
    return metrics


def training_curves(runs: list[tuple[str, Path]], out_path: Path) -> Path | None:
    """Loss (train dashed, validation solid) and validation SDR per epoch for each row."""
    curves = [(label, epoch_metrics(run_dir)) for label, run_dir in runs]
    curves = [(label, m) for label, m in curves if "val/loss" in m]
    if not curves:
        return None
    fig, (loss_ax, sdr_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for index, (label, metrics) in enumerate(curves):
        color = f"C{index}"
        for name, style in (("train/loss_epoch", "--"), ("val/loss", "-")):
            points = sorted(metrics.get(name, {}).items())
            if points:
                loss_ax.plot(
                    *zip(*points, strict=True), style, color=color, label=f"{label} {name}"
                )
        sdr = sorted((e, v) for e, v in metrics.get("val/sdr", {}).items() if math.isfinite(v))
        if sdr:
            sdr_ax.plot(*zip(*sdr, strict=True), "-o", color=color, label=label)
    loss_ax.set(xlabel="epoch", ylabel="MSE", title="loss (dashed: training, solid: validation)")
    loss_ax.set_yscale("log")
    sdr_ax.set(xlabel="epoch", ylabel="dB", title="validation SDR (median over chunks)")
    for ax in (loss_ax, sdr_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (loss_ax, sdr_ax):
        if ax.get_lines():
            ax.legend(fontsize=7)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def threshold_figure(
    rows: list[dict],
    ramps: list[dict[str, dict[int, float]]],
    out_path: Path,
) -> Path | None:
    """Thesis Fig. 5.7: SDR and sparsity against the pruning threshold epsilon.

    ``rows``: one dict per table row with ``epsilon`` and, when known, ``sdr``/``sparsity``
    (ours, test median SDR and percent) and ``sdr_thesis``/``sparsity_thesis``. ``ramps``: the
    per-epoch metrics of PSP runs; the last validation SDR and sparsity at each threshold of
    the ramp are drawn as thin lines (validation chunks, not the test set)."""
    if not rows and not ramps:
        return None
    fig, sdr_ax = plt.subplots(figsize=(7, 4))
    sparsity_ax = sdr_ax.twinx()
    for metrics in ramps:
        thresholds = metrics.get("psp/threshold", {})
        last: dict[float, int] = {}
        for epoch in sorted(thresholds):
            last[round(thresholds[epoch], 6)] = epoch  # the last epoch at each threshold
        eps = sorted(last)
        for ax, name, color in (
            (sdr_ax, "val/sdr", "C0"),
            (sparsity_ax, "psp/sparsity", "C1"),
        ):
            series = metrics.get(name, {})
            points = [(e, series[last[e]]) for e in eps if last[e] in series]
            if name == "psp/sparsity":
                points = [(e, 100 * v) for e, v in points]
            points = [(e, v) for e, v in points if math.isfinite(v)]
            if points:
                ax.plot(*zip(*points, strict=True), "-", lw=0.8, color=color, alpha=0.5)
    for key, ax, color, marker, fill in (
        ("sdr", sdr_ax, "C0", "o", True),
        ("sparsity", sparsity_ax, "C1", "s", True),
        ("sdr_thesis", sdr_ax, "C0", "o", False),
        ("sparsity_thesis", sparsity_ax, "C1", "s", False),
    ):
        points = sorted((r["epsilon"], r[key]) for r in rows if r.get(key) is not None)
        if points:
            ax.plot(
                *zip(*points, strict=True),
                marker,
                color=color,
                markerfacecolor=color if fill else "none",
                label=f"{'ours (test)' if fill else 'thesis'} {key.split('_')[0]}",
            )
    handles = sdr_ax.get_legend_handles_labels()[0] + sparsity_ax.get_legend_handles_labels()[0]
    if handles:
        # below the axes: inside, it would hide points at small thresholds
        sdr_ax.legend(
            handles=handles, fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.15)
        )
    sdr_ax.set(xlabel="pruning threshold epsilon", ylabel="median SDR [dB]")
    sparsity_ax.set_ylabel("sparsity [%] (squares)")
    sdr_ax.set_title(
        "SDR (circles) and sparsity (squares); filled: ours, hollow: thesis; "
        "lines: validation along the ramp",
        fontsize=8,
    )
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
