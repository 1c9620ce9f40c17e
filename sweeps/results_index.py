"""``results/README.md``: one page over every wired table, rendered from what exists; it never
trains and never renders a table.

For every profile with rendered tables (``results/<profile>/table-*.json``), every table of
``python -m sweeps list`` with: its paper, its rows by status, seeds, data, date, the SDR of
its key row (ours with its interval beside the published one), the paper's claims that hold,
links to its figures and its W&B group where its runs were logged. Row statuses come from the
run folders (``sweeps.status``) when a runs folder is given, else from the rendered table.
The page depends only on these files, so it regenerates to the same bytes.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from datamodules.files import write_atomic
from sweeps.render import RESULTS, paper_label
from sweeps.specs import TableSpec, available_tables, load_table
from sweeps.status import FINISHED, STALE, UNAVAILABLE, _natural, inspect_table
from sweeps.study import study_name
from sweeps.tracking import ID_FILE, PROJECT

INDEX = "README.md"
RUN, NOT_RUN = "run", "not run"


def key_row(spec: TableSpec) -> tuple[str, str] | None:
    """``(row label, column)``: the row with the best published SDR (the table's headline),
    on the first column that is an SDR; None for tables without one."""
    columns = [c for c in spec.columns if c.rpartition("/")[2] == "SDR"]
    if not columns:
        return None
    column = columns[0]
    published = [
        (value, row.label)
        for row in spec.rows
        if isinstance(value := _published(row.published.get(column)), int | float)
    ]
    if not published:
        return spec.rows[0].label, column
    return max(published, key=lambda item: (item[0], item[1]))[1], column


def _published(value: Any) -> Any:
    """A published number; a statistics table's (Table 4.3) is its median."""
    return value.get("median") if isinstance(value, dict) else value


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.2f}"


def _ours(row: dict, column: str) -> str:
    if not row.get("measured") or row["measured"].get(column) is None:
        return row.get("status", NOT_RUN)
    intervals = row.get("intervals") or {}
    lo, hi = intervals.get(f"{column}_lo"), intervals.get(f"{column}_hi")
    text = _fmt(row["measured"][column])
    return f"{text} [{_fmt(lo)}, {_fmt(hi)}]" if lo is not None and hi is not None else text


def _counts_text(counts: Counter) -> str:
    text = f"{counts[RUN]} / {counts[NOT_RUN]} / {counts[STALE]}"
    extra = counts[UNAVAILABLE]
    return text + (f" (+{extra} unavailable)" if extra else "")


def _rendered_counts(table: dict) -> Counter:
    counts: Counter = Counter()
    for row in table["rows"]:
        state = row.get("status", NOT_RUN)
        unavailable = state == NOT_RUN and not row.get("run")
        counts[UNAVAILABLE if unavailable else {"current": RUN}.get(state, state)] += 1
    return counts


def _runs_counts(spec: TableSpec, profile: str, runs_root: Path) -> Counter:
    """Each row's status from the run folders (``sweeps.status``); a row: all its seeds."""
    counts: Counter = Counter()
    status = inspect_table(spec, profile, runs_root, None).row_status()
    by_row: dict[str, list[str]] = {}
    for label, state in status.items():
        by_row.setdefault(label.split(" [seed ")[0], []).append(state)
    for states in by_row.values():
        if all(s == FINISHED for s in states):
            counts[RUN] += 1
        elif STALE in states:
            counts[STALE] += 1
        elif all(s == UNAVAILABLE for s in states):
            counts[UNAVAILABLE] += 1
        else:  # missing, queued, running or failed
            counts[NOT_RUN] += 1
    return counts


def row_counts(spec: TableSpec, profile: str, runs_root: Path | None, table: dict | None) -> str:
    """``run / not run / stale`` counts of the table's rows (a row: all its seeds), from the
    run folders when there are any, else from the rendered table; where both exist and
    disagree (the runs changed since the render, or the table came from other runs), both."""
    rendered = _rendered_counts(table) if table is not None else None
    if runs_root is None or not runs_root.is_dir():
        return _counts_text(rendered or Counter({NOT_RUN: len(spec.rows)}))
    text = _counts_text(_runs_counts(spec, profile, runs_root))
    if rendered is not None and _counts_text(rendered) != text:
        text += f" (rendered table: {_counts_text(rendered)})"
    return text


def claims_cell(table: dict | None) -> str:
    """``yes 2, no 0, not significant 3`` over the rows with a claim."""
    verdicts = Counter(
        (row.get("comparison") or {}).get("holds")
        for row in (table or {}).get("rows", [])
        if (row.get("comparison") or {}).get("direction")
    )
    if not verdicts:
        return "–"
    order = ("yes", "no", "not significant", "not run")
    return ", ".join(f"{v} {verdicts[v]}" for v in order if verdicts[v])


def wandb_cell(spec: TableSpec, profile: str, runs_root: Path | None, table: dict | None) -> str:
    """The table's W&B group when any of its runs was logged to W&B, else "–"."""
    if runs_root is None or table is None:
        return "–"
    runs = {r for row in table["rows"] for r in [*row.get("stages", []), *row.get("seed_runs", [])]}
    if not any((runs_root / run / ID_FILE).exists() for run in sorted(runs)):
        return "–"
    group = study_name("table", spec.id, profile)
    return f"group `{group}` (project `{PROJECT}`)"


def table_line(
    table_id: str, profile: str, folder: Path, runs_root: Path | None
) -> tuple[list[str], list[str]]:
    """One table's cells, and the claims it quotes with their verdicts."""
    spec = load_table(table_id)
    path = folder / f"table-{table_id}.json"
    table = json.loads(path.read_text()) if path.exists() else None
    rows = {row["label"]: row for row in (table or {}).get("rows", [])}
    provenances = [r["provenance"] for r in rows.values() if r.get("provenance")]
    data = "; ".join(sorted({p["data"] for p in provenances})) or "–"
    date = max((p["date"] for p in provenances), default="–")[:10]
    seeds = sorted({str(r.get("seeds", 1)) for r in rows.values()}) or ["–"]
    key = key_row(spec)
    if key:
        label, column = key
        ours = _ours(rows[label], column) if label in rows else "not rendered"
        published = _published(next(r for r in spec.rows if r.label == label).published.get(column))
        sdr = [f"{label} ({column})", ours, _fmt(published)]
    else:
        sdr = ["–", "–", "–"]
    figures = sorted(p.name for p in folder.glob(f"table-{table_id}-*.png"))
    links = ", ".join(f"[{_figure_name(table_id, f)}]({folder.name}/{f})" for f in figures)
    md = f"[md]({folder.name}/table-{table_id}.md)" if table else "not rendered"
    cells = [
        f"{table_id} ({md})",
        paper_label(spec),
        row_counts(spec, profile, runs_root, table),
        "/".join(seeds),
        data,
        date,
        *sdr,
        claims_cell(table),
        links or "–",
        wandb_cell(spec, profile, runs_root, table),
    ]
    quoted = [
        f"- {table_id}, {row['label']}: {c['column']} {c['direction']} than '{c['than']}': "
        f'**{c["holds"]}** (p = {_fmt(c.get("p"))}); "{c["quote"]}"'
        for row in rows.values()
        if (c := row.get("comparison") or {}).get("direction")
    ]
    return cells, quoted


def _figure_name(table_id: str, filename: str) -> str:
    return filename.removeprefix(f"table-{table_id}-").removesuffix(".png")


HEADER = [
    "Table",
    "Paper",
    "Rows run / not run / stale",
    "Seeds",
    "Data",
    "Date",
    "Key row",
    "SDR ours [95 %]",
    "SDR published",
    "Claims holding",
    "Figures",
    "W&B",
]


def render_index(
    results_root: Path = RESULTS, runs_root: Path | None = None, tables: list[str] | None = None
) -> Path:
    """Write ``<results_root>/README.md`` over every profile folder with rendered tables."""
    tables = sorted(tables or available_tables(), key=_natural)
    profiles = sorted(
        p.name for p in results_root.iterdir() if p.is_dir() and any(p.glob("table-*.json"))
    )
    md = [
        "# Results",
        "",
        "Generated by `make results` (`python -m sweeps results`) from the rendered tables "
        "under `results/<profile>/` and the run folders; it trains nothing. Do not edit by "
        "hand. Each table's own page has its rows, intervals, paired tests and notes.",
        "",
        "SDR ours: median over test tracks (seeds averaged per track) with its 95 % bootstrap "
        "interval; the key row is the one with the best published SDR. Claims holding: the "
        "paper's stated orderings (`claim:` in the table specs) against our paired Wilcoxon "
        "tests (yes / no / not significant at p < 0.05). A smoke or ci profile's intervals "
        "describe a few synthetic tracks after minutes of training: they say nothing about "
        "the published MUSDB18 numbers.",
    ]
    for profile in profiles:
        folder = results_root / profile
        md += ["", f"## Profile `{profile}`", ""]
        md += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        claims: list[str] = []
        for table_id in tables:
            cells, quoted = table_line(table_id, profile, folder, runs_root)
            md.append("| " + " | ".join(cells) + " |")
            claims += quoted
        if claims:
            md += ["", f"Claims ({profile}):", *claims]
    path = results_root / INDEX
    write_atomic(path, "\n".join(md) + "\n")
    return path
