"""The test services are real: SLURM runs submitit job arrays with accounting, and PostgreSQL
holds one Optuna study written by several processes at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tests.services import REPO


def square_where(x: int) -> tuple[int, str, str, str]:
    """Runs inside a SLURM array task: its value, and where and as what it ran."""
    return (
        x * x,
        socket.gethostname().split(".")[0],
        os.environ.get("SLURM_JOB_PARTITION", ""),
        os.environ.get("SLURM_ARRAY_TASK_ID", ""),
    )


def killed_by_sigkill() -> None:
    """Dies the way an OOM kill or a node failure ends a job: no result pickle is written."""
    os.kill(os.getpid(), signal.SIGKILL)


def run_trials(url: str, study_name: str, n_trials: int) -> int:
    """Optuna trials into a shared study, from whichever process calls it; returns the pid."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=url)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("pid", os.getpid())
        x = trial.suggest_float("x", -1.0, 1.0)
        return x * x

    study.optimize(objective, n_trials=n_trials)
    return os.getpid()


def _sacct_states(job_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job_id.split("_")[0]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if line)


def test_submitit_job_array_runs_on_the_debug_partition(slurm_cluster, slurm_executor, tmp_path):
    jobs = slurm_executor.map_array(square_where, [3, 4])
    assert len(jobs) == 2 and len({j.job_id.split("_")[0] for j in jobs}) == 1, "one array job"

    results = [job.result() for job in jobs]

    assert [r[0] for r in results] == [9, 16]
    assert {r[1] for r in results} == {slurm_cluster.node}
    assert {r[2] for r in results} == {slurm_cluster.partition}
    assert sorted(r[3] for r in results) == ["0", "1"]
    assert all(job.done() for job in jobs)
    # The job files are in the test's tmp_path, not in the repository.
    folder = tmp_path / "submitit"
    for job in jobs:
        assert job.paths.result_pickle.parent == folder
        assert job.paths.result_pickle.exists()
    # Accounting is on: sacct (what submitit reads for states) knows both tasks finished.
    deadline = time.monotonic() + 30
    while True:
        states = _sacct_states(jobs[0].job_id)
        if all(states.get(j.job_id) == "COMPLETED" for j in jobs) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert all(states.get(j.job_id) == "COMPLETED" for j in jobs), states
    assert jobs[0].get_info(mode="force").get("State") == "COMPLETED"


@pytest.mark.slow
def test_a_job_killed_without_a_result_is_reported_failed(slurm_executor):
    """What accounting buys: a job that dies without writing its result pickle ends
    ``result()`` with an error. Without sacct, submitit sees the state UNKNOWN forever and
    ``result()`` never returns."""
    import submitit

    job = slurm_executor.submit(killed_by_sigkill)
    outcome: dict[str, BaseException] = {}

    def wait() -> None:
        try:
            job.result()
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            outcome["error"] = e

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(timeout=120)
    assert not waiter.is_alive(), "job.result() still waiting 120 s after the job was killed"
    assert isinstance(outcome.get("error"), submitit.core.utils.UncompletedJobError), outcome
    assert job.state == "FAILED"


@pytest.mark.slow
def test_optuna_study_on_postgres_written_by_two_processes(postgres_db_url):
    import optuna

    study = optuna.create_study(storage=postgres_db_url, study_name="two-writers")
    code = textwrap.dedent(
        """
        import sys
        from tests.test_services import run_trials
        run_trials(sys.argv[1], "two-writers", 4)
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, postgres_db_url], env=env, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e.decode()[-2000:] for e in errors]

    trials = optuna.load_study(study_name="two-writers", storage=postgres_db_url).trials
    assert len(trials) == 8
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) == 2
    assert sorted(t.number for t in trials) == list(range(8))
    assert study.best_value == min(t.value for t in trials)


@pytest.mark.slow
def test_slurm_array_tasks_share_an_optuna_study_on_postgres(slurm_executor, postgres_db_url):
    """The sweep's shape: SLURM array tasks as Optuna workers on one PostgreSQL study."""
    import optuna

    optuna.create_study(storage=postgres_db_url, study_name="array")
    jobs = slurm_executor.map_array(run_trials, [postgres_db_url] * 2, ["array"] * 2, [3, 3])
    pids = [job.result() for job in jobs]

    trials = optuna.load_study(study_name="array", storage=postgres_db_url).trials
    assert len(trials) == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["pid"] for t in trials} == set(pids)
    assert len(set(pids)) == 2
