"""Issue #11 end to end at the ci profile: the companion papers' front end (STFT, channels,
target sets, mixing modes) through LightningCLI, training, the full-track test and museval.

The experiments are experiments/frontend/*.yaml; the thesis's rows must not see any of it
(their resolved configs name none of the new options)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from datamodules.conventions import SOURCES, STFTConfig
from lightning_modules.evaluation.bss import aggregate
from sweeps.identity import identity
from sweeps.runs import execute, resolve
from sweeps.specs import apply_profile, deep_merge, load_profile

FRONTEND = Path(__file__).resolve().parent.parent / "experiments" / "frontend"
STEREO = FRONTEND / "stereo_4targets_44k.yaml"
MONO = FRONTEND / "mono_16k.yaml"
IRM = FRONTEND / "irm_oracle.yaml"
BASELINE = FRONTEND.parent / "mmdensenet" / "baseline.yaml"
NEW_DATA_OPTIONS = ("stft", "channels", "mixing", "tracks")


@pytest.fixture(autouse=True)
def _isolated(isolated_cache):
    pass


def _config(experiment: Path, **overrides: Any) -> dict[str, Any]:
    """The experiment at the ci profile, with dotted overrides, fully resolved."""
    config = deep_merge(yaml.safe_load(experiment.read_text()), overrides)
    return resolve(apply_profile(config, load_profile("ci")))


def _run(experiment: Path, run_dir: Path, **overrides: Any) -> dict[str, Any]:
    return execute(_config(experiment, **overrides), run_dir, profile="ci")


def _museval(run_dir: Path) -> list[dict[str, Any]]:
    files = sorted((run_dir / "museval").glob("*.json"))
    assert len(files) == 2  # the ci profile's two test tracks, one JSON each
    return [json.loads(path.read_text()) for path in files]


def _checkpoint(run_dir: Path) -> dict[str, Any]:
    return torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)


# -- configuration (fast) --------------------------------------------------------------------


def test_the_data_drives_the_models_stft_channels_and_targets() -> None:
    from lightning_modules.cli import make_cli

    cli = make_cli(_config(STEREO), run=False, save_config_callback=None)
    model, data = cli.model, cli.datamodule
    expected = STFTConfig(n_fft=4096, hop=1024, window="hamming", keep_dc=True)
    assert model.stft_config == data.stft == expected and model.bins == 2049
    assert model.channels == data.channels == 2 and model.rate == 44100
    assert model.output_targets == data.target_names == SOURCES
    assert data.chunk == 4096 + 31 * 1024  # 32 frames
    resolved = _config(STEREO)
    assert "stft" not in resolved["model"]["init_args"]  # linked: the data's, hashed once
    assert identity(resolved)["data"]["stft"] == {
        "n_fft": 4096,
        "hop": 1024,
        "window": "hamming",
        "keep_dc": True,
    }


def test_the_thesis_rows_identities_name_none_of_the_new_options() -> None:
    resolved = _config(BASELINE)
    assert all(key in resolved["data"] for key in NEW_DATA_OPTIONS)  # resolved: defaults
    hashed = identity(resolved)
    assert not set(NEW_DATA_OPTIONS) & set(hashed["data"])
    assert not {"multi_target", "stft", "channels", "targets"} & set(hashed["model"]["init_args"])


# -- end to end (slow) ---------------------------------------------------------------------


@pytest.mark.slow
def test_four_target_stereo_44k_hamming_dc_experiment_trains_tests_and_scores_each_target(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "stereo"
    result = _run(STEREO, run_dir)
    for target in SOURCES:
        assert "test/" + target + "/SDR" in result["test_metrics"]
    assert result["scores"]["SDR"]["n_tracks"] + result["scores"]["SDR"]["n_excluded"] == 2
    tracks = _museval(run_dir)
    for track in tracks:  # one JSON per track, every target evaluated together
        assert [t["name"] for t in track["targets"]] == list(SOURCES)
        assert track["rate"] == 44100 and len(track["targets"][0]["frames"]) == 4
    for target in SOURCES:
        scores = aggregate(tracks, target=target)
        assert scores["SDR"]["n_tracks"] + scores["SDR"]["n_excluded"] == 2
        assert result["test_metrics"][f"test/{target}/SDR"] == pytest.approx(
            scores["SDR"]["median"], nan_ok=True, abs=1e-4
        )
    hparams = _checkpoint(run_dir)["hyper_parameters"]
    assert hparams["channels"] == 2 and hparams["stft"]["n_fft"] == 4096
    assert hparams["multi_target"] is True


@pytest.mark.slow
def test_mono_16k_experiment_with_0db_remixes_scores_both_of_its_estimates(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "mono"
    result = _run(MONO, run_dir)
    assert {"test/vocals/SDR", "test/accompaniment/SDR"} <= set(result["test_metrics"])
    for track in _museval(run_dir):
        assert [t["name"] for t in track["targets"]] == ["vocals", "accompaniment"]
        assert track["rate"] == 16000
        assert len(track["targets"][0]["frames"]) <= 4  # 0 dB pieces of at most 4 s
    hparams = _checkpoint(run_dir)["hyper_parameters"]
    assert hparams["stft"] == {
        "n_fft": 1024,
        "hop": 256,
        "win_length": None,
        "window": "hann",
        "keep_dc": False,
    }
    metrics = (run_dir / "logs").rglob("metrics.csv")
    assert "val/sdr" in next(metrics).read_text()  # the first target's, on fixed remixes


@pytest.mark.slow
def test_irm_oracle_of_four_stereo_targets_needs_no_training(tmp_path: Path) -> None:
    run_dir = tmp_path / "irm"
    result = _run(IRM, run_dir)
    assert result["checkpoint"] is None  # evaluated, never trained
    tracks = _museval(run_dir)
    for target in SOURCES:
        assert aggregate(tracks, target=target)["SDR"]["median"] > 0.0


@pytest.mark.slow
def test_without_a_validation_split_the_best_checkpoint_has_the_lowest_training_loss(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "no-valid"
    overrides = {"data.valid_fraction": 0.0, "data.mixing": "coherent", "trainer.max_epochs": 200}
    result = _run(MONO, run_dir, **overrides)
    assert result["epochs"] == 2
    (callback,) = _checkpoint(run_dir)["callbacks"].values()
    assert callback["monitor"] == "train/loss_epoch"
    log = next((run_dir / "logs").rglob("metrics.csv")).read_text()
    assert "train/loss_epoch" in log and "val/loss" not in log
    rows = list(csv.DictReader(log.splitlines()))
    losses = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert len(losses) == 2
    assert float(callback["best_model_score"]) == pytest.approx(min(losses), rel=1e-6)
