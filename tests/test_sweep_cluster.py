"""Sweeps on the real services: two workers on PostgreSQL, a SLURM job array, a scancel'd job.

The services come from ``tests/services.py`` (a one-node SLURM cluster with accounting and a
PostgreSQL server on loopback, started by ``.ci/services/*.sh``); without them these tests
skip, except under CI, where they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweeps.__main__ import main as sweeps_main
from sweeps.executors import NEVER_STARTS
from sweeps.specs import REPO, load_table
from sweeps.storage import open_storage
from tests.test_sweep_workers import _profile_dir, kill_mid_training

pytestmark = pytest.mark.slow
ROWS_4_2 = [row.label for row in load_table("4.2").rows]


def _rows_once(study: optuna.Study, labels: list[str]) -> list[optuna.trial.FrozenTrial]:
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.user_attrs["row"] for t in complete) == sorted(labels)
    return complete


@pytest.fixture
def ci_env(tmp_path_factory, monkeypatch) -> None:
    monkeypatch.setenv("MSS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "suite-cache"))
    monkeypatch.delenv("MUSDB_ROOT", raising=False)


def test_two_local_workers_share_one_postgresql_study(tmp_path, postgres_db_url, ci_env):
    runs = tmp_path / "runs"
    args = ["sweep", "4.2", "--profile", "ci", "--runs-dir", str(runs), "--poll", "1"]
    args += ["--results-dir", str(tmp_path / "results"), "--storage", postgres_db_url]
    assert sweeps_main([*args, "--executor", "local", "--workers", "2"]) == 0
    study = optuna.load_study(study_name="table-4.2-ci", storage=postgres_db_url)
    complete = _rows_once(study, ROWS_4_2)
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both workers took rows
    assert not study.get_trials(states=(TrialState.FAIL, TrialState.WAITING))

    # Re-running finds every row finished: nothing queued, nothing run, nothing overwritten.
    # (A worker that asked just after the other took the last row holds an empty pruned trial.)
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/result.json")}
    trials = len(study.trials)
    assert sweeps_main([*args, "--executor", "local", "--workers", "2"]) == 0
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/result.json")} == stamps
    assert len(optuna.load_study(study_name="table-4.2-ci", storage=postgres_db_url).trials) == (
        trials
    )


def test_a_table_runs_as_a_slurm_job_array(tmp_path, slurm_cluster, postgres_db_url, ci_env):
    runs = tmp_path / "runs"
    args = ["sweep", "4.2", "--profile", "ci", "--runs-dir", str(runs), "--poll", "2"]
    args += ["--results-dir", str(tmp_path / "results"), "--storage", postgres_db_url]
    args += ["--executor", "slurm", "--workers", "2"]
    args += ["--slurm", f"slurm_partition={slurm_cluster.partition}", "--slurm", "cpus_per_task=1"]
    assert sweeps_main(args) == 0
    study = optuna.load_study(study_name="table-4.2-ci", storage=postgres_db_url)
    complete = _rows_once(study, ROWS_4_2)
    workers = {t.user_attrs["worker"] for t in complete}
    assert all(" slurm " in w for w in workers)
    assert len({w.rsplit("_", 1)[-1] for w in workers}) == 2  # two array tasks took rows
    logs = list((runs / "slurm" / "table-4.2-ci").glob("*/*_log.out"))
    assert len(logs) == 2  # submitit's logs, next to the runs


def test_a_job_slurm_will_never_start_is_cancelled_with_a_clear_error(
    tmp_path, slurm_cluster, capsys
) -> None:
    args = ["sweep", "4.3", "--profile", "ci", "--runs-dir", str(tmp_path), "--poll", "1"]
    args += ["--executor", "slurm", "--slurm", f"slurm_partition={slurm_cluster.partition}"]
    args += ["--slurm", "timeout_min=100000"]  # beyond the partition's time limit
    assert sweeps_main(args) == 2
    error = capsys.readouterr().err
    assert "will never start" in error
    assert any(f"({reason})" in error for reason in NEVER_STARTS)  # e.g. PartitionConfig
    mine = subprocess.run(["squeue", "-h", "-n", "table-4.3-ci"], capture_output=True, text=True)
    assert mine.stdout.strip() == ""  # nothing left waiting in the queue


def test_a_cancelled_slurm_job_is_retried_from_its_checkpoint(
    tmp_path,
    slurm_cluster,
    postgres_db_url,
    ci_env,
) -> None:
    """scancel the only job mid-training: its trial goes stale, is retried by a new job,
    which resumes from the run's last checkpoint."""
    runs = tmp_path / "runs"
    env = {**os.environ, "SWEEPS_PROFILES": str(_profile_dir(tmp_path, 0.06))}  # 6 epochs
    command = [sys.executable, "-m", "sweeps", "sweep", "4.3", "--profile", "ci-long"]
    command += ["--runs-dir", str(runs), "--results-dir", str(tmp_path / "results")]
    command += ["--storage", postgres_db_url, "--heartbeat", "1,6,2", "--poll", "1"]
    command += ["--executor", "slurm", "--workers", "1", "--slurm", "cpus_per_task=1"]
    command += ["--slurm", f"slurm_partition={slurm_cluster.partition}"]
    supervisor = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def cancel_job(trial: optuna.trial.FrozenTrial) -> None:
        subprocess.run(["scancel", trial.user_attrs["worker"].split(" slurm ")[1]], check=True)

    cancelled_at, output = kill_mid_training(
        supervisor, runs, postgres_db_url, cancel_job, timeout=900
    )
    assert supervisor.returncode == 0, output

    study = optuna.load_study(study_name="table-4.3-ci-long", storage=postgres_db_url)
    (done,) = _rows_once(study, ["MMDenseNet baseline"])
    (dead,) = study.get_trials(states=(TrialState.FAIL,))
    assert done.system_attrs["failed_trial"] == dead.number
    assert done.user_attrs["worker"] != dead.user_attrs["worker"]  # a new job took it
    result = json.loads(next(runs.glob("*/result.json")).read_text())
    # SLURM stops the job a few seconds after scancel (KillWait): it may save another epoch.
    assert cancelled_at <= result["resumed_from_epoch"] <= cancelled_at + 2
    assert result["epochs"] == 6


def test_workers_starting_together_on_a_fresh_database_find_the_study(postgres_db_url):
    """The supervisor creates the schema and the study; then four workers start at once (on
    an empty database they would race to create Optuna's tables)."""
    from sweeps.storage import Heartbeat

    storage = open_storage(postgres_db_url, Path("unused"), workers=4, heartbeat=Heartbeat(1, 5))
    optuna.create_study(study_name="race", storage=storage, direction="maximize")
    worker = (
        "import optuna, sys; s = optuna.load_study(study_name='race', storage=sys.argv[1]); "
        "t = s.ask(); s.tell(t, 1.0)"
    )
    procs = [subprocess.Popen([sys.executable, "-c", worker, postgres_db_url]) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    study = optuna.load_study(study_name="race", storage=postgres_db_url)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
