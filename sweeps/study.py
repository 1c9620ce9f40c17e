"""A table as an Optuna study: every row missing a finished run becomes an enqueued trial.

The study is the execution record (who ran what, when, with what outcome); the run folders
are the results. Rows whose run already finished are not enqueued again, so re-running a
table continues where it stopped. Storage is embedded by default (a journal file, safe for
several local processes); any Optuna storage URL works.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna

from sweeps.runs import execute, is_finished, resolve, run_dir_for
from sweeps.specs import Row, TableSpec, compose, load_profile


def make_storage(storage: str | None, runs_root: Path) -> optuna.storages.BaseStorage | str:
    """``None``: a journal file in the runs folder; otherwise an Optuna storage URL."""
    if storage is None or storage.startswith("journal:"):
        path = Path(storage.removeprefix("journal:")) if storage else runs_root / "optuna.journal"
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        return optuna.storages.JournalStorage(backend)
    return storage


def planned_runs(spec: TableSpec, profile: str, runs_root: Path) -> list[tuple[Row, dict, Path]]:
    """(row, resolved config, run folder) for every row, validated before anything runs."""
    overrides = load_profile(profile)
    plans = []
    for row in spec.rows:
        resolved = resolve(compose(spec, row, overrides))
        plans.append((row, resolved, run_dir_for(resolved, runs_root)))
    return plans


def run_table(
    spec: TableSpec,
    profile: str,
    runs_root: Path,
    storage: str | None = None,
) -> optuna.Study:
    """Run every row of ``spec`` that has no finished run, as trials of one study."""
    plans = planned_runs(spec, profile, runs_root)
    by_label = {row.label: (resolved, run_dir) for row, resolved, run_dir in plans}
    study = optuna.create_study(
        study_name=f"table-{spec.id}-{profile}",
        storage=make_storage(storage, runs_root),
        direction="maximize",
        load_if_exists=True,
    )
    missing = [row.label for row, _, run_dir in plans if not is_finished(run_dir)]
    for label in missing:
        study.enqueue_trial({"row": label}, user_attrs={"table": spec.id, "profile": profile})
    done = len(plans) - len(missing)
    print(f"table {spec.id} ({profile}): {done}/{len(plans)} rows finished, running {len(missing)}")

    failures: list[str] = []

    def objective(trial: optuna.Trial) -> float:
        label = trial.suggest_categorical("row", [row.label for row in spec.rows])
        resolved, run_dir = by_label[label]
        trial.set_user_attr("run_dir", str(run_dir))
        print(f"-- row '{label}' -> {run_dir}")
        try:
            result = execute(resolved, run_dir, train=spec.train, profile=profile, label=label)
        except Exception as error:
            failures.append(f"row '{label}' ({run_dir}): {type(error).__name__}: {error}")
            raise
        sdr = result["scores"].get("SDR", {}).get("median", math.nan)
        return sdr if math.isfinite(sdr) else float("nan")

    if missing:
        # A failing row is recorded and the others still run; the table then says which failed.
        study.optimize(objective, n_trials=len(missing), catch=(Exception,))
    if failures:
        raise RowsFailed(failures)
    return study


class RowsFailed(RuntimeError):
    def __init__(self, failures: list[str]) -> None:
        super().__init__(
            "rows failed (their finished siblings are kept):\n  " + "\n  ".join(failures)
        )
