"""Tables of any paper: per-target columns, the papers' Average, metrics of a run's own
scores.json, the paper's name, millions, per-table profile overrides, the full profile."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

import sweeps.specs as specs
from sweeps.__main__ import main as sweeps_main
from sweeps.plan import plan_table
from sweeps.render import _fmt, aggregate_records, render
from sweeps.runs import RESULT
from sweeps.specs import SpecError, load_profile, load_table

THESIS_IDENTITIES = Path(__file__).with_name("thesis_run_identities.json")


@pytest.fixture(autouse=True)
def _isolated(isolated_cache):
    pass


def _table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **spec) -> specs.TableSpec:
    """A table spec of our own, on the baseline experiment, loaded as the suite loads one."""
    tables = tmp_path / "tables"
    tables.mkdir(exist_ok=True)
    raw = {
        "id": "9.9",
        "title": "A test table",
        "caption": "Its caption.",
        "base": "experiments/mmdensenet/baseline.yaml",
        "columns": ["SDR"],
        "rows": [{"label": "one", "published": {}}],
        **spec,
    }
    (tables / "table-9.9.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(specs, "TABLES", tables)
    return load_table("9.9")


def _finished(plan, sdr: dict[str, list[float]], records: list[dict] | None = None) -> None:
    """A finished run with museval JSON of one track per entry of ``sdr``'s lists."""
    run_dir = plan.run_dir
    (run_dir / "museval").mkdir(parents=True)
    tracks = len(next(iter(sdr.values())))
    for index in range(tracks):
        targets = [
            {
                "name": name,
                "frames": [{"time": 0.0, "duration": 1.0, "metrics": dict.fromkeys(
                    ("SDR", "SIR", "SAR", "ISR"), values[index])}],
            }
            for name, values in sdr.items()
        ]  # fmt: skip
        path = run_dir / "museval" / f"t{index}.json"
        path.write_text(json.dumps({"name": f"t{index}", "targets": targets}))
    if records is not None:
        (run_dir / "scores.json").write_text(json.dumps({"records": records}))
    provenance = {"commit": "abc", "data": "d", "profile": "ci", "device": "cpu", "date": "t"}
    result = {"test_metrics": {}, "scores": {}, "checkpoint": None, "provenance": provenance}
    (run_dir / RESULT).write_text(json.dumps(result))


def test_per_target_columns_and_the_papers_average(tmp_path, monkeypatch) -> None:
    columns = ["vocals/SDR", "drums/SDR", "bass/SDR", "other/SDR", "mean/SDR", "SDR"]
    spec = _table(tmp_path, monkeypatch, columns=columns, paper="samsnet")
    (plan,) = plan_table(spec, "ci", tmp_path / "runs")
    per_target = {"vocals": [1.0, 3.0], "drums": [2.0, 2.0], "bass": [0.0, 10.0], "other": [4, 6]}
    _finished(plan, per_target)
    (row,) = json.loads(render(spec, [plan], tmp_path / "out")["json"].read_text())["rows"]
    medians = {"vocals/SDR": 2.0, "drums/SDR": 2.0, "bass/SDR": 5.0, "other/SDR": 5.0}
    assert {k: row["measured"][k] for k in medians} == medians
    assert row["measured"]["mean/SDR"] == statistics.mean(medians.values())  # 3.5
    assert row["measured"]["SDR"] == 2.0  # plain SDR: the row's report target, vocals
    # a target we cannot measure leaves the Average n/a, not a mean over the other three
    rows = [{"label": "one", "published": {}, "unavailable_columns": {"bass/SDR": "why"}}]
    spec = _table(tmp_path, monkeypatch, columns=columns, paper="samsnet", rows=rows)
    (plan,) = plan_table(spec, "ci", tmp_path / "runs")  # the same run folder
    (row,) = json.loads(render(spec, [plan], tmp_path / "out")["json"].read_text())["rows"]
    assert row["measured"]["mean/SDR"] is None and row["measured"]["drums/SDR"] == 2.0


def test_columns_from_a_runs_own_scores_with_the_papers_aggregation(tmp_path, monkeypatch):
    records = [
        {"track": "a", "target": "vocals", "length": 10.0, "SDRi": 2.0, "TOD": 1.0},
        {"track": "b", "target": "vocals", "length": 30.0, "SDRi": 6.0, "TOD": 3.0},
        {"track": "c", "target": "vocals", "length": 60.0, "SDRi": 4.0, "TOD": 8.0},
        {"track": "a", "target": "accompaniment", "length": 10.0, "SDRi": 9.0},
    ]
    assert aggregate_records(records, "vocals", "SDRi", "median") == {"value": 4.0}
    weighted = (10 * 2 + 30 * 6 + 60 * 4) / 100
    assert aggregate_records(records, "vocals", "SDRi", "length_weighted_mean") == {
        "value": weighted
    }
    spread = aggregate_records(records, "vocals", "TOD", "mean_std")
    assert spread == {"value": 4.0, "std": statistics.stdev([1.0, 3.0, 8.0])}

    spec = _table(
        tmp_path,
        monkeypatch,
        columns=["vocals/SDRi", "accompaniment/SDRi", "TOD"],
        aggregates={"SDRi": "length_weighted_mean", "TOD": "mean_std"},
    )
    (plan,) = plan_table(spec, "ci", tmp_path / "runs")
    _finished(plan, {"vocals": [1.0], "accompaniment": [1.0]}, records)
    paths = render(spec, [plan], tmp_path / "out")
    (row,) = json.loads(paths["json"].read_text())["rows"]
    assert row["measured"] == {"vocals/SDRi": weighted, "accompaniment/SDRi": 9.0, "TOD": 4.0}
    md = paths["md"].read_text()
    assert "| 4.00 (3.61) |" in md  # mean (std) over segments
    assert "length" in md and "TOD: mean (standard deviation)" in md
    header = paths["csv"].read_text().splitlines()[0].split(",")
    assert header[header.index("TOD_published") + 1] == "TOD_std"
    with pytest.raises(SpecError, match="aggregates.TOD: 'sum'"):
        _table(tmp_path, monkeypatch, aggregates={"TOD": "sum"})


def test_a_table_names_its_paper_not_the_thesis(tmp_path, monkeypatch) -> None:
    spec = _table(tmp_path, monkeypatch, paper="samsnet", columns=["SDR", "Parameters"])
    (plan,) = plan_table(spec, "ci", tmp_path / "runs")
    md = render(spec, [plan], tmp_path / "out")["md"].read_text()
    assert "Sams-Net caption: Its caption." in md and "Paper: T. Li" in md
    assert "| SDR (Sams-Net) |" in md and "thesis" not in md.split("Produced by")[0]
    assert _fmt("Parameters", 3_700_000) == "3.70M" and _fmt("Parameters", 268_929) == "268.929K"
    with pytest.raises(SpecError, match="paper 'nobody'"):
        _table(tmp_path, monkeypatch, paper="nobody")


def test_unavailable_columns_are_marked_and_explained(tmp_path, monkeypatch) -> None:
    rows = [{"label": "one", "published": {"SDR": 5.0}, "unavailable_columns": {"SIR": "why"}}]
    spec = _table(tmp_path, monkeypatch, columns=["SDR", "SIR"], rows=rows)
    (plan,) = plan_table(spec, "ci", tmp_path / "runs")
    _finished(plan, {"vocals": [1.0], "accompaniment": [1.0]})
    md = render(spec, [plan], tmp_path / "out")["md"].read_text()
    assert "| one | 1.00 | 5.00 | unavailable | ? |" in md and "- one, SIR: unavailable: why" in md
    # a number the paper does not print at all is '–', not the illegible '?'
    rows = [{"label": "one", "published": {"SDR": 5.0}, "notes": {"SIR": "not printed there"}}]
    spec = _table(tmp_path, monkeypatch, columns=["SDR", "SIR"], rows=rows)
    (plan,) = plan_table(spec, "ci", tmp_path / "runs")  # the same run folder
    md = render(spec, [plan], tmp_path / "out")["md"].read_text()
    assert "| one | 1.00 | 5.00 | 1.00 | – |" in md


def test_profile_overrides_of_a_table_scale_data_and_training_not_models(tmp_path, monkeypatch):
    overrides = {"ci": {"data.context_frames": 8, "trainer.max_epochs": 2}}
    spec = _table(tmp_path, monkeypatch, profile_overrides=overrides)
    (plan,) = plan_table(spec, "ci", tmp_path / "runs")
    assert plan.resolved["data"]["context_frames"] == 8
    assert plan.resolved["trainer"]["max_epochs"] == 2
    (smoke,) = plan_table(spec, "smoke", tmp_path / "runs")  # other profiles: untouched
    assert smoke.resolved["data"]["context_frames"] == 64
    _finished(plan, {"vocals": [1.0], "accompaniment": [1.0]})
    md = render(spec, [plan], tmp_path / "out")["md"].read_text()
    assert "profile overrides of this table (ci): data.context_frames=8, trainer.max_epochs=2" in md
    bad = {"ci": {"model.init_args.net.init_args.first_channels": 8}}
    with pytest.raises(SpecError, match="may not set"):
        _table(tmp_path, monkeypatch, profile_overrides=bad)
    with pytest.raises(SpecError, match="profile_overrides.smoek: no such profile"):
        _table(tmp_path, monkeypatch, profile_overrides={"smoek": {"trainer.max_epochs": 2}})
    alias = _table(tmp_path, monkeypatch, profile_overrides={"thesis": {"trainer.max_epochs": 2}})
    assert alias.profile_overrides == {"full": {"trainer.max_epochs": 2}}  # the alias's profile


def test_the_full_profile_and_its_thesis_alias_are_one(tmp_path, monkeypatch) -> None:
    from tests.conftest import fake_musdb_root

    monkeypatch.setenv("MUSDB_ROOT", str(fake_musdb_root(tmp_path / "musdb")))
    assert load_profile("thesis") == load_profile("full")
    assert specs.default_profile() == "full"
    spec = load_table("4.3")
    assert (
        plan_table(spec, "thesis", tmp_path)[0].run_dir
        == plan_table(spec, "full", tmp_path)[0].run_dir
    )
    args = ["render", "4.3", "--profile", "thesis", "--runs-dir", str(tmp_path / "runs")]
    assert sweeps_main([*args, "--results-dir", str(tmp_path / "results")]) == 0
    assert (tmp_path / "results" / "full" / "table-4.3.md").exists()  # one name, one folder


def test_thesis_tables_resolve_to_the_runs_they_always_had(tmp_path) -> None:
    """Every thesis table's rows at the ci profile name the same run folders as recorded
    (``tests/thesis_run_identities.json``): options added for other papers, at their defaults,
    change no thesis run. After an intended change (a results version bump), re-record with
    ``python -m tests.test_paper_tables``."""
    assert identities(tmp_path) == json.loads(THESIS_IDENTITIES.read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("base", "paper", "targets"),
    [
        (
            "experiments/frontend/stereo_4targets_44k.yaml",
            "samsnet",
            ["vocals", "drums", "bass", "other"],
        ),
        ("experiments/frontend/mono_16k.yaml", "chimera-blstm", ["vocals", "accompaniment"]),
    ],
    ids=["stereo-44k-4-targets", "mono-16k-2-targets"],
)
def test_a_per_target_table_of_a_companion_front_end_end_to_end(
    tmp_path, monkeypatch, base, paper, targets
) -> None:
    """``sweeps table`` trains and tests the row at the ci profile and renders one column per
    target plus the papers' Average; each column is the median the model's own test loop
    logged for that target (``test/<target>/SDR``), read back from the museval JSON."""
    columns = [f"{target}/SDR" for target in targets] + ["mean/SDR", "Parameters"]
    spec = _table(tmp_path, monkeypatch, base=base, paper=paper, columns=columns)
    args = ["table", spec.id, "--profile", "ci", "--runs-dir", str(tmp_path / "runs")]
    assert sweeps_main([*args, "--results-dir", str(tmp_path / "results")]) == 0
    (row,) = json.loads((tmp_path / "results" / "ci" / "table-9.9.json").read_text())["rows"]
    (result,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/" + RESULT)]
    logged = {f"{t}/SDR": result["test_metrics"][f"test/{t}/SDR"] for t in targets}
    measured = {key: row["measured"][key] for key in logged}
    assert measured == pytest.approx(logged, abs=1e-4)
    assert row["measured"]["mean/SDR"] == pytest.approx(statistics.mean(logged.values()))
    assert row["measured"]["Parameters"] > 0
    md = (tmp_path / "results" / "ci" / "table-9.9.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Row"))
    assert all(f"| {column} (ours) |" in header for column in columns[:-1])


def identities(runs_root: Path) -> dict[str, dict[str, list[str]]]:
    return {
        table: {
            plan.row.label: [stage.run_dir.name for stage in plan.stages]
            for plan in plan_table(load_table(table), "ci", runs_root)
            if plan.runnable
        }
        for table in specs.available_tables()
        if load_table(table).paper == "thesis"
    }


if __name__ == "__main__":  # re-record the thesis's run identities
    THESIS_IDENTITIES.write_text(
        json.dumps(identities(Path("/nonexistent")), indent=1, sort_keys=True) + "\n"
    )
