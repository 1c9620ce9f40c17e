"""A table as an Optuna study: every row missing a finished run becomes a trial.

The study is the execution record (which row ran, in which folder, with what outcome and
SDR); the run folders are the results and decide what is missing, so re-running a table
continues where it stopped. Storage is embedded by default (a journal file, safe for
several local processes); any Optuna storage URL works.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna

from sweeps.plan import RowPlan, plan_table
from sweeps.runs import execute, is_finished
from sweeps.specs import TableSpec


def make_storage(storage: str | None, runs_root: Path) -> optuna.storages.BaseStorage | str:
    """``None``: a journal file in the runs folder; otherwise an Optuna storage URL."""
    if storage is None or storage.startswith("journal:"):
        path = Path(storage.removeprefix("journal:")) if storage else runs_root / "optuna.journal"
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return optuna.storages.JournalStorage(backend)
    return storage


def run_table(
    spec: TableSpec,
    profile: str,
    runs_root: Path,
    storage: str | None = None,
) -> optuna.Study:
    """Run every row of ``spec`` that has no finished run, as trials of one study."""
    plans = plan_table(spec, profile, runs_root)
    by_label = {plan.row.label: plan for plan in plans}
    study = optuna.create_study(
        study_name=f"table-{spec.id}-{profile}",
        storage=make_storage(storage, runs_root),
        direction="maximize",
        load_if_exists=True,
    )
    for plan in plans:
        if plan.row.source and not is_finished(plan.run_dir):
            source = plan.row.source["table"]
            print(f"row '{plan.row.label}' comes from table {source}: run `make table-{source}`")
    own = [plan for plan in plans if plan.runnable and not plan.row.source]
    missing = [plan for plan in own if not is_finished(plan.run_dir)]
    print(
        f"table {spec.id} ({profile}): {len(own) - len(missing)}/{len(own)} rows finished, "
        f"running {len(missing)}"
    )
    failures: list[str] = []
    for plan in missing:
        # ask/tell keeps the study a record of what ran (label, run folder, outcome, SDR);
        # the rows to run come from the run folders, so a killed earlier call leaves nothing
        # behind that could be picked instead of a missing row.
        trial = study.ask()
        trial.set_user_attr("row", plan.row.label)
        trial.set_user_attr("run_dir", str(plan.run_dir))
        trial.set_user_attr("profile", profile)
        try:
            result = run_row(plan, by_label, profile)
        except Exception as error:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            failures.append(
                f"row '{plan.row.label}' ({plan.run_dir}): {type(error).__name__}: {error}"
            )
            continue
        sdr = result["scores"].get("SDR", {}).get("median", math.nan)
        if math.isfinite(sdr):
            study.tell(trial, sdr)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    if failures:
        raise RowsFailed(failures)
    return study


def run_row(plan: RowPlan, by_label: dict[str, RowPlan], profile: str) -> dict:
    """The rows this row uses first, then its stages in order; finished runs are skipped."""
    for label in plan.requires:
        run_row(by_label[label], by_label, profile)
    result: dict = {}
    for index, stage in enumerate(plan.stages, start=1):
        step = f" (stage {index}/{len(plan.stages)})" if len(plan.stages) > 1 else ""
        print(f"-- row '{plan.row.label}'{step} -> {stage.run_dir}")
        result = execute(stage.resolved, stage.run_dir, profile=profile, label=plan.row.label)
    return result


class RowsFailed(RuntimeError):
    def __init__(self, failures: list[str]) -> None:
        super().__init__(
            "rows failed (their finished siblings are kept):\n  " + "\n  ".join(failures)
        )
