"""Table specs, run folders and the table runner, end to end at the `ci` profile's scale."""

from __future__ import annotations

import csv
import json
import math

import pytest
import soundfile as sf
import torch

from lightning_modules.inference.separate import main as separate_main
from sweeps.__main__ import main as sweeps_main
from sweeps.identity import config_hash
from sweeps.plan import plan_table
from sweeps.runs import checkpoint_path, execute, is_finished, resolve, run_dir_for
from sweeps.specs import (
    SpecError,
    available_tables,
    compose,
    deep_merge,
    load_profile,
    load_table,
)
from tests.conftest import fake_musdb_root

TABLES_OF_THIS_ISSUE = {
    *("4.1", "4.2", "4.3", "4.4", "4.5", "4.6", "4.7", "4.12", "4.13", "4.14", "5.3")
}


@pytest.fixture(autouse=True)
def _isolated(isolated_cache):
    pass


# -- specs --------------------------------------------------------------------------------------


def test_every_table_resolves_under_every_profile(tmp_path, monkeypatch) -> None:
    """Every row validates under the smoke and ci profiles, and under the thesis profile with a
    MUSDB18 root (planning reads no data, so any path will do)."""
    assert TABLES_OF_THIS_ISSUE <= set(available_tables())
    musdb18 = fake_musdb_root(tmp_path / "musdb18")
    for table_id in available_tables():
        spec = load_table(table_id)
        for profile in ("smoke", "ci", "thesis"):
            if profile == "thesis":
                monkeypatch.setenv("MUSDB_ROOT", str(musdb18))
            else:
                monkeypatch.delenv("MUSDB_ROOT", raising=False)
            plans = [p for p in plan_table(spec, profile, tmp_path) if p.runnable]
            run_dirs = {p.run_dir for p in plans}
            assert len(run_dirs) == len(plans), f"rows of {table_id} collapse into one run"


def test_multi_stage_rows_start_from_the_previous_stage(tmp_path) -> None:
    plans = {p.row.label: p for p in plan_table(load_table("4.6"), "ci", tmp_path)}
    first, second = plans["learned mask, TPS pre-training"].stages
    assert first.resolved["model"]["init_args"]["objective"] == "mask"
    assert first.resolved["model"]["init_args"]["mask"] == "tps"
    assert second.resolved["model"]["init_args"]["objective"] == "learned_mask"
    assert second.resolved["model"]["init_args"]["init_from"] == f"run:{first.run_dir.name}"


def test_rows_using_other_rows_name_their_runs(tmp_path) -> None:
    plans = {p.row.label: p for p in plan_table(load_table("4.6"), "ci", tmp_path)}
    wiener = plans["Wiener filter, vocals"]
    assert wiener.requires == ("Baseline, vocals", "Baseline, accomp.")
    init_args = wiener.resolved["model"]["init_args"]
    assert init_args["vocals"] == f"run:{plans['Baseline, vocals'].run_dir.name}"
    assert init_args["accompaniment"] == f"run:{plans['Baseline, accomp.'].run_dir.name}"
    assert plans["Baseline, accomp."].row.report == "accompaniment"


def test_summary_rows_are_the_other_tables_runs(tmp_path) -> None:
    summary = {p.row.label: p for p in plan_table(load_table("4.14"), "ci", tmp_path)}
    chimera = {p.row.label: p for p in plan_table(load_table("4.13"), "ci", tmp_path)}
    assert summary["Deep clustering, alpha = 0.5"].run_dir == chimera["WF-MA, alpha 0.5"].run_dir
    multiband = {p.row.label: p for p in plan_table(load_table("4.10"), "ci", tmp_path)}
    assert summary["Multi-band channels"].run_dir == multiband["MBC"].run_dir
    assert summary["Multi-band dense blocks (MBDB-1)"].run_dir == multiband["MBDB-1"].run_dir
    phase = {p.row.label: p for p in plan_table(load_table("4.11"), "ci", tmp_path)}
    bootstrapped = summary["MagNet + PhaseNet, L_tot, bootstrapped"]
    assert bootstrapped.run_dir == phase["L_tot, bootstrapped"].run_dir
    assert all(p.runnable for p in summary.values())  # Table 4.14 has no "not run" family left
    # single-task rows of the multi-task table are Table 4.6's runs, trained once
    multitask = {p.row.label: p for p in plan_table(load_table("4.7"), "ci", tmp_path)}
    masks = {p.row.label: p for p in plan_table(load_table("4.6"), "ci", tmp_path)}
    assert multitask["-, SA, ReLU"].run_dir == masks["Baseline, vocals"].run_dir
    pretrained = "-, SA, sigmoid (+ mult.), TPS pre-training"
    assert multitask[pretrained].run_dir == masks["learned mask, TPS pre-training"].run_dir


def test_published_numbers_are_known_or_explained() -> None:
    """A published value is a number, or None with a note saying why it is unknown."""
    for table_id in available_tables():
        spec = load_table(table_id)
        for row in spec.rows:
            for column in spec.columns:
                value = row.published.get(column)
                if row.unavailable and value is None:  # garbled, or not printed at all
                    explained = "garbled" in row.notes or column in row.notes
                    assert explained, f"{table_id} {row.label} {column}: no note"
                elif row.unavailable:
                    assert isinstance(value, int | float)  # shown beside "not run"
                elif spec.layout == "statistics":
                    assert isinstance(value, dict) and value, (table_id, row.label, column)
                elif value is None:
                    assert column in row.notes, f"{table_id} {row.label} {column}: no note"
                else:
                    assert isinstance(value, int | float)


def test_identical_rows_of_different_tables_share_one_run() -> None:
    """Table 4.1's 3x3 row, 4.2's ReLU row and 4.3 are the same baseline: trained once."""
    profile = load_profile("smoke")
    hashes = set()
    for table_id, label in (("4.1", "3x3"), ("4.2", "ReLU"), ("4.3", "MMDenseNet baseline")):
        spec = load_table(table_id)
        row = next(r for r in spec.rows if r.label == label)
        hashes.add(config_hash(resolve(compose(spec, row, profile))))
    assert len(hashes) == 1


def test_deep_merge_with_dotted_keys() -> None:
    base = {"model": {"init_args": {"lr": 1, "net": {"init_args": {"k": 3}}}}, "x": [1, 2]}
    merged = deep_merge(base, {"model.init_args.net.init_args.k": 7, "x": [3]})
    assert merged == {"model": {"init_args": {"lr": 1, "net": {"init_args": {"k": 7}}}}, "x": [3]}
    assert base["model"]["init_args"]["net"]["init_args"]["k"] == 3  # not mutated


def test_bad_configurations_fail_before_anything_runs(tmp_path) -> None:
    with pytest.raises(SpecError, match="unknown table '9.9'.*4.3"):
        load_table("9.9")
    with pytest.raises(SpecError, match="MUSDB_ROOT"):
        load_profile("thesis")
    spec = load_table("4.1")
    bad = deep_merge(
        compose(spec, spec.rows[0], load_profile("ci")),
        {"model.init_args.net.init_args.no_such_argument": 1},
    )
    with pytest.raises(SpecError, match="invalid configuration"):
        resolve(bad)
    assert sweeps_main(["table", "9.9", "--runs-dir", str(tmp_path)]) == 2


# -- end to end ---------------------------------------------------------------------------------


def _ci_run(table_id: str, row_label: str, **overrides) -> dict:
    spec = load_table(table_id)
    row = next(r for r in spec.rows if r.label == row_label)
    return resolve(deep_merge(compose(spec, row, load_profile("ci")), overrides))


@pytest.mark.slow
def test_table_renders_with_published_numbers_and_provenance_then_resumes(tmp_path, capsys):
    runs, results = tmp_path / "runs", tmp_path / "results"
    args = [
        "table",
        "4.3",
        "--profile",
        "ci",
        "--runs-dir",
        str(runs),
        "--results-dir",
        str(results),
    ]
    assert sweeps_main(args) == 0
    md = (results / "ci" / "table-4.3.md").read_text()
    for expected in (
        "Table 4.3",
        "profile: ci",
        "synthetic",
        "device: cpu",
        "commit:",
        "Smoke run",
    ):
        assert expected in md
    assert "| SDR |" in md and "5.46" in md  # ours beside the thesis's median SDR
    with open(results / "ci" / "table-4.3.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:3] == ["label", "median", "median_published"]
    assert rows[0][-5:] == ["commit", "data", "profile", "device", "date"]
    assert [r[0] for r in rows[1:]] == ["SDR", "SIR", "SAR", "Loss"]
    assert math.isfinite(float(rows[1][1])) and float(rows[1][2]) == 5.46

    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    museval_files = sorted((run_dir / "museval").glob("*.json"))
    assert len(museval_files) == 2  # ci profile: two test tracks
    assert json.loads(museval_files[0].read_text())["targets"][0]["name"] == "vocals"
    finished_at = (run_dir / "result.json").stat().st_mtime_ns

    capsys.readouterr()
    assert sweeps_main(args) == 0  # second call: nothing to do, nothing overwritten
    assert "1/1 rows finished, 0 newly queued" in capsys.readouterr().out
    assert (run_dir / "result.json").stat().st_mtime_ns == finished_at


@pytest.mark.slow
def test_oracle_table_orders_linear_above_coarse_mel(tmp_path) -> None:
    results = tmp_path / "results"
    args = ["table", "5.3", "--profile", "ci", "--runs-dir", str(tmp_path / "runs")]
    assert sweeps_main([*args, "--results-dir", str(results)]) == 0
    table = json.loads((results / "ci" / "table-5.3.json").read_text())["rows"]
    sdr = {row["label"]: row["measured"]["SDR"] for row in table}
    assert sdr["STFT, 1024 bins"] > sdr["Mel, 128 bins"] > sdr["Mel, 64 bins"]
    for row in table:  # a well-conditioned BSS Eval: SIR above SDR
        assert row["measured"]["SIR"] > row["measured"]["SDR"]


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_numbers(tmp_path) -> None:
    resolved = _ci_run("4.1", "3x3")
    first = execute(resolved, tmp_path / "a", profile="ci")
    second = execute(resolved, tmp_path / "b", profile="ci")
    assert first["test_metrics"] == second["test_metrics"]
    assert first["scores"]["SDR"] == second["scores"]["SDR"]
    weights = [
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        for run in ("a", "b")
    ]
    for key, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_failed_run_is_not_finished_and_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    import lightning.pytorch as pl

    from lightning_modules.separators.spectrogram import SpectrogramSeparator

    resolved = _ci_run("4.1", "3x3", **{"trainer.max_epochs": 2})
    run_dir = run_dir_for(resolved, tmp_path)
    original_loss = SpectrogramSeparator.training_loss

    def nan_in_second_epoch(self, batch):
        loss = original_loss(self, batch)
        return loss * float("nan") if self.current_epoch == 1 else loss

    monkeypatch.setattr(SpectrogramSeparator, "training_loss", nan_in_second_epoch)
    with pytest.raises(FloatingPointError, match="training loss is nan at epoch 1, batch 0"):
        execute(resolved, run_dir, profile="ci")
    assert not is_finished(run_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").exists()

    monkeypatch.setattr(SpectrogramSeparator, "training_loss", original_loss)
    resumed_from = []
    original_fit = pl.Trainer.fit

    def recording_fit(self, *args, ckpt_path=None, **kwargs):
        resumed_from.append(ckpt_path)
        return original_fit(self, *args, ckpt_path=ckpt_path, **kwargs)

    monkeypatch.setattr(pl.Trainer, "fit", recording_fit)
    result = execute(resolved, run_dir, profile="ci")
    assert resumed_from == [str(run_dir / "checkpoints" / "last.ckpt")]
    assert result["epochs"] == 2 and is_finished(run_dir)


@pytest.mark.slow
def test_separate_writes_stems_at_the_input_rate(tmp_path, capsys) -> None:
    resolved = _ci_run("4.1", "3x3")
    result = execute(resolved, tmp_path / "run", profile="ci")
    song = tmp_path / "song.wav"
    t = torch.arange(22050 * 3) / 22050
    sf.write(song, torch.stack([torch.sin(2 * math.pi * 220 * t)] * 2, dim=1).numpy(), 22050)
    out = tmp_path / "out"
    checkpoint = str(checkpoint_path(tmp_path / "run", result))
    args = ["--input", str(song), "--checkpoint", checkpoint, "--out", str(out)]
    assert separate_main(args) == 0
    for stem in ("vocals", "accompaniment"):
        info = sf.info(out / f"song_{stem}.wav")
        assert info.samplerate == 22050 and abs(info.frames - 22050 * 3) <= 1

    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF not really a wav file")
    capsys.readouterr()
    assert separate_main([*args[:0], "--input", str(garbage), *args[2:]]) == 2
    assert f"cannot read {garbage}" in capsys.readouterr().err


@pytest.mark.slow
def test_second_stage_starts_from_the_first_stages_weights(tmp_path) -> None:
    from sweeps.runs import _cli, materialise_references

    plans = {p.row.label: p for p in plan_table(load_table("4.6"), "ci", tmp_path)}
    first, second = plans["learned mask, WF pre-training"].stages
    result = execute(first.resolved, first.run_dir, profile="ci")
    model = _cli(materialise_references(second.resolved, tmp_path), parse_only=False).model
    model.setup("fit")
    checkpoint = checkpoint_path(first.run_dir, result)
    trained = torch.load(checkpoint, weights_only=False)["state_dict"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0, msg=key)
    unfinished = deep_merge(second.resolved, {"model.init_args.init_from": "run:000000000000"})
    with pytest.raises(RuntimeError, match="has not finished"):
        materialise_references(unfinished, tmp_path)


def test_the_data_set_is_part_of_a_runs_identity(tmp_path, monkeypatch) -> None:
    spec = load_table("4.3")
    synthetic = plan_table(spec, "smoke", tmp_path)[0].run_dir
    monkeypatch.setenv("MUSDB_ROOT", str(fake_musdb_root(tmp_path / "musdb-a")))
    real_a = plan_table(spec, "smoke", tmp_path)[0]
    monkeypatch.setenv("MUSDB_ROOT", str(fake_musdb_root(tmp_path / "musdb-b")))
    real_b = plan_table(spec, "smoke", tmp_path)[0].run_dir
    assert len({synthetic, real_a.run_dir, real_b}) == 3
    assert real_a.resolved["data"]["root"] == str(tmp_path / "musdb-a")


def test_a_run_finished_while_waiting_for_the_lock_is_not_run_again(tmp_path, monkeypatch):
    import contextlib

    import sweeps.runs as runs

    run_dir = tmp_path / "run"
    finished = {"label": "by another process", "scores": {}}

    @contextlib.contextmanager
    def lock_taken_after_the_other_process_finished(path, wait=False):
        path.mkdir(parents=True, exist_ok=True)
        (path / "result.json").write_text(json.dumps(finished))
        yield

    resolved = _ci_run("4.3", "MMDenseNet baseline")
    monkeypatch.setattr(runs, "run_lock", lock_taken_after_the_other_process_finished)
    monkeypatch.setattr(runs, "_cli", lambda *a, **k: pytest.fail("the run was started again"))
    assert execute(resolved, run_dir, profile="ci") == finished


def test_runs_on_several_devices_are_refused(tmp_path) -> None:
    resolved = _ci_run("4.3", "MMDenseNet baseline")
    resolved["trainer"].update(accelerator="gpu", devices=2)
    with pytest.raises(SpecError, match="one device"):
        execute(resolved, tmp_path / "run", profile="ci")
