"""Optuna storages for the sweeps: which one, opened once, with heartbeats and retries.

- no URL / ``journal:<path>``: a journal file in the runs folder. Safe for several processes on
  ONE machine (it appends under a file lock); not on NFS, whose locks are unreliable.
- ``sqlite:///<path>``: one worker only; SQLite serialises writers and fails with "database is
  locked" under several, so more than one worker is refused before anything starts.
- ``postgresql://...`` (or any other SQLAlchemy URL): many workers on many nodes.

Every storage records a heartbeat for running trials. A trial whose worker died (SIGKILL, node
loss, preemption) is failed by the next worker that looks once its heartbeat is older than the
grace period, and Optuna's ``RetryHeartbeatStaleTrialCallback`` enqueues it again with the same
row: its run folder (named by the config hash) still holds ``checkpoints/last.ckpt``, so the
retry resumes instead of starting over.

This is the one module that uses Optuna's private API: the journal storage has no heartbeat,
and the only way to give it one that ``study.optimize`` and ``fail_stale_trials`` honour is
Optuna's own ``optuna.storages._heartbeat.BaseHeartbeat`` (with ``_get_stale_trial_ids``, and
``FrozenTrial._trial_id`` for the storage's trial ids). ``tests/test_sweep_workers.py`` pins
that contract, so an Optuna upgrade that changes it fails there.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
from optuna.storages import (
    BaseStorage,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from sweeps.specs import SpecError

HEARTBEAT_ATTR = "heartbeat"


def ignore_experimental_warnings() -> None:
    """Optuna marks the heartbeat API experimental (since 2.8); the sweeps are built on it.
    Called by the entry points (the command line, each worker job), not at import."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass(frozen=True)
class Heartbeat:
    """Seconds between heartbeats, seconds of silence before a trial counts as dead, retries."""

    interval: int = 60
    grace: int = 180
    max_retry: int = 3

    def stale_callback(self) -> RetryHeartbeatStaleTrialCallback:
        return RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)


DEFAULT_HEARTBEAT = Heartbeat()


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage plus the heartbeat protocol it lacks (RDBStorage has it).

    The heartbeat is a system attribute holding a wall-clock time; the journal is only meant
    for processes on one machine, so they share the clock.
    """

    def __init__(self, path: Path, heartbeat: Heartbeat) -> None:
        # The open lock (O_EXCL lock file) is the one optuna-dashboard takes on journal files,
        # so `make dashboard` and the workers agree on the lock.
        lock = optuna.storages.journal.JournalFileOpenLock(str(path))
        super().__init__(optuna.storages.journal.JournalFileBackend(str(path), lock_obj=lock))
        self._heartbeat = heartbeat

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            last = trial.system_attrs.get(HEARTBEAT_ATTR)
            if last is None:  # died between popping the trial and its first heartbeat
                last = (trial.datetime_start or datetime.now()).timestamp()
            if now - last > self._heartbeat.grace:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat.interval

    def get_heartbeat_stale_trial_callback(self):  # noqa: ANN201 (Optuna's signature)
        return self._heartbeat.stale_callback()


def describe(url: str | None, runs_root: Path) -> str:
    """The storage as users write it (``STORAGE=``), with the journal default spelled out."""
    return url or f"journal:{runs_root / 'optuna.journal'}"


def open_storage(
    url: str | None, runs_root: Path, workers: int = 1, heartbeat: Heartbeat = DEFAULT_HEARTBEAT
) -> BaseStorage:
    """Open (and for databases, create the schema of) the storage named by ``url``.

    Called once by the process that starts a sweep, before any worker exists: several workers
    starting on a fresh database otherwise race to create Optuna's tables and one fails with
    "table already exists". Fails with a ``SpecError`` naming the URL when it cannot connect.
    """
    url = describe(url, runs_root)
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return HeartbeatJournalStorage(path, heartbeat)
    if url.startswith("sqlite:") and workers > 1:
        raise SpecError(
            f"storage {url}: SQLite takes one writer at a time and fails under several workers; "
            f"use the journal file (the default) on one machine or PostgreSQL across nodes "
            f"(asked for {workers} workers)"
        )
    try:
        return RDBStorage(
            url,
            engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite:") else None,
            heartbeat_interval=heartbeat.interval,
            grace_period=heartbeat.grace,
            heartbeat_stale_trial_callback=heartbeat.stale_callback(),
        )
    except Exception as error:  # SQLAlchemy / driver errors: bad URL, refused, auth, no driver
        reason = f"{type(error).__name__}: {error}"
        raise SpecError(f"storage {url} cannot be opened: {reason}") from error


def retried_from(trial: FrozenTrial) -> int | None:
    """The number of the trial this one retries (None for a first attempt)."""
    return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def dashboard_command(url: str | None, runs_root: Path, port: int) -> list[str]:
    """The optuna-dashboard command line for a storage, bound to localhost only."""
    url = describe(url, runs_root)
    target = ["--storage-class", "JournalFileStorage", url.removeprefix("journal:")]
    if not url.startswith("journal:"):
        target = [url]
    return ["optuna-dashboard", *target, "--host", "127.0.0.1", "--port", str(port)]
