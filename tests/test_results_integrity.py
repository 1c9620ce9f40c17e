"""Results you can trust: run identity, stale runs, renders that never destroy, provenance."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import shutil
import statistics
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import lightning_modules.separators.spectrogram as spectrogram
import sweeps.render as render_module
from sweeps.__main__ import main as sweeps_main
from sweeps.identity import RUNTIME_ONLY, config_hash, results_versions, row_key
from sweeps.plan import plan_table
from sweeps.render import WouldDestroy, render, results_dir
from sweeps.runs import RESULT, checkpoint_path, execute, load_result
from sweeps.specs import REPO, SpecError, deep_merge, load_table
from tests.conftest import fake_musdb_root


@pytest.fixture(autouse=True)
def _isolated(isolated_cache):
    pass


def _baseline(tmp_path: Path, table: str = "4.3", profile: str = "ci"):
    return plan_table(load_table(table), profile, tmp_path)[0]


# -- run identity -------------------------------------------------------------------------------


def test_runtime_only_keys_do_not_change_a_runs_folder(tmp_path) -> None:
    resolved = _baseline(tmp_path).resolved
    changed = {
        "trainer.enable_progress_bar": True,
        "trainer.enable_model_summary": True,
        "trainer.log_every_n_steps": 999,
        "trainer.num_sanity_val_steps": 0,
        "trainer.default_root_dir": "/elsewhere",
        "model.init_args.eval_workers": 7,
        "model.init_args.blocks_per_batch": 3,
        "data.cache_dir": "/another/cache",
    }
    assert set(changed) <= set(RUNTIME_ONLY)
    for key, value in changed.items():
        assert config_hash(deep_merge(resolved, {key: value})) == config_hash(resolved), key
    monitor = {
        "class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
        "init_args": {"logging_interval": "epoch"},
    }
    callbacks = [*resolved["trainer"]["callbacks"], monitor]
    with_monitor = deep_merge(resolved, {"trainer.callbacks": callbacks})
    assert config_hash(with_monitor) == config_hash(resolved)
    # what a result depends on does change it
    for key, value in {"model.init_args.lr": 1e-3, "data.seed": 1, "trainer.max_epochs": 2}.items():
        assert config_hash(deep_merge(resolved, {key: value})) != config_hash(resolved), key


def test_an_option_whose_default_keeps_the_old_behaviour_keeps_finished_runs(tmp_path) -> None:
    """A resolved config written before an option existed lacks its key; the same config with
    the option at its default must name the same run (and any other value another run)."""
    resolved = _baseline(tmp_path).resolved
    before = copy.deepcopy(resolved)
    del before["model"]["init_args"]["net"]["init_args"]["dropout"]  # as before dropout existed
    del before["model"]["init_args"]["test_context_frames"]
    assert config_hash(before) == config_hash(resolved)
    assert row_key(before) == row_key(resolved)
    dropout = deep_merge(resolved, {"model.init_args.net.init_args.dropout": 0.1})
    assert config_hash(dropout) != config_hash(resolved)
    # the same for a field of a dataclass argument (PSPConfig.gradient is newer than PSP)
    pruned = plan_table(load_table("5.9"), "ci", tmp_path)[1].resolved
    before = copy.deepcopy(pruned)
    del before["model"]["init_args"]["pruning"]["gradient"]
    assert config_hash(before) == config_hash(pruned)
    literal = deep_merge(pruned, {"model.init_args.pruning.gradient": "literal"})
    assert config_hash(literal) != config_hash(pruned)


def test_a_results_version_bump_makes_finished_runs_stale(tmp_path, monkeypatch) -> None:
    plan = _baseline(tmp_path)
    versions = results_versions(plan.resolved)
    expected = {"Separator", "SpectrogramSeparator", "MMDenseNet", "MDenseNet", "MUSDBDataModule"}
    assert expected | {"synthetic data"} <= set(versions)  # MDenseNet: built by MMDenseNet
    old_hash, key = plan.run_dir.name, row_key(plan.resolved)
    monkeypatch.setattr(spectrogram.SpectrogramSeparator, "results_version", 99)
    bumped = _baseline(tmp_path)
    assert bumped.run_dir.name != old_hash  # the old run is not found as current any more
    assert row_key(bumped.resolved) == key  # but it is recognised as the same row


def _fake_finished_run(run_dir: Path, plan, commit: str, sdr: float, data: str = "synthetic"):
    """A finished run folder as `execute` leaves it, with hand-made museval JSON."""
    (run_dir / "museval").mkdir(parents=True)
    values = [{"SDR": sdr + i, "SIR": 10.0, "SAR": 5.0, "ISR": 8.0} for i in range(3)]
    values.append(dict.fromkeys(("SDR", "SIR", "SAR", "ISR"), float("nan")))  # a silent frame
    frames = [{"time": float(i), "duration": 1.0, "metrics": m} for i, m in enumerate(values)]
    for track in ("a", "b"):
        targets = [{"name": name, "frames": frames} for name in ("vocals", "accompaniment")]
        (run_dir / "museval" / f"{track}.json").write_text(
            json.dumps({"name": track, "targets": targets})
        )
    provenance = {"commit": commit, "data": data, "profile": "ci", "device": "cpu", "date": "d"}
    result = {
        "label": plan.row.label,
        "test_metrics": {"test/loss": 0.5},
        "scores": {},
        "checkpoint": None,
        "provenance": provenance,
        "results_version": results_versions(plan.resolved),
        "row_key": plan.stages[-1].key,
    }
    (run_dir / RESULT).write_text(json.dumps(result))


def test_stale_rows_are_named_never_rendered_as_current(tmp_path, monkeypatch) -> None:
    runs, out = tmp_path / "runs", tmp_path / "results"
    spec = load_table("4.2")
    plans = plan_table(spec, "ci", runs)
    _fake_finished_run(plans[0].run_dir, plans[0], "aaaaaaa", sdr=1.0)
    _fake_finished_run(plans[1].run_dir, plans[1], "bbbbbbb", sdr=2.0)
    monkeypatch.setattr(spectrogram.SpectrogramSeparator, "results_version", 99)
    stale = plan_table(spec, "ci", runs)
    paths = render(spec, stale, out)
    rows = {row["label"]: row for row in json.loads(paths["json"].read_text())["rows"]}
    first = rows[plans[0].row.label]
    assert first["status"] == "stale" and first["measured"] is None
    assert first["run"] == plans[0].run_dir.name and first["commit"] == "aaaaaaa"
    md = paths["md"].read_text()
    assert "stale: only `" + plans[0].run_dir.name in md
    assert "2.00" not in md  # the stale numbers are not shown


def test_a_two_stage_row_and_a_row_using_others_go_stale_not_missing(tmp_path, monkeypatch):
    """Their configs name other runs by hash (which contains versions): the row key names
    those runs by their row keys, so a version bump leaves the key, and the stale run found."""
    runs, out = tmp_path / "runs", tmp_path / "results"
    spec = load_table("4.6")
    labels = ("learned mask, WF pre-training", "Wiener filter, vocals")
    plans = {p.row.label: p for p in plan_table(spec, "ci", runs)}
    for label in labels:
        _fake_finished_run(plans[label].run_dir, plans[label], "aaaaaaa", sdr=1.0)
    render(spec, list(plans.values()), out)
    monkeypatch.setattr(spectrogram.SpectrogramSeparator, "results_version", 99)
    bumped = {p.row.label: p for p in plan_table(spec, "ci", runs)}
    for label in labels:
        assert bumped[label].stages[-1].key == plans[label].stages[-1].key
        assert bumped[label].run_dir != plans[label].run_dir
    paths = render(spec, list(bumped.values()), out)  # not refused: nothing is lost
    rows = {row["label"]: row for row in json.loads(paths["json"].read_text())["rows"]}
    for label in labels:
        assert rows[label]["status"] == "stale" and rows[label]["run"] == plans[label].run_dir.name


def test_rows_from_several_commits_say_which_made_each(tmp_path) -> None:
    runs = tmp_path / "runs"
    spec = load_table("4.2")
    plans = plan_table(spec, "ci", runs)
    _fake_finished_run(plans[0].run_dir, plans[0], "aaaaaaa", sdr=1.0)
    _fake_finished_run(plans[1].run_dir, plans[1], "bbbbbbb", sdr=2.0)
    md = render(spec, plans, tmp_path / "results")["md"].read_text()
    assert "rows from several commits" in md
    assert f"- {plans[0].row.label}: `{plans[0].run_dir.name}`, commit aaaaaaa, current" in md
    assert f"- {plans[1].row.label}: `{plans[1].run_dir.name}`, commit bbbbbbb, current" in md
    assert f"- {plans[2].row.label}: not run (would be `{plans[2].run_dir.name}`)" in md
    # the frame that BSS Eval left undefined is counted, per row, in both tracks
    assert "| 0/2 tracks, 2/8 frames |" in md


def test_table_4_3_compares_frame_statistics_with_the_thesis(tmp_path) -> None:
    """First block: median over tracks, MAD/mean/std over the pooled frames; second block:
    all four over the per-track medians. Hand-made frames: a [1, 2, 3, NaN], b [3, 3, 3, NaN]."""
    spec = load_table("4.3")
    plans = plan_table(spec, "ci", tmp_path / "runs")
    _fake_finished_run(plans[0].run_dir, plans[0], "aaaaaaa", sdr=1.0)
    track_b = plans[0].run_dir / "museval" / "b.json"
    frames = json.loads(track_b.read_text())
    for target in frames["targets"]:
        for frame in target["frames"][:3]:
            frame["metrics"]["SDR"] = 3.0
    track_b.write_text(json.dumps(frames))
    paths = render(spec, plans, tmp_path / "results")
    with open(paths["csv"]) as handle:
        header, sdr = list(csv.reader(handle))[:2]
    row = dict(zip(header, sdr, strict=True))
    pooled = [1.0, 2.0, 3.0, 3.0, 3.0, 3.0]
    assert float(row["median"]) == 2.5  # over tracks: the median of (2, 3)
    assert float(row["MAD"]) == 0.0  # pooled: median 3, |x - 3| = 2 1 0 0 0 0
    assert float(row["mean"]) == pytest.approx(sum(pooled) / 6)
    assert float(row["std"]) == pytest.approx(statistics.stdev(pooled))
    assert float(row["median_tracks"]) == 2.5 and float(row["MAD_tracks"]) == 0.5
    assert float(row["std_tracks"]) == pytest.approx(statistics.stdev([2.0, 3.0]))
    assert row["excluded"] == "0/2 tracks, 2/8 frames"
    assert row["median_published"] == "5.46" and row["std_published"] == "19.41"


# -- rendering never destroys -------------------------------------------------------------------


def test_profiles_render_side_by_side(tmp_path) -> None:
    assert results_dir("smoke", tmp_path) != results_dir("thesis", tmp_path)
    assert results_dir("thesis", tmp_path) == tmp_path / "thesis"


def test_a_render_from_an_empty_runs_folder_refuses_to_replace_measured_rows(tmp_path) -> None:
    spec = load_table("4.2")
    plans = plan_table(spec, "ci", tmp_path / "runs")
    _fake_finished_run(plans[0].run_dir, plans[0], "aaaaaaa", sdr=1.0)
    out = results_dir("ci", tmp_path)  # where `render --results-dir tmp_path` writes
    paths = render(spec, plans, out)
    before = {kind: path.read_bytes() for kind, path in paths.items()}
    elsewhere = plan_table(spec, "ci", tmp_path / "empty-runs")
    with pytest.raises(WouldDestroy, match="no run here"):
        render(spec, elsewhere, out)
    args = ["render", "4.2", "--profile", "ci", "--runs-dir", str(tmp_path / "empty-runs")]
    assert sweeps_main([*args, "--results-dir", str(tmp_path)]) == 2
    assert {kind: path.read_bytes() for kind, path in paths.items()} == before


def test_a_render_of_other_data_refuses_to_replace_a_table(tmp_path) -> None:
    spec = load_table("4.3")
    plans = plan_table(spec, "ci", tmp_path / "a")
    _fake_finished_run(plans[0].run_dir, plans[0], "aaaaaaa", sdr=1.0, data="MUSDB18 at /x")
    out = tmp_path / "results"
    render(spec, plans, out)
    other = plan_table(spec, "ci", tmp_path / "b")
    _fake_finished_run(other[0].run_dir, other[0], "aaaaaaa", sdr=1.0, data="MUSDB18 at /y")
    with pytest.raises(WouldDestroy, match="its data were"):
        render(spec, other, out)


def test_tables_and_run_configs_are_written_atomically(tmp_path, monkeypatch) -> None:
    written = []
    original = render_module.write_atomic

    def recording(path: Path, data: str) -> None:
        written.append(path.name)
        original(path, data)

    monkeypatch.setattr(render_module, "write_atomic", recording)
    spec = load_table("4.3")
    render(spec, plan_table(spec, "ci", tmp_path / "runs"), tmp_path / "out")
    assert sorted(written) == ["table-4.3.csv", "table-4.3.json", "table-4.3.md"]


def test_a_wrong_musdb_root_is_refused_before_anything_is_planned(tmp_path, monkeypatch) -> None:
    runs = tmp_path / "runs"
    monkeypatch.setenv("MUSDB_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(SpecError, match=f"MUSDB18 root {tmp_path / 'nowhere'} does not exist"):
        plan_table(load_table("4.3"), "thesis", runs)
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    monkeypatch.setenv("MUSDB_ROOT", str(empty))
    with pytest.raises(SpecError, match=f"{empty} holds no MUSDB18 tracks"):
        plan_table(load_table("4.3"), "thesis", runs)
    only_train = fake_musdb_root(tmp_path / "half")
    shutil.rmtree(only_train / "test")
    monkeypatch.setenv("MUSDB_ROOT", str(only_train))
    assert sweeps_main(["table", "4.3", "--runs-dir", str(runs)]) == 2
    assert not runs.exists()  # no study, no run folder


# -- runs that travel ---------------------------------------------------------------------------


@pytest.mark.slow
def test_runs_copied_elsewhere_render_and_resume_there(tmp_path) -> None:
    """A finished two-stage row's runs, copied to another folder (off a cluster), render
    there; with only its first stage copied, the second stage starts from the copy."""
    spec = load_table("4.6")
    label = "learned mask, WF pre-training"
    plans = {p.row.label: p for p in plan_table(spec, "ci", tmp_path / "cluster")}
    first, second = plans[label].stages
    execute(first.resolved, first.run_dir, profile="ci")
    execute(second.resolved, second.run_dir, profile="ci")
    assert load_result(first.run_dir)["checkpoint"] == "checkpoints/best.ckpt"

    laptop = tmp_path / "laptop"
    shutil.copytree(tmp_path / "cluster", laptop)
    shutil.rmtree(tmp_path / "cluster")
    moved = [p for p in plan_table(spec, "ci", laptop) if p.row.label == label]
    paths = render(spec, moved, tmp_path / "results")
    (row,) = json.loads(paths["json"].read_text())["rows"]
    assert row["status"] == "current" and row["measured"]["SDR"] is not None
    assert checkpoint_path(laptop / first.run_dir.name, load_result(laptop / first.run_dir.name))

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(laptop / first.run_dir.name, resumed / first.run_dir.name)
    (row,) = [p for p in plan_table(spec, "ci", resumed) if p.row.label == label]
    result = execute(row.stages[1].resolved, row.stages[1].run_dir, profile="ci")
    assert result["scores"]["SDR"]["n_tracks"] >= 1


# -- trials that end early ----------------------------------------------------------------------


def test_ctrl_c_fails_the_interrupted_trial_at_once(tmp_path, monkeypatch) -> None:
    import sweeps.study as study_module

    sweep = study_module.open_sweep(load_table("4.3"), "ci", tmp_path)
    study_module.enqueue_missing(sweep)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(study_module, "execute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        study_module.work(sweep)
    (trial,) = sweep.study.get_trials()
    assert trial.state == TrialState.FAIL  # not RUNNING until the heartbeat grace period
    assert "interrupted" in trial.user_attrs["error"]


def test_a_job_stopped_by_its_scheduler_leaves_its_trial_to_the_retry(tmp_path, monkeypatch):
    """SIGTERM (scancel, preemption, time limit) is not Ctrl-C: Lightning raises
    SIGTERMException; the trial stays running, so its stale heartbeat queues a retry."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    import sweeps.study as study_module

    sweep = study_module.open_sweep(load_table("4.3"), "ci", tmp_path)
    study_module.enqueue_missing(sweep)

    def stopped(*args, **kwargs):
        raise SIGTERMException

    monkeypatch.setattr(study_module, "execute", stopped)
    with pytest.raises(SIGTERMException):
        study_module.work(sweep)
    (trial,) = sweep.study.get_trials()
    assert trial.state == TrialState.RUNNING and "error" not in trial.user_attrs


@pytest.mark.slow
def test_ctrl_c_inside_lightning_fails_the_trial_too(tmp_path, monkeypatch) -> None:
    """Lightning catches KeyboardInterrupt in fit and exits (SystemExit): still failed."""
    import signal

    import sweeps.study as study_module

    def ctrl_c(self, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(spectrogram.SpectrogramSeparator, "training_loss", ctrl_c)
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT after the interrupt
    sweep = study_module.open_sweep(load_table("4.3"), "ci", tmp_path)
    study_module.enqueue_missing(sweep)
    try:
        with pytest.raises((KeyboardInterrupt, SystemExit)):
            study_module.work(sweep)
    finally:
        signal.signal(signal.SIGINT, handler)
    (trial,) = sweep.study.get_trials()
    assert trial.state == TrialState.FAIL and "interrupted" in trial.user_attrs["error"]


def test_a_nan_loss_fails_its_search_trial_and_the_worker_goes_on(tmp_path, monkeypatch) -> None:
    import sweeps.hpo as hpo

    calls = []

    def nan_first(resolved, run_dir, **kwargs):
        calls.append(run_dir)
        if len(calls) == 1:
            raise FloatingPointError("training loss is nan at epoch 0, batch 3")
        return {"resumed_from_epoch": None}

    monkeypatch.setattr(hpo, "execute", nan_first)
    monkeypatch.setattr(hpo, "epoch_metrics", lambda run_dir: {"val/sdr": {0: 1.5}})
    space = hpo.load_space("random-search")
    monkeypatch.setattr(hpo, "load_space", lambda name: dataclasses.replace(space, n_trials=2))
    assert hpo.run_search_worker("random-search", "ci", tmp_path, None) == 2
    study = optuna.load_study(
        study_name="hpo-random-search-ci", storage=hpo.open_storage(None, tmp_path)
    )
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "nan at epoch 0" in study.get_trials()[0].user_attrs["error"]


def test_a_tree_is_dirty_for_code_changes_not_for_regenerated_results(tmp_path) -> None:
    from datamodules.provenance import git_commit

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    for name in ("code.py", "results/table.md"):
        (tmp_path / name).write_text("one")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    (tmp_path / "results/table.md").write_text("regenerated")
    assert not git_commit(tmp_path).endswith("-dirty")
    (tmp_path / "code.py").write_text("changed")
    assert git_commit(tmp_path).endswith("-dirty")


# -- committed results --------------------------------------------------------------------------


def _committed_tables() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "results"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    return [REPO / p for p in listed if Path(p).name.startswith("table-") and p.endswith(".json")]


def test_committed_results_come_from_this_history_and_current_versions() -> None:
    """Every committed table names commits that are ancestors of HEAD and, per measured row,
    the results versions the code at HEAD would hash into that row's run."""
    tables = _committed_tables()
    assert tables, "no committed results/**/table-*.json"
    for path in tables:
        table = json.loads(path.read_text())
        profile = path.parent.name
        plans = {p.row.label: p for p in plan_table(load_table(table["table"]), profile, REPO)}
        for row in table["rows"]:
            if not row["measured"]:
                continue
            commit = row["provenance"]["commit"]
            assert not commit.endswith("-dirty"), f"{path}: {row['label']} from a dirty tree"
            ancestor = subprocess.run(
                ["git", "merge-base", "--is-ancestor", commit, "HEAD"], cwd=REPO
            )
            assert ancestor.returncode == 0, f"{path}: {row['label']}: {commit} not in HEAD"
            current = results_versions(plans[row["label"]].resolved)
            assert row["results_version"] == current, f"{path}: {row['label']} is stale"
            assert row["run"] == plans[row["label"]].run_dir.name, f"{path}: {row['label']}"
