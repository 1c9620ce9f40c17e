"""Where the workers of a sweep run: in this process, as local processes, or as SLURM jobs.

Each executor only starts workers (``launch``) and counts the live ones (``alive``); what a
worker does is ``sweeps.study.work``, and what happens when one dies is Optuna's heartbeat and
retry (``sweeps.storage``). SLURM jobs go through submitit: a job array of workers, requeued
by submitit on preemption or time-out (the callable is checkpointable), with Lightning's own
SLURM auto-requeue switched off in ``sweeps.runs`` so that only one mechanism acts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from sweeps.runs import is_finished
from sweeps.specs import REPO, SpecError
from sweeps.storage import DEFAULT_HEARTBEAT, Heartbeat
from sweeps.study import Sweep, study_name, work

EXECUTORS = ("inprocess", "local", "slurm")
SLURM_DEFAULTS = REPO / "experiments" / "cluster" / "slurm.yaml"


@dataclass
class WorkerArgs:
    """Everything a worker process needs to open the same study as its supervisor."""

    kind: str  # "table" (rows as queued trials) or "hpo" (a search space)
    name: str  # table id or search-space name
    profile: str
    runs_root: str
    storage: str
    heartbeat: Heartbeat

    @property
    def study(self) -> str:
        return f"{'table' if self.kind == 'table' else 'hpo'}-{self.name}-{self.profile}"

    def argv(self) -> list[str]:
        beat = self.heartbeat
        return [
            "worker" if self.kind == "table" else "hpo-worker",
            self.name,
            "--profile",
            self.profile,
            "--runs-dir",
            self.runs_root,
            "--storage",
            self.storage,
            "--heartbeat",
            f"{beat.interval},{beat.grace},{beat.max_retry}",
        ]


def run_worker(args: WorkerArgs) -> int:
    """Body of every worker process or SLURM task: open the study, work until done."""
    if args.kind == "hpo":
        from sweeps.hpo import run_search_worker

        return run_search_worker(
            args.name, args.profile, Path(args.runs_root), args.storage, args.heartbeat
        )
    from sweeps.specs import load_table
    from sweeps.study import open_sweep

    sweep = open_sweep(
        load_table(args.name),
        args.profile,
        Path(args.runs_root),
        args.storage,
        heartbeat=args.heartbeat,
    )
    return work(sweep)


class InProcess:
    """One worker in this process (``make table-<id>``): launch runs it to the end."""

    def __init__(self, args: WorkerArgs) -> None:
        self.args = args

    def launch(self, count: int) -> None:
        run_worker(self.args)

    def alive(self) -> int:
        return 0


class LocalProcesses:
    """n worker processes on this machine, logging to ``<runs>/sweeps/<study>/``."""

    def __init__(self, args: WorkerArgs) -> None:
        self.args = args
        self.log_dir = Path(args.runs_root) / "sweeps" / args.study
        self.processes: list[subprocess.Popen] = []
        self.reported: set[int] = set()  # pids whose failure was already printed

    def launch(self, count: int) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            index = len(self.processes)
            log = open(self.log_dir / f"worker-{index}.log", "ab")  # noqa: SIM115 (child owns it)
            process = subprocess.Popen(
                [sys.executable, "-m", "sweeps", *self.args.argv()],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            log.close()
            print(f"worker {index}: pid {process.pid}, log {self.log_dir / f'worker-{index}.log'}")
            self.processes.append(process)

    def alive(self) -> int:
        for process in self.processes:
            if process.poll() not in (None, 0) and process.pid not in self.reported:
                self.reported.add(process.pid)
                print(f"worker pid {process.pid} ended with exit code {process.returncode}")
        return sum(process.poll() is None for process in self.processes)


@dataclass
class SlurmSettings:
    """submitit parameters (``slurm_*`` and the generic ones), from YAML and ``KEY=VALUE``."""

    parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None, overrides: list[str]) -> SlurmSettings:
        path = path or SLURM_DEFAULTS
        try:
            parameters = yaml.safe_load(path.read_text()) or {}
        except OSError as error:
            raise SpecError(f"SLURM settings {path}: {error}") from error
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise SpecError(f"SLURM setting {item!r} is not KEY=VALUE")
            parameters[key] = yaml.safe_load(value)
        return cls(parameters)


class Slurm:
    """Workers as one submitit job array per launch; logs next to the runs."""

    def __init__(self, args: WorkerArgs, settings: SlurmSettings) -> None:
        import submitit  # only needed on the slurm path

        self.args = args
        self.folder = Path(args.runs_root) / "slurm" / args.study
        # %j is "<array>_<task>" for array tasks and "<job>" for a single one (a one-worker launch).
        self.executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster="slurm")
        self.executor.update_parameters(name=args.study)
        try:
            self.executor.update_parameters(**settings.parameters)
        except (TypeError, ValueError) as error:
            raise SpecError(f"SLURM settings: {error}") from error
        self.jobs: list = []

    def launch(self, count: int) -> None:
        self.executor.update_parameters(slurm_array_parallelism=count)
        jobs = self.executor.map_array(SlurmWorker(self.args), range(count))
        print(
            f"submitted job array {jobs[0].job_id.split('_')[0]} ({count} workers), "
            f"logs in {self.folder}"
        )
        self.jobs.extend(jobs)

    def alive(self) -> int:
        alive = 0
        for job in self.jobs:
            queued, reason = squeue_status(job)
            if reason in NEVER_STARTS:
                for other in self.jobs:
                    other.cancel(check=False)
                raise SpecError(
                    f"SLURM will never start job {job.job_id} ({reason}); the submitted jobs "
                    f"were cancelled. Check the SLURM settings (partition, time, GPUs, memory) "
                    f"in {SLURM_DEFAULTS.relative_to(REPO)} or SLURM=..."
                )
            alive += queued and not job.paths.result_pickle.exists()
        return alive


# Pending reasons after which SLURM never starts a job on its own (the request exceeds a limit).
NEVER_STARTS = {
    "PartitionTimeLimit",
    "PartitionNodeLimit",
    "PartitionConfig",
    "ReqNodeNotAvail",
    "BadConstraints",
    "InvalidAccount",
    "InvalidQOS",
    "QOSMaxWallDurationPerJobLimit",
    "QOSMaxCpuPerJobLimit",
    "QOSMaxGRESPerJob",
}


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


def squeue_status(job) -> tuple[bool, str]:  # noqa: ANN001 (submitit.Job)
    """(still in the queue, pending reason) of a SLURM job, without relying on ``sacct``.

    submitit asks ``sacct`` for job states; clusters without accounting (slurmdbd) answer
    nothing and every job stays UNKNOWN. ``squeue`` lists a job while it is pending or
    running (and for ``MinJobAge`` after, in a final state); once it has left, it prints
    nothing or says "Invalid job id". A job's result pickle (written by submitit when its
    callable returns or raises) also means it has ended.
    """
    queued = subprocess.run(
        ["squeue", "--noheader", "--format=%T %r", "--jobs", str(job.job_id)],
        capture_output=True,
        text=True,
    )
    if queued.returncode != 0 or not queued.stdout.strip():
        return False, ""
    state, _, reason = queued.stdout.split("\n")[0].partition(" ")
    finished = state in (
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
    )
    return not finished, reason.strip()


class SlurmWorker:
    """The callable of every array task; checkpointable so that submitit requeues it.

    On preemption or time-out submitit calls ``checkpoint`` and resubmits the same worker;
    the trial it was running is retried from its run's last checkpoint by whichever worker
    finds its heartbeat stale.
    """

    def __init__(self, args: WorkerArgs) -> None:
        self.args = args

    def __call__(self, index: int) -> int:
        return run_worker(self.args)

    def checkpoint(self, index: int):  # noqa: ANN201 (submitit.helpers.DelayedSubmission)
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmWorker(self.args), index)


def make_runner(
    args: WorkerArgs, executor: str, workers: int, slurm: SlurmSettings | None
) -> InProcess | LocalProcesses | Slurm:
    """The executor named ``executor``; checks what can be checked before anything starts."""
    if executor not in EXECUTORS:
        raise SpecError(f"executor {executor!r} is not one of {EXECUTORS}")
    if workers < 1:
        raise SpecError(f"WORKERS={workers}: at least one worker is needed")
    if executor == "inprocess":
        if workers != 1:
            raise SpecError("the in-process executor runs exactly one worker; use EXECUTOR=local")
        return InProcess(args)
    if executor == "local":
        return LocalProcesses(args)
    if args.storage.startswith("journal:"):
        print(
            "warning: a journal file is safe only while every job runs on this machine "
            "(file locks on NFS are unreliable); use STORAGE=postgresql://... on a cluster"
        )
    return Slurm(args, slurm or SlurmSettings.load(None, []))


def run_sweep(
    spec_id: str,
    profile: str,
    runs_root: Path,
    storage: str | None = None,
    executor: str = "inprocess",
    workers: int = 1,
    heartbeat: Heartbeat = DEFAULT_HEARTBEAT,
    slurm: SlurmSettings | None = None,
    poll: float = 5.0,
) -> Sweep:
    """A table: validate, create the study, queue the missing rows, start workers, wait.

    Everything that can be wrong with the request (table, rows, storage, worker count,
    SLURM settings) fails here, before any worker or job exists.
    """
    from sweeps.specs import load_table
    from sweeps.study import enqueue_missing, open_sweep, supervise, table_progress

    spec = load_table(spec_id)
    sweep = open_sweep(spec, profile, runs_root, storage, workers, heartbeat)
    args = WorkerArgs(
        "table", spec.id, profile, str(runs_root.resolve()), sweep.storage_url, heartbeat
    )
    runner = make_runner(args, executor, workers, slurm)
    queued = enqueue_missing(sweep)
    finished = len(sweep.own_rows) - len(sweep.missing())
    print(
        f"{study_name(spec, profile)} on {sweep.storage_url}: {finished}/{len(sweep.own_rows)} "
        f"rows finished, {len(queued)} newly queued, {workers} worker(s) ({executor})"
    )
    for plan in sweep.plans:
        if plan.row.source and plan.runnable and not is_finished(plan.run_dir):
            source = plan.row.source["table"]
            print(f"row '{plan.row.label}' comes from table {source}: run `make table-{source}`")
    supervise(
        sweep.study,
        runner.launch,
        runner.alive,
        workers,
        pending=lambda counts: counts["WAITING"],
        progress=table_progress(sweep),
        poll=poll,
    )
    return sweep


def run_search(
    name: str,
    profile: str,
    runs_root: Path,
    storage: str | None = None,
    executor: str = "local",
    workers: int = 1,
    heartbeat: Heartbeat = DEFAULT_HEARTBEAT,
    slurm: SlurmSettings | None = None,
    poll: float = 5.0,
) -> optuna.Study:
    """A hyper-parameter search: validate, create the study, start workers, wait."""
    from sweeps.hpo import FINISHED, open_search
    from sweeps.study import Progress, supervise

    space, study, url = open_search(name, profile, runs_root, storage, workers, heartbeat)
    args = WorkerArgs("hpo", space.name, profile, str(runs_root.resolve()), url, heartbeat)

    runner = make_runner(args, executor, workers, slurm)
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    print(
        f"{study.study_name} on {url}: {finished}/{space.n_trials} trials finished, "
        f"{workers} worker(s) ({executor})"
    )
    supervise(
        study,
        runner.launch,
        runner.alive,
        workers,
        pending=lambda counts: max(0, space.n_trials - counts["COMPLETE"] - counts["PRUNED"]),
        progress=Progress(study, space.n_trials, lambda c: c["COMPLETE"] + c["PRUNED"]),
        poll=poll,
    )
    return study
