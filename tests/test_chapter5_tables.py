"""Chapter-5 table specs (Tables 5.1-5.8): which runs they share, their stages, the efficiency
columns and relative changes they render, and the named final model's config."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from sweeps.__main__ import main as sweeps_main
from sweeps.plan import plan_table
from sweeps.render import _rows_layout, efficiency_columns, relative_change
from sweeps.runs import load_result, run_dir_for
from sweeps.specs import REPO, SpecError, available_tables, load_table
from tests.conftest import fake_musdb_root

CHAPTER_5 = ("5.1", "5.2", "5.3", "5.4", "5.5", "5.6", "5.7", "5.8")
FINAL_MODEL = REPO / "experiments/mmdensenet/mel_mdensenet_dc_nodsconvs_bc.yaml"


@pytest.fixture(autouse=True)
def _isolated(isolated_cache):
    pass


def _plans(table_id: str, tmp_path, profile: str = "ci") -> dict:
    return {p.row.label: p for p in plan_table(load_table(table_id), profile, tmp_path)}


def test_chapter5_tables_are_covered_by_the_every_profile_test() -> None:
    """tests/test_sweeps.py resolves every available table under smoke, ci and thesis."""
    assert set(CHAPTER_5) <= set(available_tables())


def test_context_rows_retest_the_64_frame_model(tmp_path) -> None:
    plans = _plans("5.1", tmp_path)
    (baseline,) = plans["train 64, test 64"].stages
    for label, frames in (("train 64, test 16", 16), ("train 64, test 8", 8)):
        trained, retest = plans[label].stages
        assert trained.run_dir == baseline.run_dir  # trained once, tested three times
        init_args = retest.resolved["model"]["init_args"]
        assert init_args["test_only"] is True
        assert init_args["test_context_frames"] == frames
        assert retest.resolved["data"]["context_frames"] == 64  # trained at 64
        assert init_args["init_from"] == f"run:{baseline.run_dir.name}"
    short = plans["train 8, test 8"].resolved
    assert short["data"]["context_frames"] == 8
    assert short["model"]["init_args"]["test_context_frames"] is None


def test_retraining_rows_continue_the_dc_model_for_20_epochs(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MUSDB_ROOT", str(fake_musdb_root(tmp_path / "musdb18")))
    plans = _plans("5.5", tmp_path, profile="thesis")
    (dc,) = plans["WF-MA + DC, no re-training"].stages
    assert dc.resolved["trainer"]["max_epochs"] == 100
    alphas = {
        "WF-MA + DC, re-training SA": 0.0,
        "WF-MA + DC, re-training 0.8 SA + 0.2 DC": 0.2,
        "WF-MA + DC, re-training 0.5 SA + 0.5 DC": 0.5,
    }
    for label, alpha in alphas.items():
        first, second = plans[label].stages
        assert first.run_dir == dc.run_dir
        init_args = second.resolved["model"]["init_args"]
        assert init_args["objective"] == "learned_mask" and init_args["alpha"] == alpha
        assert init_args["mel_bins"] == 128 and init_args["init_from"] == f"run:{dc.run_dir.name}"
        assert second.resolved["trainer"]["max_epochs"] == 20
    # the single-task WF-MA row is Table 5.4's Mel-MDenseNet run
    assert (
        plans["WF-MA, no re-training"].run_dir
        == _plans("5.4", tmp_path, "thesis")["Mel-MDenseNet"].run_dir
    )


def test_rows_shared_between_tables_are_one_run(tmp_path) -> None:
    t51, t54, t55, t57 = (_plans(t, tmp_path) for t in ("5.1", "5.4", "5.5", "5.7"))
    t52, t56, t58 = (_plans(t, tmp_path) for t in ("5.2", "5.6", "5.8"))
    assert t54["MMDenseNet"].run_dir == t51["train 8, test 8"].run_dir
    assert t55["WF-MA, no re-training"].run_dir == t54["Mel-MDenseNet"].run_dir
    assert t52["64"].run_dir == t51["train 64, test 64"].run_dir
    assert t52["8"].run_dir == t56["Baseline"].run_dir == t51["train 8, test 8"].run_dir
    assert t56["Mel-MDenseNet + DC"].run_dir == t55["WF-MA + DC, no re-training"].run_dir
    assert t58["Mel-MDenseNet-DC"].run_dir == t57["Mel-MDenseNet-DC"].run_dir
    assert t57["Mel-MDenseNet-DC"].run_dir == t55["WF-MA + DC, no re-training"].run_dir


def test_the_named_final_model_is_table_5_7s_last_row(tmp_path) -> None:
    config = yaml.safe_load(FINAL_MODEL.read_text())
    net = config["model"]["init_args"]["net"]["init_args"]
    assert net["downsample_conv"] is False and net["bottleneck_compression"] is True
    assert config["data"]["context_frames"] == 8 and config["model"]["init_args"]["mel_bins"] == 128
    spec = load_table("5.7")
    row = next(r for r in spec.rows if r.label == "Mel-MDenseNet-DC-NoDSConvs-BC")
    assert row.base == FINAL_MODEL and not row.overrides  # the config file as it is
    plans = _plans("5.7", tmp_path)
    no_ds = plans["Mel-MDenseNet-DC-NoDSConvs"].resolved["model"]["init_args"]["net"]
    assert no_ds["init_args"]["downsample_conv"] is False
    assert no_ds["init_args"]["bottleneck_compression"] is False


def test_efficiency_columns_count_each_rows_network_at_its_context(tmp_path) -> None:
    t52, t58 = _plans("5.2", tmp_path), _plans("5.8", tmp_path)
    at64 = efficiency_columns(t52["64"].resolved, 64)
    at8 = efficiency_columns(t52["8"].resolved, 8)
    assert at64["Parameters"] == at8["Parameters"] == 268_929
    assert at64["MACs"] == 8 * at8["MACs"]  # MACs are proportional to the context
    dc = efficiency_columns(t58["Mel-MDenseNet-DC"].resolved, 8)
    bc = efficiency_columns(t58["Mel-MDenseNet-DC-NoDSConvs-BC"].resolved, 8)
    assert (dc["Parameters"], bc["Parameters"]) == (257_953, 179_597)  # embedding head dropped
    assert bc["MACs"] < dc["MACs"] < at8["MACs"]


def test_published_relative_changes_are_the_thesis_printed_deltas() -> None:
    """The Delta columns recompute the thesis's relative changes from its own values; they
    reproduce what Tables 5.2, 5.6 and 5.8 print (to their rounding)."""
    printed = {
        "5.2": {"8": {"MACs": -87.5, "SDR": -9.7}},
        "5.6": {"Mel-MDenseNet + DC": {"MACs": -79.11, "Parameters": -6.64, "SDR": -1.22}},
        "5.8": {
            "Mel-MDenseNet-DC-NoDSConvs-BC": {"MACs": -29.57, "Parameters": -29.11, "SDR": 0.82}
        },
    }
    for table_id, rows in printed.items():
        spec = load_table(table_id)
        reference = next(r for r in spec.rows if r.label == spec.relative_to).published
        for label, deltas in rows.items():
            published = next(r for r in spec.rows if r.label == label).published
            for column, delta in deltas.items():
                ours = relative_change(published[column], reference[column])
                assert ours == pytest.approx(delta, abs=0.05), (table_id, label, column)


def test_relative_change_columns_in_the_rendered_rows() -> None:
    spec = SimpleNamespace(columns=["MACs", "SDR"], relative_to="A", paper="thesis", aggregates={})
    plans = [
        SimpleNamespace(
            row=SimpleNamespace(label=label, published=published, unavailable_columns={}, notes={})
        )
        for label, published in (
            ("A", {"MACs": 100.0, "SDR": 5.0}),
            ("B", {"MACs": 50.0, "SDR": None}),
            ("C", {"MACs": 25.0, "SDR": 4.0}),
        )
    ]
    provenance = {"commit": "x", "data": "d", "profile": "ci", "device": "cpu", "date": "t"}
    counts = {"SDR": {"n_tracks": 4, "n_excluded": 0, "n_frames": 80, "n_frames_excluded": 2}}
    measured = [
        {"values": {"MACs": 200.0, "SDR": 2.0}, "result": {"provenance": provenance}},
        {"values": {"MACs": 300.0, "SDR": 3.0}, "result": {"provenance": provenance}},
        None,  # not run
    ]
    for m in measured[:2]:
        m["scores"], m["spread"] = counts, {}
    statuses = [
        {"status": "current", "run": "a"},
        {"status": "current", "run": "b"},
        {"status": "not run", "run": "c"},
    ]
    md, rows = _rows_layout(spec, plans, measured, statuses)
    assert rows[0][:9] == [
        "label",
        "MACs",
        "MACs_published",
        "MACs_delta",
        "MACs_delta_published",
        "SDR",
        "SDR_published",
        "SDR_delta",
        "SDR_delta_published",
    ]
    assert rows[1][3:5] == [0.0, 0.0]  # the reference row
    assert rows[2][3:5] == [50.0, -50.0]  # ours against ours, thesis against thesis
    assert rows[2][7:9] == [50.0, ""]  # no published SDR: no published change
    assert rows[3][3:5] == ["", -75.0]  # not run: only the thesis's change
    assert "+50.00%" in md[3] and "-50.00%" in md[3] and "–" in md[3]
    assert md[3].endswith("| 0/4 tracks, 2/80 frames |")  # what the medians skipped
    assert "not run" in md[4] and rows[3][-7:-5] == ["not run", "c"]
    assert relative_change(1.0, -2.0) is None and relative_change(1.0, 0.0) is None


def test_relative_to_must_name_a_row(tmp_path, monkeypatch) -> None:
    import sweeps.specs as specs

    table = tmp_path / "table-9.1.yaml"
    spec = yaml.safe_load((specs.TABLES / "table-5.8.yaml").read_text())
    table.write_text(yaml.safe_dump({**spec, "id": "9.1", "relative_to": "nope"}))
    monkeypatch.setattr(specs, "TABLES", tmp_path)
    with pytest.raises(SpecError, match="relative_to 'nope' is not a row"):
        load_table("9.1")


@pytest.mark.slow
def test_retest_stage_tests_the_trained_weights_at_another_context(tmp_path) -> None:
    runs, results = tmp_path / "runs", tmp_path / "results"
    args = ["table", "5.1", "--profile", "ci", "--runs-dir", str(runs)]
    assert sweeps_main([*args, "--results-dir", str(results)]) == 0
    plans = _plans("5.1", runs)
    trained, retest = plans["train 64, test 16"].stages
    assert load_result(trained.run_dir)["checkpoint"]
    result = load_result(retest.run_dir)
    assert result["checkpoint"] is None and result["epochs"] == 0  # tested, not trained
    assert not (retest.run_dir / "checkpoints").exists()
    scores = {p.run_dir: load_result(p.run_dir)["scores"]["SDR"]["median"] for p in plans.values()}
    assert len(set(scores.values())) == 4  # each context gives its own numbers
    assert run_dir_for(retest.resolved, runs) == retest.run_dir
    table = json.loads((results / "ci" / "table-5.1.json").read_text())["rows"]
    assert [row["measured"] is not None for row in table] == [True] * 4
