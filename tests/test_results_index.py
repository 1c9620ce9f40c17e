"""``results/README.md`` (sweeps.results_index): every wired table, from rendered tables and run
folders only."""

from __future__ import annotations

import json
from pathlib import Path

from sweeps.plan import plan_table
from sweeps.results_index import key_row, render_index
from sweeps.specs import available_tables, load_table
from sweeps.tracking import ID_FILE


def _row(label: str, run: str, sdr: float | None, comparison: dict | None = None) -> dict:
    measured = None if sdr is None else {"SDR": sdr, "SIR": 10.0, "SAR": 5.0}
    provenance = {
        "commit": "abc1234",
        "data": "synthetic MUSDB-format data (generated)",
        "profile": "ci",
        "device": "cpu",
        "date": "2026-12-08T01:02:03Z",
    }
    return {
        "label": label,
        "status": "current" if measured else "not run",
        "run": run,
        "stages": [run],
        "measured": measured,
        "provenance": provenance if measured else None,
        "seeds": 2,
        "seed_runs": [run],
        "intervals": {"SDR_lo": sdr - 0.5, "SDR_hi": sdr + 0.25} if measured else {},
        "comparison": comparison,
    }


def _write_table(results: Path, runs: Path) -> None:
    plans = plan_table(load_table("4.13"), "ci", runs)
    claim = {
        "than": "Baseline",
        "column": "SDR",
        "direction": "higher",
        "quote": "It is clear",
        "holds": "no",
        "p": 0.03125,
    }
    rows = [
        _row(p.row.label, p.run_dir.name, 5.9 if "0.5" in p.row.label else 4.0)
        for p in plans
        if p.row.label != "SA, alpha 0.2"
    ]
    rows[-1]["comparison"] = claim
    rows.append(_row("SA, alpha 0.2", plans[1].run_dir.name, None))
    folder = results / "ci"
    folder.mkdir(parents=True)
    (folder / "table-4.13.json").write_text(json.dumps({"table": "4.13", "rows": rows}))
    (folder / "table-4.13-curves.png").write_bytes(b"png")


def test_the_key_row_is_the_best_published_sdr() -> None:
    assert key_row(load_table("4.13")) == ("WF-MA, alpha 0.5", "SDR")
    assert key_row(load_table("4.2")) == ("None", "SDR")  # none legible: the first row


def test_the_index_lists_every_table_and_reads_rendered_tables(tmp_path) -> None:
    results, runs = tmp_path / "results", tmp_path / "runs"
    _write_table(results, runs)
    text = render_index(results).read_text()
    for table_id in available_tables():
        assert f"| {table_id} (" in text, table_id
    line = next(x for x in text.splitlines() if x.startswith("| 4.13 "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0] == "4.13 ([md](ci/table-4.13.md))"
    assert cells[2] == "5 / 1 / 0"  # from the rendered table: no runs folder given
    assert cells[3:6] == ["2", "synthetic MUSDB-format data (generated)", "2026-12-08"]
    assert cells[6:9] == ["WF-MA, alpha 0.5 (SDR)", "5.90 [5.40, 6.15]", "5.82"]
    assert cells[9] == "no 1"
    assert cells[10] == "[curves](ci/table-4.13-curves.png)"
    assert cells[11] == "–"
    assert "| 4.2 (not rendered) |" in text
    assert "**no** (p = 0.03)" in text
    assert render_index(results).read_text() == text  # the same bytes again


def test_row_status_comes_from_the_runs_folder_and_wandb_groups_are_named(tmp_path) -> None:
    results, runs = tmp_path / "results", tmp_path / "runs"
    _write_table(results, runs)
    plans = plan_table(load_table("4.13"), "ci", runs)
    (plans[0].run_dir).mkdir(parents=True)
    (plans[0].run_dir / ID_FILE).write_text("abc")
    text = render_index(results, runs, tables=["4.13"]).read_text()
    line = next(x for x in text.splitlines() if x.startswith("| 4.13 "))
    # no run has finished in this runs folder, which the rendered table did not come from
    assert "| 0 / 6 / 0 (rendered table: 5 / 1 / 0) |" in line
    assert "group `table-4.13-ci` (project `mss-suite`)" in line
