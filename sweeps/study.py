"""A table as an Optuna study: a row becomes a trial becomes a run folder.

1. ``open_sweep`` plans the table once: every row's stages as resolved configs, each in the run
   folder its identity names (``sweeps.plan``), and opens the study (``table-<id>-<profile>``).
2. ``enqueue_missing`` queues one trial per row without a finished run (``enqueue_trial`` with
   the row's label as a user attribute), unless one is queued or running already.
3. ``work`` is a worker: ``study.optimize`` pops the queued trials one by one (``ask``), keeps
   their heartbeat while ``run_row`` trains and tests the row's stages in their run folders
   (``sweeps.runs.execute``), and tells the median SDR; a failing row fails its trial only.
   It stops when the queue is empty. A trial whose worker died is failed once its heartbeat is
   stale, and queued again by Optuna's retry callback (``sweeps.storage``): the same run folder
   resumes from its last checkpoint.

The run folders decide what is missing, so re-running a table or a sweep after a crash
continues where it stopped, and a row is never run twice: its run folder is locked while it
trains and ``result.json`` marks it finished. Where workers run: ``sweeps.executors``.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from lightning.pytorch.utilities.exceptions import SIGTERMException
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState
from tqdm import tqdm

from sweeps.plan import RowPlan, checked_root, plan_table
from sweeps.runs import execute, is_finished
from sweeps.specs import TableSpec
from sweeps.storage import DEFAULT_HEARTBEAT, Heartbeat, describe, open_storage, retried_from


def study_name(kind: str, name: str, profile: str) -> str:
    """``table-4.3-smoke``, ``hpo-random-search-thesis``: one study per table (or search space)
    and profile, whatever storage holds it."""
    return f"{kind}-{name}-{profile}"


@dataclass
class Sweep:
    """A table's rows and the study that records their trials."""

    spec: TableSpec
    profile: str
    runs_root: Path
    plans: list[RowPlan]
    study: optuna.Study
    storage_url: str

    @property
    def by_label(self) -> dict[str, RowPlan]:
        return {plan.row.label: plan for plan in self.plans}

    @property
    def own_rows(self) -> list[RowPlan]:
        """Rows this table runs itself (not summary rows taken from other tables)."""
        return [plan for plan in self.plans if plan.runnable and not plan.row.source]

    def missing(self) -> list[RowPlan]:
        return [plan for plan in self.own_rows if not is_finished(plan.run_dir)]


def open_sweep(
    spec: TableSpec,
    profile: str,
    runs_root: Path,
    storage: str | None = None,
    workers: int = 1,
    heartbeat: Heartbeat = DEFAULT_HEARTBEAT,
    plans: list[RowPlan] | None = None,
) -> Sweep:
    """Open the storage, validate every row and open the study; fails (``SpecError``) before
    anything runs. The data set comes first (nothing is created for a wrong one), then the
    storage: its errors (a URL that cannot connect, SQLite with several workers) are cheaper
    to find than a bad row. ``plans``: the table as a supervisor already planned it."""
    checked_root(os.environ.get("MUSDB_ROOT"))
    backend = open_storage(storage, runs_root, workers, heartbeat)
    if plans is None:
        plans = plan_table(spec, profile, runs_root)  # resolves every row's config
    study = optuna.create_study(
        study_name=study_name("table", spec.id, profile),
        storage=backend,
        direction="maximize",
        load_if_exists=True,
    )
    return Sweep(spec, profile, runs_root, plans, study, describe(storage, runs_root))


def waiting(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def enqueue_missing(sweep: Sweep) -> list[str]:
    """Queue every missing row that has no trial waiting or running; returns their labels.

    Trials of dead workers are failed first, which re-queues them through the retry callback
    (so they are not queued twice).
    """
    fail_stale_trials(sweep.study)
    pending = {
        trial.user_attrs.get("row")
        for trial in sweep.study.get_trials(
            deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)
        )
    }
    queued = []
    for plan in sweep.missing():
        if plan.row.label in pending:
            continue
        sweep.study.enqueue_trial(
            params={},
            user_attrs={
                "row": plan.row.label,
                "run_dir": str(plan.run_dir),
                "profile": sweep.profile,
            },
        )
        queued.append(plan.row.label)
    return queued


def work(sweep: Sweep, progress: Progress | None = None) -> int:
    """A worker: run queued rows, one trial each, until the queue is empty; returns how many
    it ran. ``study.optimize`` pops each queued trial, records its heartbeat and tells it."""
    study, ran = sweep.study, []

    def run_trial(trial: optuna.Trial) -> float:
        label = trial.user_attrs.get("row")
        if label is None:  # another worker took the last queued row between check and ask
            study.stop()
            raise optuna.TrialPruned("no queued row was left for this worker")
        ran.append(label)
        trial.set_user_attr("worker", worker_name())
        frozen = study.get_trials(deepcopy=False)[trial.number]
        if (retry_of := retried_from(frozen)) is not None:
            print(f"trial {trial.number} retries trial {retry_of} (its worker died)")
        try:
            plan = sweep.by_label.get(label)
            if plan is None:
                raise KeyError(f"row {label!r} is not in table {sweep.spec.id} any more")
            result = run_row(plan, sweep.by_label, sweep.profile, wait=True)
        except SIGTERMException:
            # The scheduler stops the job (scancel, preemption, time limit): the trial stays
            # running, its heartbeat goes stale and Optuna's retry callback queues it again;
            # the retry resumes from the run's last checkpoint.
            raise
        except (KeyboardInterrupt, SystemExit) as error:
            # Ctrl-C (Lightning turns it into SystemExit inside fit/test): Optuna fails the
            # trial at once, so the next run starts without waiting for the heartbeat grace
            # period; the run folder resumes from its last checkpoint.
            trial.set_user_attr("error", "KeyboardInterrupt: interrupted by the user")
            raise KeyboardInterrupt from error
        except Exception as error:  # recorded on the trial; the row stays missing
            trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:2000])
            print(f"row '{label}' failed: {type(error).__name__}: {error}")
            raise
        if result.get("resumed_from_epoch") is not None:
            trial.set_user_attr("resumed_from_epoch", result["resumed_from_epoch"])
        sdr = result["scores"].get("SDR", {}).get("median", math.nan)
        if not math.isfinite(sdr):
            trial.set_user_attr("error", "no finite median SDR")  # Optuna fails a NaN value
        return sdr

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if progress is not None:
            progress.update()
        if not waiting(study):
            study.stop()

    fail_stale_trials(study)  # dead workers' trials fail, and their retries are queued
    if waiting(study):
        study.optimize(run_trial, callbacks=[after_trial], catch=(Exception,))
    return len(ran)


def run_row(plan: RowPlan, by_label: dict[str, RowPlan], profile: str, wait: bool = False) -> dict:
    """The rows this row uses first, then its stages in order; finished runs are skipped.

    ``wait``: a run another worker is training is waited for instead of failing (a row that
    uses another row may meet it in a second worker).
    """
    for label in plan.requires:
        run_row(by_label[label], by_label, profile, wait)
    result: dict = {}
    for index, stage in enumerate(plan.stages, start=1):
        step = f" (stage {index}/{len(plan.stages)})" if len(plan.stages) > 1 else ""
        print(f"-- row '{plan.row.label}'{step} -> {stage.run_dir}")
        result = execute(
            stage.resolved,
            stage.run_dir,
            profile=profile,
            label=plan.row.label,
            wait=wait,
            key=stage.key,
        )
    return result


def worker_name() -> str:
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    slurm = f" slurm {job}" + (f"_{task}" if task else "") if job else ""
    return f"{socket.gethostname()}:{os.getpid()}{slurm}"


def trial_counts(study: optuna.Study) -> Counter:
    return Counter(trial.state.name for trial in study.get_trials(deepcopy=False))


def best_so_far(study: optuna.Study) -> str:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return "-"
    best = max(complete, key=lambda t: t.value)
    return f"{best.value:.2f} dB ({best.user_attrs.get('row', best.number)})"


class Progress:
    """Trials done / running / failed and the best value so far, on one terminal line."""

    def __init__(self, study: optuna.Study, total: int, done: Callable[[Counter], int]) -> None:
        self.study, self.done = study, done
        self.bar = tqdm(total=total, desc=study.study_name)

    def update(self) -> Counter:
        counts = trial_counts(self.study)
        self.bar.n = self.done(counts)
        self.bar.set_postfix_str(
            f"running {counts['RUNNING']}, queued {counts['WAITING']}, pruned "
            f"{counts['PRUNED']}, failed {counts['FAIL']}, best {best_so_far(self.study)}"
        )
        return counts

    def close(self) -> None:
        self.update()
        self.bar.close()


def table_progress(sweep: Sweep) -> Progress:
    own = len(sweep.own_rows)
    return Progress(sweep.study, own, lambda counts: own - len(sweep.missing()))


def supervise(
    study: optuna.Study,
    launch: Callable[[int], None],
    alive: Callable[[], int],
    workers: int,
    pending: Callable[[Counter], int],
    progress: Progress,
    poll: float = 5.0,
    max_launches: int = 10,
) -> None:
    """Keep workers going until nothing is pending and every running trial has ended.

    ``launch(n)`` starts n workers; ``alive()`` counts those still going; ``pending(counts)``
    says how much work is left (queued rows of a table, trials short of a search's cap). A
    trial whose worker died stays RUNNING until its heartbeat is older than the grace period;
    then it is failed and queued again, and if no worker is left to take it, new ones are
    launched (at most ``max_launches`` times, so a row that kills every worker cannot loop
    forever).
    """
    launches = 0
    try:
        while True:
            fail_stale_trials(study)
            counts = progress.update()
            running, left = alive(), pending(counts)
            if left and running == 0:
                if launches >= max_launches:
                    raise RuntimeError(
                        f"{launches} rounds of workers ended with work left in study "
                        f"{study.study_name}; see the worker logs"
                    )
                launches += 1
                launch(min(workers, left))
                continue
            if not left and not counts["RUNNING"] and running == 0:
                return
            time.sleep(poll)
    finally:
        progress.close()


def failures(sweep: Sweep) -> list[str]:
    """Missing rows with the error of their last failed trial."""
    last_error: dict[str, str] = {}
    for trial in sweep.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        last_error[trial.user_attrs.get("row")] = trial.user_attrs.get(
            "error", "its worker died and the retries ran out"
        )
    return [
        f"row '{plan.row.label}' ({plan.run_dir}): {last_error.get(plan.row.label, 'not run')}"
        for plan in sweep.missing()
    ]


class RowsFailed(RuntimeError):
    def __init__(self, failures: list[str]) -> None:
        super().__init__(
            "rows failed (their finished siblings are kept):\n  " + "\n  ".join(failures)
        )
