"""W&B tracking of table runs: offline by default, one run per trial, never part of a run's
identity; read back from disk with `wandb leet inspect`."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweeps import tracking
from sweeps.__main__ import main as sweeps_main
from sweeps.identity import config_hash
from sweeps.runs import execute, is_finished, resolve, run_dir_for
from sweeps.specs import SpecError, compose, deep_merge, load_profile, load_table

WANDB = str(Path(sys.executable).with_name("wandb"))
GROUP = "table-4.1-ci"


@pytest.fixture(autouse=True)
def _isolated(isolated_cache, tmp_path, monkeypatch):
    # W&B's own caches and artifact staging go to the test's folder, and the defaults apply.
    for key in ("WANDB_DIR", "WANDB_MODE", "WANDB_PROJECT", tracking.LOGGER_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_SILENT", "true")


def _ci_run(**overrides) -> dict:
    spec = load_table("4.1")
    row = next(r for r in spec.rows if r.label == "3x3")
    return resolve(deep_merge(compose(spec, row, load_profile("ci")), overrides))


def _wandb_logger(config: dict) -> dict:
    loggers = config["trainer"]["logger"]
    (logger,) = [lg for lg in loggers if lg["class_path"] == tracking.WANDB_LOGGER]
    return logger


# -- the logger in the run's config -----------------------------------------------------------


def test_without_the_wandb_logger_the_config_is_untouched(tmp_path) -> None:
    resolved = _ci_run()
    config = copy.deepcopy(resolved)
    tracking.add_logger(config, resolved, tmp_path / "run", label="3x3", profile="ci")
    assert config == resolved
    assert not (tmp_path / "run").exists()


def test_wandb_logger_is_offline_grouped_and_added_after_hashing(tmp_path) -> None:
    resolved = _ci_run()
    before = copy.deepcopy(resolved)
    run_dir = run_dir_for(resolved, tmp_path)
    run_dir.mkdir()
    config = copy.deepcopy(resolved)
    with tracking.logging_to("wandb", GROUP):
        tracking.add_logger(config, resolved, run_dir, label="3x3", profile="ci")
        again = copy.deepcopy(resolved)
        tracking.add_logger(again, resolved, run_dir, label="3x3", profile="ci")
    assert resolved == before and config_hash(resolved) == run_dir.name
    csv_logger, wandb_logger = config["trainer"]["logger"]
    assert csv_logger == resolved["trainer"]["logger"][0]  # the CSV logger stays
    init = wandb_logger["init_args"]
    assert init["name"] == run_dir.name and init["save_dir"] == str(run_dir)
    assert init["log_model"] is False
    run_id = (run_dir / tracking.ID_FILE).read_text().strip()
    assert init["id"] == run_id == _wandb_logger(again)["init_args"]["id"]  # reused on resume
    kwargs = wandb_logger["dict_kwargs"]
    assert kwargs["mode"] == "offline" and kwargs["resume"] == "allow"
    assert kwargs["group"] == GROUP and kwargs["tags"] == ["3x3", "ci"]
    written = yaml.safe_load(Path(kwargs["config"]).read_text())
    assert written.pop("wandb_version") == 1
    assert {key: entry["value"] for key, entry in written.items()} == resolved
    resolve(config)  # LightningCLI accepts the logger, its W&B arguments included,
    assert resolved == before  # and parsing them leaves the hashed config alone


def test_an_explicit_wandb_mode_is_respected_and_runs_without_loggers_get_one(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    resolved = _ci_run(**{"trainer.logger": False})
    config = copy.deepcopy(resolved)
    with tracking.logging_to("wandb", GROUP):
        tracking.add_logger(config, resolved, tmp_path, label="", profile="ci")
    (only,) = config["trainer"]["logger"]
    assert "mode" not in only["dict_kwargs"]  # wandb.init reads WANDB_MODE itself
    assert only["dict_kwargs"]["tags"] == ["ci"]


def test_logging_to_restores_the_environment_and_the_cli_flag_uses_it(tmp_path, monkeypatch):
    seen = []

    def fake_run_sweep(*args, **kwargs):
        seen.append((os.environ.get(tracking.LOGGER_ENV), os.environ.get(tracking.GROUP_ENV)))
        raise SpecError("stop before running anything")

    monkeypatch.setattr("sweeps.__main__.run_sweep", fake_run_sweep)
    args = ["table", "4.3", "--profile", "ci", "--runs-dir", str(tmp_path)]
    assert sweeps_main(args) == 2
    assert sweeps_main([*args, "--logger", "wandb"]) == 2
    assert seen == [("csv", "table-4.3-ci"), ("wandb", "table-4.3-ci")]
    assert tracking.LOGGER_ENV not in os.environ and tracking.GROUP_ENV not in os.environ
    with pytest.raises(ValueError, match="unknown logger"):
        with tracking.logging_to("tensorboard", GROUP):
            pass


def test_final_scores_are_the_museval_medians_of_both_targets(tmp_path) -> None:
    (tmp_path / "museval").mkdir()
    for index, sdr in enumerate((1.0, 3.0, 8.0)):
        medians = {"SDR": sdr, "SIR": sdr + 10, "SAR": sdr + 1, "ISR": sdr + 2}
        targets = [
            {"name": "vocals", "median": medians},
            {"name": "accompaniment", "median": {k: v * 2 for k, v in medians.items()}},
        ]
        track = {"name": f"track {index}", "targets": targets}
        (tmp_path / "museval" / f"track {index}.json").write_text(json.dumps(track))
    result = {"scores": {m: {"median": 5.0 + i, "mad": 1.0} for i, m in enumerate(("SDR", "SIR"))}}
    assert tracking.final_scores(result, tmp_path) == {
        "museval/vocals/SDR": 5.0,
        "museval/vocals/SIR": 6.0,
        "museval/accompaniment/SDR": 6.0,
        "museval/accompaniment/SIR": 26.0,
        "museval/accompaniment/SAR": 8.0,
        "museval/accompaniment/ISR": 10.0,
    }
    (tmp_path / "museval" / "track 0.json").write_text(json.dumps({"name": "t", "targets": []}))
    assert set(tracking.final_scores(result, tmp_path)) == {
        "museval/vocals/SDR",
        "museval/vocals/SIR",
    }


# -- end to end: an offline run read back from disk ---------------------------------------------


def _records(offline_run: Path) -> list[dict]:
    out = subprocess.run(
        [WANDB, "leet", "inspect", "--json", str(offline_run)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _summary(offline_run: Path) -> dict:
    out = subprocess.run(
        [WANDB, "leet", "inspect", "--summary", "--json", str(offline_run)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def _val_sdr_by_epoch(records: list[dict]) -> dict[int, float]:
    items = [r["history"]["item"] for r in records if r["type"] == "history"]
    return {int(i["epoch"]): i["val/sdr"] for i in items if "val/sdr" in i}


# Two epochs, and enough validation chunks that some have vocals (val/sdr is NaN otherwise).
TWO_EPOCHS = {
    "trainer.max_epochs": 2,
    "trainer.limit_val_batches": 3,
    "data.valid_chunks_per_track": 6,
}


@pytest.mark.slow
def test_a_trial_writes_an_offline_wandb_run_with_curves_and_final_scores(tmp_path) -> None:
    resolved = _ci_run(**TWO_EPOCHS)
    run_dir = run_dir_for(resolved, tmp_path / "runs")
    with tracking.logging_to("wandb", GROUP):
        result = execute(resolved, run_dir, profile="ci", label="3x3")

    # the run's identity and its tables' sources are what they are without W&B
    assert run_dir.name == config_hash(resolved) == result["hash"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == resolved
    with open(run_dir / "logs" / "version_0" / "metrics.csv") as handle:
        csv_sdr = {
            int(r["epoch"]): float(r["val/sdr"]) for r in csv.DictReader(handle) if r["val/sdr"]
        }
    assert sorted(csv_sdr) == [0, 1]

    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    run_id = (run_dir / tracking.ID_FILE).read_text().strip()
    assert offline_run.name.endswith(f"-{run_id}")
    records = _records(offline_run)
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert run["run_group"] == GROUP and run["display_name"] == run_dir.name
    assert run["tags"] == ["3x3", "ci"]
    assert _val_sdr_by_epoch(records) == pytest.approx(csv_sdr)  # one value per epoch

    summary = _summary(offline_run)
    assert summary["state"] == "finished"
    assert summary["config"]["model"] == resolved["model"]
    values = summary["summary"]
    assert values["museval/vocals/SDR"] == pytest.approx(result["scores"]["SDR"]["median"])
    for target in tracking.TARGETS:
        for metric in tracking.METRICS:
            assert math.isfinite(values[f"museval/{target}/{metric}"]), (target, metric)

    # checkpoints are never staged for upload: no artifact records, no files, no staging
    assert not [r for r in records if "artifact" in r["type"]]
    assert not list(offline_run.rglob("*.ckpt"))
    assert not list((tmp_path / "wandb-data").rglob("*.ckpt"))


@pytest.mark.slow
def test_a_resumed_run_continues_its_wandb_run(tmp_path, monkeypatch) -> None:
    from lightning_modules.separators.spectrogram import SpectrogramSeparator

    resolved = _ci_run(**TWO_EPOCHS)
    run_dir = run_dir_for(resolved, tmp_path / "runs")
    original_loss = SpectrogramSeparator.training_loss

    def nan_in_second_epoch(self, batch):
        loss = original_loss(self, batch)
        return loss * float("nan") if self.current_epoch == 1 else loss

    with tracking.logging_to("wandb", GROUP):
        monkeypatch.setattr(SpectrogramSeparator, "training_loss", nan_in_second_epoch)
        with pytest.raises(FloatingPointError):
            execute(resolved, run_dir, profile="ci", label="3x3")
        monkeypatch.setattr(SpectrogramSeparator, "training_loss", original_loss)
        execute(resolved, run_dir, profile="ci", label="3x3")
    assert is_finished(run_dir)

    run_id = (run_dir / tracking.ID_FILE).read_text().strip()
    killed, resumed = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert killed.name.endswith(f"-{run_id}") and resumed.name.endswith(f"-{run_id}")
    # the failed attempt was closed as failed, not reused by the resumed one
    assert _summary(killed)["exit_code"] != 0
    assert sorted(_val_sdr_by_epoch(_records(killed))) == [0]
    assert sorted(_val_sdr_by_epoch(_records(resumed))) == [1]
    assert _summary(resumed)["state"] == "finished"
