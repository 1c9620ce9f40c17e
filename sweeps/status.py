"""Look before you launch: what ``make table-<id>`` would do, and what state each row is in.

``make plan-<id>`` (``python -m sweeps plan <id>``) prints one line per row and stage: its
run folder, its status, its overrides on the table's base and the runs it depends on, then
what a ``make table-<id>`` would start now (runs, epochs, optimiser steps). ``make status``
counts every table's rows by status. Nothing is trained, no study is created or changed and
nothing is written: the storage is opened read-only (a journal file or SQLite database that
does not exist is not created, a PostgreSQL database without Optuna's tables gets none).

A stage's status, first match wins:

- ``finished``: its run folder holds ``result.json`` (current: the folder is the one the code
  at hand computes, so its numbers are what the table renders);
- ``running`` / ``failed`` / ``queued``: the row's latest trial in the table's study (for a
  row taken from another table, in that table's study) is running (with the worker and the age
  of its heartbeat), failed (with the first line of its error) or waiting; it applies to the
  first unfinished stage, later stages wait for it;
- ``stale``: only a run of the same row made by older code (another results version) exists
  (``sweeps.render.stale_run``: the table says so and never shows its numbers);
- ``missing``: nothing yet.

Rows that cannot run yet are ``unavailable``. Steps per epoch are what the DataModule's
sampler makes of the row's data: the synthetic set's sizes on synthetic data, the thesis
protocol's on MUSDB18 (100 training tracks, 20% of them held out, each cut to its most active
``excerpt_seconds``), capped by ``trainer.limit_train_batches``; an upper bound, since tracks
shorter than the excerpt are used whole.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import yaml
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from datamodules.conventions import chunk_samples, stft_config
from datamodules.musdb_datamodule import SYNTHETIC_DEFAULTS, resolve_root
from sweeps.identity import RUN_REFERENCE, identity
from sweeps.plan import RowPlan, checked_root, plan_table, seeded_label
from sweeps.render import finished_runs_by_key, stale_run
from sweeps.runs import load_result
from sweeps.specs import REPO, Row, SpecError, TableSpec, available_tables, load_table
from sweeps.storage import (
    DEFAULT_HEARTBEAT,
    HEARTBEAT_ATTR,
    Heartbeat,
    HeartbeatJournalStorage,
    describe,
    retried_from,
)
from sweeps.study import study_name

FINISHED, RUNNING, FAILED, QUEUED = "finished", "running", "failed", "queued"
STALE, MISSING, UNAVAILABLE = "stale", "missing", "unavailable"
STATUSES = (FINISHED, RUNNING, FAILED, QUEUED, STALE, MISSING, UNAVAILABLE)

#: MUSDB18's training subset (the thesis protocol holds 20% of it out for validation).
MUSDB18_TRAIN_TRACKS = 100


# -- the study, read-only -------------------------------------------------------------------


def open_storage_readonly(url: str | None, runs_root: Path) -> BaseStorage | None:
    """The storage ``url`` names (default: the runs folder's journal file), or None where it
    holds nothing yet. Never creates a file, a schema or a study; a database that cannot be
    reached is a ``SpecError`` naming the URL."""
    url = describe(url, runs_root)
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        return HeartbeatJournalStorage(path, DEFAULT_HEARTBEAT) if path.is_file() else None
    try:
        parsed = sqlalchemy.engine.make_url(url)
        if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
            return None  # connecting would create the file
        engine = sqlalchemy.create_engine(url)
        try:
            if not sqlalchemy.inspect(engine).has_table("studies"):
                return None  # no Optuna schema, so no study; and none is created
        finally:
            engine.dispose()
        return RDBStorage(url, skip_table_creation=True)
    except Exception as error:  # SQLAlchemy / driver errors: bad URL, refused, auth, no driver
        raise SpecError(
            f"storage {url} cannot be opened: {type(error).__name__}: {error}"
        ) from error


def study_trials(storage: BaseStorage | None, name: str) -> list[FrozenTrial]:
    """The trials of study ``name`` (none where the storage or the study does not exist)."""
    if storage is None or name not in optuna.get_all_study_names(storage):
        return []
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def heartbeat_age(storage: BaseStorage, study: str, trial: FrozenTrial) -> float | None:
    """Seconds since the trial's last heartbeat, None where it has none (or the storage does
    not say). The journal keeps it as a trial system attribute (``sweeps.storage``); the RDB
    storages in Optuna's ``trial_heartbeats`` table, read here on the database's own clock,
    which also wrote it."""
    if isinstance(storage, HeartbeatJournalStorage):
        beat = trial.system_attrs.get(HEARTBEAT_ATTR)
        return None if beat is None else time.time() - float(beat)
    if not isinstance(storage, RDBStorage):
        return None
    try:
        study_id = storage.get_study_id_from_name(study)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        query = sqlalchemy.text(
            "SELECT heartbeat FROM trial_heartbeats WHERE trial_id = :trial_id"
        ).columns(heartbeat=sqlalchemy.DateTime)
        with storage.engine.connect() as connection:
            beat = connection.execute(query, {"trial_id": trial_id}).scalar()
            now = connection.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
    except Exception:  # an older schema, another database: the age is unknown, nothing else
        return None
    if beat is None or now is None:
        return None
    return (now.replace(tzinfo=None) - beat.replace(tzinfo=None)).total_seconds()


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class TrialNote:
    """What the study says about a row: running, failed or queued, and why."""

    status: str
    detail: str
    live: bool = False  # running with a fresh heartbeat: its worker will finish the row


def row_trials(
    storage: BaseStorage | None, name: str, heartbeat: Heartbeat = DEFAULT_HEARTBEAT
) -> dict[str, TrialNote]:
    """Per row label, the state of its latest trial in study ``name`` that still matters (a
    running or waiting one, else a failed last one); rows whose last trial completed, or that
    have none, are absent."""
    trials = study_trials(storage, name)
    by_row: dict[str, list[FrozenTrial]] = {}
    for trial in trials:
        if (label := trial.user_attrs.get("row")) is not None:
            by_row.setdefault(label, []).append(trial)
    states = {}
    for label, mine in by_row.items():
        mine.sort(key=lambda t: t.number)
        running = [t for t in mine if t.state == TrialState.RUNNING]
        waiting = [t for t in mine if t.state == TrialState.WAITING]
        ended = [t for t in mine if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
        if running:
            trial = running[-1]
            age = heartbeat_age(storage, name, trial)
            worker = trial.user_attrs.get("worker", "a worker")
            beat = "no heartbeat yet" if age is None else f"heartbeat {_ago(age)} ago"
            dead = age is not None and age > heartbeat.grace
            if dead:
                beat += f", past the {heartbeat.grace} s grace: its worker is gone, it is retried"
            detail = f"trial {trial.number} on {worker}, {beat}"
            states[label] = TrialNote(RUNNING, detail, live=not dead)
        elif waiting:
            trial = waiting[0]
            retry = retried_from(trial)
            again = f", retries trial {retry}" if retry is not None else ""
            states[label] = TrialNote(QUEUED, f"trial {trial.number}{again}")
        elif ended and ended[-1].state == TrialState.FAIL:
            trial = ended[-1]
            error = trial.user_attrs.get("error") or "its worker died and the retries ran out"
            first = next((line for line in str(error).splitlines() if line.strip()), error)
            states[label] = TrialNote(FAILED, f"trial {trial.number}: {first}")
    return states


# -- epochs and steps -----------------------------------------------------------------------


def _model_class(resolved: dict[str, Any]) -> type:
    module, _, name = resolved["model"]["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)


def epochs(resolved: dict[str, Any]) -> int:
    """Training epochs of the run at most: ``trainer.max_epochs`` (Lightning's 1000 where it
    is unset), plus PSP's fine-tuning after each threshold rise; 0 for a run that only tests
    (oracles, Wiener combinations, ``test_only``)."""
    args = resolved["model"].get("init_args") or {}
    if args.get("test_only") or not getattr(_model_class(resolved), "trainable", True):
        return 0
    max_epochs = resolved["trainer"].get("max_epochs")
    total = 1000 if max_epochs in (None, -1) else int(max_epochs)
    if pruning := args.get("pruning"):
        threshold, step = float(pruning.get("threshold", 0.18)), float(pruning.get("step", 0.02))
        rises = math.ceil(threshold / step - 1e-9)
        total += rises * int(pruning.get("fine_tune_epochs", 2))
    return total


def _train_tracks(data: dict[str, Any]) -> tuple[int, float | None, str]:
    """Training tracks, their seconds each (None: whole tracks of unknown length) and what
    the numbers are."""
    listed = (data.get("tracks") or {}).get("train")
    if resolve_root(data.get("root")):
        tracks, seconds, source = MUSDB18_TRAIN_TRACKS, data.get("excerpt_seconds"), "MUSDB18"
    else:  # the DataModule's synthetic set: its defaults, then the config's arguments
        synthetic = {**SYNTHETIC_DEFAULTS, **(data.get("synthetic") or {})}
        tracks, source = int(synthetic["n_train"]), "synthetic set"
        excerpt = data.get("excerpt_seconds")
        duration = float(synthetic["duration"])
        seconds = duration if excerpt is None else min(duration, float(excerpt))
    valid = (data.get("tracks") or {}).get("valid")
    fraction = float(data.get("valid_fraction") or 0.0)
    if listed:
        train = len(listed)
    elif valid:
        train = tracks - len(valid)
    elif fraction > 0:  # as datamodules.musdb_datamodule.validation_names counts them
        train = tracks - min(tracks - 1, max(1, round(fraction * tracks)))
    else:
        train = tracks
    if data.get("max_train_tracks"):
        train = min(train, int(data["max_train_tracks"]))
    return train, seconds, source


def steps_per_epoch(resolved: dict[str, Any]) -> int | None:
    """Optimiser steps per epoch as the DataModule's sampler counts batches (see the module
    docstring); 0 for a run that does not train, None where the data's length is unknown
    (whole MUSDB18 tracks)."""
    if not epochs(resolved):
        return 0
    data = resolved["data"]
    if data.get("overfit"):
        batches = 1  # one batch of the excerpt per epoch
    else:
        tracks, seconds, _ = _train_tracks(data)
        if seconds is None:
            return None
        stft = stft_config(data.get("stft"))
        chunk = chunk_samples(int(data["context_frames"]), stft.n_fft, stft.hop)
        length = round(seconds * int(data["rate"]))
        batch = int(data["batch_size"])
        if length < chunk:
            return None  # the DataModule refuses such tracks
        if data.get("mixing") == "coherent":
            stride = int(data["context_frames"]) * stft.hop
            chunks = tracks * ((length - chunk) // stride + 1)
            batches = max(1, -(-chunks // batch))
        else:  # random mixes (and remix_0db, before its silence removal): every start once
            batches = max(1, tracks * (length - chunk + 1) // (chunk * batch))
    limit = resolved["trainer"].get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        return min(batches, limit)
    if isinstance(limit, float) and limit < 1.0:
        return max(1, int(batches * limit)) if limit > 0 else 0
    return batches


def data_sizes(resolved: dict[str, Any]) -> str:
    """What the steps per epoch are counted from: '2 synthetic set tracks x 6 s'."""
    data = resolved["data"]
    if data.get("overfit"):
        return "one overfit excerpt"
    tracks, seconds, source = _train_tracks(data)
    if seconds is None:
        return f"{tracks} whole {source} training tracks (their length is not known here)"
    if resolve_root(data.get("root")):  # a track shorter than the excerpt is used whole
        return f"{tracks} {source} training tracks x at most {seconds:g} s (an upper bound)"
    return f"{tracks} {source} training tracks x {seconds:g} s"


# -- one table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageLine:
    """One row and stage of a table as ``make plan-<id>`` prints it."""

    label: str
    stage: int  # 1-based
    stages: int
    run_dir: Path | None
    status: str
    detail: str
    overrides: tuple[str, ...]  # "dotted.key=value" on the table's base
    needs: tuple[str, ...]  # "stage 1 (<hash>, finished)", "row 'X' (...)", "source: table ..."
    epochs: int = 0
    steps_per_epoch: int | None = 0
    data: str = ""  # what the steps per epoch are counted from
    own: bool = True  # run by this table (not a row taken from another table, nor unavailable)
    starts: bool = False  # a ``make table-<id>`` started now would run it

    @property
    def name(self) -> str:
        return self.label + (f" [stage {self.stage}/{self.stages}]" if self.stages > 1 else "")


@dataclass
class TableStatus:
    """A table's rows and stages with their status, as the runs folder and study say now."""

    spec: TableSpec
    profile: str
    runs_root: Path
    storage: str
    study: str
    trials: int  # in the table's study (0: the study does not exist)
    lines: list[StageLine] = field(default_factory=list)

    def row_status(self) -> dict[str, str]:
        """Each row's status: that of its first stage that is not finished (the last stage's
        where all are), so a row whose first stage failed counts as failed."""
        status: dict[str, str] = {}
        for line in self.lines:
            if status.get(line.label, FINISHED) == FINISHED:
                status[line.label] = line.status
        return status

    def to_start(self) -> list[StageLine]:
        """The runs a ``make table-<id>`` started now would train or test, each once (two rows
        may share a run: at a small profile a 40-epoch pre-training stage can be another
        row's run)."""
        runs = {line.run_dir: line for line in reversed(self.lines) if line.starts}
        return [line for line in self.lines if runs.get(line.run_dir) is line]


def _flatten(values: dict[str, Any], prefix: str = "") -> list[str]:
    items = []
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items += _flatten(value, dotted + ".")
        else:
            items.append(f"{dotted}={value if isinstance(value, str) else json.dumps(value)}")
    return items


def run_references(value: Any) -> list[str]:
    """The run hashes a resolved config names (``run:<hash>``: a stage it starts from, the
    rows it uses), in order, once each."""
    if isinstance(value, str):
        return [value.removeprefix(RUN_REFERENCE)] if value.startswith(RUN_REFERENCE) else []
    if isinstance(value, dict):
        found = [ref for v in value.values() for ref in run_references(v)]
    elif isinstance(value, list):
        found = [ref for v in value for ref in run_references(v)]
    else:
        return []
    return list(dict.fromkeys(found))


def _overrides(spec: TableSpec, row: Row, index: int) -> tuple[str, ...]:
    """The row's overrides on its table's base (a row taken from another table: as that
    table writes it), with its stage's own."""
    table_base = spec.base
    if row.source:
        other = load_table(str(row.source["table"]))
        row, table_base = next(r for r in other.rows if r.label == row.source["row"]), other.base
    items = []
    if row.base and row.base != table_base:
        base = row.base.relative_to(REPO) if row.base.is_relative_to(REPO) else row.base
        items.append(f"base={base}")
    items += _flatten(row.overrides)
    if len(row.stages) > 1:
        items += [f"stage {index + 1}: {item}" for item in _flatten(row.stages[index])]
    return tuple(items)


def _stage_status(
    plan: RowPlan, index: int, trial: TrialNote | None, first_open: bool, finished: dict
) -> tuple[str, str]:
    stage = plan.stages[index]
    if (result := load_result(stage.run_dir)) is not None:
        return FINISHED, f"current, commit {result.get('provenance', {}).get('commit', '?')}"
    status, detail = _open_stage_status(plan, index, trial, first_open, finished)
    if (stage.run_dir / "checkpoints" / "last.ckpt").exists():  # e.g. after a preemption
        detail = "; ".join(filter(None, [detail, "resumes from its checkpoints/last.ckpt"]))
    return status, detail


def _open_stage_status(
    plan: RowPlan, index: int, trial: TrialNote | None, first_open: bool, finished: dict
) -> tuple[str, str]:
    if not first_open:
        return MISSING, f"after stage {index}"
    if trial is not None:
        return trial.status, trial.detail
    # sweeps.render.stale_run looks at a plan's last stage: this stage's plan ends here
    if stale := stale_run(RowPlan(plan.row, plan.stages[: index + 1], ()), finished):
        commit = stale["provenance"]["commit"]
        return STALE, f"only {stale['run']} exists (commit {commit}, an older results version)"
    return MISSING, ""


def inspect_table(
    spec: TableSpec,
    profile: str,
    runs_root: Path,
    storage: BaseStorage | None,
    storage_url: str | None = None,
    heartbeat: Heartbeat = DEFAULT_HEARTBEAT,
) -> TableStatus:
    """Every row and stage of the table with its status, the runs it needs and its size.
    Reads the run folders and the study; writes nothing. A wrong ``$MUSDB_ROOT`` or an
    invalid row is a ``SpecError``, as for ``make table-<id>``."""
    checked_root(os.environ.get("MUSDB_ROOT"))  # a wrong data set is refused before planning
    plans = plan_table(spec, profile, runs_root)
    name = study_name("table", spec.id, profile)
    notes = {spec.id: row_trials(storage, name, heartbeat)}
    for plan in plans:  # a row taken from another table is run, as a trial, by that table
        if plan.row.source and (other := str(plan.row.source["table"])) not in notes:
            notes[other] = row_trials(storage, study_name("table", other, profile), heartbeat)
    roots = {plan.run_dir.parent for plan in plans if plan.runnable}
    finished = {k: v for root in roots for k, v in finished_runs_by_key(root).items()}

    status: dict[str, tuple[str, str]] = {}  # run hash -> (status, detail)
    owner: dict[str, tuple[str, int, int]] = {}  # run hash -> (row label, stage, stages)
    live: set[str] = set()  # rows a worker is running now: they are not started again
    for plan in plans:
        source = plan.row.source or {"table": spec.id, "row": plan.table_label}
        trial = notes[str(source["table"])].get(seeded_label(source["row"], plan.seed))
        if trial is not None and trial.live:
            live.add(plan.row.label)
        first_open = True
        for index, stage in enumerate(plan.stages):
            owner.setdefault(stage.run_dir.name, (plan.row.label, index + 1, len(plan.stages)))
            status[stage.run_dir.name] = _stage_status(plan, index, trial, first_open, finished)
            first_open = first_open and status[stage.run_dir.name][0] == FINISHED

    table = TableStatus(spec, profile, runs_root, describe(storage_url, runs_root), name, 0)
    table.trials = len(study_trials(storage, name))
    for plan in plans:
        if not plan.runnable:
            line = StageLine(plan.row.label, 1, 1, None, UNAVAILABLE, plan.row.unavailable or "",
                             (), (), own=False)  # fmt: skip
            table.lines.append(line)
            continue
        for index, stage in enumerate(plan.stages):
            needs = []
            if plan.row.source:
                source = plan.row.source
                needs.append(f"source: table {source['table']}, row '{source['row']}'")
            own = {s.run_dir.name: n for n, s in enumerate(plan.stages[:index], start=1)}
            for ref in run_references(stage.resolved):
                label, number, count = owner.get(ref, (None, 0, 0))
                if ref in own:  # its previous stage, whichever row shares that run
                    label, number = plan.row.label, own[ref]
                state = status.get(ref, (None,))[0]
                if state is None:  # a run of no row of this table
                    state = FINISHED if load_result(runs_root / ref) else MISSING
                if label == plan.row.label:
                    needs.append(f"stage {number} ({ref}, {state})")
                elif label is not None:
                    which = f" stage {number}/{count}" if count > 1 else ""
                    needs.append(f"row '{label}'{which} ({ref}, {state})")
                else:
                    needs.append(f"run {ref} ({state})")
            state, detail = status[stage.run_dir.name]
            trains = epochs(stage.resolved)
            table.lines.append(
                StageLine(
                    plan.row.label,
                    index + 1,
                    len(plan.stages),
                    stage.run_dir,
                    state,
                    detail,
                    _overrides(spec, plan.row, index),
                    tuple(needs),
                    trains,
                    steps_per_epoch(stage.resolved),
                    data_sizes(stage.resolved) if trains else "",
                    own=not plan.row.source,
                    # make table runs its own rows (sweeps.study.Sweep.own_rows), not those
                    # taken from other tables, nor rows a live worker is running
                    starts=state != FINISHED and not plan.row.source and plan.row.label not in live,
                )
            )
    return table


# -- text -----------------------------------------------------------------------------------


def _size(line: StageLine) -> str:
    if line.status == UNAVAILABLE:
        return "-"
    if not line.epochs:
        return "test only"
    steps = "?" if line.steps_per_epoch is None else str(line.steps_per_epoch)
    return f"{line.epochs} epoch{'s' if line.epochs > 1 else ''} x {steps} steps"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def format_plan(
    spec: TableSpec,
    profile: str,
    runs_root: Path,
    storage_url: str | None = None,
    heartbeat: Heartbeat = DEFAULT_HEARTBEAT,
) -> str:
    """``make plan-<id>``: a header, one line per row and stage, the total."""
    checked_root(os.environ.get("MUSDB_ROOT"))  # before the storage is even looked at
    storage = open_storage_readonly(storage_url, runs_root)
    return format_table(inspect_table(spec, profile, runs_root, storage, storage_url, heartbeat))


def format_table(table: TableStatus) -> str:
    """A table's status as ``make plan-<id>`` prints it."""
    study = f"{table.trials} trials" if table.trials else "no trials or no study yet"
    lines = [
        f"Table {table.spec.id}: {table.spec.title}",
        f"profile {table.profile}, runs {table.runs_root}, storage {table.storage}, "
        f"study {table.study} ({study})",
        "",
        "row | run folder | status | epochs x steps per epoch | overrides | needs",
    ]
    for line in table.lines:
        state = line.status + (f": {line.detail}" if line.detail else "")
        run = str(line.run_dir) if line.run_dir else "-"
        overrides = "; ".join(line.overrides) or ("(the base)" if line.run_dir else "-")
        needs = "; ".join(line.needs) or "-"
        lines.append(f"{line.name} | {run} | {state} | {_size(line)} | {overrides} | {needs}")
    start = table.to_start()
    known = [line for line in start if line.steps_per_epoch is not None]
    steps = sum(line.epochs * line.steps_per_epoch for line in known)
    unknown = "" if len(known) == len(start) else f" (and {len(start) - len(known)} runs unknown)"
    counts = Counter(line.status for line in table.lines)
    busy = {line.label for line in table.lines if line.own and line.status != FINISHED}
    busy -= {line.label for line in table.lines if line.starts}
    lines += [
        "",
        f"total: make table-{table.spec.id} would start {_count(len(start), 'run')} now, "
        f"{_count(sum(line.epochs for line in start), 'epoch')}, {_count(steps, 'step')}{unknown}"
        + (f"; rows under way in live workers: {sorted(busy)}" if busy else "")
        + f" (stages: {', '.join(f'{counts[s]} {s}' for s in STATUSES if counts[s])})",
    ]
    if sources := sorted({line.data for line in table.lines if line.data}):
        lines.append(f"steps per epoch from: {'; '.join(sources)}")
    if any(line.status != FINISHED and line.needs and line.needs[0].startswith("source:")
           for line in table.lines):  # fmt: skip
        lines.append("rows taken from other tables are run by those tables' make table-<id>")
    return "\n".join(lines)


def format_config(spec: TableSpec, profile: str, runs_root: Path, label: str, hashed: bool) -> str:
    """``make plan-<id> CONFIG=<label>``: the row's fully resolved config per stage, as YAML
    documents (``hashed``: only the part its run folder's hash is computed from)."""
    checked_root(os.environ.get("MUSDB_ROOT"))
    plans = {plan.row.label: plan for plan in plan_table(spec, profile, runs_root)}
    if label not in plans:
        raise SpecError(f"table {spec.id} has no row '{label}'; its rows: {list(plans)}")
    plan = plans[label]
    if not plan.runnable:
        raise SpecError(f"table {spec.id}, row '{label}' cannot run: {plan.row.unavailable}")
    documents = []
    for index, stage in enumerate(plan.stages, start=1):
        config = identity(stage.resolved) if hashed else stage.resolved
        what = "identity" if hashed else "resolved config"
        head = f"# table {spec.id}, row '{label}', stage {index}/{len(plan.stages)}, profile "
        head += f"{profile}: {what} of {stage.run_dir}"
        documents.append(head + "\n" + yaml.safe_dump(config, sort_keys=False))
    return "---\n".join(documents)


def _natural(table_id: str) -> list[tuple[int, int, str]]:
    """Sort key of table ids: 4.2 before 4.12."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in re.split(r"[.-]", table_id)
    ]


def format_status(
    profile: str,
    runs_root: Path,
    storage_url: str | None = None,
    heartbeat: Heartbeat = DEFAULT_HEARTBEAT,
    tables: list[str] | None = None,
) -> str:
    """``make status``: every table's rows counted by status, one line per table."""
    checked_root(os.environ.get("MUSDB_ROOT"))
    storage = open_storage_readonly(storage_url, runs_root)
    lines = [f"profile {profile}, runs {runs_root}, storage {describe(storage_url, runs_root)}"]
    lines.append("table | rows | " + " | ".join(STATUSES) + " | runs make table would start")
    for table_id in tables or sorted(available_tables(), key=_natural):
        table = inspect_table(load_table(table_id), profile, runs_root, storage, storage_url,
                              heartbeat)  # fmt: skip
        counts = Counter(table.row_status().values())
        cells = [table_id, str(len(table.row_status()))] + [str(counts[s]) for s in STATUSES]
        lines.append(" | ".join(cells + [str(len(table.to_start()))]))
    return "\n".join(lines)
