"""One run = one fully resolved config in ``<runs>/<hash>/``: train, test, write result.json.

``result.json`` is written last and atomically: its presence is what "finished" means. A run
folder without it is resumed from ``checkpoints/last.ckpt``; a finished one is never touched
again. A lock file keeps two processes from working on the same run at once.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from filelock import FileLock, Timeout
from lightning.pytorch import Callback

from datamodules.files import write_atomic, write_json_atomic
from datamodules.provenance import git_commit, utc_now
from lightning_modules.cli import SuiteCLI, make_cli
from sweeps import tracking
from sweeps.identity import RUN_REFERENCE, config_hash, results_versions, row_key
from sweeps.specs import SpecError

RESULT = "result.json"


def _cli(config: dict[str, Any], parse_only: bool) -> SuiteCLI:
    try:
        with warnings.catch_warnings():
            # The config comes as a dict while sys.argv holds the runner's own arguments.
            warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
            return make_cli(config, run=False, parse_only=parse_only, save_config_callback=None)
    except SystemExit as error:  # jsonargparse reports bad configs by exiting
        raise SpecError(f"invalid configuration (see the message above): {error}") from error


def resolve(config: dict[str, Any]) -> dict[str, Any]:
    """Every default filled in, validated by the LightningCLI parser.

    A pure function of the config (and the installed code), so it is computed once per
    distinct config and process: planning a summary table plans the tables it draws from,
    and the parser takes a noticeable fraction of a second per config.
    """
    key = json.dumps(config, sort_keys=True, default=str)
    if key not in _RESOLVED:
        cli = _cli(config, parse_only=True)
        _RESOLVED[key] = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))
    return copy.deepcopy(_RESOLVED[key])


_RESOLVED: dict[str, dict[str, Any]] = {}


def run_dir_for(resolved: dict[str, Any], runs_root: Path) -> Path:
    return runs_root / config_hash(resolved)


def is_finished(run_dir: Path) -> bool:
    return (run_dir / RESULT).exists()


def load_result(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / RESULT
    return json.loads(path.read_text()) if path.exists() else None


def checkpoint_path(run_dir: Path, result: dict[str, Any]) -> Path | None:
    """The run's tested checkpoint. ``result.json`` stores it relative to the run folder, so
    a ``runs/`` folder copied off a cluster renders and resumes elsewhere; older results hold
    an absolute path, which is taken when it still exists and re-rooted otherwise."""
    stored = result.get("checkpoint")
    if not stored:
        return None
    path = Path(stored)
    if not path.is_absolute():
        return run_dir / path
    return path if path.exists() else run_dir / "checkpoints" / path.name


@contextmanager
def run_lock(run_dir: Path, wait: bool = False) -> Iterator[None]:
    """Exclusive use of a run folder; ``wait`` blocks until the holder is done instead of
    failing. The kernel drops the lock when its holder dies, even by SIGKILL."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(run_dir / ".lock", timeout=-1 if wait else 0):
            yield
    except Timeout as error:
        raise RuntimeError(f"run {run_dir} is being worked on by another process") from error


def describe_device(trainer) -> str:
    device = trainer.strategy.root_device
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x{trainer.num_devices}"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def materialise_references(value: Any, runs_root: Path) -> Any:
    """``run:<hash>`` -> the best checkpoint of that finished run."""
    if isinstance(value, str) and value.startswith(RUN_REFERENCE):
        used = runs_root / value.removeprefix(RUN_REFERENCE)
        result = load_result(used)
        checkpoint = checkpoint_path(used, result) if result else None
        if checkpoint is None:
            raise RuntimeError(f"run {used}, which this run starts from or uses, has not finished")
        return str(checkpoint)
    if isinstance(value, dict):
        return {k: materialise_references(v, runs_root) for k, v in value.items()}
    if isinstance(value, list):
        return [materialise_references(v, runs_root) for v in value]
    return value


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch a Lightning checkpoint was saved in (None if there is no checkpoint)."""
    if not path.exists():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])


def without_slurm_requeue(config: dict[str, Any]) -> dict[str, Any]:
    """Inside a SLURM job, Lightning would requeue the job itself on SIGUSR1; submitit does
    that for the sweeps, so Lightning's auto-requeue is switched off (one mechanism only)."""
    if "SLURM_JOB_ID" in os.environ:
        config["trainer"]["plugins"] = [
            {
                "class_path": "lightning.pytorch.plugins.environments.SLURMEnvironment",
                "init_args": {"auto_requeue": False},
            }
        ]
    return config


def execute(
    resolved: dict[str, Any],
    run_dir: Path,
    profile: str,
    label: str = "",
    wait: bool = False,
    test: bool = True,
    callbacks: Sequence[Callback] = (),
    key: str | None = None,
) -> dict:
    """Train (if the model is trainable) and test one resolved config in ``run_dir``.

    Returns the result; a finished run is returned as it is, without any work. ``wait``: wait
    for another process working on the same run instead of failing. ``test=False``: training
    only (hyper-parameter searches select on validation, never on the test set).
    ``callbacks``: extra Lightning callbacks that are not part of the config (Optuna pruning).
    ``key``: the run's row key as its plan computed it (``sweeps.plan.Stage.key``; default: the
    key of a run that uses no other run), recorded so that a later version can name it stale.
    """
    if is_finished(run_dir):
        return load_result(run_dir)
    devices = resolved["trainer"].get("devices")
    if devices not in (1, "1", [0]) and resolved["trainer"].get("accelerator") != "cpu":
        raise SpecError(
            f"run {run_dir}: trainer.devices={devices!r}; the table runner trains every run on one "
            "device (rows run side by side instead). For DDP on one experiment use "
            "`python -m lightning_modules fit --config ...`"
        )
    with run_lock(run_dir, wait):
        if is_finished(run_dir):  # another process finished it while we waited
            return load_result(run_dir)
        write_atomic(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        config = materialise_references(resolved, run_dir.parent)  # a deep copy
        config["trainer"]["default_root_dir"] = str(run_dir)
        for callback in config["trainer"].get("callbacks") or []:
            if callback["class_path"].endswith("ModelCheckpoint"):
                callback["init_args"] = {
                    **callback["init_args"],
                    "dirpath": str(run_dir / "checkpoints"),
                }
        for logger in config["trainer"].get("logger") or []:
            if "save_dir" in logger.get("init_args", {}):
                logger["init_args"] = {**logger["init_args"], "save_dir": str(run_dir)}
        config = without_slurm_requeue(config)
        tracking.add_logger(config, resolved, run_dir, label=label, profile=profile)
        cli = _cli(config, parse_only=False)
        trainer, model, data = cli.trainer, cli.model, cli.datamodule
        trainer.callbacks.extend(callbacks)
        ckpt, resumed_from_epoch = None, None
        if model.trainable:
            last = run_dir / "checkpoints" / "last.ckpt"
            resumed_from_epoch = checkpoint_epoch(last)
            if resumed_from_epoch is not None:
                print(f"run {run_dir.name}: resuming from {last} (epoch {resumed_from_epoch})")
            trainer.fit(model, datamodule=data, ckpt_path=str(last) if last.exists() else None)
            ckpt = trainer.checkpoint_callback.best_model_path or str(last)
        metrics, scores = [], {}
        if test:
            metrics = trainer.test(model, datamodule=data, ckpt_path=ckpt)
            # The model tested; after ckpt_path loading, trainer.lightning_module holds it.
            scores = trainer.lightning_module.test_scores
        result = {
            "label": label,
            "hash": run_dir.name,
            "test_metrics": metrics[0] if metrics else {},
            "scores": scores,
            "checkpoint": os.path.relpath(ckpt, run_dir) if ckpt else None,
            "epochs": trainer.current_epoch,
            "results_version": results_versions(resolved),
            "row_key": key or row_key(resolved),
            "resumed_from_epoch": resumed_from_epoch,
            "provenance": {
                "commit": git_commit(),
                "data": data.data_source,
                "profile": profile,
                "device": describe_device(trainer),
                "date": utc_now(),
            },
        }
        write_json_atomic(run_dir / RESULT, result)
        tracking.finish(trainer, result, run_dir)
        return result
