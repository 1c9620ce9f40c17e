"""Where the workers of a sweep run: in this process, or as a submitit job array.

``make table-<id>`` runs one worker (``sweeps.study.work``) in this process. ``make sweep-<id>``
runs n workers as one submitit job array: local processes (``cluster="local"``) or SLURM jobs
(``cluster="slurm"``), the same code for both. A worker's callable is checkpointable, so
submitit requeues it on preemption or time-out; Lightning's own SLURM auto-requeue is switched
off in ``sweeps.runs`` so that only one mechanism acts. What happens when a worker dies is
Optuna's heartbeat and retry (``sweeps.storage``).

Why not submitit's ``DebugExecutor`` (``cluster="debug"``) in this process too: it opens pdb on
any exception (a table started from ``make`` would stop at a debugger prompt instead of ending
with its error) and swaps ``os.environ`` and the logging handlers while it runs.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from lightning_modules.cli import ignore_library_warnings
from sweeps.plan import RowPlan
from sweeps.runs import is_finished
from sweeps.specs import REPO, SpecError, load_table
from sweeps.storage import DEFAULT_HEARTBEAT, Heartbeat, ignore_experimental_warnings
from sweeps.study import (
    Progress,
    Sweep,
    enqueue_missing,
    open_sweep,
    study_name,
    supervise,
    table_progress,
    work,
)

EXECUTORS = ("inprocess", "local", "slurm")
SLURM_DEFAULTS = REPO / "experiments" / "cluster" / "slurm.yaml"
# submitit stops a local job after its timeout_min (2 minutes unless set): a worker runs until
# the queue is empty, so local workers get a week.
LOCAL_TIMEOUT_MIN = 7 * 24 * 60


@dataclass
class WorkerArgs:
    """Everything a worker needs to open the same study as its supervisor (pickled into each
    job). ``plans``: a table's rows as the supervisor planned them (not planned again)."""

    kind: str  # "table" (rows as queued trials) or "hpo" (a search space)
    name: str  # table id or search-space name
    profile: str
    runs_root: str
    storage: str
    heartbeat: Heartbeat
    plans: list[RowPlan] | None = None

    @property
    def study(self) -> str:
        return study_name(self.kind, self.name, self.profile)


def run_worker(args: WorkerArgs) -> int:
    """Body of every worker job: open the study, work until done; returns the trials run."""
    ignore_experimental_warnings()
    ignore_library_warnings()
    if args.kind == "hpo":
        from sweeps.hpo import run_search_worker

        return run_search_worker(
            args.name, args.profile, Path(args.runs_root), args.storage, args.heartbeat
        )
    sweep = open_sweep(
        load_table(args.name),
        args.profile,
        Path(args.runs_root),
        args.storage,
        heartbeat=args.heartbeat,
        plans=args.plans,
    )
    return work(sweep)


class Worker:
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

        return submitit.helpers.DelayedSubmission(Worker(self.args), index)


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


class JobArray:
    """Workers as one submitit job array per launch; logs in ``<runs>/<cluster>/<study>/``."""

    def __init__(self, args: WorkerArgs, cluster: str, settings: SlurmSettings | None) -> None:
        import submitit

        self.args, self.cluster = args, cluster
        self.folder = Path(args.runs_root) / cluster / args.study
        # %j is "<array>_<task>" for SLURM array tasks and the job id otherwise.
        self.executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=cluster)
        self.executor.update_parameters(name=args.study)
        parameters = (settings or SlurmSettings.load(None, [])).parameters
        if cluster == "local":
            parameters = {"timeout_min": LOCAL_TIMEOUT_MIN}
        try:
            self.executor.update_parameters(**parameters)
        except (TypeError, ValueError) as error:
            raise SpecError(f"SLURM settings: {error}") from error
        self.jobs: list = []
        self.reported: set[str] = set()  # jobs whose end without a result was printed

    def launch(self, count: int) -> None:
        if self.cluster == "slurm":
            self.executor.update_parameters(slurm_array_parallelism=count)
        jobs = self.executor.map_array(Worker(self.args), range(count))
        ids = ", ".join(job.job_id for job in jobs)
        print(f"started {count} {self.cluster} worker job(s) {ids}, logs in {self.folder}")
        self.jobs.extend(jobs)

    def alive(self) -> int:
        alive = 0
        for job in self.jobs:
            running = self._queued(job) if self.cluster == "slurm" else not job.done()
            alive += running and not job.paths.result_pickle.exists()
            if not running and not job.paths.result_pickle.exists():
                if job.job_id not in self.reported:
                    self.reported.add(job.job_id)
                    print(f"worker job {job.job_id} ended without a result ({job.state})")
        return alive

    def _queued(self, job) -> bool:  # noqa: ANN001 (submitit.Job)
        queued, reason = squeue_status(job)
        if reason in NEVER_STARTS:
            for other in self.jobs:
                other.cancel(check=False)
            raise SpecError(
                f"SLURM will never start job {job.job_id} ({reason}); the submitted jobs "
                f"were cancelled. Check the SLURM settings (partition, time, GPUs, memory) "
                f"in {SLURM_DEFAULTS.relative_to(REPO)} or SLURM=..."
            )
        return queued


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
# Job states after which a job that squeue still lists has ended.
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")


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
    return state not in ENDED, reason.strip()


def job_array(
    args: WorkerArgs, executor: str, workers: int, slurm: SlurmSettings | None
) -> JobArray:
    """The workers of ``make sweep``/``make hpo``; checks what can be checked before anything
    starts."""
    if executor not in EXECUTORS[1:]:
        raise SpecError(f"executor {executor!r} is not one of {EXECUTORS[1:]}")
    if workers < 1:
        raise SpecError(f"WORKERS={workers}: at least one worker is needed")
    if executor == "slurm" and args.storage.startswith("journal:"):
        print(
            "warning: a journal file is safe only while every job runs on this machine "
            "(file locks on NFS are unreliable); use STORAGE=postgresql://... on a cluster"
        )
    return JobArray(args, executor, slurm)


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
    """A table: validate, create the study, queue the missing rows, run them, wait.

    Everything that can be wrong with the request (table, rows, storage, worker count,
    SLURM settings) fails here, before any worker or job exists.
    """
    spec = load_table(spec_id)
    if executor == "inprocess" and workers != 1:
        raise SpecError("the in-process executor runs exactly one worker; use EXECUTOR=local")
    sweep = open_sweep(spec, profile, runs_root, storage, workers, heartbeat)
    args = WorkerArgs(
        "table",
        spec.id,
        profile,
        str(runs_root.resolve()),
        sweep.storage_url,
        heartbeat,
        plans=sweep.plans,
    )
    runner = None if executor == "inprocess" else job_array(args, executor, workers, slurm)
    queued = enqueue_missing(sweep)
    finished = len(sweep.own_rows) - len(sweep.missing())
    print(
        f"{args.study} on {sweep.storage_url}: {finished}/{len(sweep.own_rows)} rows "
        f"finished, {len(queued)} newly queued, {workers} worker(s) ({executor})"
    )
    for plan in sweep.plans:
        if plan.row.source and plan.runnable and not is_finished(plan.run_dir):
            source = plan.row.source["table"]
            print(f"row '{plan.row.label}' comes from table {source}: run `make table-{source}`")
    progress = table_progress(sweep)
    if runner is None:  # make table: the rows one after the other, here
        try:
            work(sweep, progress)
        finally:
            progress.close()
        return sweep
    supervise(
        sweep.study,
        runner.launch,
        runner.alive,
        workers,
        pending=lambda counts: counts["WAITING"],
        progress=progress,
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

    space, study, url = open_search(name, profile, runs_root, storage, workers, heartbeat)
    args = WorkerArgs("hpo", space.name, profile, str(runs_root.resolve()), url, heartbeat)
    runner = job_array(args, executor, workers, slurm)
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
