"""Bootstrap intervals, paired Wilcoxon tests and claim verdicts (sweeps.statistics), checked
against scipy's own bootstrap and against p-values computable by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from sweeps.statistics import (
    FAILS,
    HOLDS,
    UNCLEAR,
    Paired,
    bootstrap_interval,
    paired_test,
    point,
    verdict,
)

# Per-track SDR medians of a made-up 12-track test set (fixed numbers).
TRACKS = [5.82, 6.41, 3.17, 7.02, 4.48, 5.11, 8.30, 2.95, 6.07, 5.55, 4.91, 6.66]


def test_bootstrap_interval_matches_scipy_percentile_bootstrap() -> None:
    ours = bootstrap_interval(TRACKS, resamples=20_000)
    reference = stats.bootstrap(
        (np.array(TRACKS),),
        np.median,
        confidence_level=0.95,
        n_resamples=20_000,
        method="percentile",
        rng=np.random.default_rng(1),
    ).confidence_interval
    # different random streams: the percentiles of the median's distribution agree closely
    assert ours[0] == pytest.approx(reference.low, abs=0.15)
    assert ours[1] == pytest.approx(reference.high, abs=0.15)
    assert ours[0] < point(TRACKS) < ours[1]


def test_bootstrap_of_two_tracks_by_hand() -> None:
    """Two tracks a < b: a resample's median is a (1/4), (a+b)/2 (1/2) or b (1/4), so the
    2.5th and 97.5th percentiles are a and b."""
    assert bootstrap_interval([1.0, 3.0]) == (1.0, 3.0)
    assert all(math.isnan(v) for v in bootstrap_interval([2.0, math.nan]))  # one track
    assert all(math.isnan(v) for v in bootstrap_interval([math.nan, math.nan]))


def test_bootstrap_over_seeds_widens_with_seed_spread_and_point_averages_seeds() -> None:
    tracks = np.array(TRACKS)
    same = np.stack([tracks, tracks])
    apart = np.stack([tracks - 1.0, tracks + 1.0])
    assert bootstrap_interval(same) == bootstrap_interval(tracks)
    lo, hi = bootstrap_interval(apart)
    lo1, hi1 = bootstrap_interval(tracks)
    assert hi - lo > hi1 - lo1
    assert point(apart) == pytest.approx(np.median(tracks))
    # a NaN track of one seed: the other seed's value stands for that track
    holed = same.copy()
    holed[0, 0] = math.nan
    assert point(holed) == point(tracks)


def _exact_wilcoxon_p(diffs: list[float]) -> float:
    """Two-sided exact p by enumerating every sign assignment (no ties, no zeros)."""
    ranks = stats.rankdata(np.abs(diffs))
    observed = ranks[np.array(diffs) > 0].sum()
    total = ranks.sum()
    signs = list(itertools.product((0, 1), repeat=len(diffs)))
    sums = np.array([np.dot(s, ranks) for s in signs])
    extreme = min(observed, total - observed)
    return min(1.0, 2 * np.mean(sums <= extreme))


def test_wilcoxon_p_value_by_hand() -> None:
    # every difference positive, n = 6: p = 2 / 2**6
    row = [6.0, 7.0, 5.5, 8.0, 6.2, 7.7]
    reference = [5.0, 5.8, 5.4, 6.1, 6.0, 7.0]
    test = paired_test(row, reference)
    assert test.p == pytest.approx(2 / 64)
    assert test.tracks == 6
    assert test.difference == pytest.approx(np.median(np.subtract(row, reference)))
    assert verdict(test, "higher") == HOLDS
    assert verdict(test, "lower") == FAILS
    # mixed signs: against the brute-force enumeration of the signed-rank distribution
    diffs = [0.31, -0.12, 0.55, 0.08, -0.41, 0.27, 0.66, -0.05, 0.19]
    mixed = paired_test(np.array(diffs) + 5.0, np.full(len(diffs), 5.0))
    assert mixed.p == pytest.approx(_exact_wilcoxon_p(diffs), rel=1e-9)
    assert verdict(mixed, "higher") == UNCLEAR  # p = 0.25


def test_paired_test_averages_seeds_per_track_and_skips_undefined_tracks() -> None:
    reference = np.array([5.0, 5.8, 5.4, 6.1, 6.0, 7.0, math.nan])
    seeds = np.stack([reference + 0.5, reference + 1.5])
    test = paired_test(seeds, reference)
    assert test.tracks == 6
    assert test.difference == pytest.approx(1.0)
    assert test.lo == pytest.approx(1.0) and test.hi == pytest.approx(1.0)
    # two tracks can never be significant: the smallest two-sided p is 2 / 2**2
    assert paired_test([6.0, 7.0], [5.0, 5.0]).p == pytest.approx(0.5)
    assert math.isnan(paired_test([5.0, 6.0], [5.0, 6.0]).p)
    assert verdict(paired_test([5.0, 6.0], [5.0, 6.0]), "higher") == UNCLEAR


def test_a_verdict_needs_a_known_direction() -> None:
    with pytest.raises(ValueError, match="higher"):
        verdict(Paired(6, 1.0, 0.5, 1.5, 0.01), "better")


# -- seeds in plans -----------------------------------------------------------------------------


def test_seeds_add_runs_and_keep_seed_one_the_rows_own_run(tmp_path) -> None:
    from sweeps.plan import plan_table
    from sweeps.specs import load_table

    one = {p.row.label: p for p in plan_table(load_table("4.6"), "ci", tmp_path)}
    two = {p.row.label: p for p in plan_table(load_table("4.6"), "ci", tmp_path, seeds=2)}
    assert len(two) == 2 * len(one)
    for label, plan in one.items():
        assert two[label].run_dir == plan.run_dir  # seed 1 is the run the row always had
        other = two[f"{label} [seed 2]"]
        assert other.seed == 2 and other.table_label == label
        if plan.runnable:
            assert other.run_dir != plan.run_dir
    # a two-stage row seeds both stages; stage 2 starts from seed 2's stage 1
    first, second = two["learned mask, TPS pre-training [seed 2]"].stages
    base = one["learned mask, TPS pre-training"].stages[0].resolved["seed_everything"]
    assert first.resolved["seed_everything"] == second.resolved["seed_everything"] == base + 1
    assert second.resolved["model"]["init_args"]["init_from"] == f"run:{first.run_dir.name}"
    # a row using other rows uses the same seed of them
    wiener = two["Wiener filter, vocals [seed 2]"]
    assert wiener.requires == ("Baseline, vocals [seed 2]", "Baseline, accomp. [seed 2]")
    vocals = two["Baseline, vocals [seed 2]"].run_dir.name
    assert wiener.resolved["model"]["init_args"]["vocals"] == f"run:{vocals}"


def test_source_rows_follow_their_seeds_and_seeds_come_from_env_then_spec(
    tmp_path, monkeypatch
) -> None:
    from sweeps.plan import plan_table
    from sweeps.specs import SEEDS_ENV, SpecError, load_table, seeds_for

    monkeypatch.setenv(SEEDS_ENV, "2")
    summary = {p.row.label: p for p in plan_table(load_table("4.14"), "ci", tmp_path)}
    chimera = {p.row.label: p for p in plan_table(load_table("4.13"), "ci", tmp_path)}
    for seed in ("", " [seed 2]"):
        row = summary["Deep clustering, alpha = 0.5" + seed]
        assert row.run_dir == chimera["WF-MA, alpha 0.5" + seed].run_dir
    monkeypatch.setenv(SEEDS_ENV, "0")
    with pytest.raises(SpecError, match="seeds"):
        seeds_for(load_table("4.13"), "ci")
    monkeypatch.delenv(SEEDS_ENV)
    assert seeds_for(load_table("4.13"), "ci") == 1


def test_claims_are_checked_and_quoted_from_the_papers_text() -> None:
    """Every ``claim:`` names rows and columns of its table, and its quote is the paper's own
    text (whitespace aside), never a paraphrase."""
    import re
    from pathlib import Path

    from sweeps.specs import REPO, available_tables, load_table

    texts = {
        "thesis": "thesis-efficient-mss-mmdensenet.txt",
        "samsnet": "samsnet-sliced-attention.txt",
        "weakly-informed": "weakly-informed-separation.txt",
        "dae-nca": "dae-mapping-functions-nca.txt",
        "chimera-blstm": "deep-clustering-chimera-music.txt",
    }
    papers = REPO.parent / "shared" / "papers"
    claims = 0
    for table_id in available_tables():
        spec = load_table(table_id)  # validates each claim's rows, column and direction
        for row in spec.rows:
            if not row.claim:
                continue
            claims += 1
            path = Path(papers / texts[spec.paper])
            if not path.exists():
                continue
            text = re.sub(r"\s+", " ", path.read_text())
            quote = re.sub(r"\s+", " ", row.claim["quote"])
            assert quote in text, f"table {table_id}, {row.label}: not the paper's words"
    assert claims >= 4


def test_a_malformed_claim_names_the_file_and_row(tmp_path, monkeypatch) -> None:
    import sweeps.specs as specs

    source = (specs.TABLES / "table-4.13.yaml").read_text()
    monkeypatch.setattr(specs, "TABLES", tmp_path)
    (tmp_path / "table-4.13.yaml").write_text(source.replace("direction: higher", "direction: up"))
    with pytest.raises(specs.SpecError, match="row 'SA, alpha 0.2': claim: direction"):
        specs.load_table("4.13")


# -- end to end ---------------------------------------------------------------------------------


def _frame_median(target: dict, metric: str) -> float:
    values = [f["metrics"][metric] for f in target["frames"]]
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.median(values)) if values else math.nan


@pytest.mark.slow
def test_table_4_13_with_two_seeds_renders_intervals_paired_tests_and_an_index(
    tmp_path, monkeypatch, isolated_cache
) -> None:
    import csv
    import json
    import re

    from sweeps.__main__ import main as sweeps_main
    from sweeps.specs import SEEDS_ENV

    monkeypatch.setenv(SEEDS_ENV, "2")  # restored after the test (--seeds sets it too)
    runs, results = tmp_path / "runs", tmp_path / "results"
    args = ["--profile", "ci", "--runs-dir", str(runs), "--results-dir", str(results)]
    assert sweeps_main(["table", "4.13", *args, "--seeds", "2"]) == 0
    assert len(list(runs.glob("*/result.json"))) == 12  # 6 rows x 2 seeds
    table = json.loads((results / "ci" / "table-4.13.json").read_text())
    md = (results / "ci" / "table-4.13.md").read_text()
    assert "Seeds per row: 2." in md
    assert re.search(r"\| -?\d+\.\d\d \[-?\d+\.\d\d, -?\d+\.\d\d\] \|", md)
    assert "Paired Δ [95 %] (ours)" in md and "thesis's claim holds?" in md
    # two test tracks at ci: the smallest two-sided p is 0.5, nothing can be significant
    assert "| not significant |" in md and "| yes |" not in md
    with open(results / "ci" / "table-4.13.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        assert float(row["SDR_lo"]) <= float(row["SDR"]) <= float(row["SDR_hi"])
    by_label = {row["label"]: row for row in table["rows"]}
    assert all(row["seeds"] == 2 and len(row["seed_runs"]) == 2 for row in table["rows"])

    # the paired test against the runs' raw museval frames, computed here independently
    def per_track(run: str, metric: str) -> dict[str, float]:
        out = {}
        for path in sorted((runs / run / "museval").glob("*.json")):
            track = json.loads(path.read_text())
            vocals = next(t for t in track["targets"] if t["name"] == "vocals")
            out[track["name"]] = _frame_median(vocals, metric)
        return out

    def seed_mean(label: str, metric: str) -> np.ndarray:
        seeds = [per_track(run, metric) for run in by_label[label]["seed_runs"]]
        return np.mean([[s[name] for name in sorted(s)] for s in seeds], axis=0)

    found = by_label["WF-MA, alpha 0.5"]["comparison"]
    assert (found["than"], found["column"], found["direction"]) == ("Baseline", "SDR", "higher")
    diff = seed_mean("WF-MA, alpha 0.5", "SDR") - seed_mean("Baseline", "SDR")
    assert found["difference"] == pytest.approx(np.median(diff))
    assert found["p"] == pytest.approx(stats.wilcoxon(diff).pvalue)
    assert found["holds"] == UNCLEAR
    measured = by_label["Baseline"]["measured"]["SDR"]
    assert measured == pytest.approx(np.median(seed_mean("Baseline", "SDR")))

    # the index, from the rendered table and the run folders only
    from sweeps.results_index import render_index

    first = render_index(results, runs, tables=["4.13", "4.3"]).read_text()
    assert render_index(results, runs, tables=["4.13", "4.3"]).read_text() == first
    line = next(x for x in first.splitlines() if x.startswith("| 4.13"))
    assert "| 6 / 0 / 0 |" in line and "| 2 |" in line and "| 5.82 |" in line
    assert "WF-MA, alpha 0.5 (SDR)" in line and "not significant 4" in line
    assert "[curves](ci/table-4.13-curves.png)" in line
    # Table 4.3's one row is 4.13's Baseline (one run, shared), so it has run without 4.3
    line = next(x for x in first.splitlines() if x.startswith("| 4.3"))
    assert "| 4.3 (not rendered) |" in line and "| 1 / 0 / 0 |" in line
