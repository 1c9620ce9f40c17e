"""Optional W&B tracking of table runs: one W&B run per trial, offline unless told otherwise.

``python -m sweeps table <id> --logger wandb`` (``make table-<id> LOGGER=wandb``) turns it on
for every run executed inside :func:`logging_to`. The choice travels in environment variables
so that worker processes and batch jobs started from there inherit it without extra plumbing.

W&B is a view of the runs, never their record: the CSV logs, ``museval/`` and ``result.json``
stay what tables are rendered from, and the logger is added to the run's config copy after
hashing, so it never changes a run's identity.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from lightning_modules.evaluation.bss import aggregate
from sweeps.specs import SpecError

LOGGER_ENV = "MSS_LOGGER"  # "csv" (default) or "wandb"
GROUP_ENV = "MSS_WANDB_GROUP"  # the table's study name, e.g. "table-4.3-smoke"
LOGGERS = ("csv", "wandb")
RUN_CONFIG = "resolved-config.yaml"  # in <run>/wandb/: the run config W&B reads
ID_FILE = "wandb_id"  # the W&B run id of a run folder, so a resumed run continues it
PROJECT = "mss-suite"
WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"
METRICS = ("SDR", "SIR", "SAR", "ISR")
TARGETS = ("vocals", "accompaniment")
MAX_TAG = 64  # W&B rejects longer tags


@contextmanager
def logging_to(logger: str, group: str) -> Iterator[None]:
    """Runs executed inside the block (here or in processes started here) log to ``logger``
    as well as to CSV, grouped under ``group``. The environment is restored afterwards."""
    if logger not in LOGGERS:
        raise ValueError(f"unknown logger {logger!r}; choose one of {', '.join(LOGGERS)}")
    if logger == "wandb":
        _require_wandb()
    saved = {key: os.environ.get(key) for key in (LOGGER_ENV, GROUP_ENV)}
    os.environ[LOGGER_ENV], os.environ[GROUP_ENV] = logger, group
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def enabled() -> bool:
    return os.environ.get(LOGGER_ENV, "csv") == "wandb"


def _require_wandb() -> Any:
    try:
        import wandb
    except ImportError as error:
        message = "the W&B logger needs the wandb package: pip install -e '.[wandb]'"
        raise SpecError(message) from error
    return wandb


def run_id(run_dir: Path) -> str:
    """The W&B run id stored in ``run_dir``, created on first use. Random rather than the
    config hash: the same config run in two run folders must not merge into one W&B run."""
    path = run_dir / ID_FILE
    if path.exists():
        return path.read_text().strip()
    new = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    path.write_text(new + "\n")
    return new


def write_run_config(resolved: dict[str, Any], run_dir: Path) -> Path:
    """``resolved`` as a W&B config file. W&B gets the file's name rather than the dict:
    jsonargparse would turn a nested config dict passed to the logger into Namespaces, in
    place (the run's hashed config included)."""
    path = run_dir / "wandb" / RUN_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = {key: {"value": value} for key, value in resolved.items()}
    path.write_text(yaml.safe_dump({"wandb_version": 1, **entries}, sort_keys=False))
    return path


def add_logger(
    config: dict[str, Any], resolved: dict[str, Any], run_dir: Path, *, label: str, profile: str
) -> None:
    """Append a ``WandbLogger`` to ``config`` (the run's own copy, built after hashing) when
    W&B tracking is on; otherwise leave it alone. ``resolved`` (the hashed config) becomes the
    W&B run config."""
    if not enabled():
        return
    wandb = _require_wandb()
    if wandb.run is not None:
        # A trial of this process failed before finishing its W&B run; WandbLogger would
        # otherwise reuse that run for this trial.
        wandb.run.finish(exit_code=1)
    init_kwargs: dict[str, Any] = {
        "group": os.environ.get(GROUP_ENV) or f"profile-{profile}",
        "tags": [tag[:MAX_TAG] for tag in (label, profile) if tag],
        "config": str(write_run_config(resolved, run_dir)),
        "resume": "allow",
    }
    if "WANDB_MODE" not in os.environ:  # compute nodes have no internet; `wandb sync` later
        init_kwargs["mode"] = "offline"
    wandb_logger = {
        "class_path": WANDB_LOGGER,
        "init_args": {
            "name": run_dir.name,
            "save_dir": str(run_dir),
            "id": run_id(run_dir),
            "project": os.environ.get("WANDB_PROJECT", PROJECT),
            "log_model": False,  # checkpoints stay in the run folder, never uploaded
        },
        "dict_kwargs": init_kwargs,
    }
    loggers = config["trainer"].get("logger")
    if loggers is True:  # Lightning's default logger: keep a CSV one, as every experiment has
        loggers = [{"class_path": CSV_LOGGER, "init_args": {"save_dir": str(run_dir)}}]
    elif not loggers:  # evaluation-only experiments log nothing but their test scores
        loggers = []
    elif isinstance(loggers, dict):
        loggers = [loggers]
    config["trainer"]["logger"] = [*loggers, wandb_logger]


def final_scores(result: dict[str, Any], run_dir: Path) -> dict[str, float]:
    """museval medians over tracks: vocals from the result, accompaniment from the per-track
    museval JSON the test wrote (the result keeps the vocals only)."""
    scores = {
        f"museval/vocals/{m}": float(result["scores"][m]["median"])
        for m in METRICS
        if m in result.get("scores", {})
    }
    tracks = [json.loads(p.read_text()) for p in sorted((run_dir / "museval").glob("*.json"))]
    has_accompaniment = [
        any(t.get("name") == "accompaniment" for t in track.get("targets", [])) for track in tracks
    ]
    if has_accompaniment and all(has_accompaniment):
        accompaniment = aggregate(tracks, target="accompaniment", metrics=METRICS)
        scores |= {f"museval/accompaniment/{m}": accompaniment[m]["median"] for m in METRICS}
    return scores


def finish(trainer: Any, result: dict[str, Any], run_dir: Path) -> None:
    """Write the final museval medians into the W&B run's summary and finish the run.
    Called after result.json is written: W&B can never keep a run from finishing."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if not isinstance(logger, WandbLogger):
            continue
        try:
            experiment = logger.experiment
            experiment.summary.update(final_scores(result, run_dir))
            experiment.finish()
        except Exception as error:  # the table does not depend on W&B: warn, do not fail
            warnings.warn(f"run {run_dir}: W&B summary not written: {error!r}", stacklevel=2)
