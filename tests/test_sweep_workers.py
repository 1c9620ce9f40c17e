"""Sweeps with several workers: storages, heartbeats, retries, and a worker killed mid-trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from sweeps.__main__ import main as sweeps_main
from sweeps.plots import epoch_metrics
from sweeps.specs import PROFILES, REPO, SpecError
from sweeps.storage import HEARTBEAT_ATTR, Heartbeat, open_storage


def test_sqlite_refuses_more_than_one_worker_before_anything_starts(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    with pytest.raises(SpecError, match="SQLite.*2 workers"):
        open_storage(url, tmp_path, workers=2)
    assert not (tmp_path / "study.db").exists()
    args = ["sweep", "4.3", "--profile", "ci", "--runs-dir", str(tmp_path), "--workers", "2"]
    assert sweeps_main([*args, "--storage", url]) == 2
    assert not any(tmp_path.iterdir())  # no run folder, no job, no database


def test_an_unreachable_database_fails_before_any_worker(tmp_path, capsys) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    url = "postgresql+psycopg2://nobody:pw@127.0.0.1:9/nothing"
    args = ["sweep", "4.3", "--profile", "ci", "--runs-dir", str(tmp_path), "--storage", url]
    assert sweeps_main(args) == 2
    assert "cannot be opened" in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()  # no worker was started


def test_a_silent_trial_is_failed_and_queued_again_with_its_row(tmp_path) -> None:
    storage = open_storage(None, tmp_path, heartbeat=Heartbeat(interval=1, grace=5, max_retry=1))
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({}, user_attrs={"row": "MMDenseNet baseline"})
    trial = study.ask()  # pops the queued trial: RUNNING, owned by a worker that now "dies"
    storage.record_heartbeat(trial._trial_id)
    fail_stale_trials(study)
    assert study.trials[0].state == TrialState.RUNNING  # heartbeat fresh: left alone

    storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, time.time() - 60)
    fail_stale_trials(study)
    dead, retry = study.trials
    assert dead.state == TrialState.FAIL
    assert retry.state == TrialState.WAITING
    assert retry.user_attrs["row"] == "MMDenseNet baseline"
    assert retry.system_attrs["failed_trial"] == dead.number

    # max_retry=1: a second death of the same row is not retried again.
    again = study.ask()
    storage.set_trial_system_attr(again._trial_id, HEARTBEAT_ATTR, time.time() - 60)
    fail_stale_trials(study)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]


def _profile_dir(tmp_path: Path, epochs_fraction: float, val_batches: int = 1) -> Path:
    """The ci profile with more epochs, so that a worker can be killed in the middle, and
    optionally more validation chunks (one chunk per track can be all silent vocals, and then
    there is no validation SDR)."""
    profile = yaml.safe_load((PROFILES / "ci.yaml").read_text())
    profile["scale"]["trainer.max_epochs"] = epochs_fraction
    profile["trainer"]["limit_val_batches"] = val_batches
    profile["data"]["valid_chunks_per_track"] = 2 * val_batches
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "ci-long.yaml").write_text(yaml.safe_dump(profile))
    return folder


def kill_mid_training(
    supervisor: subprocess.Popen,
    runs: Path,
    storage,  # noqa: ANN001 (an Optuna storage or URL)
    kill: Callable[[optuna.trial.FrozenTrial], None],
    timeout: float,
) -> tuple[int, str]:
    """Once the sweep's only run has a checkpoint of epoch >= 1, ``kill`` the worker of the
    running trial; then wait for the supervisor. Returns (epoch at the kill, its output)."""
    try:
        deadline, killed_at = time.monotonic() + 600, None
        while killed_at is None and time.monotonic() < deadline:
            time.sleep(0.5)
            assert supervisor.poll() is None, supervisor.stdout.read()
            run_dirs = [p for p in runs.glob("*") if (p / "checkpoints").exists()]
            if run_dirs and (_last_epoch(run_dirs[0]) or 0) >= 1:
                study = optuna.load_study(study_name="table-4.3-ci-long", storage=storage)
                (trial,) = study.get_trials(states=(TrialState.RUNNING,))
                killed_at = _last_epoch(run_dirs[0])
                kill(trial)
        assert killed_at is not None, "training never reached a second epoch"
        output, _ = supervisor.communicate(timeout=timeout)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    return killed_at, output


def _last_epoch(run_dir: Path) -> int | None:
    try:
        return int(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"])
    except (OSError, RuntimeError, EOFError, KeyError):  # not there yet, or being written
        return None


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_retried_from_its_last_checkpoint(
    tmp_path, tmp_path_factory
) -> None:
    """kill -9 the only worker during training: the supervisor sees the trial's heartbeat go
    stale, the retry callback queues the row again, a new worker resumes from last.ckpt, and
    the study ends with the row complete exactly once."""
    runs = tmp_path / "runs"
    env = {
        **os.environ,
        "SWEEPS_PROFILES": str(_profile_dir(tmp_path, 0.06)),  # 100 epochs -> 6
        "MSS_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "suite-cache"),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("MUSDB_ROOT", None)
    command = [sys.executable, "-m", "sweeps", "sweep", "4.3", "--profile", "ci-long"]
    command += ["--runs-dir", str(runs), "--results-dir", str(tmp_path / "results")]
    command += ["--executor", "local", "--workers", "1", "--heartbeat", "1,4,2", "--poll", "1"]
    supervisor = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def kill_worker(trial: optuna.trial.FrozenTrial) -> None:
        os.kill(int(trial.user_attrs["worker"].split(":")[1].split()[0]), signal.SIGKILL)

    killed_at, output = kill_mid_training(
        supervisor, runs, open_storage(None, runs), kill_worker, timeout=600
    )
    assert supervisor.returncode == 0, output
    assert "ended without a result" in output  # the supervisor saw its worker job die

    study = optuna.load_study(study_name="table-4.3-ci-long", storage=open_storage(None, runs))
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 1 and states.count(TrialState.FAIL) == 1
    dead = next(t for t in study.trials if t.state == TrialState.FAIL)
    (done,) = study.get_trials(states=(TrialState.COMPLETE,))
    assert done.system_attrs["failed_trial"] == dead.number
    assert done.user_attrs["row"] == dead.user_attrs["row"] == "MMDenseNet baseline"

    (run_dir,) = [p for p in runs.iterdir() if (p / "result.json").exists()]
    result = json.loads((run_dir / "result.json").read_text())
    # Resumed from the checkpoint the dead worker left (it may have saved one more epoch
    # between our read and the kill), not from scratch; and trained to the end.
    assert killed_at <= result["resumed_from_epoch"] <= killed_at + 1
    assert done.user_attrs["resumed_from_epoch"] == result["resumed_from_epoch"]
    assert result["epochs"] == 6


def _space_dir(tmp_path: Path, name: str = "tiny", **changes) -> Path:
    """A small copy of the thesis's random search."""
    space = yaml.safe_load((REPO / "sweeps" / "spaces" / "random-search.yaml").read_text())
    space.update(changes)
    space["parameters"].pop("data.batch_size")  # keep the ci profile's tiny batches
    folder = tmp_path / "spaces"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(space))
    return folder


@pytest.mark.slow
def test_a_search_runs_capped_trials_on_two_workers_and_prunes_hopeless_ones(
    tmp_path, tmp_path_factory, monkeypatch
) -> None:
    monkeypatch.setenv("SWEEPS_SPACES", str(_space_dir(tmp_path, n_trials=2)))
    monkeypatch.setenv("SWEEPS_PROFILES", str(_profile_dir(tmp_path, 0.02, val_batches=4)))
    monkeypatch.setenv("MSS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "suite-cache"))
    monkeypatch.delenv("MUSDB_ROOT", raising=False)
    runs = tmp_path / "runs"
    args = ["hpo", "tiny", "--profile", "ci-long", "--runs-dir", str(runs), "--poll", "1"]
    assert sweeps_main([*args, "--executor", "local", "--workers", "2"]) == 0
    study = optuna.load_study(study_name="hpo-tiny-ci-long", storage=open_storage(None, runs))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    # MaxTrialsCallback stops each worker once 2 trials have finished; a worker that started
    # a trial just before may add one.
    assert 2 <= len(complete) <= 3
    assert len({t.params["model.init_args.lr"] for t in complete}) == len(complete)
    for trial in complete:  # the value is the best per-epoch validation SDR of its run
        sdr = epoch_metrics(Path(trial.user_attrs["run_dir"]))["val/sdr"]
        assert trial.value == max(sdr.values()) and len(sdr) == 2
    assert len({t.user_attrs["worker"] for t in complete}) == 2

    # A pruner no trial can satisfy: every trial stops after its first validation. (Another
    # seed: the same draws would give the same configs, whose finished runs are reused.)
    hopeless = _space_dir(
        tmp_path,
        "hopeless",
        n_trials=1,
        sampler={"type": "random", "seed": 7},
        pruner={"type": "threshold", "lower": 1e9},
    )
    monkeypatch.setenv("SWEEPS_SPACES", str(hopeless))
    args[1] = "hopeless"
    assert sweeps_main([*args, "--executor", "local", "--workers", "1"]) == 0
    study = optuna.load_study(study_name="hpo-hopeless-ci-long", storage=open_storage(None, runs))
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert len(pruned) == 1
    run_dir = Path(pruned[0].user_attrs["run_dir"])
    assert not (run_dir / "result.json").exists()  # unfinished, never counted as a result
    assert len(epoch_metrics(run_dir)["val/sdr"]) == 1


def test_optuna_honours_the_journal_storages_heartbeat(tmp_path) -> None:
    """The contract of Optuna's private heartbeat protocol that sweeps.storage relies on (the
    journal storage has no heartbeat of its own): ``study.optimize`` runs its heartbeat thread
    on our journal storage. (``fail_stale_trials`` asking it for stale trials: the test of a
    silent trial above.) An Optuna upgrade that changes the protocol fails here."""
    storage = open_storage(None, tmp_path, heartbeat=Heartbeat(interval=1, grace=5, max_retry=1))
    study = optuna.create_study(study_name="s", storage=storage)
    beats = []

    def objective(trial: optuna.Trial) -> float:
        time.sleep(2.5)
        beats.append(study.get_trials(deepcopy=False)[trial.number].system_attrs)
        return 1.0

    study.optimize(objective, n_trials=1)
    assert HEARTBEAT_ATTR in beats[0]


def test_random_search_draws_differ_between_workers_and_repeat_with_the_seed(tmp_path) -> None:
    """Two workers with the space's seed share a study: their draws must not coincide (the
    runs would share a folder), and the same trial numbers give the same values again."""
    from sweeps.hpo import TrialSeededRandomSampler

    def draws(storage) -> list[float]:
        workers = [
            optuna.create_study(
                study_name="s",
                storage=storage,
                sampler=TrialSeededRandomSampler(seed=0),
                load_if_exists=True,
            )
            for _ in range(2)
        ]
        return [workers[i % 2].ask().suggest_float("lr", 1e-4, 1e-2, log=True) for i in range(4)]

    first = draws(open_storage(None, tmp_path / "a"))
    assert len(set(first)) == 4
    assert draws(open_storage(None, tmp_path / "b")) == first


def test_the_dashboard_serves_the_journal_study_bound_to_loopback(tmp_path) -> None:
    import socket
    import urllib.request

    from sweeps.storage import dashboard_command

    assert dashboard_command(None, tmp_path, 8080)[-4:] == ["--host", "127.0.0.1", "--port", "8080"]
    optuna.create_study(study_name="table-4.3-ci", storage=open_storage(None, tmp_path))
    with socket.socket() as probe:  # a free port on loopback
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "sweeps", "dashboard", "--runs-dir", str(tmp_path)]
    server = subprocess.Popen(
        [*command, "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline, page = time.monotonic() + 60, None
        while page is None and time.monotonic() < deadline:
            assert server.poll() is None, server.stdout.read().decode()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as response:
                    page = json.loads(response.read())
            except OSError:
                time.sleep(0.5)
        assert page is not None, "the dashboard did not answer"
        assert [s["study_name"] for s in page["study_summaries"]] == ["table-4.3-ci"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    # the server was the process itself (exec), so nothing is left listening
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))
